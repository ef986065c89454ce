"""``ddbpipe iam-policy`` for what operating a job adds: ``--provision`` (the capacity that
``--provision-rcu``/``--provision-wcu`` raise and put back) and the plans (``plan-export``,
``plan-import``), checked against what real runs call.

As tests/test_iam_policy.py does (its helpers are used here): each run goes through
``tools.recording_endpoint`` in front of DynamoDB Local and moto, and the policy generated
for it must allow every recorded call on the ARN it used and name no action that no run
called. Application Auto Scaling is moto's (``AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING``,
as tests/test_provision.py serves it), behind the same recorder as S3; a call of it needs
its action on the scalable target's ARN as moto names it (DescribeScalableTargets, which
has no resource-level permissions, on "*").
"""

from __future__ import annotations

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
from click.testing import Result
from typer.testing import CliRunner

import ddbpipe
from ddbpipe.cli.main import app
from ddbpipe.config import ExportOptions, ImportOptions
from ddbpipe.iam_policy import OPERATION_PERMISSIONS, iam_policy_for
from tests.test_iam_policy import (
    ACCOUNT,
    KEY_ARN,
    REGION,
    TABLE_TAGS,
    WHERE,
    Need,
    Recorders,
    actions_of,
    allows,
    assert_refused_in_one_line,
    needs,
    random_items,
)
from tools.recording_endpoint import RecordedCall, start_recording_endpoint

DDBPIPE = [sys.executable, "-m", "ddbpipe.cli.main"]
INDEX = "by-name"
AUTOSCALING = "application-autoscaling"
#: DynamoDB's answer for a table with point-in-time recovery (DynamoDB Local has none).
CONTINUOUS_BACKUPS = {"ContinuousBackupsDescription": {
    "ContinuousBackupsStatus": "ENABLED",
    "PointInTimeRecoveryDescription": {
        "PointInTimeRecoveryStatus": "ENABLED", "RecoveryPeriodInDays": 35,
        "EarliestRestorableDateTime": 1_790_000_000, "LatestRestorableDateTime": 1_793_000_000}}}


# --- what a recorded call needs -----------------------------------------------------------------


def every_need(calls: list[RecordedCall], targets: dict[tuple[str, str], str]) -> list[Need]:
    """``needs`` of tests/test_iam_policy.py, and those of Application Auto Scaling's calls:
    RegisterScalableTarget on the ARN of the target it names (``targets``, by resource id and
    dimension), DescribeScalableTargets on "*"."""
    found = needs([call for call in calls if call.service != AUTOSCALING])
    for call in calls:
        if call.service != AUTOSCALING:
            continue
        assert call.name in OPERATION_PERMISSIONS, f"{call.name} is called and not in the map"
        resource = "*" if call.operation == "DescribeScalableTargets" else targets[
            (call.parameters["ResourceId"], call.parameters["ScalableDimension"])]
        found.append(Need(OPERATION_PERMISSIONS[call.name], resource, (), call.name))
    return found


def assert_allows_all(policy: dict[str, Any], calls: list[RecordedCall],
                      targets: dict[tuple[str, str], str]) -> set[str]:
    """Every need of ``calls`` is allowed; returns the actions they needed."""
    found = every_need(calls, targets)
    refused = [need for need in found if not allows(policy, need)]
    assert not refused, f"the policy refuses {refused[:3]}"
    return {need.action for need in found}


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class Runs:
    bucket: str
    provisioned: str  # 5/5 with a GSI of 3/3, exported and imported into
    auto_scaled: str  # the same, auto-scaled: the table's reads and writes, the GSI's writes
    target: str  # 5/5 with a GSI of 3/3, imported into
    created: str  # a name --create-table would take: not there
    calls: dict[str, list[RecordedCall]] = field(default_factory=dict)
    #: Scalable target ARNs by (resource id, scalable dimension), as moto assigned them.
    targets: dict[tuple[str, str], str] = field(default_factory=dict)
    plans: dict[str, ddbpipe.JobPlan] = field(default_factory=dict)

    def allowed(self, policy: dict[str, Any], run: str) -> set[str]:
        return assert_allows_all(policy, self.calls[run], self.targets)

    def called(self, run: str) -> set[str]:
        return {call.name for call in self.calls[run]}


