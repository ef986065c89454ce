"""``ddbpipe export --point-in-time``: DynamoDB's native export of a moment, made a ddbpipe export.

Against DynamoDB Local and moto's S3 behind ``tools/native_export_endpoint.py``, which answers
DescribeContinuousBackups, ExportTableToPointInTime and DescribeExport as DynamoDB does and
keeps each item's history, so an export at a past time shows the table as it was then.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest

import ddbpipe
from ddbpipe import AwsOptions, ExportOptions
from ddbpipe.config import ArchiveOptions
from ddbpipe.export_job import run_export
from ddbpipe.manifest import STATE_PREFIX, decode_manifest
from ddbpipe.progress import JobProgress
from ddbpipe.shards import iter_shard_items
from tests.conftest import put_items
from tests.exports import FIDELITY_ITEMS, normalized, plain_items, scan_table, sorted_items
from tests.test_errors_catalogue import ddbpipe_cli
from tools.native_export_endpoint import NativeExportEndpoint, start_native_export_endpoint

REGION = "us-east-1"


@pytest.fixture(scope="module")
def endpoint(dynamodb_local: Any, s3_server: Any) -> Iterator[NativeExportEndpoint]:
    # Several data files per export, so a snapshot converts into several segments.
    with start_native_export_endpoint(dynamodb_local.endpoint, s3_server.endpoint,
                                      items_per_file=40, partitions=2) as served:
        yield served


@pytest.fixture
def dynamodb(endpoint: NativeExportEndpoint) -> Any:
    """A client whose writes go through the endpoint, so it knows each item's history."""
    return boto3.client("dynamodb", endpoint_url=endpoint.endpoint, region_name=REGION)


@pytest.fixture
def aws(endpoint: NativeExportEndpoint, s3_server: Any) -> AwsOptions:
    return AwsOptions(endpoint_url=endpoint.endpoint, s3_endpoint_url=s3_server.endpoint,
                      region=REGION)


@pytest.fixture
def table(dynamodb: Any) -> Iterator[str]:
    name = f"pitr-{uuid.uuid4().hex[:10]}"
    dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    yield name
    dynamodb.delete_table(TableName=name)


