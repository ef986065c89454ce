"""What ``ddbpipe iam-policy`` is asked for, checked: the job, the options that change what it
calls, and the region and account its ARNs name (asked of the session and STS only when not
given). Bad input is a one-line ``ConfigError`` before anything is called; ``iam_policy``
turns a checked request into the policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

import botocore.exceptions
import botocore.session

from . import aws
from .config import AwsOptions
from .errors import ConfigError

__all__ = ["JOBS", "PLANS", "Job", "PolicyRequest", "checked_request", "region_and_account"]

Job = Literal["export", "import", "verify", "thaw", "ls", "plan-export", "plan-import"]
JOBS: tuple[Job, ...] = ("export", "import", "verify", "thaw", "ls")
#: ``ddbpipe plan export`` and ``ddbpipe plan import``, which read what the job would.
PLANS: tuple[Job, ...] = ("plan-export", "plan-import")

_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")
_KMS_KEY_ARN = re.compile(r"arn:aws(-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
#: What IAM reads as a wildcard or a variable, other than the '*' a prefix may hold on purpose.
_POLICY_SPECIALS = ("?", "${")


@dataclass(frozen=True, kw_only=True)
class PolicyRequest:
    """What the policy is for, checked."""

    job: Job
    table: str | None
    bucket: str | None
    prefix: str
    kms_key_arn: str | None
    create_table: bool
    without_indexes: bool
    resume: bool
    object_lock: bool
    legal_hold: bool
    tags: bool
    provision: bool
    point_in_time: bool
    #: A point-in-time export's --staging place elsewhere than DEST: (bucket, prefix).
    staging: tuple[str, str] | None = None


def checked_request(
    job: str,
    *,
    table: str | None,
    bucket: str | None,
    prefix: str,
    kms_key_arn: str | None,
    create_table: bool,
    without_indexes: bool,
    resume: bool,
    object_lock: bool,
    legal_hold: bool,
    tags: bool,
    provision: bool,
    point_in_time: bool,
    staging: str | None,
) -> PolicyRequest:
    """The request, each value checked and the options checked against the job."""
    if job not in JOBS + PLANS:
        raise ConfigError(f"unknown job {job!r}: use one of {', '.join(JOBS + PLANS)}")
    request = PolicyRequest(
        job=cast(Job, job), table=_checked_table(table), bucket=_checked_bucket(bucket),
        prefix=_checked_prefix(prefix), kms_key_arn=_checked_key(kms_key_arn),
        create_table=create_table, without_indexes=without_indexes, resume=resume,
        object_lock=object_lock, legal_hold=legal_hold, tags=tags, provision=provision,
        point_in_time=point_in_time, staging=_checked_staging(staging),
    )
    _check_applies(request)
    return request


# --- checking what was asked -------------------------------------------------------------------


#: The options that apply to some jobs only, as the command names them.
_FLAGS = {"create_table": "--create-table", "without_indexes": "--without-indexes",
          "resume": "--resume", "object_lock": "--object-lock", "legal_hold": "--legal-hold",
          "tags": "--tags", "provision": "--provision", "point_in_time": "--point-in-time"}
_JOB_FLAGS: dict[Job, tuple[str, ...]] = {
    "export": ("resume", "object_lock", "legal_hold", "tags", "provision", "point_in_time"),
    "import": ("create_table", "without_indexes", "provision"),
    "verify": (), "thaw": (), "ls": (), "plan-export": (), "plan-import": ("create_table",),
}
_S3_ONLY = {"kms_key_arn": "--kms-key-arn", "object_lock": "--object-lock",
            "legal_hold": "--legal-hold", "tags": "--tags"}


def _check_applies(request: PolicyRequest) -> None:
    job = request.job
    for name, flag in _FLAGS.items():
        if getattr(request, name) and name not in _JOB_FLAGS[job]:
            raise ConfigError(f"{flag} does not change what {job} calls: drop it")
    if request.without_indexes and not request.create_table:
        raise ConfigError("--without-indexes goes with --create-table")
    if request.point_in_time and request.provision:
        raise ConfigError("--provision with --point-in-time: a point-in-time export reads no "
                          "table capacity, so nothing is raised: drop --provision")
    if request.staging is not None and not request.point_in_time:
        raise ConfigError("--staging goes with --point-in-time: only a point-in-time export "
                          "stages DynamoDB's native export")
    if request.point_in_time and request.bucket is None and request.staging is None:
        raise ConfigError("--point-in-time needs --bucket and --prefix, or --staging: DynamoDB "
                          "writes its native export to S3 (DEST's state folder, or --staging)")
    if job == "plan-export":
        _check_no_s3(request)
    if job in _READS_OR_WRITES and request.table is None:
        raise ConfigError(f"{job} needs --table: the table it {_READS_OR_WRITES[job]}")
    if job in ("thaw", "ls") and request.table is not None:
        raise ConfigError(f"{job} calls no DynamoDB table: drop --table")
    if request.bucket is None:
        _check_local(request)


_READS_OR_WRITES = {"export": "reads", "import": "writes", "plan-export": "samples"}


def _check_no_s3(request: PolicyRequest) -> None:
    """The plan of an export reads the table only."""
    given = [flag for flag, value in (("--bucket", request.bucket), ("--prefix", request.prefix),
                                      ("--kms-key-arn", request.kms_key_arn)) if value]
    if given:
        raise ConfigError(f"plan-export reads the table only, nothing on S3: drop "
                          f"{', '.join(given)}")


def _check_local(request: PolicyRequest) -> None:
    """Without a bucket the job's location is a local directory."""
    if request.prefix:
        raise ConfigError("--prefix goes with --bucket: give the bucket of s3://bucket/prefix")
    given = [flag for name, flag in _S3_ONLY.items() if getattr(request, name)]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to S3 only: give --bucket, or drop "
                          f"{'it' if len(given) == 1 else 'them'} for a local directory")
    if request.job == "thaw":
        raise ConfigError("thaw works on S3 only: give --bucket (and --prefix) of the export")
    if request.job == "plan-import" and request.table is None:
        raise ConfigError("plan-import of a local directory without --table calls no AWS API, "
                          "so it needs no policy: give --bucket for an S3 source, or --table")
    if request.job == "ls" or (request.job == "verify" and request.table is None):
        raise ConfigError(f"{request.job} of a local directory calls no AWS API, so it needs "
                          "no policy: give --bucket for an S3 location")


