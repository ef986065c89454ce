"""``ddbpipe iam-policy export --point-in-time``, checked against what a real point-in-time
export calls.

As tests/test_iam_policy.py does (its helpers are used here): the export runs through
``tools.recording_endpoint`` in front of the native-export endpoint (point-in-time recovery
and ExportTableToPointInTime in front of DynamoDB Local) and in front of moto's S3, and the
policy must allow every recorded call. What DynamoDB itself writes into S3 (the native export,
as the caller) does not pass the S3 recorder: those actions are AWS's documented needs of
ExportTableToPointInTime (s3:PutObject, s3:AbortMultipartUpload, s3:PutObjectAcl on the
destination), and the policy must grant exactly those besides what ddbpipe called.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

import ddbpipe
from ddbpipe.iam_policy import OPERATION_PERMISSIONS, iam_policy_for
from tests.conftest import put_items
from tests.exports import plain_items
from tests.test_iam_policy import ACCOUNT, REGION, WHERE, Need, actions_of, allows, needs
from tools.native_export_endpoint import start_native_export_endpoint
from tools.recording_endpoint import RecordedCall, start_recording_endpoint

#: What DynamoDB's native export does in S3 as the caller (AWS's documentation of
#: ExportTableToPointInTime), unseen by the recorder.
WRITTEN_BY_DYNAMODB = {"s3:PutObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl"}


def pitr_needs(calls: list[RecordedCall]) -> list[Need]:
    """``needs``, with the point-in-time calls' resources: ExportTableToPointInTime acts on
    its TableArn, DescribeExport on its ExportArn (both named by the test's region and
    account, as real AWS would name them)."""
    found: list[Need] = []
    for call in calls:
        arn = call.parameters.get("TableArn") or call.parameters.get("ExportArn")
        if call.service != "dynamodb" or not arn:
            found += needs([call])
            continue
        resource = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{arn.split(':table/', 1)[1]}"
        found.append(Need(OPERATION_PERMISSIONS[call.name], resource, (), call.name))
    return found


@contextlib.contextmanager
def recorded_export(
    dynamodb_local: Any, s3_server: Any, destination: Callable[[str], str],
    staging: Callable[[str], str | None],
) -> Iterator[tuple[str, str, list[RecordedCall]]]:
    """A point-in-time export's recorded calls: (table, bucket, calls). ``destination`` and
    ``staging`` give the export's DEST and --staging from the test's bucket."""
    with (start_native_export_endpoint(dynamodb_local.endpoint, s3_server.endpoint,
                                       items_per_file=20) as native,
          start_recording_endpoint(native.endpoint) as dynamodb,
          start_recording_endpoint(s3_server.endpoint) as s3):
        client = boto3.client("dynamodb", endpoint_url=native.endpoint, region_name=REGION)
        table, bucket = f"iam-pitr-{uuid.uuid4().hex[:8]}", f"iam-pitr-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=s3_server.endpoint,
                     region_name=REGION).create_bucket(Bucket=bucket)
        client.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk",
                                                   "AttributeType": "S"}])
        client.update_continuous_backups(TableName=table, PointInTimeRecoverySpecification={
            "PointInTimeRecoveryEnabled": True})
        put_items(client, table, plain_items(50))
        try:
            dynamodb.clear()
            s3.clear()
            ddbpipe.export_table(table, destination(bucket), point_in_time="latest",
                                 staging=staging(bucket),
                                 aws=ddbpipe.AwsOptions(endpoint_url=dynamodb.endpoint,
                                                        s3_endpoint_url=s3.endpoint,
                                                        region=REGION))
            assert dynamodb.wait_idle() and s3.wait_idle()
            yield table, bucket, dynamodb.calls() + s3.calls()
        finally:
            with contextlib.suppress(Exception):
                client.delete_table(TableName=table)


@pytest.fixture(scope="module")
def recorded(dynamodb_local: Any, s3_server: Any) -> Iterator[tuple[str, str, list[Any]]]:
    """An export to S3, staged in its state folder."""
    with recorded_export(dynamodb_local, s3_server, lambda bucket: f"s3://{bucket}/snapshots/one",
                         lambda bucket: None) as found:
        yield found


@pytest.fixture(scope="module")
def recorded_local(
    dynamodb_local: Any, s3_server: Any, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, list[Any]]]:
    """An export to a local directory, staged in s3://bucket/staging/."""
    destination = str(tmp_path_factory.mktemp("pitr-local") / "snapshot")
    with recorded_export(dynamodb_local, s3_server, lambda bucket: destination,
                         lambda bucket: f"s3://{bucket}/staging") as found:
        yield found


