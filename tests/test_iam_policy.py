"""``ddbpipe iam-policy``: the least-privilege policy of each job, checked against what the
jobs really call.

The recording tests run every job against DynamoDB Local and moto (S3 and KMS) through
``tools.recording_endpoint``, which records each API operation on the wire with its
parameters and the service's reply. A recorded call needs the IAM action of its operation
(``OPERATION_PERMISSIONS``), those its parameters add (``PARAMETER_PERMISSIONS``) and, when
S3's reply says the object is under an SSE-KMS key, what S3 asks KMS for as the caller
(``KMS_USE_BY_S3``). The policy generated for the job must allow each of those on the ARN the
call used, and name no action that no call needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

import ddbpipe
from ddbpipe.config import ArchiveOptions, AwsOptions, ExportOptions, ImportOptions
from ddbpipe.export_job import run_export
from ddbpipe.iam_policy import (
    JOBS,
    KMS_USE_BY_S3,
    OPERATION_PERMISSIONS,
    PARAMETER_PERMISSIONS,
    iam_policy_for,
)
from ddbpipe.progress import JobProgress
from tools.recording_endpoint import RecordedCall, RecordingEndpoint, start_recording_endpoint

DDBPIPE = [sys.executable, "-m", "ddbpipe.cli.main"]
#: moto's account, where its KMS keys live; the ARNs of every policy here.
REGION, ACCOUNT = "us-east-1", "123456789012"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
WHERE = {"region": REGION, "account": ACCOUNT}


# --- what a recorded call needs, and whether a policy allows it ---------------------------------


@dataclass(frozen=True)
class Need:
    """One IAM action a call needs on one resource, with the condition keys it brings."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    call: str = ""


def needs(calls: list[RecordedCall]) -> list[Need]:
    found: list[Need] = []
    for call in calls:
        assert call.name in OPERATION_PERMISSIONS, f"{call.name} is called and not in the map"
        resource, context = resource_of(call)
        found.append(Need(OPERATION_PERMISSIONS[call.name], resource, context, call.name))
        found += [Need(action, resource, (), f"{call.name} with {parameter}")
                  for (operation, parameter), action in PARAMETER_PERMISSIONS.items()
                  if operation == call.name and parameter in call.parameters]
        encryption = call.reply_headers.get("x-amz-server-side-encryption", "")
        if encryption.startswith("aws:kms") and call.name in KMS_USE_BY_S3:
            key = call.reply_headers["x-amz-server-side-encryption-aws-kms-key-id"]
            found.append(Need(KMS_USE_BY_S3[call.name], key, (), f"{call.name} under {key}"))
    return found


def resource_of(call: RecordedCall) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The ARN the call acts on, as real AWS names it (DynamoDB Local names its own region and
    account in ARNs: a table is known by its name), and its condition keys."""
    parameters = call.parameters
    if call.service == "dynamodb":
        tables = parameters.get("RequestItems") or [
            parameters.get("TableName") or parameters["ResourceArn"].rpartition("table/")[2]]
        (table,) = tables
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}", ()
    if call.service == "kms":
        return parameters["KeyId"], ()
    assert call.service == "s3", f"unexpected call {call.name}"
    bucket = f"arn:aws:s3:::{parameters['Bucket']}"
    if "Key" in parameters:
        return f"{bucket}/{parameters['Key']}", ()
    prefix = parameters.get("Prefix")
    return bucket, (() if prefix is None else (("s3:prefix", prefix),))


def allows(policy: dict[str, Any], need: Need) -> bool:
    return any(_statement_allows(statement, need) for statement in policy["Statement"])


def _statement_allows(statement: dict[str, Any], need: Need) -> bool:
    return (statement["Effect"] == "Allow" and need.action in statement["Action"]
            and any(_matches(pattern, need.resource) for pattern in statement["Resource"])
            and _conditions_hold(statement.get("Condition", {}), dict(need.context)))


def _matches(pattern: str, value: str) -> bool:
    """IAM's wildcards: '*' any run of characters ('/' too), '?' any one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _conditions_hold(condition: dict[str, Any], context: dict[str, str]) -> bool:
    """IAM's StringLike (the policies use no other operator): a key the request lacks fails."""
    for operator, tests in condition.items():
        assert operator == "StringLike", f"cannot evaluate {operator}"
        for key, patterns in tests.items():
            if key not in context or not any(_matches(p, context[key]) for p in patterns):
                return False
    return True


