"""Before a job runs: what it will consume and cost, and how long it takes (``ddbpipe plan``).

The estimates are pure functions of figures (items, bytes, a sample's sizes, a table's
capacity, prices); the gathering reads them. Export: DescribeTable, a short sample Scan
(``scan.scan_pages``), DescribeContinuousBackups. Import: the source's manifests, the first
items of a few of its files, the target table or the schema --create-table would use.
Capacity maths is ``codec``'s; prices and sums of money are ``prices.py``'s.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .codec import decode_item, item_size, read_units, write_units
from .config import COMPRESSIONS, FORMATS, STORAGE_CLASSES, AwsOptions
from .dynamo import UNSUPPORTED_CODES, DynamoClient
from .errors import AccessDeniedError, AwsRequestError, ConfigError, CorruptDataError
from .prices import PriceTable, load_prices, storage_cost_per_month, throughput_cost
from .scan import MAX_PAGE_BYTES, ReadBudget, read_bucket, scan_pages
from .schema import KeyAttributes, key_attributes, provisioned_units
from .shards import ShardWriter, decompressed, iter_shard_items, lines
from .sources import ImportSource, SourceFile, open_source
from .sources.aws_export import change_of_line
from .spool import StoredBytes
from .storage import ObjectStore, open_store
from .table_rate import Rate, job_rate
from .tables import check_key_schema, find_table
from .thaw import refuse_frozen

__all__ = ["ExportChoices", "JobPlan", "run_plan_export", "run_plan_import"]

PITR_WINDOW_DAYS = 35
PITR_WINDOW = (f"point-in-time recovery keeps {PITR_WINDOW_DAYS} days: while it is enabled "
               f"the table can be restored to any second of the last {PITR_WINDOW_DAYS} days "
               "(or of its shorter recovery period), never further back")
NEW_TABLE_PITR = "DISABLED (a new table starts without it: enable it after the import)"
#: A job longer than this at the table's provisioned capacity is worth a warning.
CRAWL_SECONDS = 3600.0
#: The sample Scan: pages read per segment; segments of 1/16^k of the table when needed.
SAMPLE_PAGES = 2
SAMPLE_SEGMENT_STEP = 16
MAX_TOTAL_SEGMENTS = 1_000_000
#: The import's sample: files read, stored bytes read of each, items taken from each.
SAMPLE_FILES = 8
SAMPLE_PARQUET_FILES = 2  # read whole: Parquet keeps its index at the end
SAMPLE_FILE_BYTES = 512 * 1024
SAMPLE_ITEMS_PER_FILE = 500
_ITEM_KINDS = ("ddbpipe", "aws-full")  # files of items only (others hold change lines)


@dataclass(frozen=True, kw_only=True)
class JobPlan:
    """What a job will consume and cost; ``to_dict`` is ``ddbpipe plan --json``.

    ``capacity_units``: what the job's own requests consume (an export's Scan in RCU, an
    import's writes in WCU, index writes during the load included), at ``rate`` units a
    second for ``seconds``; ``cost``: USD at the prices ``prices`` names.
    """

    job: Literal["export", "import"]
    table: str | None
    region: str
    items: int
    bytes: int
    figures: str
    capacity_unit: Literal["RCU", "WCU"]
    capacity_units: float
    capacity_note: str
    rate: float
    rate_source: str
    seconds: float
    cost: dict[str, Any]
    pitr: dict[str, Any]
    prices: dict[str, str]
    stored_bytes: int | None = None
    indexes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the estimates: pure functions of figures ---------------------------------------------------


def scan_read_units(table_bytes: int, consistent_read: bool) -> float:
    """A Scan's read units: 4 KB units of the bytes each page reads (pages of up to 1 MB),
    halved when eventually consistent; per page, not per item."""
    full_pages, rest = divmod(table_bytes, MAX_PAGE_BYTES)
    units = full_pages * read_units(MAX_PAGE_BYTES, consistent_read)
    return units + (read_units(rest, consistent_read) if rest or not full_pages else 0.0)


def seconds_at(units: float, rate: Rate) -> float:
    return units / rate.units_per_second


@dataclass(frozen=True)
class ScanSample:
    """Segment 0 of ``total_segments``, read for up to ``SAMPLE_PAGES`` pages."""

    items: list[bytes]
    item_bytes: int
    complete: bool
    total_segments: int


@dataclass(frozen=True)
class TableFigures:
    items: int
    bytes: int
    source: str


def table_figures(description: dict[str, Any], first: ScanSample,
                  counted: ScanSample) -> TableFigures:
    """Counted when the sample read the whole table; else DescribeTable's; else, where those
    are 0 (not refreshed yet), a segment read whole, scaled up."""
    if first.complete:
        return TableFigures(len(first.items), first.item_bytes,
                            "counted by the plan's Scan: the whole table fit in its sample")
    items = int(description.get("ItemCount") or 0)
    size = int(description.get("TableSizeBytes") or 0)
    if items and size:
        return TableFigures(items, size, "DescribeTable, which DynamoDB refreshes about every "
                                         "six hours")
    share = counted.total_segments
    how = (f"estimated from a Scan of 1/{share:,} of the table" if counted.complete
           else "at least this much: no sample segment could be read whole")
    return TableFigures(len(counted.items) * share, counted.item_bytes * share,
                        f"{how}; DescribeTable said 0 (not refreshed yet)")


def stored_fraction(items: Sequence[bytes], item_bytes: int, format: str, compression: str,
                    keys: KeyAttributes) -> float:
    """Stored bytes per byte of items in the chosen format and compression, from a sample."""
    if not items or not item_bytes:
        return 0.0
    with ShardWriter(format, compression, keys) as writer:  # type: ignore[arg-type]
        writer.add_items(items)
        stored = writer.close().stored_bytes
        writer.discard()  # the sample's file is not kept
    return stored / item_bytes


@dataclass(frozen=True)
class IndexShape:
    """A secondary index as far as its writes go: which items it holds, and what of each."""

    name: str
    kind: str  # "local" or "global"
    keys: tuple[str, ...]
    projection: str
    included: tuple[str, ...] = ()


def index_shapes(table: dict[str, Any] | None) -> list[IndexShape]:
    """The indexes of a DescribeTable reply or a saved schema, LSIs first."""
    return [
        IndexShape(index["IndexName"], kind,
                   tuple(key["AttributeName"] for key in index["KeySchema"]),
                   (index.get("Projection") or {}).get("ProjectionType", "ALL"),
                   tuple((index.get("Projection") or {}).get("NonKeyAttributes") or ()))
        for kind in ("local", "global")
        for index in (table or {}).get(f"{kind.capitalize()}SecondaryIndexes") or []
    ]


def index_entry_size(item: dict[str, Any], index: IndexShape,
                     table_keys: Sequence[str]) -> int | None:
    """The size of ``item``'s entry in ``index`` (what writing it is charged by); None when
    the item lacks the index's key attributes, and so is not in it."""
    if any(name not in item for name in index.keys):
        return None
    if index.projection == "ALL":
        return item_size(item)
    kept = {*table_keys, *index.keys, *(index.included if index.projection == "INCLUDE" else ())}
    return item_size({name: value for name, value in item.items() if name in kept})


