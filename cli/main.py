"""The ``ddbpipe`` command: options, progress display, exit codes. No pipeline logic here.

Exit codes: 0 done; 1 the job failed or found problems (the reason is printed on stderr);
2 bad usage (an unknown option, or a value or combination of options that cannot work);
130 interrupted (an export can then continue with --resume).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, cast

import typer

# typer has no public name for these; they are click's, which typer bundles.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from ddbpipe.catalog import ListedExport, run_list
from ddbpipe.config import (
    DEFAULT_RESTORE_DAYS,
    DEFAULT_RESTORE_TIER,
    RESTORE_TIERS,
    ArchiveOptions,
    AwsOptions,
    ChecksumAlgorithm,
    Compression,
    ExportOptions,
    Format,
    ImportOptions,
    LockMode,
    Sse,
    StorageClass,
    parse_retain_until,
    parse_tag,
    refuse_s3_only,
)
from ddbpipe.drill import drill_settings
from ddbpipe.export_job import run_export
from ddbpipe.import_job import run_import
from ddbpipe.process_memory import use_lean_memory
from ddbpipe.progress import JobProgress
from ddbpipe.thaw import ThawSummary, run_thaw
from ddbpipe.verify_job import VerifyReport, run_verify
from ddbpipe.version import VERSION

from .ops import add_operations_commands
from .options import (
    EndpointUrl,
    ExpectedBucketOwner,
    JsonOutput,
    PointInTime,
    Profile,
    Region,
    S3EndpointUrl,
    Staging,
)
from .output import (
    JobDisplay,
    export_detail,
    import_detail,
    mb,
    print_catalog,
    print_verify,
    report,
    run_job,
    say,
    thaw_outcome,
    thaw_waiting,
)


class _OneLineUsageErrors(TyperGroup):
    """ddbpipe's commands, with a usage error reported in one line naming the fix, exit 2:
    click's own report is a panel of several lines, and scripts grep for the line. Errors in
    ddbpipe's own options come from ``make_context``, those of a command's from ``invoke``
    (where the command parses its arguments)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:
            raise  # a bare ``ddbpipe``: the help itself
        except UsageError as error:
            _usage_error(error)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as error:
            _usage_error(error)


def _usage_error(error: UsageError) -> NoReturn:
    command = error.ctx.command_path if error.ctx is not None else "ddbpipe"
    say(f"error: {error.format_message().rstrip('.')}; see {command} --help")
    raise typer.Exit(error.exit_code)


app = typer.Typer(
    name="ddbpipe",
    cls=_OneLineUsageErrors,
    help=(
        "Move DynamoDB tables to and from object storage.\n\n"
        "DEST and SOURCE are a local directory or s3://bucket/prefix. AWS settings follow the "
        "AWS CLI: --profile/--region/--endpoint-url or AWS_PROFILE, AWS_REGION, "
        "AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_S3."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ClusterOption = Annotated[
    str | None,
    typer.Option(
        help="Run on a Dask cluster: local:N starts N worker processes here (every core), "
        "tcp://host:8786 uses a running scheduler. Capacity limits hold for the whole "
        "cluster. Needs the dask extra; see docs/SCALING.md.", metavar="CLUSTER"),
]

ProvisionAnyway = Annotated[
    bool,
    typer.Option("--provision-anyway",
                 help="Raise the capacity even when DynamoDB's daily limit on decreases "
                 "could refuse putting it back today (then put it back by hand later)."),
]


def _provision_option(what: str) -> Any:
    return typer.Option(
        help=f"Raise the table's provisioned {what} to N for the job (UpdateTable, or an "
        "auto-scaled table's minimum) and put the original back when it ends, fails or is "
        "interrupted (a killed job's on the next run). On-demand tables need nothing.",
        metavar="N", min=1)


#: The export's S3 archive options, shown together in --help.
ARCHIVE = "S3 archive options (every object the export writes; S3 only)"


def _archive_option(help: str, *names: str, metavar: str | None = None) -> Any:
    return typer.Option(*names, help=help, metavar=metavar, rich_help_panel=ARCHIVE)


def _print_version(asked: bool) -> None:
    if asked:
        print(f"ddbpipe {VERSION}")
        raise typer.Exit()


@app.callback()
def _everywhere(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True,
                     help="Print the installed version of ddbpipe and exit."),
    ] = False,
) -> None:
    """Options of ddbpipe itself, before the command."""


