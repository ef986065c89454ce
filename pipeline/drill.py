"""The restore drill's parts: does a live table hold exactly the items of an export?

``verify --against-table`` runs them in this order (``verify_job``): the table's keys must be
the export's (``check_table_keys``); the export's shards, read for the read-all checks anyway,
file their items into partitions on disk (``shard_reader``); a parallel Scan of the table
files its items into partitions of its own (``scan_table``, under the ``max_rcu`` budget); the
two sides are compared partition by partition (``item_diff``) into a ``TableComparison``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .codec import BytesLike
from .config import DEFAULT_MAX_CONCURRENCY
from .dynamo import DynamoClient
from .errors import ConfigError, CorruptDataError, SchemaMismatchError, first_error
from .integrity import Problem, RecordedFile, read_all
from .item_diff import Differences, ItemPartitions, KeyReader, KeyTally
from .progress import JobProgress
from .ratelimit import TokenBucket
from .scan import ReadBudget, scan_pages
from .schema import KeyAttributes, describe_keys, key_attributes
from .spool import StoredBytes

__all__ = [
    "DEFAULT_PARTITION_BYTES",
    "DrillSettings",
    "ScanTotals",
    "ShardRead",
    "TableComparison",
    "check_table_keys",
    "drill_settings",
    "partition_count",
    "scan_table",
    "shard_reader",
]

#: Bytes of DynamoDB JSON per partition of one side: what the comparison holds in memory.
DEFAULT_PARTITION_BYTES = 64 * 1024 * 1024

#: A read-all check of one shard: (items read, problems), as ``integrity.read_all`` gives.
ShardRead = Callable[[RecordedFile, StoredBytes], tuple[int, list[Problem]]]


@dataclass(frozen=True, kw_only=True)
class DrillSettings:
    """What a drill compares against, and how hard it may read the table."""

    table: str
    #: Read capacity units per second the Scan may use; None: as fast as the table serves.
    max_rcu: float | None = None
    #: Parallel Scan segments; None: as many as the export was scanned with.
    segments: int | None = None
    consistent_read: bool = False
    #: Where the partition files go; None: the system's temporary folder.
    work_dir: str | None = None
    partition_bytes: int = DEFAULT_PARTITION_BYTES

    def __post_init__(self) -> None:
        if not self.table:
            raise ConfigError("--against-table needs a table name")
        if self.max_rcu is not None and not self.max_rcu > 0:
            raise ConfigError(f"--max-rcu must be a positive number, not {self.max_rcu}")
        if self.segments is not None and not 1 <= self.segments <= 1_000_000:
            raise ConfigError(f"--segments must be between 1 and 1000000, not {self.segments}")
        if self.partition_bytes < 1:
            raise ConfigError(f"partition size must be positive, not {self.partition_bytes}")


def drill_settings(
    table: str | None,
    *,
    max_rcu: float | None = None,
    segments: int | None = None,
    consistent_read: bool = False,
    work_dir: str | None = None,
) -> DrillSettings | None:
    """The drill asked for; None without a table, where drill settings are refused."""
    if table is not None:
        return DrillSettings(
            table=table, max_rcu=max_rcu, segments=segments, consistent_read=consistent_read,
            work_dir=work_dir,
        )
    given = [
        flag for flag, value in (
            ("--max-rcu", max_rcu), ("--segments", segments),
            ("--consistent-read", consistent_read or None), ("--work-dir", work_dir),
        )
        if value is not None
    ]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for a drill, add --against-table TABLE")
    return None


@dataclass(frozen=True, kw_only=True)
class TableComparison:
    """How a table's items differ from an export's; ``ok`` only when they are the same."""

    table: str
    export_items: int
    table_items: int
    #: In the export, not in the table.
    missing_from_table: KeyTally
    #: In the table, not in the export.
    extra_in_table: KeyTally
    #: Under the same key, another item.
    different: KeyTally
    segments: int
    partitions: int
    consumed_rcu: float

    @property
    def ok(self) -> bool:
        return not (
            self.missing_from_table.count or self.extra_in_table.count or self.different.count
        )

    @classmethod
    def of(
        cls, settings: DrillSettings, differences: Differences, *, export_items: int,
        scanned: ScanTotals, partitions: int,
    ) -> TableComparison:
        return cls(
            table=settings.table,
            export_items=export_items,
            table_items=scanned.items,
            missing_from_table=differences.missing,
            extra_in_table=differences.extra,
            different=differences.different,
            segments=scanned.segments,
            partitions=partitions,
            consumed_rcu=scanned.consumed_rcu,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "ok": self.ok,
            "export_items": self.export_items,
            "table_items": self.table_items,
            "missing_from_table": self.missing_from_table.to_dict(),
            "extra_in_table": self.extra_in_table.to_dict(),
            "different": self.different.to_dict(),
            "segments": self.segments,
            "partitions": self.partitions,
            "consumed_rcu": round(self.consumed_rcu, 3),
        }

    def describe(self) -> list[str]:
        """One line for the verdict, then one per kind of difference with its first keys."""
        scanned = (
            f"{self.export_items:,} items in the export, {self.table_items:,} in the table, "
            f"{self.consumed_rcu:,.1f} RCU"
        )
        if self.ok:
            return [f"table {self.table} holds exactly the export's items ({scanned})"]
        lines = [f"table {self.table} differs from the export ({scanned})"]
        for label, tally in (
            ("missing from the table", self.missing_from_table),
            ("extra in the table", self.extra_in_table),
            ("different", self.different),
        ):
            if tally.count:
                lines.append(f"{tally.count:,} {label}: {_some_keys(tally)}")
        return lines


def _some_keys(tally: KeyTally) -> str:
    shown = ", ".join(json.dumps(key, ensure_ascii=False) for key in tally.keys)
    more = tally.count - len(tally.keys)
    return shown + (f" and {more:,} more" if more else "")


# --- before reading ----------------------------------------------------------------------------


def check_table_keys(table: str, description: dict[str, Any], export_keys: KeyAttributes) -> None:
    """Items are matched by key: the table's keys must be the export's."""
    table_keys = key_attributes(description)
    if table_keys != tuple(map(tuple, export_keys)):
        raise SchemaMismatchError(
            f"key schema mismatch: table '{table}' has {describe_keys(table_keys)}, the export "
            f"has {describe_keys(export_keys)}; drill against a table with the export's keys"
        )


def partition_count(export_raw_bytes: int, table_size_bytes: int, partition_bytes: int) -> int:
    """Enough partitions that one of the larger side is about ``partition_bytes``."""
    larger = max(export_raw_bytes, table_size_bytes)
    return max(1, math.ceil(larger / partition_bytes))


# --- the export's side -------------------------------------------------------------------------


def shard_reader(partitions: ItemPartitions, keys: KeyReader) -> ShardRead:
    """The read-all check of a shard (``integrity.read_all``: bytes, decoding, count) that
    also files its items, in the same one pass. Runs in a thread, like ``read_all``."""

    def read(file: RecordedFile, stored: StoredBytes) -> tuple[int, list[Problem]]:
        def take(batch: list[bytes], before: int) -> None:
            partitions.add(_keyed(batch, keys, file.key, before))

        return read_all(file, stored, take_items=take)

    return read


def _keyed(
    items: Sequence[bytes], keys: KeyReader, name: str, before: int
) -> list[tuple[bytes, bytes]]:
    records = []
    for number, item in enumerate(items, start=before + 1):
        try:
            records.append((keys(item), item))
        except CorruptDataError as error:
            raise CorruptDataError(f"{name}: item {number}: {error}") from None
    return records


# --- the table's side --------------------------------------------------------------------------


@dataclass
class ScanTotals:
    """What a Scan of the whole table read: items, and capacity as DynamoDB reported it."""

    segments: int
    items: int = 0
    consumed_rcu: float = 0.0


async def scan_table(
    partitions: ItemPartitions,
    keys: KeyReader,
    client: DynamoClient,
    table: str,
    *,
    segments: int,
    read_budget: TokenBucket | None = None,
    consistent_read: bool = False,
    progress: JobProgress | None = None,
) -> ScanTotals:
    """Scan the whole table in ``segments`` parallel segments, filing every item; together
    they read within ``read_budget``."""
    budget = ReadBudget(read_budget) if read_budget is not None else None
    progress = progress or JobProgress()
    progress.segments_total = segments
    totals = ScanTotals(segments=segments)
    running = asyncio.Semaphore(DEFAULT_MAX_CONCURRENCY)

    def file_items(items: Sequence[BytesLike]) -> None:
        partitions.add([(keys(item), item) for item in items])

    async def one_segment(segment: int) -> None:
        async with running, contextlib.aclosing(scan_pages(
            client, table, segment=segment, total_segments=segments,
            read_budget=budget, consistent_read=consistent_read,
        )) as pages:
            async for page in pages:
                # Decoding keys and writing files: off the event loop, as the export's shards.
                await asyncio.to_thread(file_items, page.items)
                totals.items += len(page.items)
                totals.consumed_rcu += page.consumed_capacity
                progress.add_page(
                    len(page.items), sum(map(len, page.items)), page.consumed_capacity
                )
        progress.segments_done += 1

    try:
        async with asyncio.TaskGroup() as group:
            for segment in range(segments):
                group.create_task(one_segment(segment))
    except BaseExceptionGroup as failed:
        raise first_error(failed) from None
    return totals