def actions_of(policy: dict[str, Any]) -> set[str]:
    return {action for statement in policy["Statement"] for action in statement["Action"]}


def assert_allows_each(policy: dict[str, Any], calls: list[RecordedCall]) -> set[str]:
    """Every need of ``calls`` is allowed; returns the actions they needed."""
    found = needs(calls)
    refused = [need for need in found if not allows(policy, need)]
    assert not refused, f"the policy refuses {refused[:3]}"
    return {need.action for need in found}


# --- running every job through the recorders ----------------------------------------------------

ARCHIVE = dict(sse="aws:kms", storage_class="GLACIER", object_lock_mode="GOVERNANCE",
               retain_for="1d", legal_hold=True, checksum_algorithm="SHA256",
               tags=(("team", "data"),))
EXPORT_FLAGS = dict(object_lock=True, legal_hold=True, tags=True)
TABLE_TAGS = [{"Key": "team", "Value": "data"}]


@dataclass
class Recorded:
    """The calls of each job run, by run name, and what they ran on."""

    bucket: str
    source: str
    target: str
    created: str
    key_arn: str
    calls: dict[str, list[RecordedCall]] = field(default_factory=dict)

    def prefix(self, run: str) -> str:
        return f"exports/{run}"


class Recorders:
    def __init__(self, dynamodb: RecordingEndpoint, s3: RecordingEndpoint) -> None:
        self.dynamodb, self.s3 = dynamodb, s3
        self.aws = AwsOptions(endpoint_url=dynamodb.endpoint, s3_endpoint_url=s3.endpoint)

    @contextlib.contextmanager
    def recording(self, into: list[RecordedCall]) -> Iterator[None]:
        self.dynamodb.clear()
        self.s3.clear()
        try:
            yield
        finally:
            assert self.dynamodb.wait_idle() and self.s3.wait_idle()  # a stopped job's, too
            into.extend(self.dynamodb.calls() + self.s3.calls())


def random_items(count: int) -> list[dict[str, Any]]:
    # Random payloads: the shards stay bigger than the test's multipart threshold.
    return [{"pk": {"S": f"item#{i:05d}"}, "name": {"S": f"name {i % 7}"},
             "expires": {"N": "4102444800"},
             "blob": {"S": "".join(uuid.uuid4().hex for _ in range(4))}}
            for i in range(count)]


@pytest.fixture(scope="module")
def recorders(dynamodb_local: Any, s3_server: Any) -> Iterator[Recorders]:
    with (start_recording_endpoint(dynamodb_local.endpoint) as dynamodb,
          start_recording_endpoint(s3_server.endpoint) as s3):
        # DynamoDB Local has no tagging: the table's tags are answered here, as DynamoDB would.
        dynamodb.answer("ListTagsOfResource", {"Tags": TABLE_TAGS})
        yield Recorders(dynamodb, s3)


