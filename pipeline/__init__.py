"""ddbpipe: move DynamoDB tables to and from object storage.

The public API is what ``__all__`` lists; everything else is internal and may change.

    >>> import ddbpipe
    >>> summary = ddbpipe.export_table("orders", "s3://archive/orders/2026-11-23", segments=32)
    >>> report = ddbpipe.verify_export("s3://archive/orders/2026-11-23", read_data=True)
    >>> report.ok
    True
    >>> drill = ddbpipe.verify_export("s3://archive/orders/2026-11-23",
    ...                               against_table="orders-copy", max_rcu=500)
    >>> drill.comparison.missing_from_table.count
    0
    >>> result = ddbpipe.import_table("s3://archive/orders/2026-11-23", "orders-copy",
    ...                               create_table=True, target_wcu=2000)
    >>> result.items_read == result.items_written + result.items_dead_lettered
    True

Each job takes its settings as keyword arguments or as one options object
(``ExportOptions``, ``ImportOptions``; ``AwsOptions`` for where and as whom to call AWS).
The ``*_async`` functions are the same jobs as coroutines, for callers that already run an
event loop; they take the options objects. ``iam_policy_for`` gives the least-privilege IAM
policy a job needs (``ddbpipe iam-policy``); ``plan_export`` and ``plan_import`` what a job
will consume and cost before it runs (``ddbpipe plan``).
"""

from __future__ import annotations

import asyncio as _asyncio
from collections.abc import Callable as _Callable

from .catalog import ListedExport
from .catalog import run_list as _run_list
from .cluster import scheduler_address as _scheduler_address
from .config import AwsOptions, ExportOptions, ImportOptions
from .config import Compression as _Compression
from .config import Format as _Format
from .drill import TableComparison
from .drill import drill_settings as _drill_settings
from .errors import (
    AccessDeniedError,
    AwsRequestError,
    BucketNotFoundError,
    ConfigError,
    CorruptDataError,
    CredentialsError,
    DdbpipeError,
    DestinationExistsError,
    FormatVersionError,
    FrozenDataError,
    PointInTimeError,
    ResumeError,
    SchemaMismatchError,
    ServiceUnavailableError,
    StorageError,
    TableNotFoundError,
    TerminalError,
    ThrottledError,
    TransientError,
)
from .export_job import ExportSummary
from .export_job import run_export as _run_export
from .iam_policy import iam_policy_for
from .import_job import ImportSummary
from .import_job import run_import as _run_import
from .plan import ExportChoices as _ExportChoices
from .plan import JobPlan
from .plan import run_plan_export as _run_plan_export
from .plan import run_plan_import as _run_plan_import
from .progress import JobProgress
from .thaw import DEFAULT_RESTORE_DAYS as _RESTORE_DAYS
from .thaw import DEFAULT_RESTORE_TIER as _RESTORE_TIER
from .thaw import ThawSummary
from .thaw import run_thaw as _run_thaw
from .verify_job import VerifyReport
from .verify_job import run_verify as _run_verify
from .version import VERSION as _VERSION

#: The installed version (the package metadata).
__version__ = _VERSION

__all__ = [
    "AccessDeniedError",
    "AwsOptions",
    "AwsRequestError",
    "BucketNotFoundError",
    "ConfigError",
    "CorruptDataError",
    "CredentialsError",
    "DdbpipeError",
    "DestinationExistsError",
    "ExportOptions",
    "ExportSummary",
    "FormatVersionError",
    "FrozenDataError",
    "ImportOptions",
    "ImportSummary",
    "JobPlan",
    "JobProgress",
    "ListedExport",
    "PointInTimeError",
    "ResumeError",
    "SchemaMismatchError",
    "ServiceUnavailableError",
    "StorageError",
    "TableComparison",
    "TableNotFoundError",
    "TerminalError",
    "ThawSummary",
    "ThrottledError",
    "TransientError",
    "VerifyReport",
    "export_table",
    "export_table_async",
    "iam_policy_for",
    "import_table",
    "import_table_async",
    "list_exports",
    "list_exports_async",
    "plan_export",
    "plan_export_async",
    "plan_import",
    "plan_import_async",
    "thaw_export",
    "thaw_export_async",
    "verify_export",
    "verify_export_async",
]


# --- async: the jobs as coroutines -------------------------------------------------------------


async def export_table_async(
    options: ExportOptions, *, progress: JobProgress | None = None
) -> ExportSummary:
    """``export_table`` as a coroutine, for a caller inside a running event loop."""
    return await _run_export(options, progress)


