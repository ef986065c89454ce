"""The import job: source files -> checked records -> rate-limited writer -> checkpoints.

Before anything is written: the source is opened and its manifests validated, files that
are archived and not restored are refused (``thaw.refuse_frozen``), the target table is
found (or created with ``create_table``) and its keys compared with the source's.
Then several source files are read at once from different Scan segments and their records
interleaved (scan order is partition order), each record is checked (key attributes, 400 KB),
and the writer puts them at the adaptive rate. Each acknowledgement (or dead letter) moves its
file's watermark (``import_state``), which the checkpoint saves every ``checkpoint_interval``
and at shutdown; a resumed import starts each file at its watermark. GSIs of a table this import
created come last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .batching import interleave
from .config import ImportOptions
from .dynamo import DynamoClient
from .errors import ConfigError, TableNotFoundError
from .hot_keys import HotKeys
from .import_state import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DeadLetterFile,
    FileWatermark,
    ImportCheckpoint,
)
from .progress import JobProgress
from .provision import capacity_for_job
from .ratelimit import (
    AdaptiveRate,
    Bucket,
    BudgetSpec,
    KeyRateLimiter,
    RateController,
    TokenBucket,
)
from .records import WriteRecord
from .retry import Clock, RetryPolicy, SystemClock
from .schema import (
    KeyAttributes,
    key_attributes,
    refuse_a_table_being_deleted,
)
from .sources import ImportSource, SourceFile, open_source, read_records
from .storage import ObjectStore, open_store
from .table_rate import job_rate
from .tables import (
    add_global_indexes,
    check_key_schema,
    create_table,
    find_table,
)
from .thaw import refuse_frozen
from .writer import TableWriter

log = logging.getLogger(__name__)

#: DynamoDB serves at most this many WCU/s for one partition-key value (one partition).
PARTITION_KEY_WCU = 1000.0
#: The import starts at this fraction of --target-wcu and doubles every quarter second
#: until the target or the first throttle (reaching the target within ~0.75 s).
SLOW_START_FRACTION = 1 / 8
#: The global bucket holds at least one batch of 1 KB items.
MIN_BURST_WCU = 25.0


def write_budget(target_wcu: float) -> BudgetSpec:
    """An import's budget: ``target_wcu``, moved by an adaptive controller from a slow start."""
    return BudgetSpec(target_wcu, burst=write_burst(target_wcu), adaptive=True,
                      slow_start=SLOW_START_FRACTION)


def write_rate(target_wcu: float, clock: Clock) -> tuple[TokenBucket, AdaptiveRate]:
    """The bucket an import in one process writes from, and the controller that moves it."""
    bucket, controller = write_budget(target_wcu).build(clock)
    assert controller is not None
    return bucket, controller


def key_limiter(clock: Clock) -> KeyRateLimiter:
    """The per-key limits of an import's writer (DynamoDB's per-partition-key cap)."""
    return KeyRateLimiter(PARTITION_KEY_WCU, clock=clock)


def hot_keys(clock: Clock) -> HotKeys:
    """The hot partition keys an import's writer learns and paces on their own."""
    return HotKeys(cap=PARTITION_KEY_WCU, clock=clock)


def write_burst(target_wcu: float) -> float:
    """What the write budget may save up: a tenth of a second of credit (a full second at a
    target far above the table's capacity arrives as one burst of throttled calls before the
    controller can react), at least one batch."""
    return max(target_wcu / 10, MIN_BURST_WCU)


