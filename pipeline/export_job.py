"""The export job: describe the table, plan segments, run them, write the manifests last.

Order of writes (docs/FORMAT.md): the plan (``_ddbpipe-state/export.json``) first; shards,
each followed by its segment's checkpoint; then the AWS manifests; ``ddbpipe-manifest.json``
last as the commit point; then the state folder is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .cluster import Cluster, open_cluster
from .config import ArchiveOptions, AwsOptions, ExportOptions, default_shard_bytes
from .dynamo import DynamoClient
from .errors import DdbpipeError, DestinationExistsError, ResumeError, first_error
from .manifest import (
    DATA_PREFIX,
    MANIFEST_KEY,
    STATE_KEY,
    STATE_PREFIX,
    ExportManifest,
    ExportPlan,
    SegmentCheckpoint,
    aws_time,
    decode_checkpoint,
    decode_plan,
    final_documents,
    save_plan,
    segment_state_key,
)
from .point_in_time import check_snapshot_time, point_in_time_of, remove_staging, snapshot_segments
from .process_memory import use_lean_memory
from .progress import JobProgress
from .provision import capacity_for_job
from .retry import Clock, SystemClock
from .scan import (
    PageSource,
    ReadBudget,
    SegmentTask,
    plan_segments,
    read_bucket,
    read_budget,
    run_segment,
)
from .schema import key_attributes, refuse_a_table_being_deleted, table_schema
from .shared_capacity import AccountLink, LeasedBucket
from .storage import ObjectStore, open_store
from .version import VERSION

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class ExportSummary:
    """What an export did; ``to_dict`` is the ``--json`` output."""

    export_id: str
    table: str
    destination: str
    items: int
    shards: int
    stored_bytes: int
    raw_bytes: int
    seconds: float
    consumed_rcu: float
    format: str
    compression: str
    segments: int
    resumed: bool
    #: A point-in-time export: the time its data is of (ISO 8601 UTC); None for a Scan.
    point_in_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_export(
    options: ExportOptions, progress: JobProgress | None = None, *, clock: Clock | None = None
) -> ExportSummary:
    """Run (or, with ``options.resume``, continue) an export; see ``ddbpipe.export_table``.

    ``clock`` is where every part of the export reads the time (default: the system's).
    """
    clock = clock or SystemClock()
    progress = progress or JobProgress()
    started = clock.monotonic()
    store = open_store(options.destination, options.aws, clock=clock)
    try:
        await store.ensure_ready(for_write=True)
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(DynamoClient.open(
                options.aws, max_connections=options.max_concurrency, clock=clock
            ))
            description = await client.describe_table(options.table)
            refuse_a_table_being_deleted(description, "there is nothing to export")
            if options.point_in_time is not None and not options.resume:
                await check_snapshot_time(client, options.table, options.point_in_time)
            await stack.enter_async_context(capacity_for_job(
                client, options.table, read=options.provision_rcu,
                state=Path(options.provision_state), aws_options=options.aws,
                despite_decrease_limit=options.provision_anyway))
            cluster = (await stack.enter_async_context(open_cluster(options.cluster))
                       if options.cluster else None)
            # On a cluster, many more segments than workers: handed out as workers free up,
            # the job ends when the work does, not when the slowest share does.
            cores = await cluster.threads() * SEGMENTS_PER_CLUSTER_THREAD if cluster else None
            plan, checkpoints = await _prepare(options, store, client, description, cores)
            _start_progress(progress, options, plan, checkpoints, description)
            if plan.point_in_time is not None:
                plan, finals = await _convert_snapshot(options, plan, checkpoints, client,
                                                       store, progress)
            elif cluster is None:
                client.on_throttle = progress.add_throttle
                finals = await _run_segments(options, plan, checkpoints, client, store,
                                             progress)
            else:
                finals = await _run_segments_on_cluster(options, plan, checkpoints, cluster,
                                                        progress)
        manifest = await _commit(store, plan, finals, clock)
    finally:
        await store.close()
    await remove_staging(plan, options.aws, clock)
    return ExportSummary(
        export_id=plan.export_id,
        table=plan.table_name,
        destination=store.url,
        items=manifest.item_count,
        shards=len(manifest.shards),
        stored_bytes=manifest.stored_bytes,
        raw_bytes=manifest.raw_bytes,
        seconds=round(clock.monotonic() - started, 3),
        consumed_rcu=round(manifest.consumed_rcu, 3),
        format=plan.data_format,
        compression=plan.compression,
        segments=plan.segments,
        resumed=options.resume,
        point_in_time=plan.snapshot_time if plan.point_in_time else None,
    )


# --- before the scan -------------------------------------------------------------------------


async def _prepare(
    options: ExportOptions, store: ObjectStore, client: DynamoClient,
    description: dict[str, Any], cores: int | None,
) -> tuple[ExportPlan, list[SegmentCheckpoint]]:
    if await store.head(MANIFEST_KEY) is not None:
        raise DestinationExistsError(
            f"{store.url} already holds a finished export ({MANIFEST_KEY}); exports are "
            "write-once: choose a new destination"
        )
    unfinished = await store.head(STATE_KEY) is not None
    if options.resume:
        if not unfinished:
            raise ResumeError(
                f"nothing to resume at {store.url}: it holds no unfinished ddbpipe export; "
                "run without --resume to start one"
            )
        plan = decode_plan(await store.get_bytes(STATE_KEY))
        _check_resume_matches(options, plan, store)
        # Checked again: a key disabled or a lock removed since would fail mid-way.
        await store.check_archive(plan.archive)
        return plan, await _load_checkpoints(store, plan)
    if unfinished:
        raise DestinationExistsError(
            f"{store.url} holds an unfinished export: continue it with --resume, or choose a "
            "new destination"
        )
    if await store.list(DATA_PREFIX):
        raise DestinationExistsError(
            f"{store.url} already has files under {DATA_PREFIX}: choose an empty destination"
        )
    plan = await _new_plan(options, client, description, cores)
    await store.check_archive(plan.archive)
    await save_plan(store, plan)
    return plan, [SegmentCheckpoint(segment=s) for s in range(plan.segments)]


async def _new_plan(
    options: ExportOptions, client: DynamoClient, description: dict[str, Any], cores: int | None
) -> ExportPlan:
    time_to_live = await client.describe_time_to_live(options.table)
    tags = await client.list_tags(description["TableArn"]) if description.get("TableArn") else None
    export_format = options.format or "ndjson"
    return ExportPlan(
        export_id=f"{int(client.clock.time() * 1000):013d}-{uuid.uuid4().hex[:8]}",
        table_name=description["TableName"],
        table_arn=description.get("TableArn", ""),
        table_id=description.get("TableId", ""),
        region=client.region,
        data_format=export_format,
        compression=options.compression or "zstd",
        segments=0 if options.point_in_time else options.segments or plan_segments(
            int(description.get("TableSizeBytes", 0)), cores),
        consistent_read=options.consistent_read,
        shard_bytes=options.shard_bytes or default_shard_bytes(export_format),
        start_time=aws_time(client.clock.time()),
        key_attributes=key_attributes(description),
        table=table_schema(description, time_to_live, tags),
        archive=(options.archive or ArchiveOptions()).resolved(
            datetime.fromtimestamp(client.clock.time(), UTC)
        ),
        # A point-in-time export's segments are the native export's files, known later.
        point_in_time=point_in_time_of(options),
    )


def _check_resume_matches(options: ExportOptions, plan: ExportPlan, store: ObjectStore) -> None:
    differences = [
        f"{name} {asked!r} (it has {saved!r})"
        for name, asked, saved in (
            ("table", options.table, plan.table_name),
            ("format", options.format, plan.data_format),
            ("compression", options.compression, plan.compression),
            ("segments", options.segments, plan.segments),
        )
        if asked is not None and asked != saved
    ]
    snapshot = plan.point_in_time.requested if plan.point_in_time else None
    if options.point_in_time is not None and options.point_in_time != snapshot:
        differences.append(f"--point-in-time {options.point_in_time} (it has "
                           f"{snapshot or 'none: a Scan'})")
    if options.archive is not None and not _same_archive(options.archive, plan.archive):
        differences.append(f"archive options {', '.join(options.archive.given) or 'none'} "
                           f"(it has {', '.join(plan.archive.given) or 'none'})")
    if differences:
        raise ResumeError(
            f"the unfinished export at {store.url} differs from what was asked: "
            f"{', '.join(differences)}; resume with the same options or choose a new destination"
        )


def _same_archive(asked: ArchiveOptions, saved: ArchiveOptions) -> bool:
    """Whether a resume asks for the archive options the export started with; a retention
    given as a duration counts from the start, so only its presence can be compared."""
    if asked.retain_for is not None:
        asked = replace(asked, retain_for=None, retain_until=saved.retain_until)
    return asked == saved


async def _load_checkpoints(store: ObjectStore, plan: ExportPlan) -> list[SegmentCheckpoint]:
    saved = {info.key for info in await store.list(STATE_PREFIX)}
    return [await _saved_checkpoint(store, segment) if segment_state_key(segment) in saved
            else SegmentCheckpoint(segment=segment) for segment in range(plan.segments)]


async def _saved_checkpoint(store: ObjectStore, segment: int) -> SegmentCheckpoint:
    key = segment_state_key(segment)
    return decode_checkpoint(await store.get_bytes(key), key)


def _start_progress(
    progress: JobProgress,
    options: ExportOptions,
    plan: ExportPlan,
    checkpoints: list[SegmentCheckpoint],
    description: dict[str, Any],
) -> None:
    progress.segments_total = plan.segments
    progress.target_rate = options.max_rcu or 0.0
    progress.items_estimate = int(description.get("ItemCount", 0))
    for checkpoint in checkpoints:
        progress.items += checkpoint.items
        progress.consumed_capacity += checkpoint.consumed_rcu
        progress.segments_done += checkpoint.done
        for shard in checkpoint.shards:
            progress.add_shard(shard.stored_bytes)
            progress.raw_bytes += shard.raw_bytes


# --- the scan --------------------------------------------------------------------------------


async def _run_segments(
    options: ExportOptions,
    plan: ExportPlan,
    checkpoints: list[SegmentCheckpoint],
    client: DynamoClient,
    store: ObjectStore,
    progress: JobProgress,
    pages: Sequence[PageSource] | None = None,
) -> list[SegmentCheckpoint]:
    """The segments in this process, at most ``max_concurrency`` at once; each reads a Scan
    segment, or its page source from ``pages`` (a point-in-time export's native files)."""
    # One budget for every segment: together they read at most --max-rcu, from the first page.
    read_budget = (
        ReadBudget(read_bucket(options.max_rcu, client.clock)) if options.max_rcu else None
    )
    running = asyncio.Semaphore(options.max_concurrency)

    async def one_segment(checkpoint: SegmentCheckpoint,
                          source: PageSource | None) -> SegmentCheckpoint:
        async with running:
            return await run_segment(
                _segment_task(options, plan, checkpoint.segment),
                checkpoint,
                client=client,
                store=store,
                progress=progress,
                read_budget=read_budget,
                pages=source,
            )

    sources: Sequence[PageSource | None] = pages or [None] * len(checkpoints)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one_segment(checkpoint, source))
                     for checkpoint, source in zip(checkpoints, sources, strict=True)]
    except BaseExceptionGroup as group_error:
        raise first_error(group_error) from None
    return [task.result() for task in tasks]


