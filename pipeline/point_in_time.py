"""Point-in-time exports: DynamoDB's own export of the table at a moment, made a ddbpipe export.

A parallel Scan is not a snapshot. With ``--point-in-time``, DynamoDB exports the table as it
was at that time from its point-in-time recovery data (ExportTableToPointInTime: no read
capacity used), into a staging place on S3, and ddbpipe converts that native export into a
normal ddbpipe export: its format and compression, the archive options, our manifest and
checksums, and the snapshot's time recorded. Stages, each written down in the plan
(``_ddbpipe-state/export.json``) before the next, so ``--resume`` continues at the one it
stopped in:

1. **request**: point-in-time recovery checked (one clear error, with the command to turn it
   on, when it is off; the window named when the time is outside it), then
   ExportTableToPointInTime with our export id as its ClientToken: a run killed before it
   wrote the native export's ARN down asks again and gets the same export back;
2. **wait**: DescribeExport, polled every half second at first and every 15 s later, until
   the native export is COMPLETED (FAILED is an error naming DynamoDB's reason);
3. **convert**: each of its data files becomes one segment of ours, its items made shards as
   a Scan's pages are (``scan.run_segment`` with the file as its page source), a checkpoint
   after each shard holding the position in the file;
4. **commit**: as every export (``export_job``), then the staging files are removed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

import msgspec

from .codec import ScanPage
from .config import AwsOptions, ExportOptions, parse_point_in_time
from .dynamo import UNSUPPORTED_CODES, DynamoClient
from .errors import AwsRequestError, DdbpipeError, PointInTimeError, StorageError
from .manifest import ExportPlan, PointInTime, SegmentCheckpoint, aws_time, save_plan
from .progress import JobProgress
from .retry import Clock
from .scan import PageSource
from .sources import ImportSource, SourceFile, read_items
from .sources.aws_export import open_aws_export
from .storage import ObjectStore, open_store

log = logging.getLogger(__name__)

__all__ = ["check_snapshot_time", "point_in_time_of", "remove_staging", "snapshot_segments"]

#: DescribeExport is asked again after this long at first, the wait doubling up to the most.
FIRST_POLL_SECONDS = 0.5
MOST_POLL_SECONDS = 15.0
#: Where the native export goes when DEST is on S3 and no --staging is given: in the state
#: folder, which the export removes when it is finished.
STAGING_UNDER_DEST = "_ddbpipe-state/native"

_SSE_NAMES = {"AES256": "AES256", "aws:kms": "KMS"}


def point_in_time_of(options: ExportOptions) -> PointInTime | None:
    """The snapshot a new export's plan starts with; None for a Scan."""
    if options.point_in_time is None:
        return None
    staging = options.staging or f"{options.destination.rstrip('/')}/{STAGING_UNDER_DEST}"
    return PointInTime(requested=options.point_in_time, staging=staging)


async def snapshot_segments(
    plan: ExportPlan,
    checkpoints: list[SegmentCheckpoint],
    *,
    client: DynamoClient,
    store: ObjectStore,
    aws: AwsOptions,
    progress: JobProgress,
) -> tuple[ExportPlan, list[tuple[SegmentCheckpoint, PageSource]]]:
    """Stages 1-2 and the set-up of 3: the plan with the native export's ARN, time and
    segment count (saved), and each segment's checkpoint with its page source."""
    snapshot = plan.point_in_time
    assert snapshot is not None, "not a point-in-time export"
    staging = open_store(snapshot.staging, aws, clock=client.clock)
    try:
        await staging.ensure_ready(for_write=True)
        if not snapshot.export_arn:
            snapshot = await _request(client, plan, snapshot, staging, aws)
            plan = await save_plan(store, replace(plan, point_in_time=snapshot))
        try:
            described = await _wait(client, snapshot.export_arn, progress)
        except PointInTimeError:
            # A failed native export is done with: --resume asks for a new one.
            await save_plan(store, replace(plan, point_in_time=replace(
                snapshot, export_arn="", attempt=snapshot.attempt + 1)))
            raise
        source = await open_aws_export(staging, _native_base(plan.export_id, snapshot))
    except BaseException:
        await staging.close()
        raise
    if plan.segments == 0 or not snapshot.export_time:
        snapshot = replace(snapshot, export_time=_iso(described.get("ExportTime")))
        plan = await save_plan(store, replace(plan, point_in_time=snapshot,
                                          segments=max(1, len(source.files))))
        checkpoints = [SegmentCheckpoint(segment=s) for s in range(plan.segments)]
    progress.segments_total = plan.segments
    progress.items_estimate = source.item_count or 0
    files: list[SourceFile | None] = [*source.files] or [None]
    sources = [(checkpoint, _file_pages(staging, source, files[checkpoint.segment]))
               for checkpoint in checkpoints]
    return plan, sources