@pytest.fixture(scope="module")
def recorded(
    recorders: Recorders, dynamodb_local: Any, s3_server: Any, tmp_path_factory: Any
) -> Iterator[Recorded]:
    """Every job, run once each way the tests check, recorded by run name."""
    dynamodb = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint,
                            region_name=REGION)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=REGION)
    kms = boto3.client("kms", endpoint_url=s3_server.endpoint, region_name=REGION)
    suffix = uuid.uuid4().hex[:8]
    runs = Recorded(bucket=f"ddbpipe-iam-{suffix}", source=f"iam-source-{suffix}",
                    target=f"iam-target-{suffix}", created=f"iam-created-{suffix}",
                    key_arn=kms.create_key()["KeyMetadata"]["Arn"])
    s3.create_bucket(Bucket=runs.bucket, ObjectLockEnabledForBucket=True)
    create_source_table(dynamodb, runs.source)
    dynamodb.create_table(TableName=runs.target, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_KMS", recorders.s3.endpoint)
        # Shards of a few KB go up as multipart uploads, as big shards do.
        patch.setattr("ddbpipe.storage.uploads.MULTIPART_THRESHOLD", 1024)
        try:
            run_every_job(recorders, runs, tmp_path_factory.mktemp("iam"))
            yield runs
        finally:
            for table in (runs.source, runs.target, runs.created):
                with contextlib.suppress(Exception):
                    dynamodb.delete_table(TableName=table)


def create_source_table(dynamodb: Any, table: str) -> None:
    """A table with what an import with --create-table recreates: a GSI, TTL (and tags,
    answered by the recorder)."""
    dynamodb.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"}
                              for name in ("pk", "name")],
        GlobalSecondaryIndexes=[{
            "IndexName": "by-name", "KeySchema": [{"AttributeName": "name", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"}}],
    )
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})
    for item in random_items(240):
        dynamodb.put_item(TableName=table, Item=item)


def run_every_job(recorders: Recorders, runs: Recorded, folder: Path) -> None:
    aws, archive = recorders.aws, ArchiveOptions(**ARCHIVE, sse_kms_key_id=runs.key_arn)

    def url(run: str) -> str:
        return f"s3://{runs.bucket}/{runs.prefix(run)}"

    def export(run: str, **settings: Any) -> ExportOptions:
        return ExportOptions(table=runs.source, destination=url(run), segments=2,
                             shard_bytes=8192, page_size=40, archive=archive, aws=aws, **settings)

    def record(run: str) -> contextlib.AbstractContextManager[None]:
        return recorders.recording(runs.calls.setdefault(run, []))

    with record("ndjson"):
        ddbpipe.export_table(export("ndjson"))
    with record("parquet"):
        ddbpipe.export_table(export("parquet", format="parquet"))
    recorders.s3.refuse_next("UploadPart")
    with record("failed"), pytest.raises(ddbpipe.AccessDeniedError):
        ddbpipe.export_table(export("failed"))
    with record("resumed"):
        asyncio.run(stopped_after_two_shards(export("resumed")))
        ddbpipe.export_table(export("resumed", resume=True))
    with record("thaw"):
        assert ddbpipe.thaw_export(url("ndjson"), aws=aws).requested > 0
    with record("verify"):
        assert ddbpipe.verify_export(url("ndjson"), read_data=True, aws=aws).ok
    with record("drill"):
        assert ddbpipe.verify_export(url("ndjson"), against_table=runs.source, aws=aws).ok
    for run, table, create in (("import", runs.target, False),
                               ("create", runs.created, True)):
        with record(run):
            ddbpipe.import_table(ImportOptions(
                source=url("ndjson"), table=table, create_table=create, aws=aws,
                checkpoint=str(folder / f"{run}.checkpoint"),
                dead_letter=str(folder / f"{run}.dead-letter")))
    with record("ls"):
        assert len(ddbpipe.list_exports(f"s3://{runs.bucket}/exports/", aws=aws)) == 4


async def stopped_after_two_shards(options: ExportOptions) -> None:
    progress = JobProgress()
    job = asyncio.create_task(run_export(options, progress))
    while progress.shards < 2 and not job.done():
        await asyncio.sleep(0.005)
    assert not job.done(), "the export finished before it could be stopped"
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job


# --- the recording tests ------------------------------------------------------------------------


def test_export_policy_allows_exactly_what_exports_call(recorded: Recorded) -> None:
    needed: set[str] = set()
    for run in ("ndjson", "parquet", "failed"):
        policy = iam_policy_for("export", table=recorded.source, bucket=recorded.bucket,
                                prefix=recorded.prefix(run), kms_key_arn=recorded.key_arn,
                                **EXPORT_FLAGS, **WHERE)
        needed |= assert_allows_each(policy, recorded.calls[run])
    assert needed == actions_of(policy)
    operations = {call.name for run in ("ndjson", "failed") for call in recorded.calls[run]}
    # What the runs were to show: multipart uploads, their abort, the state removed.
    assert {"s3:CompleteMultipartUpload", "s3:AbortMultipartUpload", "s3:DeleteObject",
            "kms:GenerateDataKey", "s3:GetObjectLockConfiguration"} <= operations


def test_export_deletes_only_its_state_unless_it_resumes(recorded: Recorded) -> None:
    deleted = [call.parameters["Key"] for call in recorded.calls["ndjson"]
               if call.operation == "DeleteObject"]
    assert deleted and all(key.startswith("exports/ndjson/_ddbpipe-state/") for key in deleted)
    resumed = iam_policy_for("export", table=recorded.source, bucket=recorded.bucket,
                             prefix=recorded.prefix("resumed"), kms_key_arn=recorded.key_arn,
                             resume=True, **EXPORT_FLAGS, **WHERE)
    needed = assert_allows_each(resumed, recorded.calls["resumed"])
    assert "s3:GetObject" in needed and needed <= actions_of(resumed)
    reads = {call.operation for call in recorded.calls["resumed"]
             if call.parameters.get("Key", "").endswith("_ddbpipe-state/export.json")}
    assert "GetObject" in reads  # the resume read its saved state


def test_a_wildcard_prefix_is_one_policy_for_every_dated_export(recorded: Recorded) -> None:
    policy = iam_policy_for("export", table=recorded.source, bucket=recorded.bucket,
                            prefix="exports/*", kms_key_arn=recorded.key_arn, resume=True,
                            **EXPORT_FLAGS, **WHERE)
    for run in ("ndjson", "parquet", "failed", "resumed"):
        assert_allows_each(policy, recorded.calls[run])
    bucket = f"arn:aws:s3:::{recorded.bucket}"
    assert not allows(policy, Need("s3:PutObject", f"{bucket}/elsewhere/x/data/0"))
    assert not allows(policy, Need("s3:DeleteObject", f"{bucket}/exports/x/manifest.json"))


@pytest.mark.parametrize(("job", "run", "options", "shown"), [
    ("thaw", "thaw", {}, {"s3:RestoreObject"}),
    ("verify", "verify", {}, {"s3:GetObject"}),
    ("verify", "drill", {"table": "source"}, {"dynamodb:Scan"}),
    ("import", "import", {"table": "target"}, {"dynamodb:BatchWriteItem"}),
    # The created table's saved tags go with CreateTable: dynamodb:TagResource is needed.
    ("import", "create", {"table": "created", "create_table": True},
     {"dynamodb:CreateTable", "dynamodb:UpdateTimeToLive", "dynamodb:UpdateTable"}),
])
def test_policy_allows_exactly_what_the_job_calls(
    recorded: Recorded, job: str, run: str, options: dict[str, Any], shown: set[str]
) -> None:
    if "table" in options:
        options = {**options, "table": getattr(recorded, options["table"])}
    policy = iam_policy_for(job, bucket=recorded.bucket, prefix=recorded.prefix("ndjson"),
                            kms_key_arn=recorded.key_arn, **options, **WHERE)
    assert assert_allows_each(policy, recorded.calls[run]) == actions_of(policy)
    assert shown <= {call.name for call in recorded.calls[run]}  # what the run was to show


def test_ls_policy_allows_exactly_what_ls_calls(recorded: Recorded) -> None:
    policy = iam_policy_for("ls", bucket=recorded.bucket, prefix="exports",
                            kms_key_arn=recorded.key_arn, **WHERE)
    assert assert_allows_each(policy, recorded.calls["ls"]) == actions_of(policy)
    read = {call.parameters["Key"].rpartition("/")[2] for call in recorded.calls["ls"]
            if call.operation == "GetObject"}
    assert read == {"ddbpipe-manifest.json", "export.json"}  # the failed export's state


def test_an_export_to_a_local_directory_needs_dynamodb_only(
    recorders: Recorders, recorded: Recorded, tmp_path: Path
) -> None:
    calls: list[RecordedCall] = []
    with recorders.recording(calls):
        ddbpipe.export_table(recorded.source, str(tmp_path / "local"), aws=recorders.aws)
    policy = iam_policy_for("export", table=recorded.source, **WHERE)
    assert {call.service for call in calls} == {"dynamodb"}
    assert assert_allows_each(policy, calls) == actions_of(policy)


# --- the policy itself ----------------------------------------------------------------------------

EVERY_JOB = [
    ("export", dict(table="orders", bucket="archive", prefix="orders/2026-12",
                    kms_key_arn=KEY_ARN, resume=True, **EXPORT_FLAGS)),
    ("export", dict(table="orders")),
    ("import", dict(table="orders", bucket="archive", prefix="orders/2026-12",
                    kms_key_arn=KEY_ARN, create_table=True)),
    ("import", dict(table="orders")),
    ("verify", dict(table="orders", bucket="archive", prefix="orders/2026-12")),
    ("thaw", dict(bucket="archive", prefix="orders/2026-12", kms_key_arn=KEY_ARN)),
    ("ls", dict(bucket="archive")),
]


@pytest.mark.parametrize(("job", "options"), EVERY_JOB)
def test_every_policy_is_a_valid_document_of_named_scoped_actions(
    job: str, options: dict[str, Any]
) -> None:
    policy = json.loads(json.dumps(iam_policy_for(job, **options, **WHERE)))
    assert policy["Version"] == "2012-10-17" and policy["Statement"]
    sids = [statement["Sid"] for statement in policy["Statement"]]
    assert len(set(sids)) == len(sids) and all(sid.isalnum() for sid in sids)
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Action"]
        assert all(re.fullmatch(r"(dynamodb|s3|kms):[A-Za-z]+", a) for a in statement["Action"])
        assert all(resource.startswith("arn:aws:") for resource in statement["Resource"])


def test_list_bucket_is_held_to_the_prefix() -> None:
    policy = iam_policy_for("verify", bucket="archive", prefix="orders/2026-12", **WHERE)
    (listing,) = [s for s in policy["Statement"] if "s3:ListBucket" in s["Action"]]
    assert listing["Resource"] == ["arn:aws:s3:::archive"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["orders/2026-12/*"]}}

    def may_list(prefix: str | None) -> bool:
        context = () if prefix is None else (("s3:prefix", prefix),)
        return allows(policy, Need("s3:ListBucket", "arn:aws:s3:::archive", context))

    assert may_list("orders/2026-12/") and may_list("orders/2026-12/data/")
    assert not may_list(None)  # the whole bucket, or HeadBucket (S3 checks it as a listing)
    assert not may_list("orders/2026-11/") and not may_list("orders/2026-12-old/")
    assert not may_list("")
    root = iam_policy_for("ls", bucket="archive", **WHERE)
    assert all("Condition" not in statement for statement in root["Statement"])