@app.command()
def export(
    table: Annotated[str, typer.Argument(help="Name of the DynamoDB table to export.")],
    dest: Annotated[
        str, typer.Argument(help="Local directory or s3://bucket/prefix; must not hold an export.")
    ],
    segments: Annotated[
        int | None,
        typer.Option(
            min=1, max=1_000_000,
            help="Parallel Scan segments (default: one per ~2 GB, at least one per core).",
        ),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="ndjson (AWS export line format) or parquet (typed columns + lossless _item) "
            "(default: ndjson).",
        ),
    ] = None,
    compression: Annotated[
        str | None,
        typer.Option(
            help="NDJSON compression: zstd, gzip (what AWS tools expect) or none "
            "(default: zstd). Parquet always uses zstd inside the file."
        ),
    ] = None,
    max_rcu: Annotated[
        float | None,
        typer.Option(help="Cap on read capacity consumed per second, to run beside production."),
    ] = None,
    page_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Items per Scan request (default: as many as fit in DynamoDB's 1 MB "
            "page). Smaller pages make --max-rcu smoother.",
        ),
    ] = None,
    consistent_read: Annotated[
        bool,
        typer.Option("--consistent-read", help="Strongly consistent reads (twice the RCU)."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an unfinished export at DEST from checkpoints."),
    ] = False,
    sse: Annotated[str | None, _archive_option(
        "Server-side encryption: AES256, aws:kms or aws:kms:dsse.", "--sse",
        metavar="ALGORITHM")] = None,
    sse_kms_key_id: Annotated[str | None, _archive_option(
        "KMS key (id, ARN or alias) for --sse aws:kms; checked before anything is written.",
        "--sse-kms-key-id", metavar="KEY")] = None,
    sse_bucket_key: Annotated[bool | None, _archive_option(
        "S3 Bucket Keys for aws:kms (fewer KMS calls).",
        "--sse-bucket-key/--no-sse-bucket-key")] = None,
    storage_class: Annotated[str | None, _archive_option(
        "Storage class of the data shards: STANDARD, STANDARD_IA, ONEZONE_IA, "
        "INTELLIGENT_TIERING, GLACIER_IR, GLACIER or DEEP_ARCHIVE. Manifests stay STANDARD, "
        "so ls and verify work without a thaw.", "--storage-class", metavar="CLASS")] = None,
    object_lock_mode: Annotated[str | None, _archive_option(
        "Object Lock retention on shards and manifests: GOVERNANCE or COMPLIANCE (the bucket "
        "must have Object Lock enabled).", "--object-lock-mode", metavar="MODE")] = None,
    retain_until: Annotated[str | None, _archive_option(
        "Retain until this date (2033-12-31) or time (ISO 8601).", "--retain-until",
        metavar="DATE")] = None,
    retain_for: Annotated[str | None, _archive_option(
        "Retain for this long from the export's start: 90d, 7y.", "--retain-for",
        metavar="DURATION")] = None,
    legal_hold: Annotated[bool, _archive_option(
        "Put a legal hold on shards and manifests.", "--legal-hold")] = False,
    checksum_algorithm: Annotated[str | None, _archive_option(
        "S3's own checksum, sent with every put and checked by S3 on arrival: CRC64NVME, "
        "CRC32C, CRC32, SHA256 or SHA1 (ddbpipe's SHA-256 is kept in its manifest too).",
        "--checksum-algorithm", metavar="ALGORITHM")] = None,
    tag: Annotated[list[str] | None, _archive_option(
        "Tag every object, KEY=VALUE; repeat for more (at most 10).", "--tag",
        metavar="KEY=VALUE")] = None,
    expected_bucket_owner: ExpectedBucketOwner = None,
    cluster: ClusterOption = None,
    provision_rcu: Annotated[int | None, _provision_option("read capacity")] = None,
    provision_anyway: ProvisionAnyway = False,
    point_in_time: PointInTime = None,
    staging: Staging = None,
    json_output: JsonOutput = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """Export TABLE to DEST as compressed shards plus manifests (written last).

    Example: ddbpipe export orders s3://archive/orders/2026-11-23 --segments 32

    An archive, encrypted, locked for 7 years and cold (docs/ARCHIVING.md): ddbpipe export
    orders s3://vault/orders/2026-12 --sse aws:kms --sse-kms-key-id alias/archive
    --object-lock-mode COMPLIANCE --retain-for 7y --storage-class DEEP_ARCHIVE

    A consistent snapshot (point-in-time recovery on): ddbpipe export orders
    s3://archive/orders/2026-12-01 --point-in-time 2026-12-01T00:00:00Z
    """
    progress = JobProgress()

    def build_options() -> ExportOptions:
        given = (sse, sse_kms_key_id, sse_bucket_key, storage_class, object_lock_mode,
                 retain_until, retain_for, checksum_algorithm, tag)
        archive = None
        if legal_hold or any(value is not None for value in given):
            archive = ArchiveOptions(
                sse=cast(Sse | None, sse), sse_kms_key_id=sse_kms_key_id,
                sse_bucket_key=sse_bucket_key,
                storage_class=cast(StorageClass | None, storage_class),
                object_lock_mode=cast(LockMode | None, object_lock_mode),
                retain_until=parse_retain_until(retain_until) if retain_until else None,
                retain_for=retain_for, legal_hold=legal_hold,
                checksum_algorithm=cast(ChecksumAlgorithm | None, checksum_algorithm),
                tags=tuple(parse_tag(text) for text in tag or ()),
            )
        return ExportOptions(
            # ExportOptions checks the values and names the allowed ones.
            table=table, destination=dest, segments=segments,
            format=cast(Format | None, format),
            compression=cast(Compression | None, compression),
            max_rcu=max_rcu, page_size=page_size, consistent_read=consistent_read,
            resume=resume, archive=archive, cluster=cluster, provision_rcu=provision_rcu,
            provision_anyway=provision_anyway, point_in_time=point_in_time, staging=staging,
            aws=_aws(region, profile, endpoint_url, s3_endpoint_url, expected_bucket_owner),
        )

    summary = run_job(
        lambda: run_export(build_options(), progress),
        lambda: JobDisplay("export", progress, export_detail),
        interrupted_hint=f"continue with: ddbpipe export {table} {dest} --resume",
    )
    as_of = f" as of {summary.point_in_time}" if summary.point_in_time else ""
    report(
        summary.to_dict(),
        json_output,
        f"exported {summary.items:,} items from {summary.table}{as_of} to {summary.destination} in "
        f"{summary.seconds:.1f} s ({summary.items / max(summary.seconds, 1e-9):,.0f} items/s): "
        f"{summary.shards} shards, {mb(summary.stored_bytes)} stored "
        f"({mb(summary.raw_bytes)} of DynamoDB JSON), {summary.consumed_rcu:,.1f} RCU, "
        f"export id {summary.export_id}",
    )


@app.command(name="import")
def import_(
    source: Annotated[
        str,
        typer.Argument(
            help="A ddbpipe export, an AWS export (the .../AWSDynamoDB/<ExportId>/ prefix; "
            "full or incremental), or a folder of NDJSON files; local or s3://bucket/prefix."
        ),
    ],
    table: Annotated[str, typer.Argument(help="The DynamoDB table to write into.")],
    target_wcu: Annotated[
        float | None,
        typer.Option(
            help="Write capacity units per second to hold (1 KB units, each item rounded up) "
            "(default: the table's provisioned WCU; 4000 for on-demand tables). Lowered "
            "automatically while DynamoDB throttles.",
        ),
    ] = None,
    create_table: Annotated[
        bool,
        typer.Option(
            "--create-table",
            help="Create TABLE (which must not exist) from the export's saved schema; GSIs are "
            "added after the data is loaded.",
        ),
    ] = False,
    without_indexes: Annotated[
        bool, typer.Option("--without-indexes", help="With --create-table: do not add the GSIs.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed import from its checkpoint file.")
    ] = False,
    dead_letter: Annotated[
        str | None,
        typer.Option(help="Where items that cannot be written go, one JSON line each with the "
                     "reason (default: ddbpipe-import-TABLE.dead-letter.jsonl)."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="The import's checkpoint file, removed when the import finishes "
                     "(default: ddbpipe-import-TABLE.checkpoint.json)."),
    ] = None,
    expected_bucket_owner: ExpectedBucketOwner = None,
    cluster: ClusterOption = None,
    provision_wcu: Annotated[
        int | None, _provision_option("write capacity (and its GSIs')")] = None,
    provision_anyway: ProvisionAnyway = False,
    json_output: JsonOutput = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """Write SOURCE's items into TABLE at a steady rate, backing off when DynamoDB throttles.

    Nothing is dropped: items that cannot be written go to the dead-letter file and the exit
    code is 1. Example: ddbpipe import s3://archive/orders/2026-11-23 orders-copy --create-table
    """
    progress = JobProgress()

    def build_options() -> ImportOptions:
        return ImportOptions(
            source=source, table=table, target_wcu=target_wcu, create_table=create_table,
            without_indexes=without_indexes, resume=resume, dead_letter=dead_letter,
            checkpoint=checkpoint, cluster=cluster, provision_wcu=provision_wcu,
            provision_anyway=provision_anyway,
            aws=_aws(region, profile, endpoint_url, s3_endpoint_url, expected_bucket_owner),
        )

    summary = run_job(
        lambda: run_import(build_options(), progress),
        lambda: JobDisplay("import", progress, import_detail),
        interrupted_hint=f"continue with: ddbpipe import {source} {table} --resume",
    )
    indexes = ", ".join(summary.indexes_added)
    report(
        summary.to_dict(),
        json_output,
        f"imported {summary.items_written:,} of {summary.items_read:,} items into "
        f"{summary.table} in {summary.seconds:.1f} s "
        f"({summary.items_written / max(summary.seconds, 1e-9):,.0f} items/s): "
        f"{summary.consumed_wcu:,.0f} WCU at a target of {summary.target_wcu:,.0f} WCU/s, "
        f"{summary.throttled_requests:,} throttled requests"
        + (f", indexes added: {indexes}" if indexes else ""),
    )
    if summary.items_dead_lettered:
        say(f"error: {summary.items_dead_lettered:,} items could not be written; they are in "
            f"{summary.dead_letter} with the reasons")
        raise typer.Exit(1)


#: The restore drill's options of verify, shown together in --help.
DRILL = "Restore drill: compare a live table with the export"


@app.command()
def verify(
    source: Annotated[str, typer.Argument(help="Local directory or s3://bucket/prefix.")],
    read_data: Annotated[
        bool,
        typer.Option("--read-data", help="Also download, checksum, decode and recount all shards."),
    ] = False,
    against_table: Annotated[str | None, typer.Option(
        help="Prove TABLE holds exactly the export's items: a parallel Scan compared item by "
        "item (types included), after the --read-data checks; exit 1 on any difference.",
        metavar="TABLE", rich_help_panel=DRILL)] = None,
    max_rcu: Annotated[float | None, typer.Option(
        help="Cap on read capacity the drill's Scan consumes per second.",
        rich_help_panel=DRILL)] = None,
    segments: Annotated[int | None, typer.Option(
        min=1, max=1_000_000, help="Parallel Scan segments (default: as the export was scanned).",
        rich_help_panel=DRILL)] = None,
    consistent_read: Annotated[bool, typer.Option(
        "--consistent-read", help="Strongly consistent Scan (twice the RCU): right after an "
        "import, so the newest writes are seen.", rich_help_panel=DRILL)] = False,
    work_dir: Annotated[str | None, typer.Option(
        help="Folder for the drill's partition files, about twice the export's uncompressed "
        "size, removed at the end (default: the system's temporary folder).",
        metavar="DIR", rich_help_panel=DRILL)] = None,
    expected_bucket_owner: ExpectedBucketOwner = None,
    json_output: JsonOutput = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """Check a finished export: manifests, shard sizes and counts (and data with --read-data),
    or prove with --against-table that a table holds exactly its items.

    Exits 0 only when everything holds; otherwise prints each problem, and each kind of
    difference with its first keys, on its own line. Example: ddbpipe verify
    s3://vault/orders/2026-12 --against-table orders-restored --max-rcu 500
    """
    def verify_it() -> Coroutine[Any, Any, VerifyReport]:
        aws = _aws(region, profile, endpoint_url, s3_endpoint_url, expected_bucket_owner)
        refuse_s3_only(source, ["--expected-bucket-owner"] if expected_bucket_owner else [])
        drill = drill_settings(against_table, max_rcu=max_rcu, segments=segments,
                               consistent_read=consistent_read, work_dir=work_dir)
        return run_verify(source, read_data=read_data, drill=drill, aws=aws, progress=progress)

    progress = JobProgress()
    verified = run_job(
        verify_it,
        lambda: JobDisplay("drill", progress, export_detail) if against_table else None,
        interrupted_hint="",
    )
    print_verify(verified, json_output)
    if not verified.ok:
        raise typer.Exit(1)


@app.command(name="ls")
def ls(
    location: Annotated[
        str, typer.Argument(help="Local directory or s3://bucket/prefix to find exports under.")
    ],
    expected_bucket_owner: ExpectedBucketOwner = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON array of the exports on stdout.")
    ] = False,
    region: Region = None,
    profile: Profile = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """List the exports under LOCATION, finished or not, ddbpipe's and AWS-native ones, from
    their manifests alone (no data is read).

    A manifest that cannot be read is listed with its problem. Example: ddbpipe ls
    s3://archive/orders/ --json
    """
    def list_them() -> Coroutine[Any, Any, list[ListedExport]]:
        aws = _aws(region, profile, None, s3_endpoint_url, expected_bucket_owner)
        return run_list(location, aws)

    exports = run_job(list_them, lambda: None, interrupted_hint="")
    print_catalog(exports, location, json_output)


@app.command()
def thaw(
    source: Annotated[str, typer.Argument(help="A ddbpipe export on S3: s3://bucket/prefix.")],
    days: Annotated[
        int,
        typer.Option(min=1, help="Days the restored copies stay readable (S3 bills them as "
                     "STANDARD storage meanwhile, beside the archived ones)."),
    ] = DEFAULT_RESTORE_DAYS,
    tier: Annotated[
        str,
        typer.Option(
            help="How fast, and so how dear: Bulk is the cheapest and slowest (GLACIER 5-12 "
            "hours, DEEP_ARCHIVE up to 48 hours); Standard costs more (GLACIER 3-5 hours, "
            "DEEP_ARCHIVE up to 12 hours); Expedited costs most (GLACIER only, 1-5 minutes).",
            metavar="|".join(RESTORE_TIERS),
        ),
    ] = DEFAULT_RESTORE_TIER,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait until every shard is readable, checking every 1 to "
                     "15 minutes; Ctrl-C stops the waiting, not the restores."),
    ] = False,
    expected_bucket_owner: ExpectedBucketOwner = None,
    json_output: JsonOutput = False,
    region: Region = None,
    profile: Profile = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """Restore the archived shards (GLACIER, DEEP_ARCHIVE) of the export at SOURCE, so that
    import and verify --read-data can read them.

    Restores already under way or done are not asked for again: run it again to see how far
    they got. Example: ddbpipe thaw s3://vault/orders/2026-12 --wait
    """
    def thaw_it() -> Coroutine[Any, Any, ThawSummary]:
        aws = _aws(region, profile, None, s3_endpoint_url, expected_bucket_owner)
        return run_thaw(source, days=days, tier=tier, wait=wait, aws=aws,
                        on_progress=thaw_waiting)

    summary = run_job(
        thaw_it, lambda: None,
        interrupted_hint="the restores asked for go on: run the same thaw again to see how far "
        "they got (nothing is asked for twice)",
    )
    report(summary.to_dict(), json_output, thaw_outcome(summary))


add_operations_commands(app)  # iam-policy, plan (cli/ops.py)


# --- running a job -----------------------------------------------------------------------------


def _aws(
    region: str | None,
    profile: str | None,
    endpoint_url: str | None,
    s3_endpoint_url: str | None,
    expected_bucket_owner: str | None,
) -> AwsOptions:
    return AwsOptions(
        region=region, profile=profile, endpoint_url=endpoint_url,
        s3_endpoint_url=s3_endpoint_url, expected_bucket_owner=expected_bucket_owner,
    )


def main() -> None:
    # Our own log lines at INFO; other libraries (botocore, aiohttp) only when they warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("ddbpipe").setLevel(logging.INFO)  # the package and all its modules
    # Dask's own loggers say INFO about every worker and client (--cluster); it reads this
    # when first imported, here and in the worker processes it starts.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    use_lean_memory()  # memory flat in table size (benchmarks/RESULTS.md)
    app()


if __name__ == "__main__":
    main()