async def import_table_async(
    options: ImportOptions, *, progress: JobProgress | None = None
) -> ImportSummary:
    """``import_table`` as a coroutine, for a caller inside a running event loop."""
    return await _run_import(options, progress)


async def verify_export_async(
    source: str,
    *,
    read_data: bool = False,
    against_table: str | None = None,
    max_rcu: float | None = None,
    segments: int | None = None,
    consistent_read: bool = False,
    work_dir: str | None = None,
    aws: AwsOptions | None = None,
    progress: JobProgress | None = None,
) -> VerifyReport:
    """``verify_export`` as a coroutine, for a caller inside a running event loop."""
    drill = _drill_settings(
        against_table, max_rcu=max_rcu, segments=segments, consistent_read=consistent_read,
        work_dir=work_dir,
    )
    return await _run_verify(source, read_data=read_data, drill=drill, aws=aws,
                             progress=progress)


async def list_exports_async(
    location: str, *, aws: AwsOptions | None = None
) -> list[ListedExport]:
    """``list_exports`` as a coroutine, for a caller inside a running event loop."""
    return await _run_list(location, aws)


async def thaw_export_async(
    source: str,
    *,
    days: int = _RESTORE_DAYS,
    tier: str = _RESTORE_TIER,
    wait: bool = False,
    aws: AwsOptions | None = None,
    on_progress: _Callable[[ThawSummary], None] | None = None,
) -> ThawSummary:
    """``thaw_export`` as a coroutine, for a caller inside a running event loop."""
    return await _run_thaw(source, days=days, tier=tier, wait=wait, aws=aws,
                           on_progress=on_progress)


async def plan_export_async(
    table: str,
    *,
    max_rcu: float | None = None,
    consistent_read: bool = False,
    format: _Format = "ndjson",
    compression: _Compression = "zstd",
    storage_class: str = "STANDARD",
    prices: str | None = None,
    aws: AwsOptions | None = None,
) -> JobPlan:
    """``plan_export`` as a coroutine, for a caller inside a running event loop."""
    choices = _ExportChoices(max_rcu=max_rcu, consistent_read=consistent_read, format=format,
                             compression=compression, storage_class=storage_class)
    return await _run_plan_export(table, choices, prices=prices, aws=aws)


async def plan_import_async(
    source: str,
    *,
    table: str | None = None,
    target_wcu: float | None = None,
    create_table: bool = False,
    without_indexes: bool = False,
    prices: str | None = None,
    aws: AwsOptions | None = None,
) -> JobPlan:
    """``plan_import`` as a coroutine, for a caller inside a running event loop."""
    return await _run_plan_import(source, table=table, target_wcu=target_wcu,
                                  create_table=create_table, without_indexes=without_indexes,
                                  prices=prices, aws=aws)


# --- sync: each job to its end ------------------------------------------------------------------


def export_table(
    table: str | ExportOptions,
    destination: str | None = None,
    *,
    segments: int | None = None,
    format: _Format | None = None,
    compression: _Compression | None = None,
    max_rcu: float | None = None,
    consistent_read: bool = False,
    resume: bool = False,
    shard_bytes: int | None = None,
    page_size: int | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    s3_endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
    cluster: object | None = None,
    provision_rcu: int | None = None,
    provision_anyway: bool = False,
    point_in_time: str | None = None,
    staging: str | None = None,
    progress: JobProgress | None = None,
) -> ExportSummary:
    """Export ``table`` to ``destination`` (a local directory or ``s3://bucket/prefix``).

    Give the settings as keyword arguments, or one ``ExportOptions`` instead of ``table``
    (then nothing else but ``progress``). Blocks until the export is committed (its manifests
    written) and returns its summary. Raises a ``TerminalError`` subclass with a one-line
    reason when it cannot finish; an interrupted export continues with ``resume=True``. Pass
    a ``JobProgress`` to watch the counters from another thread. Inside a running event loop,
    use ``export_table_async``. ``cluster``: run the segments on Dask, ``"local:N"``, a
    scheduler's address or a ``distributed.Client`` (docs/SCALING.md). ``provision_rcu``:
    the table's read capacity raised to that for the export and put back after
    (docs/OPERATIONS.md). ``point_in_time``: ``"latest"`` or an ISO 8601 time: a consistent
    snapshot, exported by DynamoDB from point-in-time recovery into ``staging`` (an s3://
    place; default: under the destination's state) and converted (docs/OPERATIONS.md).
    """
    if isinstance(table, ExportOptions):
        _only_the_options("ExportOptions", locals(), "table")
        options = table
    else:
        options = ExportOptions(
            table=table,
            destination=_required(destination, "destination"),
            segments=segments,
            format=format,
            compression=compression,
            max_rcu=max_rcu,
            consistent_read=consistent_read,
            resume=resume,
            shard_bytes=shard_bytes,
            page_size=page_size,
            aws=_aws_options(aws, region, profile, endpoint_url, s3_endpoint_url),
            cluster=None if cluster is None else _scheduler_address(cluster),
            provision_rcu=provision_rcu,
            provision_anyway=provision_anyway,
            point_in_time=point_in_time,
            staging=staging,
        )
    return _asyncio.run(export_table_async(options, progress=progress))