@dataclass(frozen=True, kw_only=True)
class ImportSummary:
    """What an import did; ``to_dict`` is the ``--json`` output.

    ``items_read == items_written + items_dead_lettered`` always holds. The counts are the
    whole import's: a resumed import adds those its checkpoint counted (the records below
    each file's watermark), and counts each record once.
    """

    source: str
    source_kind: str
    table: str
    items_read: int
    items_written: int
    items_dead_lettered: int
    consumed_wcu: float
    throttled_requests: int
    unprocessed_items: int
    target_wcu: float
    seconds: float
    files: int
    created_table: bool
    indexes_added: list[str]
    dead_letter: str | None
    resumed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_import(
    options: ImportOptions,
    progress: JobProgress | None = None,
    *,
    clock: Clock | None = None,
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
) -> ImportSummary:
    """Run (or with ``options.resume`` continue) an import; see ``ddbpipe.import_table``.

    ``clock`` is where every part of the import reads the time (default: the system's);
    ``checkpoint_interval`` is the seconds on it between checkpoint saves.
    """
    clock = clock or SystemClock()
    progress = progress or JobProgress()
    started = clock.monotonic()
    store = open_store(options.source, options.aws, clock=clock)
    try:
        source = await open_source(store)
        # A frozen file fails only when read, after others were written: refuse it up front.
        await refuse_frozen(store, [file.key for file in source.files], options.aws,
                            by_thaw=source.kind == "ddbpipe")
        async with DynamoClient.open(options.aws, clock=clock) as control:
            target, created = await _target_table(control, options, source)
            table_keys = key_attributes(target)
            check_key_schema(options.table, table_keys, source.key_attributes)
            target_wcu = _choose_target_wcu(options, target)
            checkpoint = _open_checkpoint(options, store, source, clock, checkpoint_interval)
            # What was finished before a resume: part of this import's totals.
            earlier_written = checkpoint.items_written
            earlier_dead_lettered = checkpoint.items_dead_lettered
            dead_letter = _open_dead_letter(options, checkpoint)
            run = ImportRun(options, source, store, checkpoint, dead_letter, progress,
                            table_keys, clock)
            raised = False
            try:
                async with capacity_for_job(
                    control, options.table, write=options.provision_wcu,
                    state=Path(options.provision_state), aws_options=options.aws,
                    despite_decrease_limit=options.provision_anyway,
                ):
                    raised = True
                    if options.cluster:
                        from .import_cluster import write_all_on_cluster

                        await write_all_on_cluster(run, target_wcu)
                    else:
                        await run.write_all(target_wcu)
            except BaseException:
                if not raised and not options.resume:
                    # Refused before a single write: the same command may simply run again.
                    checkpoint.remove()
                raise
            indexes = []
            if created and not options.without_indexes and source.table_schema:
                indexes = await add_global_indexes(
                    control, options.table, source.table_schema,
                    on_index=lambda name: log.info("adding index %s to %s", name, options.table),
                )
    finally:
        await store.close()
    checkpoint.remove()
    return ImportSummary(
        source=store.url,
        source_kind=source.kind,
        table=options.table,
        items_read=run.items_read + earlier_written + earlier_dead_lettered,
        items_written=run.items_written + earlier_written,
        items_dead_lettered=dead_letter.count + earlier_dead_lettered,
        consumed_wcu=round(run.consumed_wcu, 3),
        throttled_requests=run.throttled_requests,
        unprocessed_items=run.unprocessed_items,
        target_wcu=target_wcu,
        seconds=round(clock.monotonic() - started, 3),
        files=len(source.files),
        created_table=created,
        indexes_added=indexes,
        dead_letter=(
            str(dead_letter.path) if dead_letter.count + earlier_dead_lettered else None
        ),
        resumed=options.resume,
    )


# --- before writing ----------------------------------------------------------------------------