def provisioned_table(dynamodb: Any, name: str) -> str:
    dynamodb.create_table(
        TableName=name, BillingMode="PROVISIONED",
        ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "name")],
        GlobalSecondaryIndexes=[{
            "IndexName": INDEX, "KeySchema": [{"AttributeName": "name", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
            "ProvisionedThroughput": {"ReadCapacityUnits": 3, "WriteCapacityUnits": 3}}],
    )
    return name


@pytest.fixture(scope="module")
def runs(dynamodb_local: Any, s3_server: Any, tmp_path_factory: Any) -> Iterator[Runs]:
    dynamodb = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint,
                            region_name=REGION)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=REGION)
    scaling = boto3.client(AUTOSCALING, endpoint_url=s3_server.endpoint, region_name=REGION)
    suffix = uuid.uuid4().hex[:8]
    found = Runs(bucket=f"ddbpipe-iam-ops-{suffix}", provisioned=f"ops-prov-{suffix}",
                 auto_scaled=f"ops-scaled-{suffix}", target=f"ops-target-{suffix}",
                 created=f"ops-created-{suffix}")
    s3.create_bucket(Bucket=found.bucket)
    tables = [provisioned_table(dynamodb, name)
              for name in (found.provisioned, found.auto_scaled, found.target)]
    for item in random_items(60):
        dynamodb.put_item(TableName=found.provisioned, Item=item)
    scaled = [(f"table/{found.auto_scaled}", "dynamodb:table:ReadCapacityUnits"),
              (f"table/{found.auto_scaled}", "dynamodb:table:WriteCapacityUnits"),
              (f"table/{found.auto_scaled}/index/{INDEX}", "dynamodb:index:WriteCapacityUnits")]
    for resource, dimension in scaled:
        scaling.register_scalable_target(ServiceNamespace="dynamodb", ResourceId=resource,
                                         ScalableDimension=dimension, MinCapacity=2,
                                         MaxCapacity=20)
    folder = tmp_path_factory.mktemp("iam-ops")
    with (start_recording_endpoint(dynamodb_local.endpoint) as dynamodb_recorder,
          start_recording_endpoint(s3_server.endpoint) as moto_recorder,
          pytest.MonkeyPatch.context() as patch):
        dynamodb_recorder.answer("ListTagsOfResource", {"Tags": TABLE_TAGS})
        dynamodb_recorder.answer("DescribeContinuousBackups", CONTINUOUS_BACKUPS)
        # Application Auto Scaling through the recorder in front of moto, as AWS would serve it.
        patch.setenv("AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING", moto_recorder.endpoint)
        patch.chdir(folder)  # where an export writes down the capacity it raised
        try:
            run_every_job(Recorders(dynamodb_recorder, moto_recorder), found, folder)
            for target in scaling.describe_scalable_targets(
                    ServiceNamespace="dynamodb", ResourceIds=sorted({r for r, _ in scaled}),
            )["ScalableTargets"]:
                found.targets[(target["ResourceId"], target["ScalableDimension"])] = (
                    target["ScalableTargetARN"])
            yield found
        finally:
            for resource, dimension in scaled:
                with contextlib.suppress(Exception):
                    scaling.deregister_scalable_target(
                        ServiceNamespace="dynamodb", ResourceId=resource,
                        ScalableDimension=dimension)
            for table in tables:
                with contextlib.suppress(Exception):
                    dynamodb.delete_table(TableName=table)


