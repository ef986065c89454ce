"""The verify job: check a finished export, its structure cheaply or every byte (``read_data``),
or as a restore drill against a live table.

The cheap check reads only manifests and object listings: the manifests are present and
agree with each other, every listed shard exists with its recorded size (and ETag), and no
unlisted file is under ``data/``. ``read_data`` also downloads every shard, recomputes its
SHA-256 and MD5, decodes it and recounts its items. The rules are ``integrity.py``'s; verify
collects every problem they find into its report.

A drill (``drill``, see ``drill.py``) checks the table's keys first, then the export as
``read_data`` does, filing its items into partitions on disk as they are decoded (so the
checksums cost no extra read); only an export without problems goes on to the Scan of the
table and the item-by-item comparison, whose outcome is the report's ``comparison``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .config import AwsOptions
from .drill import (
    DrillSettings,
    ShardRead,
    TableComparison,
    check_table_keys,
    partition_count,
    scan_table,
    shard_reader,
)
from .dynamo import DynamoClient
from .errors import CorruptDataError
from .integrity import (
    ManifestsDisagree,
    Problem,
    RecordedFile,
    UnlistedFile,
    UnreadableManifest,
    check_listing,
    check_unlisted,
    read_all,
    read_checked_manifest,
)
from .item_diff import ItemPartitions, KeyReader, compare_partitions
from .manifest import (
    AWS_FILES_KEY,
    AWS_FILES_MD5_KEY,
    AWS_SUMMARY_KEY,
    AWS_SUMMARY_MD5_KEY,
    DATA_PREFIX,
    MANIFEST_KEY,
    ExportManifest,
    ShardEntry,
    decode_aws_files,
    read_finished_manifest,
)
from .progress import JobProgress
from .ratelimit import TokenBucket
from .retry import Clock, SystemClock
from .scan import read_bucket
from .spool import StoredBytes
from .storage import ObjectInfo, ObjectStore, open_store
from .thaw import refuse_frozen

#: Shards downloaded and decoded at the same time by ``read_data``.
READ_CONCURRENCY = 4


@dataclass
class VerifyReport:
    """The outcome; ``ok`` only when no problem was found."""

    source: str
    read_data: bool
    export_id: str = ""
    table: str = ""
    shards: int = 0
    items: int = 0
    items_read: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: The table a drill was asked to compare; ``comparison`` is None when the export's own
    #: problems stopped it before the Scan.
    against_table: str | None = None
    comparison: TableComparison | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and (self.comparison is None or self.comparison.ok)

    def add(self, problems: Iterable[Problem]) -> None:
        """Add the problems not reported yet (reading a cut-off shard finds its size again)."""
        known = set(self.problems)
        for problem in problems:
            if problem not in known:
                known.add(problem)
                self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "read_data": self.read_data,
            "export_id": self.export_id,
            "table": self.table,
            "shards": self.shards,
            "items": self.items,
            "items_read": self.items_read if self.read_data else None,
            "bytes_read": self.bytes_read,
            "problems": [str(problem) for problem in self.problems],
            "against_table": self.against_table,
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


async def run_verify(
    source: str,
    *,
    read_data: bool = False,
    drill: DrillSettings | None = None,
    aws: AwsOptions | None = None,
    on_shard: Callable[[ShardEntry], None] | None = None,
    progress: JobProgress | None = None,
    clock: Clock | None = None,
) -> VerifyReport:
    """Verify the export at ``source``; problems and differences are collected, not raised.

    Raises only when there is nothing to verify (no export, unreadable manifest, unknown
    format version), when a drill's table is missing or has other keys, or when storage or
    DynamoDB itself fails. ``progress`` counts a drill's Scan; ``clock`` is where its read
    budget reads the time (default: the system's).
    """
    clock = clock or SystemClock()
    store = open_store(source, aws, clock=clock)
    report = VerifyReport(
        source=store.url, read_data=read_data or drill is not None,
        against_table=drill.table if drill else None,
    )
    try:
        await store.ensure_ready(for_write=False)
        manifest = await _read_manifest(store)
        report.export_id, report.table = manifest.plan.export_id, manifest.plan.table_name
        report.shards, report.items = len(manifest.shards), manifest.item_count
        if report.read_data:  # a frozen shard would fail the reads half-way: refuse now
            await refuse_frozen(store, [shard.key for shard in manifest.shards], aws)
        if drill is None:
            listing = await _check_structure(store, manifest, report)
            if read_data:
                await _read_all_shards(store, manifest, listing, report, on_shard, read_all)
        else:
            async with DynamoClient.open(aws or AwsOptions(), clock=clock) as client:
                # The table first: a wrong name or key schema is one line, whatever the export.
                description = await client.describe_table(drill.table)
                check_table_keys(drill.table, description, manifest.plan.key_attributes)
                listing = await _check_structure(store, manifest, report)
                if not report.problems:
                    await _run_drill(
                        _Drill(store, manifest, listing, drill, client, description),
                        report, on_shard, progress or JobProgress(clock=clock),
                    )
    finally:
        await store.close()
    return report


async def _check_structure(
    store: ObjectStore, manifest: ExportManifest, report: VerifyReport
) -> dict[str, ObjectInfo]:
    """The cheap checks; returns the listing of ``data/``."""
    files = [_recorded(shard) for shard in manifest.shards]
    listing = {info.key: info for info in await store.list(DATA_PREFIX)}
    report.add(check_listing(files, listing))
    report.add(check_unlisted(files, listing, MANIFEST_KEY))
    if manifest.has_aws_manifests:
        report.add(await _check_aws_manifests(store, manifest))
    return listing


async def _read_manifest(store: ObjectStore) -> ExportManifest:
    # An unfinished export, a malformed manifest or an unknown format version is raised as it
    # is: there is nothing to verify.
    manifest = await read_finished_manifest(store)
    if manifest is None:
        raise CorruptDataError(f"{store.url} holds no ddbpipe export ({MANIFEST_KEY} is missing)")
    return manifest


def _recorded(shard: ShardEntry) -> RecordedFile:
    return RecordedFile(
        key=shard.key,
        size=shard.stored_bytes,
        items=shard.items,
        sha256=shard.sha256,
        md5_b64=shard.md5,
        etag=shard.etag,
        recorded_in=MANIFEST_KEY,
    )


# --- the AWS manifests of an NDJSON export ------------------------------------------------------


async def _check_aws_manifests(store: ObjectStore, manifest: ExportManifest) -> list[Problem]:
    files, problems = await read_checked_manifest(
        store, AWS_FILES_KEY, [AWS_FILES_MD5_KEY], require_checksum=True
    )
    summary, summary_problems = await read_checked_manifest(
        store, AWS_SUMMARY_KEY, [AWS_SUMMARY_MD5_KEY], require_checksum=True
    )
    problems += summary_problems
    if summary is not None:
        problems += _check_aws_summary(summary, manifest)
    if files is not None:
        problems += _check_aws_files(files, manifest, store)
    return problems


def _check_aws_summary(data: bytes, manifest: ExportManifest) -> list[Problem]:
    try:
        summary = msgspec.json.decode(data)
        count = int(summary["itemCount"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return [UnreadableManifest(file=AWS_SUMMARY_KEY, reason="not a valid export summary")]
    if count != manifest.item_count:
        detail = f"itemCount {count}, {MANIFEST_KEY} records {manifest.item_count}"
        return [ManifestsDisagree(file=AWS_SUMMARY_KEY, other=MANIFEST_KEY, detail=detail)]
    return []


def _check_aws_files(data: bytes, manifest: ExportManifest, store: ObjectStore) -> list[Problem]:
    try:
        listed = {entry.dataFileS3Key: entry for entry in decode_aws_files(data, AWS_FILES_KEY)}
    except CorruptDataError as error:
        return [UnreadableManifest(file=AWS_FILES_KEY, reason=_after_name(str(error)))]
    problems: list[Problem] = []
    for shard in manifest.shards:
        entry = listed.pop(store.root_key(shard.key), None)
        if entry is None:
            problems.append(UnlistedFile(file=shard.key, manifest=AWS_FILES_KEY))
        elif entry.itemCount != shard.items or entry.md5Checksum != shard.md5:
            problems.append(_aws_files_disagree(f"item count or MD5 of {shard.key}"))
    problems += [_aws_files_disagree(f"lists {key}, which is not in the export") for key in listed]
    return problems


def _after_name(message: str) -> str:
    """A decoder's message without the file name it starts with (the problem names it)."""
    return message.split(": ", 1)[-1]


def _aws_files_disagree(detail: str) -> Problem:
    return ManifestsDisagree(file=AWS_FILES_KEY, other=MANIFEST_KEY, detail=detail)


# --- read-all --------------------------------------------------------------------------------


async def _read_all_shards(
    store: ObjectStore,
    manifest: ExportManifest,
    listing: dict[str, ObjectInfo],
    report: VerifyReport,
    on_shard: Callable[[ShardEntry], None] | None,
    read: ShardRead,
) -> None:
    running = asyncio.Semaphore(READ_CONCURRENCY)

    async def check(shard: ShardEntry) -> list[Problem]:
        async with running:
            with await StoredBytes.fetch(store, shard.key) as stored:
                report.bytes_read += stored.checksums.size
                # Decoding in a thread keeps the downloads of other shards going.
                items, problems = await asyncio.to_thread(read, _recorded(shard), stored)
        report.items_read += items
        if on_shard is not None:
            on_shard(shard)
        return problems

    present = [shard for shard in manifest.shards if shard.key in listing]
    found = await asyncio.gather(*(check(shard) for shard in present))
    report.add(problem for problems in found for problem in problems)


# --- the restore drill -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Drill:
    """What a drill works on, found before it starts."""

    store: ObjectStore
    manifest: ExportManifest
    listing: dict[str, ObjectInfo]
    settings: DrillSettings
    client: DynamoClient
    description: dict[str, Any]


async def _run_drill(
    drill: _Drill,
    report: VerifyReport,
    on_shard: Callable[[ShardEntry], None] | None,
    progress: JobProgress,
) -> None:
    """Export into partitions (with the read-all checks), then the table, then compare.

    Both sides' partition files are removed however this ends.
    """
    settings, manifest = drill.settings, drill.manifest
    keys = KeyReader(manifest.plan.key_attributes)
    table_size = int(drill.description.get("TableSizeBytes", 0))
    count = partition_count(manifest.raw_bytes, table_size, settings.partition_bytes)
    with ItemPartitions(count, parent=settings.work_dir) as export_side:
        await _read_all_shards(
            drill.store, manifest, drill.listing, report, on_shard,
            shard_reader(export_side, keys),
        )
        if report.problems:
            return  # a damaged export proves nothing about the table: no Scan
        export_side.flush()
        with ItemPartitions(count, parent=settings.work_dir) as table_side:
            progress.items_estimate = int(drill.description.get("ItemCount", 0))
            scanned = await scan_table(
                table_side, keys, drill.client, settings.table,
                segments=settings.segments or manifest.plan.segments,
                read_budget=_read_budget(settings, drill.client.clock),
                consistent_read=settings.consistent_read,
                progress=progress,
            )
            table_side.flush()
            differences = await asyncio.to_thread(
                compare_partitions, export_side, table_side, keys
            )
    report.comparison = TableComparison.of(
        settings, differences, export_items=report.items_read, scanned=scanned, partitions=count
    )


def _read_budget(settings: DrillSettings, clock: Clock) -> TokenBucket | None:
    return read_bucket(settings.max_rcu, clock) if settings.max_rcu else None