async def remove_staging(plan: ExportPlan, aws: AwsOptions, clock: Clock) -> None:
    """Remove the native export's staging files once our export is committed; a failure is
    untidy, not wrong: logged."""
    snapshot = plan.point_in_time
    if snapshot is None:
        return
    staging = open_store(snapshot.staging, aws, clock=clock)
    try:
        for info in await staging.list(f"{plan.export_id}/"):
            await staging.delete(info.key)
    except DdbpipeError as error:
        log.warning("could not remove DynamoDB's native export at %s/%s/ after the export "
                    "finished: %s", snapshot.staging.rstrip("/"), plan.export_id, error)
    finally:
        await staging.close()


# --- 1. request ------------------------------------------------------------------------------


async def _request(
    client: DynamoClient, plan: ExportPlan, snapshot: PointInTime, staging: ObjectStore,
    aws: AwsOptions,
) -> PointInTime:
    moment = parse_point_in_time(snapshot.requested)
    assert staging.bucket is not None, "staging is on S3 (checked with the options)"
    request: dict[str, Any] = {
        "TableArn": plan.table_arn,
        "S3Bucket": staging.bucket,
        "S3Prefix": staging.root_key(plan.export_id),
        "ExportFormat": "DYNAMODB_JSON",
        "ExportType": "FULL_EXPORT",
        # The same token gets the same export back: a run killed before it saved the ARN.
        "ClientToken": f"{plan.export_id}-{snapshot.attempt}",
    }
    if moment is not None:
        request["ExportTime"] = moment.timestamp()
    if aws.expected_bucket_owner:
        request["S3BucketOwner"] = aws.expected_bucket_owner
    # The staging files hold the same data: encrypted as the export is.
    sse = _SSE_NAMES.get(plan.archive.sse or "")
    if sse is not None:
        request["S3SseAlgorithm"] = sse
        if plan.archive.sse_kms_key_id:
            request["S3SseKmsKeyId"] = plan.archive.sse_kms_key_id
    try:
        reply = await client.call("ExportTableToPointInTime", request,
                                  resource=plan.table_name)
    except AwsRequestError as error:
        raise _refusal(error, plan.table_name, snapshot.requested) from None
    description = reply.get("ExportDescription") or {}
    arn = description.get("ExportArn")
    if not isinstance(arn, str):
        raise StorageError(f"DynamoDB's reply to ExportTableToPointInTime for "
                           f"{plan.table_name} named no export")
    log.info("DynamoDB is exporting %s as of %s: %s", plan.table_name, snapshot.requested, arn)
    return replace(snapshot, export_arn=arn)


async def check_snapshot_time(client: DynamoClient, table: str, requested: str) -> None:
    """Before anything is written: recovery is on, and the time asked is within its window."""
    try:
        description = await client.describe_continuous_backups(table)
    except AwsRequestError as error:
        if error.code not in UNSUPPORTED_CODES:
            raise
        raise PointInTimeError(
            f"the DynamoDB endpoint of table {table} has no point-in-time recovery (DynamoDB "
            "Local has none): export without --point-in-time") from None
    recovery = description.get("PointInTimeRecoveryDescription") or {}
    if recovery.get("PointInTimeRecoveryStatus") != "ENABLED":
        raise PointInTimeError(_recovery_off(table))
    moment = parse_point_in_time(requested)
    earliest = recovery.get("EarliestRestorableDateTime")
    latest = recovery.get("LatestRestorableDateTime")
    if moment is None or earliest is None or latest is None:
        return
    if not float(earliest) <= moment.timestamp() <= float(latest):
        raise PointInTimeError(
            f"--point-in-time {requested}: table {table} can be exported at times from "
            f"{_iso(earliest)} to {_iso(latest)} (its point-in-time recovery window): give a "
            "time within it, or 'latest'")