def run_every_job(recorders: Recorders, runs: Runs, folder: Path) -> None:
    aws = recorders.aws
    export = f"s3://{runs.bucket}/exports/provisioned"

    def record(run: str) -> contextlib.AbstractContextManager[None]:
        return recorders.recording(runs.calls.setdefault(run, []))

    with record("export"):
        ddbpipe.export_table(ExportOptions(
            table=runs.provisioned, destination=export, segments=2, provision_rcu=50, aws=aws))
    with record("export-auto-scaled"):  # an empty table, to a local directory
        ddbpipe.export_table(ExportOptions(
            table=runs.auto_scaled, destination=str(folder / "local"), provision_rcu=50,
            aws=aws))
    for run, table in (("import", runs.target), ("import-auto-scaled", runs.auto_scaled)):
        with record(run):
            ddbpipe.import_table(ImportOptions(
                source=export, table=table, provision_wcu=50, target_wcu=4000, aws=aws,
                checkpoint=str(folder / f"{run}.checkpoint")))
    with record("plan-export"):
        runs.plans["plan-export"] = ddbpipe.plan_export(
            runs.provisioned, endpoint_url=aws.endpoint_url)
    for run, table, create in (("plan-import", runs.target, False),
                               ("plan-import-create", runs.created, True)):
        with record(run):
            runs.plans[run] = ddbpipe.plan_import(
                export, table=table, create_table=create, endpoint_url=aws.endpoint_url,
                s3_endpoint_url=aws.s3_endpoint_url)


# --- the recording tests ------------------------------------------------------------------------


def test_export_with_provision_allows_exactly_what_it_calls(runs: Runs) -> None:
    on_s3 = iam_policy_for("export", table=runs.provisioned, bucket=runs.bucket,
                           prefix="exports/provisioned", provision=True, **WHERE)
    needed = runs.allowed(on_s3, "export")
    local = iam_policy_for("export", table=runs.auto_scaled, provision=True, **WHERE)
    needed |= runs.allowed(local, "export-auto-scaled")
    # What --provision adds was all called (the export's own actions, multipart aborts among
    # them, are held to its calls by tests/test_iam_policy.py).
    plain = iam_policy_for("export", table=runs.provisioned, bucket=runs.bucket,
                           prefix="exports/provisioned", **WHERE)
    added = [s for s in on_s3["Statement"] if s not in plain["Statement"]]
    assert [s["Sid"] for s in added] == ["RaiseTheCapacityForTheJob", "FindTheAutoScaling",
                                         "RaiseTheAutoScaledMinimum"]
    assert actions_of({"Statement": added}) <= needed <= actions_of(on_s3)
    # What the runs were to show: the table's reads raised by UpdateTable and put back; the
    # auto-scaled table's through its scalable target, without UpdateTable.
    updates = [call for call in runs.calls["export"] if call.operation == "UpdateTable"]
    assert len(updates) == 2 and all("GlobalSecondaryIndexUpdates" not in call.parameters
                                     for call in updates)
    registered = [call.parameters["ScalableDimension"]
                  for call in runs.calls["export-auto-scaled"]
                  if call.operation == "RegisterScalableTarget"]
    assert registered == ["dynamodb:table:ReadCapacityUnits"] * 2  # raised, then put back
    assert "dynamodb:UpdateTable" not in runs.called("export-auto-scaled")


def test_import_with_provision_allows_exactly_what_it_calls(runs: Runs) -> None:
    needed: set[str] = set()
    for run, table in (("import", runs.target), ("import-auto-scaled", runs.auto_scaled)):
        policy = iam_policy_for("import", table=table, bucket=runs.bucket,
                                prefix="exports/provisioned", provision=True, **WHERE)
        needed |= runs.allowed(policy, run)
    assert needed == actions_of(policy)
    # The raise: the table's and its GSI's writes in one UpdateTable; put back one at a time.
    updates = [call.parameters for call in runs.calls["import"]
               if call.operation == "UpdateTable"]
    assert [("ProvisionedThroughput" in update, update.get("GlobalSecondaryIndexUpdates"))
            for update in updates] == [(True, 1), (True, None), (False, 1)]
    resources = {call.parameters["ResourceId"] for call in runs.calls["import-auto-scaled"]
                 if call.operation == "RegisterScalableTarget"}
    assert resources == {f"table/{runs.auto_scaled}", f"table/{runs.auto_scaled}/index/{INDEX}"}
    assert "dynamodb:UpdateTable" not in runs.called("import-auto-scaled")