def test_objects_are_scoped_to_the_prefix() -> None:
    policy = iam_policy_for("import", table="orders", bucket="archive", prefix="orders/2026-12/",
                            **WHERE)
    assert allows(policy, Need("s3:GetObject", "arn:aws:s3:::archive/orders/2026-12/data/x"))
    assert not allows(policy, Need("s3:GetObject", "arn:aws:s3:::archive/orders/2026-11/x"))
    assert not allows(policy, Need("s3:GetObject", "arn:aws:s3:::archive/orders/2026-12x"))


@pytest.mark.parametrize("job", JOBS)
def test_kms_actions_only_with_a_key_and_only_on_it(job: str) -> None:
    options: dict[str, Any] = {"bucket": "archive", "prefix": "p"}
    if job in ("export", "import"):
        options["table"] = "orders"
    without = iam_policy_for(job, **options, **WHERE)
    assert not any(action.startswith("kms:") for action in actions_of(without))
    policy = iam_policy_for(job, kms_key_arn=KEY_ARN, **options, **WHERE)
    (key_statement,) = [s for s in policy["Statement"] if s["Action"][0].startswith("kms:")]
    assert key_statement["Resource"] == [KEY_ARN]
    expected = ["kms:Decrypt", "kms:GenerateDataKey"] if job == "export" else ["kms:Decrypt"]
    assert key_statement["Action"] == expected