async def _target_table(
    client: DynamoClient, options: ImportOptions, source: ImportSource
) -> tuple[dict[str, Any], bool]:
    """The target's description, and whether this import created it."""
    existing = await find_table(client, options.table)
    if existing is not None:
        refuse_a_table_being_deleted(
            existing, "wait until it is gone, then import with --create-table, or choose "
            "another table")
        if options.create_table and not options.resume:
            raise ConfigError(
                f"table '{options.table}' already exists and --create-table only creates new "
                "tables: drop --create-table to import into it"
            )
        # Resuming an import that created the table: it still gets the indexes at the end.
        return existing, options.create_table
    if not options.create_table:
        raise TableNotFoundError(
            f"table '{options.table}' not found in region {client.region}: create it, or pass "
            "--create-table to create it from the export's saved schema",
            service="dynamodb", action="DescribeTable", code="ResourceNotFoundException",
            resource=options.table,
        )
    if not source.table_schema:
        raise ConfigError(
            f"--create-table needs a saved table schema, which only ddbpipe exports carry "
            f"({source.url} is {source.kind}): create table '{options.table}' first"
        )
    log.info("creating table %s from the export's schema", options.table)
    return await create_table(client, options.table, source.table_schema), True


def _choose_target_wcu(options: ImportOptions, target: dict[str, Any]) -> float:
    rate = job_rate(target, options.target_wcu, writes=True, provision=options.provision_wcu)
    if not options.target_wcu:
        log.info("writing at %s WCU/s, %s (set --target-wcu to change)",
                 f"{rate.units_per_second:g}", rate.source)
    return rate.units_per_second


def _open_checkpoint(
    options: ImportOptions, store: ObjectStore, source: ImportSource, clock: Clock,
    interval: float,
) -> ImportCheckpoint:
    opener = ImportCheckpoint.resume if options.resume else ImportCheckpoint.start
    return opener(
        Path(options.checkpoint_path), source=store.url, table=options.table,
        export_id=source.export_id, clock=clock, interval=interval,
    )


def _open_dead_letter(options: ImportOptions, checkpoint: ImportCheckpoint) -> DeadLetterFile:
    dead_letter = DeadLetterFile(Path(options.dead_letter_path))
    checkpoint.dead_letter = dead_letter
    if options.resume:
        # Files are read again from their watermarks, dead letters above them included.
        dropped = dead_letter.keep_below(checkpoint.watermarks())
        if dropped:
            log.info("resuming: %d dead letters above the watermarks will be redone", dropped)
    return dead_letter


def spread_over_segments(files: tuple[SourceFile, ...] | list[SourceFile]) -> list[SourceFile]:
    """Files in an order that takes turns between Scan segments (partitions)."""
    by_segment: dict[int | None, list[SourceFile]] = {}
    for file in files:
        by_segment.setdefault(file.segment, []).append(file)
    queues = list(by_segment.values())
    ordered: list[SourceFile] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        ordered += [queue[depth] for queue in queues if depth < len(queue)]
    return ordered


# --- writing -----------------------------------------------------------------------------------


class Checkpoint(Protocol):
    """Where a run's file progress goes: the import's checkpoint file, or (a task on a
    cluster) reports to the driver (``import_cluster.ReportedFile``)."""

    files: dict[str, FileWatermark]

    def begin(self, key: str, size: int | None) -> FileWatermark: ...

    def save_if_due(self) -> None: ...

    async def close(self) -> None: ...


