"""ddbpipe: move DynamoDB tables to and from object storage.

The public API is what ``__all__`` lists; everything else is internal and may change.

    >>> import ddbpipe
    >>> summary = ddbpipe.export_table("orders", "s3://archive/orders/2026-11-23", segments=32)
    >>> report = ddbpipe.verify_export("s3://archive/orders/2026-11-23", read_data=True)
    >>> report.ok
    True
    >>> result = ddbpipe.import_table("s3://archive/orders/2026-11-23", "orders-copy",
    ...                               create_table=True, target_wcu=2000)
    >>> result.items_read == result.items_written + result.items_dead_lettered
    True
"""

from __future__ import annotations

import asyncio as _asyncio

from .config import AwsOptions, ExportOptions, ImportOptions
from .config import Compression as _Compression
from .config import Format as _Format
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
    ResumeError,
    SchemaMismatchError,
    ServiceUnavailableError,
    StorageError,
    TableNotFoundError,
    TerminalError,
    ThrottledError,
    TransientError,
)
from .export import ExportSummary
from .export import run_export as _run_export
from .progress import JobProgress
from .restore import ImportSummary
from .restore import run_import as _run_import
from .verify import VerifyReport
from .verify import run_verify as _run_verify

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
    "ImportOptions",
    "ImportSummary",
    "JobProgress",
    "ResumeError",
    "SchemaMismatchError",
    "ServiceUnavailableError",
    "StorageError",
    "TableNotFoundError",
    "TerminalError",
    "ThrottledError",
    "TransientError",
    "VerifyReport",
    "export_table",
    "import_table",
    "verify_export",
]


def export_table(
    table: str,
    destination: str,
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
    progress: JobProgress | None = None,
) -> ExportSummary:
    """Export ``table`` to ``destination`` (a local directory or ``s3://bucket/prefix``).

    Blocks until the export is committed (its manifests written) and returns its summary.
    Raises a ``TerminalError`` subclass with a one-line reason when it cannot finish; an
    interrupted export continues with ``resume=True``. Pass a ``JobProgress`` to watch the
    counters from another thread. Inside a running event loop, use ``ddbpipe.export.run_export``.
    """
    options = ExportOptions(
        table=table,
        destination=destination,
        segments=segments,
        format=format,
        compression=compression,
        max_rcu=max_rcu,
        consistent_read=consistent_read,
        resume=resume,
        shard_bytes=shard_bytes,
        page_size=page_size,
        aws=AwsOptions(
            region=region,
            profile=profile,
            endpoint_url=endpoint_url,
            s3_endpoint_url=s3_endpoint_url,
        ),
    )
    return _asyncio.run(_run_export(options, progress))


def verify_export(
    source: str,
    *,
    read_data: bool = False,
    region: str | None = None,
    profile: str | None = None,
    s3_endpoint_url: str | None = None,
) -> VerifyReport:
    """Check the export at ``source``; ``report.ok`` is True only when all holds.

    Without ``read_data`` only manifests and object listings are read; with it every shard is
    downloaded, checksummed, decoded and its items recounted.
    """
    aws = AwsOptions(region=region, profile=profile, s3_endpoint_url=s3_endpoint_url)
    return _asyncio.run(_run_verify(source, read_data=read_data, aws=aws))


def import_table(
    source: str,
    table: str,
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
    progress: JobProgress | None = None,
) -> ImportSummary:
    """Write the items of ``source`` into ``table`` at ``target_wcu`` write units per second.

    ``source`` is a ddbpipe export, an AWS-native export (full or incremental), or a folder
    of NDJSON files, local or ``s3://``. Items that cannot be written after the retry deadline
    go to the ``dead_letter`` file and are counted in the summary; nothing is dropped
    silently. Raises a ``TerminalError`` subclass, before writing anything, for a bad source, a
    missing table (without ``create_table``) or a key-schema mismatch. A killed import continues
    with ``resume=True``.
    """
    options = ImportOptions(
        source=source,
        table=table,
        target_wcu=target_wcu,
        create_table=create_table,
        without_indexes=without_indexes,
        resume=resume,
        dead_letter=dead_letter,
        checkpoint=checkpoint,
        aws=AwsOptions(
            region=region,
            profile=profile,
            endpoint_url=endpoint_url,
            s3_endpoint_url=s3_endpoint_url,
        ),
    )
    return _asyncio.run(_run_import(options, progress))