def _segment_task(options: ExportOptions, plan: ExportPlan, segment: int) -> SegmentTask:
    return SegmentTask(
        table=plan.table_name,
        segment=segment,
        total_segments=plan.segments,
        format=plan.data_format,
        compression=plan.compression,
        key_attributes=plan.key_attributes,
        consistent_read=plan.consistent_read,
        shard_bytes=plan.shard_bytes,
        page_size=options.page_size,
        archive=plan.archive,
    )


async def _convert_snapshot(
    options: ExportOptions,
    plan: ExportPlan,
    checkpoints: list[SegmentCheckpoint],
    client: DynamoClient,
    store: ObjectStore,
    progress: JobProgress,
) -> tuple[ExportPlan, list[SegmentCheckpoint]]:
    """A point-in-time export: DynamoDB's native export made our segments (point_in_time.py)."""
    plan, segments = await snapshot_segments(plan, checkpoints, client=client, store=store,
                                             aws=options.aws, progress=progress)
    checkpoints = [checkpoint for checkpoint, _ in segments]
    pages = [source for _, source in segments]
    return plan, await _run_segments(options, plan, checkpoints, client, store, progress,
                                     pages)


# --- the scan on a cluster -------------------------------------------------------------------

#: Segments planned per task a cluster runs at once (when --segments is not given).
SEGMENTS_PER_CLUSTER_THREAD = 4
#: DynamoDB connections of one segment task on a worker (it has one Scan request in flight).
WORKER_CONNECTIONS = 4