def test_the_export_deletes_its_state_and_with_resume_its_unrecorded_shards() -> None:
    def deletable(resume: bool) -> list[str]:
        policy = iam_policy_for("export", table="t00", bucket="b", prefix="p", resume=resume,
                                **WHERE)
        return [resource for statement in policy["Statement"]
                if "s3:DeleteObject" in statement["Action"] for resource in statement["Resource"]]

    assert deletable(False) == ["arn:aws:s3:::b/p/_ddbpipe-state/*"]
    assert deletable(True) == ["arn:aws:s3:::b/p/_ddbpipe-state/*", "arn:aws:s3:::b/p/data/*"]


def test_indexes_are_named_only_where_the_import_creates_them() -> None:
    def index_resources(**options: Any) -> list[str]:
        policy = iam_policy_for("import", table="orders", **options, **WHERE)
        return [r for s in policy["Statement"] for r in s["Resource"] if "/index/" in r]

    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders"
    assert index_resources() == []
    assert index_resources(create_table=True, without_indexes=True) == []
    assert index_resources(create_table=True) == [f"{table}/index/*"]
    export = iam_policy_for("export", table="orders", **WHERE)
    assert [r for s in export["Statement"] for r in s["Resource"]] == [table]


@pytest.mark.parametrize("job", ["export", "import", "verify"])
def test_a_local_directory_has_no_s3_statements(job: str) -> None:
    policy = iam_policy_for(job, table="orders", **WHERE)
    assert all(action.startswith("dynamodb:") for action in actions_of(policy))