def recovery_on(dynamodb: Any, table: str) -> None:
    dynamodb.update_continuous_backups(
        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def exported_items(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The items of the finished export at s3://bucket/prefix, shard by shard as its
    manifest lists them."""
    manifest = decode_manifest(s3.get_object(Bucket=bucket, Key=f"{prefix}/ddbpipe-manifest.json")
                               ["Body"].read())
    items: list[dict[str, Any]] = []
    for shard in manifest.shards:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{shard.key}")["Body"].read()
        items += [msgspec.json.decode(item) for item in iter_shard_items([body], shard.key)]
    return items


def as_wire(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted_items([normalized(item) for item in items])


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [entry["Key"] for entry in listed.get("Contents", [])]


@pytest.mark.parametrize("data_format", ["ndjson", "parquet"])
def test_a_point_in_time_export_is_the_table_as_it_was_then(
    data_format: str, dynamodb: Any, table: str, aws: AwsOptions, s3_client: Any,
    s3_bucket: str,
) -> None:
    recovery_on(dynamodb, table)
    put_items(dynamodb, table, FIDELITY_ITEMS + plain_items(150))
    before = scan_table(dynamodb, table)  # as DynamoDB keeps them (numbers normalised)
    time.sleep(0.05)
    moment = time.time()
    time.sleep(0.05)
    # After the moment: an overwrite, a delete and a new item, none of which it may show.
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "item-00001"}, "v": {"S": "later"}})
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": "item-00002"}})
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "written-later"}})

    summary = ddbpipe.export_table(ExportOptions(
        table=table, destination=f"s3://{s3_bucket}/snap", format=data_format,
        point_in_time=iso(moment), shard_bytes=16_384, aws=aws))

    assert as_wire(exported_items(s3_client, s3_bucket, "snap")) == sorted_items(before)
    manifest = decode_manifest(s3_client.get_object(
        Bucket=s3_bucket, Key="snap/ddbpipe-manifest.json")["Body"].read())
    snapshot = manifest.plan.point_in_time
    assert snapshot is not None and snapshot.export_arn.startswith("arn:aws:dynamodb:")
    exported_at = datetime.fromisoformat(snapshot.export_time).timestamp()
    assert exported_at == pytest.approx(moment, abs=0.002)
    assert summary.point_in_time == snapshot.export_time
    assert summary.items == len(before) and summary.consumed_rcu == 0
    assert manifest.plan.segments > 1  # one segment per data file of the native export
    # The native export's files went with the state: only our export is left.
    assert not keys_under(s3_client, s3_bucket, f"snap/{STATE_PREFIX}")
    assert ddbpipe.verify_export(f"s3://{s3_bucket}/snap", read_data=True, aws=aws).ok


def test_a_point_in_time_export_keeps_the_archive_options(
    dynamodb: Any, table: str, aws: AwsOptions, s3_client: Any, s3_bucket: str,
) -> None:
    recovery_on(dynamodb, table)
    put_items(dynamodb, table, plain_items(30))
    archive = ArchiveOptions(sse="AES256", storage_class="STANDARD_IA",
                             tags=(("retention", "7y"),))
    ddbpipe.export_table(ExportOptions(table=table, destination=f"s3://{s3_bucket}/a",
                                       point_in_time="latest", archive=archive, aws=aws))
    shards = keys_under(s3_client, s3_bucket, "a/data/")
    assert shards
    for key in shards:
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256" and head["StorageClass"] == "STANDARD_IA"
        tags = s3_client.get_object_tagging(Bucket=s3_bucket, Key=key)["TagSet"]
        assert tags == [{"Key": "retention", "Value": "7y"}]


def test_latest_into_a_local_directory_stages_in_s3_and_cleans_up(
    dynamodb: Any, table: str, aws: AwsOptions, s3_client: Any, s3_bucket: str,
    tmp_path: Path,
) -> None:
    recovery_on(dynamodb, table)
    put_items(dynamodb, table, plain_items(60))
    destination = tmp_path / "snapshot"
    run = ddbpipe_cli("export", table, str(destination), "--point-in-time", "latest",
                      "--staging", f"s3://{s3_bucket}/staging", "--json",
                      "--endpoint-url", str(aws.endpoint_url),
                      "--s3-endpoint-url", str(aws.s3_endpoint_url), "--region", REGION)
    assert run.code == 0, run.stderr
    summary = msgspec.json.decode(run.stdout)
    assert summary["items"] == 60 and summary["point_in_time"].endswith("Z")
    assert ddbpipe.verify_export(str(destination), read_data=True, aws=aws).ok
    assert not keys_under(s3_client, s3_bucket, "staging/")


def test_the_library_takes_point_in_time_as_keywords(
    dynamodb: Any, table: str, aws: AwsOptions, s3_bucket: str,
) -> None:
    recovery_on(dynamodb, table)
    put_items(dynamodb, table, plain_items(5))
    summary = ddbpipe.export_table(table, f"s3://{s3_bucket}/kw", point_in_time="latest",
                                   aws=aws)
    assert summary.items == 5 and summary.point_in_time


def test_recovery_off_is_one_error_with_the_command_and_writes_nothing(
    table: str, aws: AwsOptions, s3_client: Any, s3_bucket: str,
) -> None:
    with pytest.raises(ddbpipe.PointInTimeError) as raised:
        ddbpipe.export_table(ExportOptions(table=table, destination=f"s3://{s3_bucket}/x",
                                           point_in_time="latest", aws=aws))
    message = str(raised.value)
    assert f"point-in-time recovery is off for table {table}" in message
    assert (f"aws dynamodb update-continuous-backups --table-name {table} "
            "--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true") in message
    assert "\n" not in message
    assert not keys_under(s3_client, s3_bucket, "")


def test_a_time_before_recovery_was_on_names_the_window_and_writes_nothing(
    dynamodb: Any, table: str, aws: AwsOptions, s3_client: Any, s3_bucket: str,
) -> None:
    too_early = time.time() - 3600
    recovery_on(dynamodb, table)
    with pytest.raises(ddbpipe.PointInTimeError, match="recovery window"):
        ddbpipe.export_table(ExportOptions(table=table, destination=f"s3://{s3_bucket}/x",
                                           point_in_time=iso(too_early), aws=aws))
    assert not keys_under(s3_client, s3_bucket, "")


@pytest.mark.parametrize("settings", [
    {"max_rcu": 10.0}, {"segments": 4}, {"consistent_read": True}, {"page_size": 10},
    {"provision_rcu": 100}, {"cluster": "local:2"},
])
def test_scan_options_with_point_in_time_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ddbpipe.ConfigError, match="point-in-time export reads no table"):
        ExportOptions(table="t", destination="s3://b/p", point_in_time="latest", **settings)


@pytest.mark.parametrize(("settings", "words"), [
    ({"point_in_time": "yesterday"}, "give 'latest' or a time like"),
    ({"point_in_time": "latest", "destination": "/tmp/x"}, "give --staging s3://"),
    ({"point_in_time": "latest", "staging": "/tmp/staging"}, "exports only to S3"),
    ({"staging": "s3://b/staging"}, "--staging is only for --point-in-time"),
])
def test_point_in_time_settings_that_cannot_work_are_refused(
    settings: dict[str, Any], words: str,
) -> None:
    given = {"table": "t", "destination": "s3://b/p", **settings}
    with pytest.raises(ddbpipe.ConfigError, match=words):
        ExportOptions(**given)


async def stopped_when(options: ExportOptions, reached: Any) -> None:
    """Run the export until ``reached(progress)``, then cancel it (a killed run's state)."""
    progress = JobProgress()
    job = asyncio.create_task(run_export(options, progress))
    while not reached(progress) and not job.done():
        await asyncio.sleep(0.002)
    assert not job.done(), "the export finished before it could be stopped"
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job


def native_exports(dynamodb: Any, table: str) -> list[str]:
    arn = dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
    return [e["ExportArn"] for e in dynamodb.list_exports(TableArn=arn)["ExportSummaries"]]


@pytest.mark.parametrize("stage", ["waiting", "converting"])
def test_a_stopped_point_in_time_export_resumes_with_the_same_native_export(
    stage: str, dynamodb: Any, table: str, aws: AwsOptions, s3_client: Any, s3_bucket: str,
) -> None:
    recovery_on(dynamodb, table)
    put_items(dynamodb, table, plain_items(200))
    items = scan_table(dynamodb, table)
    options = ExportOptions(table=table, destination=f"s3://{s3_bucket}/r",
                            point_in_time="latest", shard_bytes=2048, max_concurrency=1,
                            aws=aws)
    if stage == "waiting":
        def reached(progress: JobProgress) -> bool:
            return bool(progress.waiting_for)
    else:
        def reached(progress: JobProgress) -> bool:
            return progress.shards >= 2
    asyncio.run(stopped_when(options, reached))
    summary = ddbpipe.export_table(ExportOptions(
        table=table, destination=f"s3://{s3_bucket}/r", resume=True, aws=aws))
    assert summary.resumed and summary.items == len(items)
    assert as_wire(exported_items(s3_client, s3_bucket, "r")) == sorted_items(items)
    assert len(native_exports(dynamodb, table)) == 1
    assert not keys_under(s3_client, s3_bucket, f"r/{STATE_PREFIX}")


def test_a_failed_native_export_is_one_error_and_resume_asks_for_a_new_one(
    dynamodb_local: Any, s3_server: Any, s3_client: Any, s3_bucket: str,
) -> None:
    # Its own endpoint: DynamoDB takes 1 s, time to take the staging bucket away meanwhile.
    with start_native_export_endpoint(dynamodb_local.endpoint, s3_server.endpoint,
                                      export_seconds=1.0) as slow:
        client = boto3.client("dynamodb", endpoint_url=slow.endpoint, region_name=REGION)
        table = f"pitr-{uuid.uuid4().hex[:10]}"
        client.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        recovery_on(client, table)
        put_items(client, table, plain_items(30))
        staging = f"ddbpipe-staging-{uuid.uuid4().hex[:8]}"
        s3_client.create_bucket(Bucket=staging)
        aws = AwsOptions(endpoint_url=slow.endpoint, s3_endpoint_url=s3_server.endpoint,
                         region=REGION)
        options = ExportOptions(table=table, destination=f"s3://{s3_bucket}/f",
                                point_in_time="latest", staging=f"s3://{staging}/s", aws=aws)

        async def without_its_bucket() -> None:
            progress = JobProgress()
            job = asyncio.create_task(run_export(options, progress))
            while not progress.waiting_for and not job.done():
                await asyncio.sleep(0.002)
            for key in keys_under(s3_client, staging, ""):
                s3_client.delete_object(Bucket=staging, Key=key)
            s3_client.delete_bucket(Bucket=staging)
            await job

        with pytest.raises(ddbpipe.PointInTimeError) as raised:
            asyncio.run(without_its_bucket())
        assert "failed: S3NoSuchBucket" in str(raised.value)
        assert "--resume" in str(raised.value)
        s3_client.create_bucket(Bucket=staging)
        summary = ddbpipe.export_table(ExportOptions(
            table=table, destination=f"s3://{s3_bucket}/f", resume=True, aws=aws))
        assert summary.items == 30
        assert len(native_exports(client, table)) == 2  # the failed one, and a new one
        client.delete_table(TableName=table)


def test_an_endpoint_without_point_in_time_recovery_is_named_and_nothing_written(
    dynamodb_local: Any, make_table: Any, tmp_path: Path, s3_bucket: str,
) -> None:
    table = make_table(plain_items(3))
    run = ddbpipe_cli("export", table, str(tmp_path / "x"), "--point-in-time", "latest",
                      "--staging", f"s3://{s3_bucket}/s", "--endpoint-url",
                      dynamodb_local.endpoint, "--region", REGION)
    assert run.code == 1
    assert "has no point-in-time recovery (DynamoDB Local has none)" in run.stderr
    assert not (tmp_path / "x").exists()