def _checked_table(table: str | None) -> str | None:
    if table is None:
        return None
    if not table.strip():
        raise ConfigError("--table is empty: give the table's name")
    if not _TABLE.fullmatch(table):
        raise ConfigError(f"--table {table!r} is not a DynamoDB table name: 3-255 letters, "
                          "digits, '_', '-' or '.'")
    return table


def _checked_bucket(bucket: str | None) -> str | None:
    if bucket is None:
        return None
    if bucket.startswith("s3://"):
        raise ConfigError(f"--bucket {bucket!r}: give the bucket's name alone and the rest as "
                          "--prefix (s3://archive/orders: --bucket archive --prefix orders)")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"--bucket {bucket!r} is not an S3 bucket name: give the name alone "
                          "(letters, digits, '.', '-' or '_')")
    return bucket


def _checked_prefix(prefix: str) -> str:
    """"" or ending in '/', as the jobs take s3://bucket/prefix. A '*' stands for any run of
    characters, as IAM reads it: orders/* is every location below orders/ (dated exports)."""
    special = next((text for text in _POLICY_SPECIALS if text in prefix), None)
    if special is not None:
        raise ConfigError(f"--prefix {prefix!r} holds {special!r}, which IAM reads as a "
                          "wildcard or variable: use '*' for any run of characters")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _checked_staging(staging: str | None) -> tuple[str, str] | None:
    """--staging s3://bucket/prefix as (bucket, prefix ending in '/')."""
    if staging is None:
        return None
    if not staging.startswith("s3://"):
        raise ConfigError(f"--staging {staging!r}: give the export's s3://bucket/prefix "
                          "(DynamoDB exports to S3 only)")
    bucket, _, prefix = staging[len("s3://"):].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"--staging {staging!r}: {bucket!r} is not an S3 bucket name")
    return bucket, _checked_prefix(prefix)


def _checked_key(arn: str | None) -> str | None:
    if arn is not None and not _KMS_KEY_ARN.fullmatch(arn):
        raise ConfigError(f"--kms-key-arn {arn!r} is not a KMS key ARN: give "
                          "arn:aws:kms:REGION:ACCOUNT:key/KEY-ID (IAM checks the key, not an "
                          "alias)")
    return arn


# --- region and account ------------------------------------------------------------------------


def region_and_account(
    region: str | None, account: str | None, profile: str | None
) -> tuple[str, str]:
    """As given; what is missing from the session (and STS), nothing called when given."""
    if region is not None:
        _check_region(region)
    if account is not None and not _ACCOUNT.fullmatch(account):
        raise ConfigError(f"--account {account!r} is not a 12-digit AWS account id")
    if region is not None and account is not None:
        return region, account
    options = AwsOptions(region=region, profile=profile)
    session = aws.session(options, botocore.session.Session)
    found_region = aws.region(options, session)
    _check_region(found_region)
    return found_region, account or _caller_account(session, found_region)


def _check_region(region: str) -> None:
    if not _REGION.fullmatch(region):
        raise ConfigError(f"--region {region!r} is not an AWS region name such as us-east-1")


def _caller_account(session: botocore.session.Session, region: str) -> str:
    endpoint = aws.service_endpoint("STS")
    call = aws.AwsCall("sts", "GetCallerIdentity", region=region)
    try:
        sts = session.create_client("sts", region_name=region, endpoint_url=endpoint)
        return str(sts.get_caller_identity()["Account"])
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError,
            *aws.NETWORK_ERRORS) as error:
        reason = aws.error_from_exception(call, error, endpoint or "AWS STS")
        raise ConfigError(
            f"cannot tell the AWS account for the policy's ARNs ({reason}): pass --account"
        ) from error