def test_the_raise_names_the_gsis_for_an_import_only() -> None:
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders"

    def raised(job: str) -> list[str]:
        policy = iam_policy_for(job, table="orders", provision=True, **WHERE)
        (statement,) = [s for s in policy["Statement"] if s["Sid"] == "RaiseTheCapacityForTheJob"]
        assert statement["Action"] == ["dynamodb:DescribeTable", "dynamodb:UpdateTable"]
        return list(statement["Resource"])

    assert raised("export") == [table]
    assert raised("import") == [table, f"{table}/index/*"]


def test_plan_export_policy_allows_exactly_what_the_plan_reads(runs: Runs) -> None:
    policy = iam_policy_for("plan-export", table=runs.provisioned, **WHERE)
    assert runs.allowed(policy, "plan-export") == actions_of(policy) == {
        "dynamodb:DescribeTable", "dynamodb:Scan", "dynamodb:DescribeContinuousBackups"}
    assert runs.plans["plan-export"].pitr["status"] == "ENABLED"  # what the last call read


@pytest.mark.parametrize(("run", "create"), [("plan-import", False),
                                             ("plan-import-create", True)])
def test_plan_import_policy_allows_exactly_what_the_plan_reads(
    runs: Runs, run: str, create: bool
) -> None:
    table = runs.created if create else runs.target
    policy = iam_policy_for("plan-import", table=table, bucket=runs.bucket,
                            prefix="exports/provisioned", create_table=create, **WHERE)
    assert runs.allowed(policy, run) == actions_of(policy)
    reads = {call.operation for call in runs.calls[run] if call.service == "s3"}
    assert reads == {"ListObjectsV2", "HeadObject", "GetObject"}  # and nothing written
    # The table the plan would create is only looked for: not there, nothing more is asked.
    assert ("dynamodb:DescribeContinuousBackups" in actions_of(policy)) is not create
    assert runs.plans[run].items == 60


def test_plan_import_of_a_local_source_needs_the_table_only() -> None:
    policy = iam_policy_for("plan-import", table="orders", **WHERE)
    assert actions_of(policy) == {"dynamodb:DescribeTable", "dynamodb:DescribeContinuousBackups"}
    without_table = iam_policy_for("plan-import", bucket="archive", prefix="orders/", **WHERE)
    assert all(action.startswith("s3:") for action in actions_of(without_table))


# --- the policy itself ----------------------------------------------------------------------------

WITH_PROVISION = [
    ("export", dict(table="orders", bucket="archive", prefix="orders/2026-12", provision=True)),
    ("import", dict(table="orders", bucket="archive", prefix="orders/2026-12", provision=True,
                    create_table=True)),
    ("plan-export", dict(table="orders")),
    ("plan-import", dict(table="orders", bucket="archive", prefix="orders/2026-12",
                         kms_key_arn=KEY_ARN)),
]
ACTION = re.compile(r"(dynamodb|s3|kms|application-autoscaling):[A-Za-z]+")


@pytest.mark.parametrize(("job", "options"), WITH_PROVISION)
def test_every_policy_is_a_valid_document_of_named_scoped_actions(
    job: str, options: dict[str, Any]
) -> None:
    policy = json.loads(json.dumps(iam_policy_for(job, **options, **WHERE)))
    sids = [statement["Sid"] for statement in policy["Statement"]]
    assert len(set(sids)) == len(sids) and all(sid.isalnum() for sid in sids)
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Action"]
        assert all(ACTION.fullmatch(action) for action in statement["Action"])
        # "*" only where IAM takes nothing else.
        if statement["Resource"] == ["*"]:
            assert statement["Action"] == ["application-autoscaling:DescribeScalableTargets"]
        else:
            assert all(r.startswith("arn:aws:") for r in statement["Resource"])


def test_a_plan_of_an_import_decrypts_with_the_key_and_a_plan_of_an_export_needs_none() -> None:
    policy = iam_policy_for("plan-import", bucket="archive", prefix="p", kms_key_arn=KEY_ARN,
                            **WHERE)
    assert policy["Statement"][-1] == {"Sid": "DecryptWithTheKey", "Effect": "Allow",
                                       "Action": ["kms:Decrypt"], "Resource": [KEY_ARN]}
    export = iam_policy_for("plan-export", table="orders", **WHERE)
    assert all(action.startswith("dynamodb:") for action in actions_of(export))


