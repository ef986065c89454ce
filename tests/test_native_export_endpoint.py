"""The native export endpoint (tools/native_export_endpoint.py) against DynamoDB Local and
moto's S3 server: point-in-time recovery, ExportTableToPointInTime at now and in the past,
AWS's S3 layout read back with ddbpipe's own AWS-export reader, and the API's errors."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import ddbpipe
from ddbpipe.config import AwsOptions
from ddbpipe.manifest import aws_time
from ddbpipe.retry import ManualClock
from tests.exports import FIDELITY_ITEMS, plain_items, scan_table, sorted_items
from tests.test_sources import puts_of, read_source
from tools.native_export_endpoint import NativeExportEndpoint, start_native_export_endpoint

EXPORT_SECONDS = 30.0


@pytest.fixture
def clock() -> ManualClock:
    # Whole seconds, so every time survives the trip through boto3 and ISO-8601 exactly.
    return ManualClock(wall_start=float(int(time.time())))


@pytest.fixture
def endpoint(dynamodb_local: Any, s3_server: Any, clock: ManualClock,
             request: pytest.FixtureRequest) -> Iterator[NativeExportEndpoint]:
    options = getattr(request, "param", {})
    with start_native_export_endpoint(dynamodb_local.endpoint, s3_server.endpoint, clock=clock,
                                      export_seconds=EXPORT_SECONDS, **options) as server:
        yield server


@pytest.fixture
def client(endpoint: NativeExportEndpoint) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint.endpoint, region_name="us-east-1")


# --- helpers --------------------------------------------------------------------------------


def table_arn(client: Any, table: str) -> str:
    return str(client.describe_table(TableName=table)["Table"]["TableArn"])


def enable_pitr(client: Any, table: str) -> dict[str, Any]:
    reply = client.update_continuous_backups(
        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    return dict(reply["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"])


def error_code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


def export(client: Any, table: str, bucket: str, **options: Any) -> dict[str, Any]:
    options.setdefault("S3Prefix", f"exports/{uuid.uuid4().hex[:8]}")
    reply = client.export_table_to_point_in_time(
        TableArn=table_arn(client, table), S3Bucket=bucket, **options)
    return dict(reply["ExportDescription"])


def finish(client: Any, clock: ManualClock, description: dict[str, Any]) -> dict[str, Any]:
    clock.advance(EXPORT_SECONDS)
    reply = client.describe_export(ExportArn=description["ExportArn"])
    return dict(reply["ExportDescription"])


def export_base(description: dict[str, Any]) -> str:
    """The export's ``.../AWSDynamoDB/<id>/`` from the bucket root."""
    return str(description["ExportManifest"]).removesuffix("manifest-summary.json")


def read_export(s3_server: Any, bucket: str, base: str) -> list[dict[str, Any]]:
    """The export's items, read by ddbpipe's AWS-export reader, normalized and sorted."""
    source, records = read_source(f"s3://{bucket}/{base}",
                                  AwsOptions(s3_endpoint_url=s3_server.endpoint))
    assert source.kind == "aws-full"
    return puts_of(records)


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- point-in-time recovery -----------------------------------------------------------------