@dataclass(frozen=True)
class SourceSample:
    """Records of an import's source: the puts' items and the deletes taken, and all the
    records read from how many stored bytes (for sources that record no counts)."""

    items: list[dict[str, Any]]
    deletes: int
    records_read: int
    bytes_read: int
    whole_files: int

    @property
    def sampled(self) -> int:  # at least 1: it is divided by
        return max(1, len(self.items) + self.deletes)


def index_writes(sample: SourceSample, records: int, index: IndexShape,
                 table_keys: Sequence[str], *, during_load: bool) -> dict[str, Any]:
    """Writes into ``index`` of a source of ``records`` records, scaled from the sample:
    the items in it and the write units of their entries."""
    sizes = [index_entry_size(item, index, table_keys) for item in sample.items]
    present = [size for size in sizes if size is not None]
    scale = records / sample.sampled
    return {"name": index.name, "kind": index.kind, "items": round(len(present) * scale),
            "capacity_units": sum(map(write_units, present)) * scale,
            "during_load": during_load}


def pitr_of(description: dict[str, Any] | None, status: str = "") -> dict[str, Any]:
    """Point-in-time recovery from a ContinuousBackupsDescription (``status`` instead, where
    there is none), with its window spelt out."""
    recovery = (description or {}).get("PointInTimeRecoveryDescription") or {}

    def iso(name: str) -> str | None:
        seconds = recovery.get(name)
        return None if seconds is None else datetime.fromtimestamp(
            float(seconds), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    return {"status": status or recovery.get("PointInTimeRecoveryStatus") or "unknown",
            "earliest_restorable": iso("EarliestRestorableDateTime"),
            "latest_restorable": iso("LatestRestorableDateTime"),
            "recovery_period_days": recovery.get("RecoveryPeriodInDays"),
            "window": PITR_WINDOW}


def capacity_warnings(table: dict[str, Any] | None, rate: Rate, seconds: float,
                      given: float | None, flag: str, unit: str) -> list[str]:
    """A job that would crawl at the table's provisioned capacity; a rate asked for above it
    (DynamoDB throttles the job down to it)."""
    warnings = []
    if rate.provisioned and seconds > CRAWL_SECONDS:
        warnings.append(
            f"at the table's provisioned {rate.units_per_second:,.0f} {unit}/s the job takes "
            f"{seconds / 3600:,.1f} hours: raise the table's capacity (or switch it to "
            "on-demand) for the job; auto scaling, if set, follows sustained use only after "
            "minutes, and never past its maximum")
    provisioned = provisioned_units(table or {}, "Write" if unit == "WCU" else "Read")
    if given and provisioned and given > provisioned:
        warnings.append(f"{flag} {given:,.0f} is above the table's provisioned "
                        f"{provisioned:,.0f} {unit}/s: DynamoDB throttles the job down to "
                        "about that unless the capacity is raised")
    return warnings


# --- export: gathering ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExportChoices:
    """The export's options that change what it reads, stores and costs; checked here."""

    max_rcu: float | None = None
    consistent_read: bool = False
    format: str = "ndjson"
    compression: str = "zstd"
    storage_class: str = "STANDARD"

    def __post_init__(self) -> None:
        for flag, value, choices in (("--format", self.format, FORMATS),
                                     ("--compression", self.compression, COMPRESSIONS),
                                     ("--storage-class", self.storage_class, STORAGE_CLASSES)):
            if value not in choices:
                raise ConfigError(f"unknown {flag} {value!r}: use one of {', '.join(choices)}")
        if self.max_rcu is not None and self.max_rcu <= 0:
            raise ConfigError(f"--max-rcu must be a positive number, not {self.max_rcu}")


async def run_plan_export(
    table: str, choices: ExportChoices | None = None, *, prices: str | None = None,
    aws: AwsOptions | None = None,
) -> JobPlan:
    """The plan of ``ddbpipe export TABLE`` with these options; see ``ddbpipe.plan_export``."""
    choices = choices or ExportChoices()
    price_table = load_prices(prices)
    async with DynamoClient.open(aws or AwsOptions()) as client:
        price_table.for_region(client.region)  # no prices, no plan: before any call
        description = await client.describe_table(table)
        first, counted, sample_rcu = await sample_table(client, table, description, choices)
        pitr = await read_pitr(client, table)
    fraction = stored_fraction(first.items, first.item_bytes, choices.format,
                               choices.compression, key_attributes(description))
    layout = choices.format + (f"/{choices.compression}" if choices.format == "ndjson" else "")
    return export_plan(
        table, description, table_figures(description, first, counted), choices,
        fraction=fraction, prices=price_table, region=client.region, pitr=pitr,
        notes=[f"stored as {layout}: {fraction:.3f} stored bytes per byte of items, from a "
               f"sample of {len(first.items):,} items",
               f"the plan's own sample Scan read {sample_rcu:,.1f} RCU"],
    )


def export_plan(
    table: str, description: dict[str, Any], figures: TableFigures, choices: ExportChoices, *,
    fraction: float, prices: PriceTable, region: str, pitr: dict[str, Any], notes: list[str],
) -> JobPlan:
    """An export's plan from the table's figures: reads, stored bytes, rate, time, cost."""
    units = scan_read_units(figures.bytes, choices.consistent_read)
    rate = job_rate(description, choices.max_rcu, writes=False)
    seconds = seconds_at(units, rate)
    stored = round(figures.bytes * fraction)
    region_prices = prices.for_region(region)
    warnings = capacity_warnings(description, rate, seconds, choices.max_rcu, "--max-rcu", "RCU")
    if rate.provisioned:
        warnings.append("the export may use all of the table's read capacity: pass --max-rcu "
                        "to leave some for the table's other readers")
    reads = "strongly" if choices.consistent_read else "eventually"
    return JobPlan(
        job="export", table=table, region=region, items=figures.items, bytes=figures.bytes,
        figures=figures.source, capacity_unit="RCU", capacity_units=units,
        capacity_note=f"{reads} consistent Scan: 4 KB units of each page's bytes (pages of up "
                      "to 1 MB), per page, not per item",
        rate=rate.units_per_second, rate_source=rate.source, seconds=seconds,
        cost={**throughput_cost(units, rate.units_per_second, seconds, region_prices,
                                writes=False),
              "storage_class": choices.storage_class,
              "storage_per_month": storage_cost_per_month(
                  stored, region_prices.storage_gb_month(choices.storage_class, region))},
        pitr=pitr, prices=prices.used_for(region), stored_bytes=stored,
        notes=notes, warnings=warnings,
    )


async def sample_table(
    client: DynamoClient, table: str, description: dict[str, Any], choices: ExportChoices,
) -> tuple[ScanSample, ScanSample, float]:
    """The table's first pages; when they are not the whole table and DescribeTable says 0,
    the first segment of 16, 256, ... that reads whole; and the RCU read for them (within
    --max-rcu)."""
    max_rcu = choices.max_rcu
    budget = ReadBudget(read_bucket(max_rcu, client.clock)) if max_rcu else None
    until_whole = not (description.get("ItemCount") and description.get("TableSizeBytes"))
    consumed = 0.0

    async def segment(total_segments: int) -> ScanSample:
        nonlocal consumed
        items: list[bytes] = []
        pages_read, complete = 0, False
        pages = scan_pages(client, table, segment=0, total_segments=total_segments,
                           read_budget=budget, consistent_read=choices.consistent_read)
        async with contextlib.aclosing(pages):
            async for page in pages:
                items.extend(bytes(item) for item in page.items)
                consumed += page.consumed_capacity
                pages_read += 1
                complete = page.last_evaluated_key is None
                if complete or pages_read >= SAMPLE_PAGES:
                    break
        sizes = sum(item_size(decode_item(item)) for item in items)
        return ScanSample(items, sizes, complete, total_segments)

    first = counted = await segment(1)
    while until_whole and not counted.complete and counted.total_segments < MAX_TOTAL_SEGMENTS:
        counted = await segment(min(counted.total_segments * SAMPLE_SEGMENT_STEP,
                                    MAX_TOTAL_SEGMENTS))
    return first, counted, consumed


async def read_pitr(client: DynamoClient, table: str) -> dict[str, Any]:
    """The table's point-in-time recovery; unknown, saying why, where it cannot be read."""
    try:
        return pitr_of(await client.describe_continuous_backups(table))
    except AccessDeniedError:
        return pitr_of(None, "unknown (access denied: grant dynamodb:DescribeContinuousBackups "
                             "to see it)")
    except AwsRequestError as error:
        if error.code in UNSUPPORTED_CODES:
            return pitr_of(None, "unknown (the endpoint does not support "
                                 "DescribeContinuousBackups)")
        raise


# --- import: gathering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportTarget:
    """The table an import writes into: its DescribeTable reply (``exists``), the saved
    schema of the table --create-table makes, or nothing (no table given)."""

    name: str | None
    table: dict[str, Any] | None
    exists: bool
    during_load: list[IndexShape]
    after_load: list[IndexShape]


async def run_plan_import(
    source: str, *, table: str | None = None, target_wcu: float | None = None,
    create_table: bool = False, without_indexes: bool = False, prices: str | None = None,
    aws: AwsOptions | None = None, sample_items: int = SAMPLE_ITEMS_PER_FILE,
) -> JobPlan:
    """The plan of ``ddbpipe import SOURCE TABLE`` with these options (``sample_items``:
    items taken from each sampled file); see ``ddbpipe.plan_import``."""
    if target_wcu is not None and target_wcu <= 0:
        raise ConfigError(f"--target-wcu must be a positive number, not {target_wcu}")
    if without_indexes and not create_table:
        raise ConfigError("--without-indexes goes with --create-table")
    aws = aws or AwsOptions()
    price_table = load_prices(prices)
    store = open_store(source, aws)
    try:
        async with DynamoClient.open(aws) as client:
            price_table.for_region(client.region)  # no prices, no plan: before any reading
            opened = await open_source(store)
            target = await _import_target(client, opened, table, create_table, without_indexes)
            sample = await sample_source(store, opened, aws, sample_items)
            pitr = await read_pitr(client, target.name) if target.exists and target.name else (
                pitr_of(None, NEW_TABLE_PITR if create_table else "unknown (no table given)"))
    finally:
        await store.close()
    return import_plan(opened, target, sample, target_wcu, price_table, client.region, pitr)


def import_plan(
    source: ImportSource, target: ImportTarget, sample: SourceSample, target_wcu: float | None,
    price_table: PriceTable, region: str, pitr: dict[str, Any],
) -> JobPlan:
    """An import's plan from its source, target and sample: writes, rate, time, cost."""
    records, figures = source_records(source, sample)
    scale = records / sample.sampled
    units = (sum(write_units(item_size(item)) for item in sample.items) + sample.deletes) * scale
    keys = [name for name, _ in (key_attributes(target.table) if target.table
                                 else source.key_attributes or ())]
    indexes = [index_writes(sample, records, index, keys, during_load=index in target.during_load)
               for index in target.during_load + target.after_load]
    units += sum(index["capacity_units"] for index in indexes if index["during_load"])
    backfill = sum(index["capacity_units"] for index in indexes if not index["during_load"])
    rate = job_rate(target.table, target_wcu, writes=True)
    seconds = seconds_at(units, rate)
    return JobPlan(
        job="import", table=target.name, region=region, items=records,
        bytes=round(sum(map(item_size, sample.items)) * scale), figures=figures,
        capacity_unit="WCU", capacity_units=units,
        capacity_note="BatchWriteItem: 1 KB units, each item rounded up on its own; writes to "
                      "the indexes the table has during the load included",
        rate=rate.units_per_second, rate_source=rate.source, seconds=seconds,
        cost=throughput_cost(units + backfill, rate.units_per_second,
                             seconds_at(units + backfill, rate),
                             price_table.for_region(region), writes=True),
        pitr=pitr, prices=price_table.used_for(region),
        indexes=indexes, notes=_import_notes(records, sample, backfill, target.exists),
        warnings=capacity_warnings(target.table, rate, seconds, target_wcu, "--target-wcu",
                                   "WCU"),
    )


def _import_notes(records: int, sample: SourceSample, backfill: float,
                  into_existing: bool) -> list[str]:
    how = "every record" if sample.sampled >= records else f"a sample of {sample.sampled:,}"
    notes = [f"write units from {how} of {records:,}: each item's size rounded up to 1 KB"]
    if sample.deletes:
        notes.append("deletes are counted at 1 WCU each: DynamoDB charges the size of the item "
                     "deleted, which the source does not hold")
    if backfill:
        notes.append(f"adding the GSIs after the load writes about {backfill:,.0f} WCU more "
                     "(in the cost, not in the time: DynamoDB backfills them on its side)")
    if into_existing:
        notes.append("an item that replaces one in the table is charged by the larger of the two")
    return notes


def source_records(source: ImportSource, sample: SourceSample) -> tuple[int, str]:
    """How many records the source holds: its manifest's count, else (loose files) scaled
    from the sampled files' records per stored byte."""
    if source.item_count is not None:
        return source.item_count, f"the {source.kind} export's manifest"
    if sample.whole_files == len(source.files):
        return sample.records_read, "counted in every file"
    total_bytes = sum(file.size or 0 for file in source.files)
    return (round(total_bytes * sample.records_read / max(1, sample.bytes_read)),
            f"estimated from {total_bytes:,} stored bytes at the records per byte of a "
            "sample (the files record no counts)")


async def _import_target(
    client: DynamoClient, source: ImportSource, table: str | None, create_table: bool,
    without_indexes: bool,
) -> ImportTarget:
    if create_table:
        schema = source.table_schema
        if not schema:
            raise ConfigError(f"--create-table needs a saved table schema, which only ddbpipe "
                              f"exports carry ({source.url} is {source.kind}): create the "
                              "table first and plan with --table instead")
        if table is not None and await find_table(client, table) is not None:
            raise ConfigError(f"table '{table}' already exists and --create-table only creates "
                              "new tables: drop --create-table to plan an import into it")
        during = [shape for shape in index_shapes(schema) if shape.kind == "local"]
        after = [s for s in index_shapes(schema) if s.kind == "global" and not without_indexes]
        return ImportTarget(table or schema.get("TableName"), schema, False, during, after)
    if table is None:
        return ImportTarget(None, None, False, [], [])
    description = await client.describe_table(table)
    check_key_schema(table, key_attributes(description), source.key_attributes)
    return ImportTarget(table, description, True, index_shapes(description), [])


async def sample_source(
    store: ObjectStore, source: ImportSource, aws: AwsOptions, items_per_file: int,
) -> SourceSample:
    """The first records of a few files spread over the source (checked only as far as
    decoding goes: a sample is not a verify)."""
    parquet = any(file.key.endswith(".parquet") for file in source.files)
    count = min(SAMPLE_PARQUET_FILES if parquet else SAMPLE_FILES, len(source.files))
    files = [source.files[i * len(source.files) // count] for i in range(count)]
    await refuse_frozen(store, [file.key for file in files], aws,
                        by_thaw=source.kind == "ddbpipe")
    items: list[dict[str, Any]] = []
    deletes = records_read = bytes_read = whole_files = 0
    for file in files:
        records, read, whole = await _file_records(store, source, file, items_per_file)
        records_read += len(records)
        bytes_read += read
        whole_files += whole
        taken = records[:items_per_file]
        items += [decode_item(raw) for kind, raw in taken if kind == "put"]
        deletes += sum(kind != "put" for kind, _ in taken)
    return SourceSample(items, deletes, records_read, bytes_read, whole_files)


async def _file_records(
    store: ObjectStore, source: ImportSource, file: SourceFile, parquet_items: int,
) -> tuple[list[tuple[str, bytes]], int, bool]:
    """The records in the first ``SAMPLE_FILE_BYTES`` of ``file`` (the first
    ``parquet_items`` of a Parquet file), the stored bytes read, whether that was all."""
    where = f"{store.url.rstrip('/')}/{file.key}"
    if file.key.endswith(".parquet"):
        with await StoredBytes.fetch(store, file.key) as stored:
            items = iter_shard_items(stored, where)
            return ([("put", raw) for raw in itertools.islice(items, parquet_items)],
                    stored.size, False)
    chunks: list[bytes] = []
    read = 0
    stream = store.iter_chunks(file.key, SAMPLE_FILE_BYTES)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            chunks.append(chunk)
            read += len(chunk)
            if read >= SAMPLE_FILE_BYTES:
                break
    whole = file.size is not None and read >= file.size
    return _prefix_records(chunks, where, source.kind, whole), read, whole


def _prefix_records(chunks: list[bytes], where: str, kind: str,
                    whole: bool) -> list[tuple[str, bytes]]:
    """The records of a file's first ``chunks``, as ``read_records`` makes them."""
    records: list[tuple[str, bytes]] = []
    try:
        if kind in _ITEM_KINDS:
            for raw in iter_shard_items(chunks, where):
                records.append(("put", raw))
        else:
            for number, line in lines(decompressed(chunks, where)):
                records.append(change_of_line(line, where, number))
    except CorruptDataError:
        if whole:
            raise
        # The prefix ends inside a line or a compressed frame: the records before it stand.
    return records