@pytest.mark.parametrize(("job", "options", "message"), [
    ("backup", {}, "unknown job 'backup': use one of export, import, verify, thaw, ls"),
    ("export", {"table": ""}, "--table is empty"),
    ("export", {}, "export needs --table"),
    ("export", {"table": "a b c"}, "is not a DynamoDB table name"),
    ("thaw", {"bucket": "b", "table": "orders"}, "thaw calls no DynamoDB table"),
    ("thaw", {}, "thaw works on S3 only"),
    ("ls", {}, "calls no AWS API"),
    ("verify", {"bucket": "b", "kms_key_arn": "alias/archive"}, "is not a KMS key ARN"),
    ("verify", {"bucket": "b", "kms_key_arn": "arn:aws:kms:us-east-1:1:key/x"},
     "is not a KMS key ARN"),
    ("import", {"table": "orders", "kms_key_arn": KEY_ARN}, "apply to S3 only"),
    ("import", {"table": "orders", "resume": True}, "--resume does not change what import"),
    ("export", {"table": "orders", "create_table": True}, "--create-table does not change"),
    ("import", {"table": "orders", "without_indexes": True}, "goes with --create-table"),
    ("verify", {"bucket": "s3://b/p"}, "give the bucket's name alone"),
    ("verify", {"bucket": "my bucket"}, "--bucket 'my bucket' is not an S3 bucket name"),
    ("verify", {"bucket": "b", "prefix": "orders/?"}, "IAM reads as a wildcard"),
    ("verify", {"bucket": "b", "prefix": "${aws:username}/"}, "IAM reads as a wildcard"),
    ("verify", {"table": "orders", "prefix": "p"}, "--prefix goes with --bucket"),
    ("ls", {"bucket": "b", "region": "useast1"}, "--region 'useast1' is not an AWS region"),
    ("ls", {"bucket": "b", "account": "12345"}, "--account '12345' is not a 12-digit"),
], ids=[
    "unknown-job", "empty-table", "no-table", "bad-table-name", "table-not-called",
    "thaw-of-a-local-directory", "ls-of-a-local-directory", "kms-alias", "kms-bad-account",
    "kms-key-without-bucket", "resume-with-import", "create-table-with-export",
    "without-indexes-alone", "s3-url-as-bucket", "bad-bucket-name", "prefix-wildcard",
    "prefix-variable", "prefix-without-bucket", "bad-region", "bad-account",
])
def test_bad_input_is_a_one_line_config_error(
    job: str, options: dict[str, Any], message: str
) -> None:
    assert_refused_in_one_line(job, options, message)