async def _run_segments_on_cluster(
    options: ExportOptions,
    plan: ExportPlan,
    checkpoints: list[SegmentCheckpoint],
    cluster: Cluster,
    progress: JobProgress,
) -> list[SegmentCheckpoint]:
    budget = read_budget(options.max_rcu) if options.max_rcu else None
    todo = [c for c in checkpoints if not c.done]
    finished = await cluster.run(
        export_segment_on_worker,
        [(_segment_task(options, plan, c.segment), c, options.destination, options.aws,
          budget is not None) for c in todo],
        budget=budget, progress=progress,
    )
    by_segment = {c.segment: c for c in [*checkpoints, *finished]}
    return [by_segment[segment] for segment in range(plan.segments)]


def export_segment_on_worker(
    task: SegmentTask, checkpoint: SegmentCheckpoint, destination: str, aws: AwsOptions,
    budgeted: bool, job: str,
) -> SegmentCheckpoint:
    """One segment's export as a task on a Dask worker; its final checkpoint."""
    use_lean_memory()
    return asyncio.run(_export_segment(task, checkpoint, destination, aws, budgeted, job))


async def _export_segment(
    task: SegmentTask, checkpoint: SegmentCheckpoint, destination: str, aws: AwsOptions,
    budgeted: bool, job: str,
) -> SegmentCheckpoint:
    from .capacity_plugin import worker_channel, worker_name

    link = AccountLink(worker_channel(job), worker=worker_name())
    store = open_store(destination, aws)
    try:
        # A task run again (its worker died) continues from what its first run stored.
        if await store.head(segment_state_key(task.segment)) is not None:
            checkpoint = await _saved_checkpoint(store, task.segment)
        async with DynamoClient.open(aws, max_connections=WORKER_CONNECTIONS) as client:
            client.on_throttle = link.progress.add_throttle
            await link.send()  # what a page of this Scan costs, if another task knows
            read_budget = ReadBudget(LeasedBucket(link), pages=link) if budgeted else None
            async with link.reporting():
                return await run_segment(task, checkpoint, client=client, store=store,
                                         progress=link.progress, read_budget=read_budget)
    finally:
        await store.close()


