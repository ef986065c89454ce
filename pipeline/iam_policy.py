"""The least-privilege IAM policy of each job: what ``ddbpipe iam-policy JOB`` prints.

A job is described here by the AWS API operations it makes (``_Uses``: operations, for one
purpose, on some resources), found by reading the jobs; the IAM actions of the policy are
derived from them through ``OPERATION_PERMISSIONS`` (``aws``'s one map from an API operation
to the IAM action that authorises it, which access-denied messages use too),
``PARAMETER_PERMISSIONS`` (request parameters that need a second action, e.g. a PutObject
that tags the object) and ``KMS_USE_BY_S3`` (what S3 asks KMS for, with the caller's
permissions, on an object under an SSE-KMS key). The recording
test (tests/test_iam_policy.py) runs every job against DynamoDB Local and moto, records the
operations really made, maps them through the same tables and checks the policy allows
exactly those: the tables are shared, what each job calls is not.

Options that change what a job calls are options here too (``--create-table``, ``--resume``,
the archive options that need their own permission, ``--provision`` for the capacity that
``--provision-rcu``/``--provision-wcu`` raise and put back); the policy of a job is the union
of what it may call with them. The plans of the export and import (``ddbpipe plan``) have
policies of their own ("plan-export", "plan-import"): they read, and write nothing. Region
and account (for the ARNs) are asked of STS (GetCallerIdentity, which needs no permission)
and the session only when not given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .aws import OPERATION_PERMISSIONS
from .iam_request import JOBS, PLANS, Job, PolicyRequest, checked_request, region_and_account
from .manifest import AWS_SUMMARY_KEY, DATA_PREFIX, MANIFEST_KEY, STATE_KEY, STATE_PREFIX

__all__ = [
    "JOBS",
    "KMS_USE_BY_S3",
    "OPERATION_PERMISSIONS",
    "PARAMETER_PERMISSIONS",
    "PLANS",
    "POLICY_VERSION",
    "Job",
    "iam_policy_for",
]

#: The current IAM policy language.
POLICY_VERSION = "2012-10-17"

#: Request parameters that make an operation need a second action, on the same resource.
PARAMETER_PERMISSIONS: dict[tuple[str, str], str] = {
    **{
        (operation, parameter): action
        for operation in ("s3:PutObject", "s3:CreateMultipartUpload")
        for parameter, action in (
            ("ObjectLockMode", "s3:PutObjectRetention"),
            ("ObjectLockRetainUntilDate", "s3:PutObjectRetention"),
            ("ObjectLockLegalHoldStatus", "s3:PutObjectLegalHold"),
            ("Tagging", "s3:PutObjectTagging"),
        )
    },
    # A table created with tags is tagged with the caller's permission.
    ("dynamodb:CreateTable", "Tags"): "dynamodb:TagResource",
}

#: What S3 asks KMS for, as the caller, when the object is under an SSE-KMS key: a data key
#: to encrypt a new object, the key's decryption to read one or to join a multipart
#: upload's parts. HeadObject reads no data and needs nothing of KMS.
KMS_USE_BY_S3: dict[str, str] = {
    "s3:PutObject": "kms:GenerateDataKey",
    "s3:CreateMultipartUpload": "kms:GenerateDataKey",
    "s3:CompleteMultipartUpload": "kms:Decrypt",
    "s3:GetObject": "kms:Decrypt",
}

@dataclass(frozen=True)
class _Uses:
    """Operations a job makes for one purpose (the statement's Sid) on ``resources``."""

    purpose: str
    operations: tuple[str, ...]
    resources: tuple[str, ...]
    #: Request parameters these operations send that need their own action.
    parameters: tuple[str, ...] = ()
    condition: dict[str, Any] = field(default_factory=dict)

    def actions(self) -> list[str]:
        found = {OPERATION_PERMISSIONS[operation] for operation in self.operations}
        found |= {
            PARAMETER_PERMISSIONS[(operation, parameter)]
            for operation in self.operations for parameter in self.parameters
            if (operation, parameter) in PARAMETER_PERMISSIONS
        }
        return sorted(found)


@dataclass(frozen=True)
class _Arns:
    """The ARNs of the request's resources, in the partition of its region."""

    request: PolicyRequest
    region: str
    account: str

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        return "aws-us-gov" if self.region.startswith("us-gov-") else "aws"

    def table(self) -> str:
        return f"arn:{self.partition}:dynamodb:{self.region}:{self.account}:table/" + (
            self.request.table or ""
        )

    def bucket(self) -> str:
        return f"arn:{self.partition}:s3:::{self.request.bucket}"

    def objects(self, under: str = "") -> str:
        """The objects under the prefix (and ``under`` it, e.g. "data/")."""
        return self.object(f"{under}*")

    def object(self, key: str) -> str:
        """The object (or key pattern) ``key`` under the prefix."""
        return f"{self.bucket()}/{self.request.prefix}{key}"

    def staging_bucket(self) -> str:
        assert self.request.staging is not None
        return f"arn:{self.partition}:s3:::{self.request.staging[0]}"

    def staging_objects(self) -> str:
        """The objects under the --staging place."""
        assert self.request.staging is not None
        return f"{self.staging_bucket()}/{self.request.staging[1]}*"

    def scalable_targets(self) -> str:
        """Every Application Auto Scaling scalable target of the account in the region."""
        return (f"arn:{self.partition}:application-autoscaling:{self.region}:{self.account}:"
                "scalable-target/*")


def iam_policy_for(
    job: str,
    *,
    table: str | None = None,
    bucket: str | None = None,
    prefix: str = "",
    kms_key_arn: str | None = None,
    create_table: bool = False,
    without_indexes: bool = False,
    resume: bool = False,
    object_lock: bool = False,
    legal_hold: bool = False,
    tags: bool = False,
    provision: bool = False,
    point_in_time: bool = False,
    staging: str | None = None,
    region: str | None = None,
    account: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """The least-privilege IAM policy document (Version 2012-10-17) of ``job``: "export",
    "import", "verify" (``table``: its restore drill's ``against_table``), "thaw" or "ls";
    or "plan-export" (``table``) and "plan-import" (``table`` optional, as the plan's), what
    ``ddbpipe plan export`` and ``plan import`` read.

    ``bucket``/``prefix`` is the job's ``s3://bucket/prefix`` (no bucket: a local directory,
    and no S3 statements); a '*' in ``prefix`` stands for any characters, so "orders/*" is
    every location below orders/. ``kms_key_arn`` is the key of ``--sse-kms-key-id``.

    The export's ``resume`` (continuing a killed run, which also deletes the shards it left
    unrecorded), ``object_lock`` (retention), ``legal_hold`` and ``tags``, and the import's
    ``create_table`` and ``without_indexes``, add what those options call; ``provision``
    (export, import) what ``--provision-rcu``/``--provision-wcu`` call to raise the table's
    capacity and put it back; ``point_in_time`` (export) what ``--point-in-time`` calls, and
    what DynamoDB's native export writes as the caller into the state folder (the default
    staging place), or into ``staging`` (the export's ``--staging s3://bucket/prefix``, then
    also listed, read and emptied there); ``create_table`` for plan-import, that the plan
    only checks the table is not there. ARNs name ``region`` and ``account``; each missing
    one is the session's (``profile``), the account asked of STS. Bad input raises a
    one-line ``ConfigError`` before anything is called.
    """
    request = checked_request(
        job, table=table, bucket=bucket, prefix=prefix, kms_key_arn=kms_key_arn,
        create_table=create_table, without_indexes=without_indexes, resume=resume,
        object_lock=object_lock, legal_hold=legal_hold, tags=tags, provision=provision,
        point_in_time=point_in_time, staging=staging,
    )
    found_region, found_account = region_and_account(region, account, profile)
    arns = _Arns(request, found_region, found_account)
    uses = [*_table_uses(arns), *_bucket_uses(arns), *_staging_uses(arns)]
    statements = [_statement(use) for use in uses] + _kms_statements(request, uses)
    return {"Version": POLICY_VERSION, "Statement": statements}


# --- what each job calls -----------------------------------------------------------------------


def _table_uses(arns: _Arns) -> list[_Uses]:
    request, table = arns.request, (arns.table(),)
    if request.table is None:
        return []
    if request.job in PLANS:
        return _plan_table_uses(arns)
    if request.job == "export" and request.point_in_time:
        return [_Uses("ReadTheTable", ("dynamodb:DescribeTable", "dynamodb:DescribeTimeToLive",
                                       "dynamodb:ListTagsOfResource"), table),
                _Uses("ExportAtAPointInTime", ("dynamodb:DescribeContinuousBackups",
                                               "dynamodb:ExportTableToPointInTime"), table),
                _Uses("FollowTheNativeExport", ("dynamodb:DescribeExport",),
                      (f"{table[0]}/export/*",))]
    if request.job == "export":
        return [_Uses("ReadTheTable", ("dynamodb:DescribeTable", "dynamodb:DescribeTimeToLive",
                                       "dynamodb:ListTagsOfResource", "dynamodb:Scan"), table),
                *_provision_uses(arns)]
    if request.job == "verify":
        return [_Uses("ScanTheTableForTheDrill", ("dynamodb:DescribeTable", "dynamodb:Scan"),
                      table)]
    uses = [_Uses("WriteTheTable", ("dynamodb:DescribeTable", "dynamodb:BatchWriteItem"),
                  table)]
    if request.create_table:
        uses.append(_Uses("CreateTheTable", ("dynamodb:CreateTable",
                                             "dynamodb:UpdateTimeToLive"),
                          table, parameters=("Tags",)))
        if not request.without_indexes:
            uses.append(_Uses("AddTheIndexes", ("dynamodb:UpdateTable",), _with_indexes(arns)))
    return uses + _provision_uses(arns)


def _with_indexes(arns: _Arns) -> tuple[str, ...]:
    """The table and its GSIs, which IAM names table/T/index/NAME."""
    return (arns.table(), f"{arns.table()}/index/*")


def _provision_uses(arns: _Arns) -> list[_Uses]:
    """What ``provision.capacity_for_job`` calls for --provision-rcu (export: the table's
    reads) and --provision-wcu (import: the writes of the table and of its GSIs, in the same
    UpdateTable): DescribeTable while it waits for ACTIVE, UpdateTable to raise and to put
    back; for a provisioned table it asks Application Auto Scaling for the scalable targets
    of the table (and its GSIs), and where there are some it registers their raised range,
    then the original one, instead of calling UpdateTable. On-demand tables: DescribeTable
    only. A later run without the option puts a killed run's raise back the same way."""
    if not arns.request.provision:
        return []
    raised = _with_indexes(arns) if arns.request.job == "import" else (arns.table(),)
    return [
        _Uses("RaiseTheCapacityForTheJob", ("dynamodb:DescribeTable", "dynamodb:UpdateTable"),
              raised),
        # DescribeScalableTargets has no resource-level permissions: IAM takes only "*".
        _Uses("FindTheAutoScaling", ("application-autoscaling:DescribeScalableTargets",),
              ("*",)),
        # A scalable target's ARN ends in an ID AWS assigns when it is registered
        # (scalable-target/1234abcd...), not in the table's name, so no policy written
        # before can name this table's targets: the narrowest resource is every scalable
        # target of the account in the region.
        _Uses("RaiseTheAutoScaledMinimum", ("application-autoscaling:RegisterScalableTarget",),
              (arns.scalable_targets(),)),
    ]


def _plan_table_uses(arns: _Arns) -> list[_Uses]:
    """``ddbpipe plan``'s reads of the table: its figures (DescribeTable), for an export a
    sample Scan, and its point-in-time recovery (DescribeContinuousBackups, optional: refused,
    the plan says "unknown" and goes on). A plan of an import with --create-table only
    checks that the table is not there yet."""
    request, table = arns.request, (arns.table(),)
    recovery = _Uses("ReadThePointInTimeRecovery", ("dynamodb:DescribeContinuousBackups",),
                     table)
    if request.job == "plan-export":
        return [_Uses("SampleTheTable", ("dynamodb:DescribeTable", "dynamodb:Scan"), table),
                recovery]
    target = _Uses("DescribeTheTarget", ("dynamodb:DescribeTable",), table)
    return [target] if request.create_table else [target, recovery]


def _bucket_uses(arns: _Arns) -> list[_Uses]:
    request = arns.request
    if request.bucket is None:
        return []
    listing = _Uses("ListThePrefix", ("s3:ListObjectsV2",), (arns.bucket(),),
                    condition=_prefix_condition(request.prefix))
    return [listing, *_OBJECT_USES[request.job](arns)]


def _prefix_condition(prefix: str) -> dict[str, Any]:
    """Every listing names a prefix under the job's; one that names none (the whole bucket,
    or HeadBucket, which S3 authorises as such a listing) is refused. The jobs check their
    bucket with a listing of their prefix for that reason."""
    if not prefix:
        return {}
    return {"StringLike": {"s3:prefix": [f"{prefix}*"]}}


def _export_objects(arns: _Arns) -> list[_Uses]:
    request = arns.request
    # A resume reads the saved state; a plain run only asks whether it is there.
    reads = ("s3:HeadObject", "s3:GetObject") if request.resume else ("s3:HeadObject",)
    writes = ("s3:PutObject", "s3:CreateMultipartUpload", "s3:UploadPart",
              "s3:CompleteMultipartUpload")
    uses = [_Uses("WriteTheExport", reads + writes, (arns.objects(),),
                  parameters=_archive_parameters(request)),
            # Only shards are big enough for a multipart upload; a failed one is aborted.
            _Uses("AbortFailedShardUploads", ("s3:AbortMultipartUpload",),
                  (arns.objects(DATA_PREFIX),))]
    removed = (arns.objects(STATE_PREFIX),) + (
        # Shards a killed run stored but never recorded, found and removed by the resume.
        (arns.objects(DATA_PREFIX),) if request.resume else ()
    )
    uses.append(_Uses("RemoveTheExportState", ("s3:DeleteObject",), removed))
    if request.point_in_time and request.staging is None:
        uses += _native_export_objects(arns)
    if request.object_lock or request.legal_hold:
        uses.append(_Uses("CheckObjectLockIsOn", ("s3:GetObjectLockConfiguration",),
                          (arns.bucket(),)))
    return uses


def _native_export_objects(arns: _Arns) -> list[_Uses]:
    """A point-in-time export's staging place, under the state folder: DynamoDB writes its
    native export there as the caller (PutObject, multipart uploads it may abort, and the
    objects' ACL: AWS's documented needs of ExportTableToPointInTime), ddbpipe reads it and
    removes it with the state."""
    staging = (arns.objects(STATE_PREFIX + "native/"),)
    return [_Uses("LetDynamoDBWriteTheNativeExport",
                  ("s3:PutObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl"), staging),
            _Uses("ReadTheNativeExport", ("s3:GetObject",), staging)]


def _staging_uses(arns: _Arns) -> list[_Uses]:
    """A point-in-time export's --staging place elsewhere: listed (checked, and emptied after
    the export), written by DynamoDB as the caller (as under the state folder), read, and its
    files of this export removed."""
    if arns.request.staging is None:
        return []
    objects = (arns.staging_objects(),)
    return [_Uses("ListTheStagingPlace", ("s3:ListObjectsV2",), (arns.staging_bucket(),),
                  condition=_prefix_condition(arns.request.staging[1])),
            _Uses("LetDynamoDBWriteTheNativeExport",
                  ("s3:PutObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl"), objects),
            _Uses("ReadAndRemoveTheNativeExport", ("s3:GetObject", "s3:DeleteObject"), objects)]


def _archive_parameters(request: PolicyRequest) -> tuple[str, ...]:
    """The object-creating parameters of the export's archive options that need an action."""
    given = (
        (request.object_lock, ("ObjectLockMode", "ObjectLockRetainUntilDate")),
        (request.legal_hold, ("ObjectLockLegalHoldStatus",)),
        (request.tags, ("Tagging",)),
    )
    return tuple(parameter for asked, parameters in given if asked for parameter in parameters)


def _import_objects(arns: _Arns) -> list[_Uses]:
    return [_Uses("ReadTheSource", ("s3:HeadObject", "s3:GetObject"), (arns.objects(),))]


def _verify_objects(arns: _Arns) -> list[_Uses]:
    return [_Uses("ReadTheExport", ("s3:HeadObject", "s3:GetObject"), (arns.objects(),))]


def _thaw_objects(arns: _Arns) -> list[_Uses]:
    return [_Uses("ReadTheManifest", ("s3:HeadObject", "s3:GetObject"), (arns.objects(),)),
            _Uses("RestoreTheShards", ("s3:RestoreObject",), (arns.objects(DATA_PREFIX),))]


def _plan_import_objects(arns: _Arns) -> list[_Uses]:
    # The manifests, and the first bytes of a few files (Range requests of GetObject).
    return [_Uses("SampleTheSource", ("s3:HeadObject", "s3:GetObject"), (arns.objects(),))]


def _ls_objects(arns: _Arns) -> list[_Uses]:
    # Only the manifests are read, of exports at the prefix or anywhere below it.
    manifests = (MANIFEST_KEY, STATE_KEY, AWS_SUMMARY_KEY)
    keys = [arns.object(name) for name in manifests]
    keys += [arns.object(f"*/{name}") for name in manifests]
    return [_Uses("ReadTheManifests", ("s3:GetObject",), tuple(keys))]


_OBJECT_USES = {"export": _export_objects, "import": _import_objects, "verify": _verify_objects,
                "thaw": _thaw_objects, "ls": _ls_objects, "plan-import": _plan_import_objects}


# --- the statements ----------------------------------------------------------------------------


def _statement(use: _Uses) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": use.purpose, "Effect": "Allow", "Action": use.actions(),
                                 "Resource": list(use.resources)}
    if use.condition:
        statement["Condition"] = use.condition
    return statement


def _kms_statements(request: PolicyRequest, uses: Iterable[_Uses]) -> list[dict[str, Any]]:
    """The key's use: what S3 asks KMS for on the job's objects, and the export's own check
    that the key can encrypt (GenerateDataKey, as S3 will)."""
    if request.kms_key_arn is None:
        return []
    operations = {operation for use in uses for operation in use.operations}
    actions = {KMS_USE_BY_S3[operation] for operation in operations & KMS_USE_BY_S3.keys()}
    if request.job == "export":
        actions.add(OPERATION_PERMISSIONS["kms:GenerateDataKey"])
    purpose = "EncryptWithTheKey" if "kms:GenerateDataKey" in actions else "DecryptWithTheKey"
    return [{"Sid": purpose, "Effect": "Allow", "Action": sorted(actions),
             "Resource": [request.kms_key_arn]}]