def verify_export(
    source: str,
    *,
    read_data: bool = False,
    against_table: str | None = None,
    max_rcu: float | None = None,
    segments: int | None = None,
    consistent_read: bool = False,
    work_dir: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    s3_endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
    progress: JobProgress | None = None,
) -> VerifyReport:
    """Check the export at ``source``; ``report.ok`` is True only when all holds.

    Without ``read_data`` only manifests and object listings are read; with it every shard is
    downloaded, checksummed, decoded and its items recounted.

    ``against_table`` makes it a restore drill: after those checks, a parallel Scan of the
    table (``segments``, default the export's; at most ``max_rcu`` read units per second) is
    compared item by item with the export, by primary key and as DynamoDB compares values;
    ``report.comparison`` counts the items missing from the table, extra in it and different,
    with their first keys. Memory stays bounded: both sides go to partition files in
    ``work_dir`` (default: the system's temporary folder), about twice the export's
    uncompressed size, removed when the drill ends. A missing table raises
    ``TableNotFoundError``, a table with other keys ``SchemaMismatchError``.
    """
    options = _aws_options(aws, region, profile, endpoint_url, s3_endpoint_url)
    return _asyncio.run(verify_export_async(
        source, read_data=read_data, against_table=against_table, max_rcu=max_rcu,
        segments=segments, consistent_read=consistent_read, work_dir=work_dir, aws=options,
        progress=progress,
    ))


def import_table(
    source: str | ImportOptions,
    table: str | None = None,
    *,
    target_wcu: float | None = None,
    create_table: bool = False,
    without_indexes: bool = False,
    resume: bool = False,
    dead_letter: str | None = None,
    checkpoint: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    s3_endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
    cluster: object | None = None,
    provision_wcu: int | None = None,
    provision_anyway: bool = False,
    progress: JobProgress | None = None,
) -> ImportSummary:
    """Write the items of ``source`` into ``table`` at ``target_wcu`` write units per second.

    ``source`` is a ddbpipe export, an AWS-native export (full or incremental), or a folder
    of NDJSON files, local or ``s3://``; or one ``ImportOptions`` holding every setting (then
    nothing else but ``progress``). Items that cannot be written after the retry deadline go
    to the ``dead_letter`` file and are counted in the summary; nothing is dropped silently.
    Raises a ``TerminalError`` subclass, before writing anything, for a bad source, a missing
    table (without ``create_table``) or a key-schema mismatch. A killed import continues with
    ``resume=True``. Inside a running event loop, use ``import_table_async``. ``cluster``:
    write the files on Dask, as for ``export_table`` (docs/SCALING.md). ``provision_wcu``:
    the table's and its GSIs' write capacity raised to that for the import and put back after.
    """
    if isinstance(source, ImportOptions):
        _only_the_options("ImportOptions", locals(), "source")
        options = source
    else:
        options = ImportOptions(
            source=source,
            table=_required(table, "table"),
            target_wcu=target_wcu,
            create_table=create_table,
            without_indexes=without_indexes,
            resume=resume,
            dead_letter=dead_letter,
            checkpoint=checkpoint,
            aws=_aws_options(aws, region, profile, endpoint_url, s3_endpoint_url),
            cluster=None if cluster is None else _scheduler_address(cluster),
            provision_wcu=provision_wcu,
            provision_anyway=provision_anyway,
        )
    return _asyncio.run(import_table_async(options, progress=progress))


def list_exports(
    location: str,
    *,
    region: str | None = None,
    profile: str | None = None,
    s3_endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
) -> list[ListedExport]:
    """The exports under ``location`` (a local directory or ``s3://bucket/prefix``), sorted
    by path: ddbpipe's, finished or not, and AWS-native ones, each described from its
    manifest alone (no data is read).

    A manifest that cannot be read, or is of a newer format version, is listed with its
    ``error`` instead of stopping the listing. Nothing there is an empty list; a location that
    does not exist raises (``StorageError``, ``BucketNotFoundError``).
    """
    options = _aws_options(aws, region, profile, None, s3_endpoint_url)
    return _asyncio.run(list_exports_async(location, aws=options))