def _recovery_off(table: str) -> str:
    return (f"point-in-time recovery is off for table {table}, so DynamoDB cannot export it at "
            f"a point in time: turn it on with 'aws dynamodb update-continuous-backups "
            f"--table-name {table} --point-in-time-recovery-specification "
            f"PointInTimeRecoveryEnabled=true' (times from then on can be exported), or export "
            f"without --point-in-time")


def _refusal(error: AwsRequestError, table: str, requested: str) -> DdbpipeError:
    if error.code == "PointInTimeRecoveryUnavailableException":
        return PointInTimeError(_recovery_off(table))
    if error.code == "InvalidExportTimeException":
        return PointInTimeError(
            f"--point-in-time {requested}: DynamoDB cannot export {table} at that time "
            f"({error}); give a time within its recovery window (ddbpipe plan export "
            f"{table} shows it) or 'latest'")
    return error


# --- 2. wait ---------------------------------------------------------------------------------


async def _wait(client: DynamoClient, arn: str, progress: JobProgress) -> dict[str, Any]:
    """DescribeExport until the native export is COMPLETED; its description."""
    clock = client.clock
    began = clock.monotonic()
    pause = FIRST_POLL_SECONDS
    while True:
        reply = await client.call("DescribeExport", {"ExportArn": arn}, resource=arn)
        description: dict[str, Any] = reply.get("ExportDescription") or {}
        status = description.get("ExportStatus")
        if status == "COMPLETED":
            progress.waiting_for = ""
            return description
        if status == "FAILED":
            raise PointInTimeError(
                f"DynamoDB's export {arn} failed: {description.get('FailureCode', 'unknown')}: "
                f"{description.get('FailureMessage', 'no reason given')}; correct that and run "
                "again with --resume (it asks for a new native export)")
        progress.waiting_for = (f"waiting for DynamoDB's export of the table: "
                                f"{status or 'STARTING'} for {clock.monotonic() - began:,.0f} s")
        await clock.sleep(pause)
        pause = min(MOST_POLL_SECONDS, pause * 2)


# --- 3. convert ------------------------------------------------------------------------------


def _native_base(export_id: str, snapshot: PointInTime) -> str:
    """Where the native export's manifests are in the staging store."""
    return f"{export_id}/AWSDynamoDB/{snapshot.export_arn.rsplit('/export/', 1)[-1]}/"


class _Position(msgspec.Struct):
    #: Items of the file already in stored shards.
    items: int


def _file_pages(
    staging: ObjectStore, source: ImportSource, file: SourceFile | None
) -> PageSource:
    """A native data file as a segment's pages: a position after each (``{"items": N}``, in
    the checkpoint where a Scan keeps its LastEvaluatedKey), none after the last."""

    async def pages(start: dict[str, Any] | None) -> AsyncGenerator[ScanPage, None]:
        done = msgspec.convert(start, _Position).items if start else 0
        if file is not None:
            async for batch in read_items(staging, source, file, start=done):
                done += len(batch)
                yield ScanPage(items=[msgspec.Raw(item) for item in batch], count=len(batch),
                               scanned_count=len(batch), last_evaluated_key={"items": done},
                               consumed_capacity=0.0)
        yield ScanPage(items=[], count=0, scanned_count=0, last_evaluated_key=None,
                       consumed_capacity=0.0)

    return pages


# --- the plan --------------------------------------------------------------------------------


def _iso(seconds: Any) -> str:
    return "" if seconds is None else aws_time(float(seconds))