def test_continuous_backups_round_trip_and_an_export_needs_them(
    client: Any, clock: ManualClock, make_table: Any, s3_bucket: str
) -> None:
    table = make_table(plain_items(3))
    described = client.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    assert described == {
        "ContinuousBackupsStatus": "ENABLED",
        "PointInTimeRecoveryDescription": {"PointInTimeRecoveryStatus": "DISABLED"},
    }
    with pytest.raises(ClientError) as caught:
        export(client, table, s3_bucket)
    assert error_code(caught) == "PointInTimeRecoveryUnavailableException"
    assert f"'{table}'" in str(caught.value)

    enabled_at = clock.time()
    enabled = enable_pitr(client, table)
    assert enabled["PointInTimeRecoveryStatus"] == "ENABLED"
    assert enabled["RecoveryPeriodInDays"] == 35
    assert enabled["EarliestRestorableDateTime"].timestamp() == enabled_at
    clock.advance(60)
    pitr = client.describe_continuous_backups(TableName=table)[
        "ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr["EarliestRestorableDateTime"].timestamp() == enabled_at
    assert pitr["LatestRestorableDateTime"].timestamp() == enabled_at + 60

    disabled = client.update_continuous_backups(
        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    assert disabled["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"] == {
        "PointInTimeRecoveryStatus": "DISABLED"}
    # A table deleted and created again under its name starts with recovery off.
    enable_pitr(client, table)
    schema = client.describe_table(TableName=table)["Table"]
    client.delete_table(TableName=table)
    client.create_table(TableName=table, KeySchema=schema["KeySchema"],
                        AttributeDefinitions=schema["AttributeDefinitions"],
                        BillingMode="PAY_PER_REQUEST")
    pitr = client.describe_continuous_backups(TableName=table)[
        "ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr == {"PointInTimeRecoveryStatus": "DISABLED"}


def test_a_missing_table_is_table_not_found(client: Any, s3_bucket: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    calls = [
        lambda: client.describe_continuous_backups(TableName=missing),
        lambda: client.update_continuous_backups(
            TableName=missing,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}),
        lambda: client.export_table_to_point_in_time(
            TableArn=f"arn:aws:dynamodb:us-east-1:123456789012:table/{missing}",
            S3Bucket=s3_bucket),
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        assert error_code(caught) == "TableNotFoundException"


# --- exports --------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [{"items_per_file": 40, "partitions": 2}], indirect=True)
def test_an_export_at_now_is_the_table_in_aws_layout(
    client: Any, clock: ManualClock, make_table: Any, s3_bucket: str, s3_client: Any,
    s3_server: Any, dynamodb_local: Any, dynamodb_client: Any,
) -> None:
    items = FIDELITY_ITEMS + plain_items(150)
    table = make_table(items)
    enable_pitr(client, table)
    clock.advance(5)
    started = export(client, table, s3_bucket, S3Prefix="runs/one/")  # a trailing slash
    assert started["ExportStatus"] == "IN_PROGRESS"
    assert started["ExportTime"].timestamp() == clock.time()
    assert started["ExportFormat"] == "DYNAMODB_JSON" and started["ExportType"] == "FULL_EXPORT"
    export_id = started["ExportArn"].rsplit("/", 1)[1]
    assert started["ExportArn"] == f"{table_arn(client, table)}/export/{export_id}"
    assert export_id[:14] == f"{int(clock.time() * 1000):014d}" and len(export_id) == 23
    base = f"runs/one/AWSDynamoDB/{export_id}/"
    assert s3_client.get_object(Bucket=s3_bucket, Key=base + "_started")["Body"].read() == b""

    done = finish(client, clock, started)
    assert done["ExportStatus"] == "COMPLETED"
    assert done["ExportManifest"] == base + "manifest-summary.json"
    assert done["ItemCount"] == len(items) and done["BilledSizeBytes"] > 399_000

    def get(key: str) -> bytes:
        return bytes(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())

    summary_doc, files_doc = get(base + "manifest-summary.json"), get(base + "manifest-files.json")
    assert get(base + "manifest-summary.md5").decode() == b64_md5(summary_doc)
    assert get(base + "manifest-files.md5").decode() == b64_md5(files_doc)
    summary = json.loads(summary_doc)
    assert summary == {
        "version": "2020-06-30", "exportArn": done["ExportArn"],
        "startTime": aws_time(done["StartTime"].timestamp()),
        "endTime": aws_time(done["EndTime"].timestamp()),
        "tableArn": done["TableArn"], "tableId": done["TableId"],
        "exportTime": aws_time(done["ExportTime"].timestamp()), "s3Bucket": s3_bucket,
        "s3Prefix": "runs/one/", "s3SseAlgorithm": "AES256", "s3SseKmsKeyId": None,
        "manifestFilesS3Key": base + "manifest-files.json",
        "billedSizeBytes": done["BilledSizeBytes"], "itemCount": len(items),
        "outputFormat": "DYNAMODB_JSON",
    }
    assert summary["exportTime"].endswith(".000Z")
    entries = [json.loads(line) for line in files_doc.splitlines()]
    assert len(entries) >= 4  # 153 items over 2 partitions, at most 40 a file
    assert sum(entry["itemCount"] for entry in entries) == len(items)
    lines = []
    for entry in entries:
        assert entry["dataFileS3Key"].startswith(base + "data/")
        assert entry["dataFileS3Key"].endswith(".json.gz")
        stored = get(entry["dataFileS3Key"])
        assert entry["md5Checksum"] == b64_md5(stored)
        head = s3_client.head_object(Bucket=s3_bucket, Key=entry["dataFileS3Key"])
        assert entry["etag"] == head["ETag"].strip('"')
        file_lines = gzip.decompress(stored).splitlines()
        assert 0 < len(file_lines) == entry["itemCount"] <= 40
        lines += [json.loads(line) for line in file_lines]
    assert all(list(line) == ["Item"] for line in lines)
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/")["Contents"]
    assert {o["Key"] for o in listed} == {
        base + name for name in ("_started", "manifest-summary.json", "manifest-summary.md5",
                                 "manifest-files.json", "manifest-files.md5")
    } | {entry["dataFileS3Key"] for entry in entries}

    expected = sorted_items(scan_table(dynamodb_client, table))  # numbers as DynamoDB has them
    assert len(expected) == len(items)
    assert read_export(s3_server, s3_bucket, base) == expected
    assert read_export(s3_server, s3_bucket, "runs/one/") == expected  # the prefix above
    # ... and imported by ddbpipe into a new table, it is the table.
    target = make_table()
    imported = ddbpipe.import_table(f"s3://{s3_bucket}/{base}", target,
                                    endpoint_url=dynamodb_local.endpoint,
                                    s3_endpoint_url=s3_server.endpoint)
    assert imported.source_kind == "aws-full" and imported.items_written == len(items)
    assert sorted_items(scan_table(dynamodb_client, target)) == expected


def test_an_export_at_a_past_time_is_the_table_as_it_was(
    client: Any, clock: ManualClock, make_table: Any, s3_bucket: str, s3_server: Any,
    dynamodb_client: Any,
) -> None:
    before = plain_items(10, "before")  # written before recovery was on, not through it
    table = make_table(before)
    enable_pitr(client, table)
    clock.advance(1)
    first = plain_items(30, "a")
    for start in range(0, 30, 25):
        client.batch_write_item(RequestItems={
            table: [{"PutRequest": {"Item": item}} for item in first[start : start + 25]]})
    client.put_item(TableName=table, Item={"pk": {"S": "single"}, "b": {"B": b"\x00\xff"}})
    client.update_item(TableName=table, Key={"pk": {"S": "a#000000"}},
                       UpdateExpression="SET extra = :x",
                       ExpressionAttributeValues={":x": {"SS": ["p", "q"]}})
    clock.advance(1)
    then = clock.time()
    state_then = sorted_items(scan_table(dynamodb_client, table))
    assert len(state_then) == 10 + 30 + 1
    clock.advance(1)

    # Overwrite, update, delete and add, through the endpoint, by every kind of write.
    client.put_item(TableName=table, Item={"pk": {"S": "a#000001"}, "n": {"N": "-1"}})
    client.update_item(TableName=table, Key={"pk": {"S": "a#000000"}},
                       UpdateExpression="REMOVE extra SET n = :n",
                       ExpressionAttributeValues={":n": {"N": "999"}})
    client.delete_item(TableName=table, Key={"pk": {"S": "a#000002"}})
    client.delete_item(TableName=table, Key={"pk": {"S": "before#000003"}})
    clock.advance(1)
    client.batch_write_item(RequestItems={table: [
        {"PutRequest": {"Item": {"pk": {"S": "new-1"}}}},
        {"PutRequest": {"Item": {"pk": {"S": "a#000003"}, "gone": {"BOOL": True}}}},
        {"DeleteRequest": {"Key": {"pk": {"S": "a#000004"}}}},
        {"DeleteRequest": {"Key": {"pk": {"S": "single"}}}},
    ]})
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": table, "Item": {"pk": {"S": "new-2"}}}},
        {"Delete": {"TableName": table, "Key": {"pk": {"S": "a#000005"}}}},
        {"Update": {"TableName": table, "Key": {"pk": {"S": "before#000004"}},
                    "UpdateExpression": "SET n = :n", "ExpressionAttributeValues": {
                        ":n": {"N": "0"}}}},
    ])
    with pytest.raises(ClientError):  # a refused write changes nothing
        client.put_item(TableName=table, Item={"pk": {"S": "a#000006"}},
                        ConditionExpression="attribute_not_exists(pk)")
    clock.advance(1)
    state_now = sorted_items(scan_table(dynamodb_client, table))
    assert state_now != state_then

    at_then = export(client, table, s3_bucket, ExportTime=then)
    at_now = export(client, table, s3_bucket)
    clock.advance(EXPORT_SECONDS)
    for description, expected in ((at_then, state_then), (at_now, state_now)):
        done = client.describe_export(ExportArn=description["ExportArn"])["ExportDescription"]
        assert done["ExportStatus"] == "COMPLETED"
        assert read_export(s3_server, s3_bucket, export_base(done)) == expected


def test_describe_export_progress_client_tokens_and_listing(
    client: Any, clock: ManualClock, make_table: Any, s3_bucket: str
) -> None:
    table = make_table(plain_items(5))
    arn = table_arn(client, table)
    enable_pitr(client, table)
    first = export(client, table, s3_bucket, S3Prefix="p1", ClientToken="token-1")
    again = export(client, table, s3_bucket, S3Prefix="p1", ClientToken="token-1")
    assert again["ExportArn"] == first["ExportArn"] and again["ClientToken"] == "token-1"
    with pytest.raises(ClientError) as caught:
        export(client, table, s3_bucket, S3Prefix="p2", ClientToken="token-1")
    assert error_code(caught) == "ExportConflictException"
    second = export(client, table, s3_bucket, S3Prefix="p2", ClientToken="token-2")
    assert second["ExportArn"] != first["ExportArn"]

    clock.advance(EXPORT_SECONDS - 1)
    in_progress = client.describe_export(ExportArn=first["ExportArn"])["ExportDescription"]
    assert in_progress["ExportStatus"] == "IN_PROGRESS"
    assert "EndTime" not in in_progress and "ItemCount" not in in_progress
    clock.advance(1)
    completed = client.describe_export(ExportArn=first["ExportArn"])["ExportDescription"]
    assert completed["ExportStatus"] == "COMPLETED" and completed["ItemCount"] == 5
    assert completed["EndTime"].timestamp() == first["StartTime"].timestamp() + EXPORT_SECONDS

    page = client.list_exports(TableArn=arn, MaxResults=1)
    assert page["ExportSummaries"] == [{"ExportArn": first["ExportArn"],
                                        "ExportStatus": "COMPLETED",
                                        "ExportType": "FULL_EXPORT"}]
    rest = client.list_exports(TableArn=arn, MaxResults=1, NextToken=page["NextToken"])
    assert [s["ExportArn"] for s in rest["ExportSummaries"]] == [second["ExportArn"]]
    assert "NextToken" not in rest
    everything = [s["ExportArn"] for s in client.list_exports()["ExportSummaries"]]
    assert {first["ExportArn"], second["ExportArn"]} <= set(everything)

    with pytest.raises(ClientError) as caught:
        client.describe_export(ExportArn=f"{arn}/export/01234567890123-abcdef01")
    assert error_code(caught) == "ExportNotFoundException"


@pytest.mark.parametrize("endpoint", [{"latest_lag": 300.0}], indirect=True)
def test_export_times_outside_the_window_and_unsupported_options(
    client: Any, clock: ManualClock, make_table: Any, s3_bucket: str
) -> None:
    table = make_table(plain_items(2))
    clock.advance(10)
    enabled = enable_pitr(client, table)
    earliest = enabled["EarliestRestorableDateTime"].timestamp()
    clock.advance(600)
    pitr = client.describe_continuous_backups(TableName=table)[
        "ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr["LatestRestorableDateTime"].timestamp() == clock.time() - 300
    for outside in (earliest - 1, clock.time() - 299, clock.time() + 60):
        with pytest.raises(ClientError) as caught:
            export(client, table, s3_bucket, ExportTime=outside)
        assert error_code(caught) == "InvalidExportTimeException"
    assert export(client, table, s3_bucket, ExportTime=earliest)["ExportStatus"] == "IN_PROGRESS"

    with pytest.raises(ClientError) as caught:
        export(client, table, s3_bucket, ExportFormat="ION")
    assert error_code(caught) == "ValidationException" and "ION" in str(caught.value)
    with pytest.raises(ClientError) as caught:
        export(client, table, s3_bucket, ExportType="INCREMENTAL_EXPORT")
    assert error_code(caught) == "ValidationException"
    assert "not supported by this endpoint" in str(caught.value)


def test_an_export_to_a_missing_bucket_fails_with_s3_no_such_bucket(
    client: Any, clock: ManualClock, make_table: Any
) -> None:
    table = make_table(plain_items(2))
    enable_pitr(client, table)
    started = export(client, table, f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    assert started["ExportStatus"] == "IN_PROGRESS"
    failed = finish(client, clock, started)
    assert failed["ExportStatus"] == "FAILED"
    assert failed["FailureCode"] == "S3NoSuchBucket"
    assert "bucket does not exist" in failed["FailureMessage"]
    listed = client.list_exports(TableArn=table_arn(client, table))["ExportSummaries"]
    assert [s["ExportStatus"] for s in listed] == ["FAILED"]


@pytest.mark.parametrize("endpoint", [{"partitions": 3}], indirect=True)
def test_an_empty_table_writes_an_empty_file_per_partition_and_kms_is_passed_on(
    client: Any, clock: ManualClock, make_table: Any, s3_bucket: str, s3_client: Any,
    s3_server: Any,
) -> None:
    table = make_table()
    enable_pitr(client, table)
    started = export(client, table, s3_bucket, S3Prefix="", S3SseAlgorithm="KMS",
                     S3SseKmsKeyId="alias/exports")
    done = finish(client, clock, started)
    base = export_base(done)
    assert base.startswith("AWSDynamoDB/")  # no leading slash without a prefix
    assert done["ItemCount"] == 0 and done["S3SseAlgorithm"] == "KMS"
    files = s3_client.get_object(Bucket=s3_bucket, Key=base + "manifest-files.json")
    entries = [json.loads(line) for line in files["Body"].read().splitlines()]
    assert [entry["itemCount"] for entry in entries] == [0, 0, 0]
    head = s3_client.head_object(Bucket=s3_bucket, Key=entries[0]["dataFileS3Key"])
    assert head["ServerSideEncryption"] == "aws:kms"
    summary = json.loads(s3_client.get_object(
        Bucket=s3_bucket, Key=base + "manifest-summary.json")["Body"].read())
    assert summary["s3SseAlgorithm"] == "KMS" and summary["s3SseKmsKeyId"] == "alias/exports"
    assert read_export(s3_server, s3_bucket, base) == []
    assert read_export(s3_server, s3_bucket, "") == []  # the bucket, the prefix above


def test_everything_else_passes_through_to_dynamodb_local(
    client: Any, make_table: Any
) -> None:
    table = make_table(plain_items(3))
    enable_pitr(client, table)
    assert table in client.list_tables(Limit=100)["TableNames"]
    assert len(client.scan(TableName=table)["Items"]) == 3
    with pytest.raises(ClientError) as caught:  # DynamoDB Local's own validation error
        client.put_item(TableName=table, Item={"pk": {"N": "1"}})
    assert error_code(caught) == "ValidationException"