def thaw_export(
    source: str,
    *,
    days: int = _RESTORE_DAYS,
    tier: str = _RESTORE_TIER,
    wait: bool = False,
    region: str | None = None,
    profile: str | None = None,
    s3_endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
    on_progress: _Callable[[ThawSummary], None] | None = None,
) -> ThawSummary:
    """Restore the archived shards (GLACIER, DEEP_ARCHIVE) of the ddbpipe export at
    ``source`` (``s3://bucket/prefix``), so an import or ``verify_export(read_data=True)``
    can read them.

    Asks S3 for a readable copy of every shard that needs one, kept ``days`` days, restored
    at ``tier``: "Bulk" (cheapest; GLACIER 5-12 hours, DEEP_ARCHIVE up to 48 hours),
    "Standard" (GLACIER 3-5 hours, DEEP_ARCHIVE up to 12 hours) or "Expedited" (GLACIER only,
    1-5 minutes, dearest). Restores under way or done are left alone, so calling it again
    asks for nothing new. With ``wait``, checks every 1 to 15 minutes until every shard is
    readable, telling ``on_progress`` before each wait. A source that is not on S3 raises
    ``ConfigError``; one without a finished ddbpipe export, ``StorageError``.
    """
    options = _aws_options(aws, region, profile, None, s3_endpoint_url)
    return _asyncio.run(thaw_export_async(source, days=days, tier=tier, wait=wait,
                                          aws=options, on_progress=on_progress))


def plan_export(
    table: str,
    *,
    max_rcu: float | None = None,
    consistent_read: bool = False,
    format: _Format = "ndjson",
    compression: _Compression = "zstd",
    storage_class: str = "STANDARD",
    prices: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
) -> JobPlan:
    """What exporting ``table`` with these settings will read, store and cost, and how long
    it takes, before it runs (``ddbpipe plan export``).

    Reads DescribeTable, a short sample Scan (within ``max_rcu``) and the table's
    point-in-time recovery. ``prices``: a JSON file of prices replacing the built-in ones
    (docs/OPERATIONS.md); a region they do not cover raises ``ConfigError``.
    ``plan.to_dict()`` is the ``--json`` output.
    """
    options = _aws_options(aws, region, profile, endpoint_url, None)
    return _asyncio.run(plan_export_async(
        table, max_rcu=max_rcu, consistent_read=consistent_read, format=format,
        compression=compression, storage_class=storage_class, prices=prices, aws=options,
    ))


def plan_import(
    source: str,
    *,
    table: str | None = None,
    target_wcu: float | None = None,
    create_table: bool = False,
    without_indexes: bool = False,
    prices: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    s3_endpoint_url: str | None = None,
    aws: AwsOptions | None = None,
) -> JobPlan:
    """What importing ``source`` into ``table`` will write and cost, and how long it takes,
    before it runs (``ddbpipe plan import``).

    Reads the source's manifests and the first items of a few of its files, and the table
    (or, with ``create_table``, the export's saved schema; without a table, an on-demand
    one is assumed). Write units count each item's 1 KB rounding and the index writes.
    ``prices`` as for ``plan_export``.
    """
    options = _aws_options(aws, region, profile, endpoint_url, s3_endpoint_url)
    return _asyncio.run(plan_import_async(
        source, table=table, target_wcu=target_wcu, create_table=create_table,
        without_indexes=without_indexes, prices=prices, aws=options,
    ))


def _aws_options(
    aws: AwsOptions | None,
    region: str | None,
    profile: str | None,
    endpoint_url: str | None,
    s3_endpoint_url: str | None,
) -> AwsOptions:
    """``aws`` as given, or one made of the separate settings (not both)."""
    separate = region or profile or endpoint_url or s3_endpoint_url
    if aws is not None:
        if separate:
            raise ConfigError("give AWS settings either as aws=AwsOptions(...) or one by one, "
                              "not both")
        return aws
    return AwsOptions(
        region=region, profile=profile, endpoint_url=endpoint_url, s3_endpoint_url=s3_endpoint_url
    )


def _only_the_options(kind: str, arguments: dict[str, object], options_name: str) -> None:
    """An options object holds every setting: any other one given beside it is a mistake."""
    extra = sorted(
        name for name, value in arguments.items()
        if name not in (options_name, "progress") and value is not None and value is not False
    )
    if extra:
        raise ConfigError(f"{', '.join(extra)} given beside an {kind}: set them in the "
                          f"{kind} instead")


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise ConfigError(f"{name} is missing: give it, or pass one options object")
    return value