def test_auto_scaling_is_held_to_the_accounts_scalable_targets_in_the_region() -> None:
    policy = iam_policy_for("import", table="orders", provision=True, region="cn-north-1",
                            account="111122223333")
    (register,) = [s for s in policy["Statement"]
                   if s["Action"] == ["application-autoscaling:RegisterScalableTarget"]]
    assert register["Resource"] == [
        "arn:aws-cn:application-autoscaling:cn-north-1:111122223333:scalable-target/*"]


@pytest.mark.parametrize("job", ["export", "import"])
def test_without_provision_nothing_of_it_is_asked(job: str) -> None:
    policy = iam_policy_for(job, table="orders", **WHERE)
    assert not {"dynamodb:UpdateTable", "application-autoscaling:DescribeScalableTargets",
                "application-autoscaling:RegisterScalableTarget"} & actions_of(policy)


@pytest.mark.parametrize(("job", "options", "message"), [
    ("backup", {}, "use one of export, import, verify, thaw, ls, plan-export, plan-import"),
    ("verify", {"bucket": "b", "provision": True}, "--provision does not change what verify"),
    ("plan-export", {"table": "orders", "provision": True}, "--provision does not change"),
    ("plan-import", {"bucket": "b", "provision": True}, "--provision does not change"),
    ("plan-export", {}, "plan-export needs --table: the table it samples"),
    ("plan-export", {"table": "orders", "bucket": "b", "prefix": "p"},
     "plan-export reads the table only, nothing on S3: drop --bucket, --prefix"),
    ("plan-export", {"table": "orders", "kms_key_arn": KEY_ARN},
     "nothing on S3: drop --kms-key-arn"),
    ("plan-import", {}, "plan-import of a local directory without --table calls no AWS API"),
    ("plan-import", {"bucket": "b", "create_table": True, "without_indexes": True},
     "--without-indexes does not change what plan-import calls"),
], ids=["unknown-job", "provision-with-verify", "provision-with-plan-export",
        "provision-with-plan-import", "plan-export-without-table", "plan-export-with-bucket",
        "plan-export-with-key", "plan-import-of-nothing", "plan-import-without-indexes"])
def test_bad_input_is_a_one_line_config_error(
    job: str, options: dict[str, Any], message: str
) -> None:
    assert_refused_in_one_line(job, options, message)


# --- the command --------------------------------------------------------------------------------


def run(*args: str) -> Result:
    """``ddbpipe iam-policy ARGS`` in this process (the real command, its exit code)."""
    return CliRunner().invoke(app, ["iam-policy", *args, "--region", REGION, "--account",
                                    ACCOUNT])


@pytest.mark.parametrize(("args", "options"), [
    (["import", "--table", "orders", "--bucket", "archive", "--provision"],
     dict(table="orders", bucket="archive", provision=True)),
    (["plan-export", "--table", "orders"], dict(table="orders")),
    (["plan-import", "--bucket", "archive", "--prefix", "orders/2026-12", "--table", "copy-1",
      "--create-table"],
     dict(bucket="archive", prefix="orders/2026-12", table="copy-1", create_table=True)),
], ids=["import-provision", "plan-export", "plan-import"])
def test_cli_prints_the_policy_as_json(args: list[str], options: dict[str, Any]) -> None:
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == iam_policy_for(args[0], **options, **WHERE)


def test_cli_bad_input_is_one_line_and_exit_2() -> None:
    result = run("plan-export", "--table", "orders", "--bucket", "archive")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: plan-export reads the table only, nothing on S3: drop --bucket"]


def test_cli_help_teaches_the_provision_flag_and_the_plans() -> None:
    result = subprocess.run([*DDBPIPE, "iam-policy", "--help"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)  # the terminal's rendering
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for shown in ("--provision", "plan-export", "plan-import", "--provision-rcu",
                  "RegisterScalableTarget"):
        assert shown in text, shown