def pitr_policy(table: str, bucket: str) -> dict[str, Any]:
    return iam_policy_for("export", table=table, bucket=bucket, prefix="snapshots/one/",
                          point_in_time=True, **WHERE)


def test_the_point_in_time_policy_allows_what_the_export_calls_and_no_more(
    recorded: tuple[str, str, list[RecordedCall]],
) -> None:
    table, bucket, calls = recorded
    policy = pitr_policy(table, bucket)
    found = pitr_needs(calls)
    refused = [need for need in found if not allows(policy, need)]
    assert not refused, f"the policy refuses {refused[:3]}"
    called = {need.action for need in found}
    assert {"dynamodb:ExportTableToPointInTime", "dynamodb:DescribeExport",
            "dynamodb:DescribeContinuousBackups", "s3:DeleteObject"} <= called
    assert "dynamodb:Scan" not in actions_of(policy)  # no read capacity, no Scan
    assert actions_of(policy) - called <= WRITTEN_BY_DYNAMODB


def test_dynamodb_may_write_its_native_export_into_the_state_folder_only(
    recorded: tuple[str, str, list[RecordedCall]],
) -> None:
    table, bucket, _ = recorded
    policy = pitr_policy(table, bucket)
    staged = f"arn:aws:s3:::{bucket}/snapshots/one/_ddbpipe-state/native/x/data/a.json.gz"
    for action in WRITTEN_BY_DYNAMODB:
        assert allows(policy, Need(action, staged))
    outside = f"arn:aws:s3:::{bucket}/snapshots/one/data/a.json.gz"
    assert not allows(policy, Need("s3:PutObjectAcl", outside))


def test_a_staging_place_elsewhere_is_listed_written_read_and_emptied_and_nothing_more(
    recorded_local: tuple[str, str, list[RecordedCall]],
) -> None:
    table, bucket, calls = recorded_local
    policy = iam_policy_for("export", table=table, point_in_time=True,
                            staging=f"s3://{bucket}/staging", **WHERE)
    found = pitr_needs(calls)
    refused = [need for need in found if not allows(policy, need)]
    assert not refused, f"the policy refuses {refused[:3]}"
    called = {need.action for need in found}
    assert {"s3:GetObject", "s3:DeleteObject", "s3:ListBucket"} <= called
    assert actions_of(policy) - called <= WRITTEN_BY_DYNAMODB
    # Nothing outside the staging place: the export itself is a local directory.
    outside = f"arn:aws:s3:::{bucket}/elsewhere/a.json.gz"
    assert not any(allows(policy, Need(action, outside)) for action in actions_of(policy))


def test_with_staging_elsewhere_the_dest_state_folder_is_not_granted_to_dynamodb() -> None:
    policy = iam_policy_for("export", table="orders", bucket="archive", prefix="orders/",
                            point_in_time=True, staging="s3://scratch/stage", **WHERE)
    state = "arn:aws:s3:::archive/orders/_ddbpipe-state/native/x/data/a.json.gz"
    staged = "arn:aws:s3:::scratch/stage/x/data/a.json.gz"
    for action in WRITTEN_BY_DYNAMODB:
        assert allows(policy, Need(action, staged))
    assert not allows(policy, Need("s3:PutObjectAcl", state))


@pytest.mark.parametrize(("settings", "words"), [
    ({"provision": True}, "nothing is raised: drop --provision"),
    ({"bucket": None}, "--point-in-time needs --bucket and --prefix, or --staging"),
    ({"point_in_time": False, "staging": "s3://scratch/x"}, "--staging goes with --point-in-time"),
    ({"staging": "/tmp/stage"}, "give the export's s3://bucket/prefix"),
    ({"staging": "s3://no such/x"}, "is not an S3 bucket name"),
])
def test_point_in_time_settings_that_cannot_work_are_refused(
    settings: dict[str, Any], words: str,
) -> None:
    given = {"table": "orders", "bucket": "archive", "prefix": "p/", "point_in_time": True, **WHERE,
             **settings}
    with pytest.raises(ddbpipe.ConfigError, match=words):
        iam_policy_for("export", **given)
