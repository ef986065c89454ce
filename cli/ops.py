"""The operations commands of ``ddbpipe``: what it takes to run a job (``iam-policy``).

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

from ddbpipe.iam_policy import JOBS, iam_policy_for

from .output import run_job

#: The options of iam-policy that mirror a job's own, shown together in --help.
JOB_OPTIONS = "Options of the job that change what it calls"


def add_operations_commands(app: typer.Typer) -> None:
    """Register the operations commands on ``app``."""
    app.command(name="iam-policy")(iam_policy)


def _job_option(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=JOB_OPTIONS)


def iam_policy(
    job: Annotated[str, typer.Argument(
        metavar="JOB", help=f"The job the policy is for: {', '.join(JOBS)}.")],
    table: Annotated[str | None, typer.Option(
        help="export, import: the table. verify: the table of its restore drill "
        "(--against-table); without it the drill's statements are left out.",
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
        "the GSIs by UpdateTable on the table and its indexes).", "--create-table")] = False,
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
    import's --create-table); the policy is what the job may call with them. Attach it to
    the role that runs the job (docs/OPERATIONS.md). Example: ddbpipe iam-policy export
    --table orders --bucket archive --prefix orders/2026-12 > export-policy.json
    """
    generate = functools.partial(
        iam_policy_for, job, table=table, bucket=bucket, prefix=prefix, kms_key_arn=kms_key_arn,
        create_table=create_table, without_indexes=without_indexes, resume=resume,
        object_lock=object_lock, legal_hold=legal_hold, tags=tags, region=region,
        account=account, profile=profile,
    )
    # STS, when it is asked, is called in a thread; errors are one line, as every command's.
    policy = run_job(lambda: asyncio.to_thread(generate), lambda: None, interrupted_hint="")
    print(json.dumps(policy, indent=2))