class DeadLetters(Protocol):
    """Where a run's dead letters go: the dead-letter file, or reports to the driver."""

    count: int

    def add(self, *, reason: str, source: str, position: int, kind: str,
            item: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class ImportRun:
    """One pass over the files not done, each from its watermark (the driver's), or over
    one file (a task on a cluster)."""

    options: ImportOptions
    source: ImportSource
    store: ObjectStore
    checkpoint: Checkpoint
    dead_letter: DeadLetters
    progress: JobProgress
    table_keys: KeyAttributes
    clock: Clock
    items_read: int = 0
    items_written: int = 0
    consumed_wcu: float = 0.0
    throttled_requests: int = 0
    unprocessed_items: int = 0

    #: Files read to their end whose last records are not finished yet.
    draining: set[str] = field(default_factory=set)

    def files_to_do(self, target_wcu: float) -> list[SourceFile]:
        """The files not done, in the order to write them; the progress display told so."""
        assert isinstance(self.checkpoint, ImportCheckpoint)
        todo = [f for f in spread_over_segments(self.source.files)
                if f.key not in self.checkpoint.done]
        self.progress.files_total = len(self.source.files)
        self.progress.files_done = len(self.source.files) - len(todo)
        # What is left: a resumed import counts only what it writes.
        finished_before = sum(self.checkpoint.watermarks().values())
        self.progress.items_estimate = max((self.source.item_count or 0) - finished_before, 0)
        self.progress.target_rate = target_wcu
        return todo

    async def write_all(self, target_wcu: float) -> None:
        todo = self.files_to_do(target_wcu)
        await self.write_files(todo, *write_rate(target_wcu, self.clock))

    async def write_files(
        self, todo: list[SourceFile], bucket: Bucket, controller: RateController
    ) -> None:
        """Write ``todo``'s records (each file from its watermark) at ``bucket``'s rate."""
        clock = self.clock
        # The writer sees every throttle itself (one attempt per call) and retries per record.
        async with DynamoClient.open(
            self.options.aws, max_connections=self.options.concurrency + 4,
            retry=RetryPolicy(max_attempts=1), clock=clock,
        ) as client:
            writer = TableWriter(
                client, self.options.table, [name for name, _ in self.table_keys],
                bucket=bucket, controller=controller,
                key_limiter=key_limiter(clock), hot_keys=hot_keys(clock),
                concurrency=self.options.concurrency,
                retry_deadline=self.options.retry_deadline,
                on_written=self._written, on_dead_letter=self._dead_lettered,
                progress=self.progress, clock=clock,
            )
            try:
                await writer.write(self._checked(self._records(todo)))
            finally:
                self.consumed_wcu = writer.consumed_wcu
                self.throttled_requests = writer.throttled_requests
                self.unprocessed_items = writer.unprocessed_items
                if writer.hot_keys is not None and writer.hot_keys.learned:
                    log.info("%d hot partition keys were written at rates of their own",
                             writer.hot_keys.learned)
                self.progress.current_rate = controller.rate
                try:
                    # At the end, on an error or when cancelled: what is finished stays so.
                    await self.checkpoint.close()
                finally:
                    self.dead_letter.close()

    def _records(self, todo: list[SourceFile]) -> AsyncIterator[WriteRecord]:
        return interleave(
            (self._file_batches(file) for file in todo), width=self.options.open_files
        )

    async def _file_batches(self, file: SourceFile) -> AsyncIterator[list[WriteRecord]]:
        progress = self.checkpoint.begin(file.key, file.size)
        batches = read_records(
            self.store, self.source, file, self.table_keys, start=progress.watermark
        )
        async for batch in batches:
            progress.read_end += len(batch)
            yield batch
        progress.fully_read = True
        self.draining.add(file.key)
        self._after_progress()

    async def _checked(self, records: AsyncIterator[WriteRecord]) -> AsyncIterator[WriteRecord]:
        """Records a write would reject for sure go straight to the dead-letter file."""
        async for record in records:
            self.items_read += 1
            if record.problem is None:
                yield record
            else:
                self._dead_lettered(record, record.problem)

    def _written(self, records: list[WriteRecord], consumed: float) -> None:
        self.items_written += len(records)
        self.progress.items += len(records)
        files = self.checkpoint.files
        for record in records:
            files[record.source].finish(record.position)
        self._after_progress()

    def _dead_lettered(self, record: WriteRecord, reason: str) -> None:
        self.dead_letter.add(reason=reason, source=record.source, position=record.position,
                             kind=record.kind, item=record.item)
        self.progress.dead_lettered += 1
        self.checkpoint.files[record.source].dead_letter(record.position)
        self._after_progress()

    def _after_progress(self) -> None:
        if self.draining:
            done = [key for key in self.draining if self.checkpoint.files[key].done]
            self.draining.difference_update(done)
            self.progress.files_done += len(done)
        self.checkpoint.save_if_due()
