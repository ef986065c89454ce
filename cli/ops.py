"""The operations commands of ``ddbpipe``: what it takes to run a job (``iam-policy``), and
what a job will consume and cost before it runs (``plan export``, ``plan import``).

``add_operations_commands`` registers them on the one typer app of ``main.py``. This module
does not import ``main.py``: run as ``python -m ddbpipe.cli.main``, that file is
``__main__``, and importing it again would build a second app.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Annotated, Any

import typer

from ddbpipe.config import AwsOptions
from ddbpipe.iam_policy import JOBS, PLANS, iam_policy_for
from ddbpipe.plan import ExportChoices, JobPlan, run_plan_export, run_plan_import

from .options import EndpointUrl, ExpectedBucketOwner, JsonOutput, Profile, Region, S3EndpointUrl
from .output import mb, print_columns, run_job

#: The options of iam-policy that mirror a job's own, shown together in --help.
JOB_OPTIONS = "Options of the job that change what it calls"


def add_operations_commands(app: typer.Typer) -> None:
    """Register the operations commands on ``app``."""
    app.command(name="iam-policy")(iam_policy)
    plans = typer.Typer(
        help="What a job will consume and cost, and how long it will take, before it runs.",
        no_args_is_help=True,
    )
    plans.command(name="export")(plan_export)
    plans.command(name="import")(plan_import)
    app.add_typer(plans, name="plan")


def _job_option(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=JOB_OPTIONS)


def iam_policy(
    job: Annotated[str, typer.Argument(
        metavar="JOB", help=f"The job the policy is for: {', '.join(JOBS)}; or "
        f"{' or '.join(PLANS)}, what 'ddbpipe plan export' or 'plan import' reads.")],
    table: Annotated[str | None, typer.Option(
        help="export, import, plan-export: the table. verify: the table of its restore drill "
        "(--against-table); without it the drill's statements are left out. plan-import: the "
        "plan's --table, if given.",
        metavar="TABLE")] = None,
    bucket: Annotated[str | None, typer.Option(
        help="The bucket of the job's s3://BUCKET/PREFIX. Leave it out when the job's "
        "DEST/SOURCE is a local directory: the policy then has no S3 statements.",
        metavar="BUCKET")] = None,
    prefix: Annotated[str, typer.Option(
        help="The PREFIX of s3://BUCKET/PREFIX (default: the whole bucket); for ls, the "
        "location listed. A * stands for any characters: orders/* covers every location "
        "below orders/, e.g. one policy for dated exports.", metavar="PREFIX")] = "",
    kms_key_arn: Annotated[str | None, typer.Option(
        help="The ARN of the KMS key the export's objects are encrypted with (--sse aws:kms "
        "--sse-kms-key-id): export may generate data keys and decrypt with it, the other jobs "
        "decrypt. Not needed for S3's own aws/s3 key.", metavar="ARN")] = None,
    create_table: Annotated[bool, _job_option(
        "import: the import creates the table (CreateTable with its saved tags, TTL, and "
        "the GSIs by UpdateTable on the table and its indexes). plan-import: the plan's "
        "--create-table (it only checks the table is not there).", "--create-table")] = False,
    without_indexes: Annotated[bool, _job_option(
        "import: with --create-table, the GSIs are not added.", "--without-indexes")] = False,
    resume: Annotated[bool, _job_option(
        "export: also continue a killed export (read its saved state, delete the shards it "
        "stored but never recorded); use it for --cluster exports too, whose tasks run again "
        "when a worker dies.", "--resume")] = False,
    object_lock: Annotated[bool, _job_option(
        "export: with --object-lock-mode (retention on every object).",
        "--object-lock")] = False,
    legal_hold: Annotated[bool, _job_option("export: with --legal-hold.", "--legal-hold")] = False,
    tags: Annotated[bool, _job_option("export: with --tag.", "--tags")] = False,
    provision: Annotated[bool, _job_option(
        "export, import: with --provision-rcu / --provision-wcu (UpdateTable of the table, "
        "and of its GSIs for import; Application Auto Scaling's DescribeScalableTargets, and "
        "RegisterScalableTarget for an auto-scaled table). Also for the next run on the "
        "table after a killed --provision-* run: it puts that raise back.",
        "--provision")] = False,
    point_in_time: Annotated[bool, _job_option(
        "export: with --point-in-time (DescribeContinuousBackups, ExportTableToPointInTime, "
        "DescribeExport; and what DynamoDB writes as you into DEST's state folder, then "
        "read and removed; or into --staging).", "--point-in-time")] = False,
    staging: Annotated[str | None, typer.Option(
        "--staging", metavar="s3://BUCKET/PREFIX", rich_help_panel=JOB_OPTIONS,
        help="export --point-in-time: the export's --staging, when DynamoDB's native export "
        "goes there and not under DEST (a local DEST needs it; leave --bucket out then).",
    )] = None,
    region: Annotated[str | None, typer.Option(
        help="Region of the ARNs (default: AWS_REGION or the profile's). With --account also "
        "given, nothing at all is called.")] = None,
    account: Annotated[str | None, typer.Option(
        help="AWS account id of the ARNs (default: the credentials', asked of STS "
        "GetCallerIdentity).", metavar="ID")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Named AWS profile whose region and account to use (default: AWS_PROFILE).")] = None,
) -> None:
    """Print the least-privilege IAM policy JOB needs, and nothing more (JSON on stdout).

    Each action is named and scoped: the table's ARN, the objects under the prefix, listings
    of the prefix, deletes of the export's own state, the given KMS key. Give the options of
    the job that change what it calls (the export's --resume and archive options, the
    import's --create-table, --provision for --provision-rcu/--provision-wcu); the policy is
    what the job may call with them. Attach it to the role that runs the job
    (docs/OPERATIONS.md). Examples: ddbpipe iam-policy export --table orders --bucket archive
    --prefix orders/2026-12 > export-policy.json; ddbpipe iam-policy plan-import --bucket
    archive --prefix orders/2026-12 --table orders-copy
    """
    generate = functools.partial(
        iam_policy_for, job, table=table, bucket=bucket, prefix=prefix, kms_key_arn=kms_key_arn,
        create_table=create_table, without_indexes=without_indexes, resume=resume,
        object_lock=object_lock, legal_hold=legal_hold, tags=tags, provision=provision,
        point_in_time=point_in_time, staging=staging, region=region, account=account,
        profile=profile,
    )
    # STS, when it is asked, is called in a thread; errors are one line, as every command's.
    policy = run_job(lambda: asyncio.to_thread(generate), lambda: None, interrupted_hint="")
    print(json.dumps(policy, indent=2))


# --- plan ---------------------------------------------------------------------------------------

Prices = Annotated[str | None, typer.Option(
    help="A JSON file of prices, per region, replacing the built-in ones (which are dated and "
    "cover a few regions); docs/OPERATIONS.md shows its shape.", metavar="FILE")]


def plan_export(
    table: Annotated[str, typer.Argument(help="The DynamoDB table to export.")],
    max_rcu: Annotated[float | None, typer.Option(
        help="The export's cap on read capacity per second: the time is worked out at it "
        "(default: the table's provisioned capacity, or on-demand's).")] = None,
    consistent_read: Annotated[bool, typer.Option(
        "--consistent-read", help="Strongly consistent reads (twice the RCU).")] = False,
    format: Annotated[str, typer.Option(
        "--format", help="ndjson or parquet: what the stored size is measured in.")] = "ndjson",
    compression: Annotated[str, typer.Option(
        help="NDJSON compression: zstd, gzip or none.")] = "zstd",
    storage_class: Annotated[str, typer.Option(
        help="The S3 storage class the shards' monthly cost is priced at (as export's "
        "--storage-class).", metavar="CLASS")] = "STANDARD",
    prices: Prices = None,
    json_output: JsonOutput = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """What exporting TABLE will read, store and cost, and how long it takes, before it runs.

    Reads DescribeTable, a short sample Scan and the table's point-in-time recovery; writes
    nothing. Example: ddbpipe plan export orders --max-rcu 500 --storage-class DEEP_ARCHIVE
    """
    def plan_it() -> Any:
        choices = ExportChoices(max_rcu=max_rcu, consistent_read=consistent_read,
                                format=format, compression=compression,
                                storage_class=storage_class)
        aws = AwsOptions(region=region, profile=profile, endpoint_url=endpoint_url)
        return run_plan_export(table, choices, prices=prices, aws=aws)

    print_plan(run_job(plan_it, lambda: None, interrupted_hint=""), json_output)


def plan_import(
    source: Annotated[str, typer.Argument(
        help="A ddbpipe export, an AWS export or a folder of NDJSON files; local or "
        "s3://bucket/prefix.")],
    table: Annotated[str | None, typer.Option(
        help="The table the import writes into; its capacity sets the time (default: none, "
        "an on-demand table is assumed).", metavar="TABLE")] = None,
    target_wcu: Annotated[float | None, typer.Option(
        help="The import's write rate: the time is worked out at it (default: the table's "
        "provisioned WCU, or 4000 on-demand).")] = None,
    create_table: Annotated[bool, typer.Option(
        "--create-table", help="The import creates the table from the export's saved schema "
        "(its GSIs are added after the load).")] = False,
    without_indexes: Annotated[bool, typer.Option(
        "--without-indexes", help="With --create-table: no GSIs.")] = False,
    prices: Prices = None,
    json_output: JsonOutput = False,
    expected_bucket_owner: ExpectedBucketOwner = None,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """What importing SOURCE will write and cost, and how long it takes, before it runs.

    Reads the source's manifests, the first items of a few of its files and the table;
    writes nothing. Example: ddbpipe plan import s3://archive/orders/2026-11 --table
    orders-copy --create-table
    """
    def plan_it() -> Any:
        aws = AwsOptions(region=region, profile=profile, endpoint_url=endpoint_url,
                         s3_endpoint_url=s3_endpoint_url,
                         expected_bucket_owner=expected_bucket_owner)
        return run_plan_import(source, table=table, target_wcu=target_wcu,
                               create_table=create_table, without_indexes=without_indexes,
                               prices=prices, aws=aws)

    print_plan(run_job(plan_it, lambda: None, interrupted_hint=""), json_output)


def print_plan(plan: JobPlan, json_output: bool) -> None:
    """One JSON object, or a few aligned lines, on stdout."""
    if json_output:
        print(json.dumps(plan.to_dict()))
    else:
        print_columns(plan_rows(plan))


def plan_rows(plan: JobPlan) -> list[tuple[str, ...]]:
    unit, cost, used = plan.capacity_unit, plan.cost, plan.prices
    stored = f"; about {mb(plan.stored_bytes)} stored" if plan.stored_bytes is not None else ""
    storage = (f"; S3 {cost['storage_class']} {_usd(cost['storage_per_month'])} a month"
               if "storage_per_month" in cost else "")
    rows: list[tuple[str, ...]] = [
        ("job", f"{plan.job} {plan.table or '(no table given)'} in {plan.region}"),
        ("items", f"{plan.items:,} ({plan.figures})"),
        ("bytes", f"{mb(plan.bytes)} of items{stored}"),
        ("capacity", f"{plan.capacity_units:,.1f} {unit} ({plan.capacity_note})"),
        ("rate", f"{plan.rate:,.0f} {unit}/s ({plan.rate_source})"),
        ("time", f"{_duration(plan.seconds)} at that rate"),
        ("cost", f"on-demand {_usd(cost['on_demand'])}; provisioned "
                 f"{_usd(cost['provisioned'])} ({cost['provisioned_basis']}){storage}"),
        ("pitr", _pitr(plan.pitr)),
        ("prices", f"{used['source']} prices for {used['region']}, taken {used['date']}; "
                   "prices change: check AWS's pricing pages, or pass --prices FILE"),
    ]
    rows += [("index", f"{index['name']} ({index['kind']}): {index['items']:,} items, "
                       f"{index['capacity_units']:,.1f} WCU "
                       f"{'during the load' if index['during_load'] else 'after the load'}")
             for index in plan.indexes]
    return rows + [("note", note) for note in plan.notes] + [
        ("warning", warning) for warning in plan.warnings]


def _pitr(pitr: dict[str, Any]) -> str:
    window = (f", restorable from {pitr['earliest_restorable']} to {pitr['latest_restorable']}"
              if pitr["earliest_restorable"] else "")
    return f"{pitr['status']}{window}; {pitr['window']}"


def _usd(amount: float) -> str:
    return "under $0.01" if 0 < amount < 0.01 else f"${amount:,.2f}"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.1f} s" if seconds >= 0.1 else f"{seconds:.3f} s"