# --- after the scan --------------------------------------------------------------------------


async def _commit(
    store: ObjectStore, plan: ExportPlan, finals: list[SegmentCheckpoint], clock: Clock
) -> ExportManifest:
    shards = tuple(shard for checkpoint in finals for shard in checkpoint.shards)
    await _delete_unlisted_shards(store, {shard.key for shard in shards})
    manifest = ExportManifest(
        plan=plan,
        tool_version=VERSION,
        end_time=aws_time(clock.time()),
        consumed_rcu=sum(checkpoint.consumed_rcu for checkpoint in finals),
        shards=shards,
    )
    for key, document in final_documents(manifest, store.bucket, store.root_key):
        await store.put_bytes(key, document, archive=plan.archive.for_manifests())
    await _delete_state(store)
    return manifest


async def _delete_unlisted_shards(store: ObjectStore, listed: set[str]) -> None:
    """A run killed between storing a shard and its checkpoint leaves that shard behind."""
    for info in await store.list(DATA_PREFIX):
        if info.key not in listed:
            await store.delete(info.key)


async def _delete_state(store: ObjectStore) -> None:
    try:
        for info in await store.list(STATE_PREFIX):
            await store.delete(info.key)
    except DdbpipeError as error:
        # The export is committed already; leftover state is untidy, not wrong.
        log.warning("could not remove %s%s after the export finished: %s",
                    store.url, STATE_PREFIX, error)