def assert_refused_in_one_line(job: str, options: dict[str, Any], message: str) -> None:
    """``iam_policy_for(job, ...)`` raises one line of ConfigError saying ``message``."""
    with pytest.raises(ddbpipe.ConfigError) as refused:
        iam_policy_for(job, **{**WHERE, **options})
    assert message in str(refused.value) and "\n" not in str(refused.value)


# --- region and account -----------------------------------------------------------------------


@pytest.fixture
def sts(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingEndpoint]:
    """moto's STS behind a recorder, where ddbpipe asks for the account."""
    with start_recording_endpoint(s3_server.endpoint) as recorder:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", recorder.endpoint)
        yield recorder


def test_given_region_and_account_nothing_is_called(sts: RecordingEndpoint) -> None:
    policy = iam_policy_for("thaw", bucket="b", region="eu-west-1", account="111122223333")
    assert sts.calls() == []
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::b"]
    drill = iam_policy_for("verify", table="orders", region="eu-west-1", account="111122223333")
    assert drill["Statement"][0]["Resource"] == [
        "arn:aws:dynamodb:eu-west-1:111122223333:table/orders"]
    assert sts.calls() == []


def test_a_missing_account_is_the_callers_asked_of_sts(sts: RecordingEndpoint) -> None:
    policy = iam_policy_for("import", table="orders", region="eu-west-1")
    assert [call.name for call in sts.calls()] == ["sts:GetCallerIdentity"]
    assert policy["Statement"][0]["Resource"] == [
        f"arn:aws:dynamodb:eu-west-1:{ACCOUNT}:table/orders"]


def test_a_missing_region_is_the_sessions(
    sts: RecordingEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    policy = iam_policy_for("import", table="orders", account="111122223333")
    assert policy["Statement"][0]["Resource"] == [
        "arn:aws:dynamodb:ap-southeast-2:111122223333:table/orders"]
    assert sts.calls() == []
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    with pytest.raises(ddbpipe.ConfigError, match="no AWS region: pass --region"):
        iam_policy_for("import", table="orders", account="111122223333")


def test_sts_failing_is_one_line_naming_account(sts: RecordingEndpoint) -> None:
    sts.refuse_next("GetCallerIdentity", code="InvalidClientTokenId",
                    message="The security token included in the request is invalid.")
    with pytest.raises(ddbpipe.ConfigError) as refused:
        iam_policy_for("import", table="orders", region=REGION)
    message = str(refused.value)
    assert "sts:GetCallerIdentity" in message and message.endswith("pass --account")
    assert "\n" not in message


# --- the command --------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DDBPIPE, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_cli_prints_the_policy_as_json() -> None:
    result = run("iam-policy", "export", "--table", "orders", "--bucket", "archive",
                 "--prefix", "orders/2026-12", "--kms-key-arn", KEY_ARN, "--object-lock",
                 "--region", REGION, "--account", ACCOUNT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == iam_policy_for(
        "export", table="orders", bucket="archive", prefix="orders/2026-12",
        kms_key_arn=KEY_ARN, object_lock=True, **WHERE)


@pytest.mark.parametrize(("args", "message"), [
    (["backup"], "error: unknown job 'backup'"),
    (["export", "--table", ""], "error: --table is empty"),
    (["verify", "--bucket", "b", "--kms-key-arn", "nope"], "is not a KMS key ARN"),
    (["ls", "--bucket", "b", "--colour"], "No such option: --colour"),
], ids=["unknown-job", "empty-table", "kms-not-an-arn", "unknown-option"])
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run("iam-policy", *args, "--region", REGION, "--account", ACCOUNT)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert message in line and result.stdout == ""


def test_cli_help_teaches_the_options() -> None:
    result = run("iam-policy", "--help")
    assert result.returncode == 0
    for option in ("JOB", "--table", "--bucket", "--prefix", "--kms-key-arn", "--create-table",
                   "--resume", "--object-lock", "--legal-hold", "--tags", "--region",
                   "--account", "local directory"):
        assert option in result.stdout, option
