"""End-to-end export tests against DynamoDB Local and moto's S3 server."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

import ddbpipe
from ddbpipe.config import AwsOptions, ExportOptions
from ddbpipe.export_job import run_export
from ddbpipe.manifest import (
    AWS_FILES_KEY,
    AWS_SUMMARY_KEY,
    MANIFEST_KEY,
    STATE_KEY,
    STATE_PREFIX,
    decode_manifest,
    md5_base64,
)
from ddbpipe.progress import JobProgress
from ddbpipe.retry import ManualClock
from ddbpipe.scan import plan_segments
from tests.exports import (
    FIDELITY_ITEMS,
    plain_items,
    read_local_export,
    scan_table,
    sorted_items,
)


@pytest.fixture
def fidelity_table(make_table: Any) -> str:
    return str(make_table(FIDELITY_ITEMS + plain_items(300)))


@pytest.mark.parametrize(
    ("data_format", "compression"),
    [("ndjson", "zstd"), ("ndjson", "gzip"), ("ndjson", "none"), ("parquet", None)],
)
def test_export_round_trips_every_type_exactly(
    tmp_path: Path, endpoint: str, fidelity_table: str, dynamodb_client: Any,
    data_format: Any, compression: Any,
) -> None:
    dest = tmp_path / "export"
    summary = ddbpipe.export_table(
        fidelity_table, str(dest), segments=4, format=data_format, compression=compression,
        endpoint_url=endpoint, shard_bytes=16 * 1024, page_size=25,
    )
    source = sorted_items(scan_table(dynamodb_client, fidelity_table))
    exported = sorted_items(read_local_export(dest))
    assert exported == source
    assert summary.items == len(source) == len(FIDELITY_ITEMS) + 300
    # The 16 KiB bound rolled shards: more than one shard per segment somewhere.
    assert summary.shards > 4
    assert not (dest / STATE_PREFIX).exists()


def test_ndjson_lines_are_aws_export_lines_and_duckdb_reads_them(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(plain_items(500))
    dest = tmp_path / "export"
    ddbpipe.export_table(table, str(dest), segments=3, compression="gzip", endpoint_url=endpoint)
    rows = duckdb.sql(
        f"select count(*), count(distinct Item.pk.S), sum(cast(Item.n.N as bigint)) "
        f"from read_json('{dest}/data/*.json.gz', format='newline_delimited')"
    ).fetchall()[0]
    assert rows == (500, 500, sum(range(500)))


def test_parquet_export_has_typed_columns_duckdb_can_group_by(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    items = [
        {"pk": {"S": f"customer#{i % 7}"}, "sk": {"N": str(i)}, "total": {"N": f"{i}.25"},
         "status": {"S": "open" if i % 3 else "closed"}, "tags": {"SS": ["a"]}}
        for i in range(700)
    ]
    table = make_table(items, range_key=("sk", "N"))
    dest = tmp_path / "export"
    ddbpipe.export_table(table, str(dest), segments=2, format="parquet", endpoint_url=endpoint)
    grouped = dict(
        duckdb.sql(
            f"select pk, count(*) from read_parquet('{dest}/data/*.parquet') group by pk"
        ).fetchall()
    )
    assert grouped == {f"customer#{k}": len(range(k, 700, 7)) for k in range(7)}
    total, max_sk, closed = duckdb.sql(
        f"select sum(total), max(sk), count(*) filter (where status = 'closed') "
        f"from read_parquet('{dest}/data/*.parquet', union_by_name=true)"
    ).fetchall()[0]
    assert float(total) == pytest.approx(sum(i + 0.25 for i in range(700)))
    assert max_sk == 699
    assert closed == len(range(0, 700, 3))
    columns = {row[0] for row in duckdb.sql(
        f"describe select * from read_parquet('{dest}/data/*.parquet')").fetchall()}
    assert {"pk", "sk", "_item", "total", "status"} <= columns
    assert "tags" not in columns  # sets stay in _item only
    report = ddbpipe.verify_export(str(dest), read_data=True)
    assert report.ok and report.items_read == 700, report.problems
    assert not (dest / "manifest-summary.json").exists()  # AWS manifests are for NDJSON only


def test_export_to_s3_writes_aws_compatible_manifests(
    endpoint: str, s3_server: Any, s3_bucket: str, s3_client: Any, make_table: Any
) -> None:
    table = make_table(plain_items(400))
    dest = f"s3://{s3_bucket}/exports/{table}"
    summary = ddbpipe.export_table(
        table, dest, segments=4, endpoint_url=endpoint, s3_endpoint_url=s3_server.endpoint,
        shard_bytes=16 * 1024, page_size=40,
    )
    prefix = f"exports/{table}/"

    def get(key: str) -> bytes:
        return bytes(s3_client.get_object(Bucket=s3_bucket, Key=prefix + key)["Body"].read())

    summary_doc = json.loads(get(AWS_SUMMARY_KEY))
    assert summary_doc["itemCount"] == 400 == summary.items
    assert summary_doc["outputFormat"] == "DYNAMODB_JSON"
    assert summary_doc["s3Bucket"] == s3_bucket
    assert summary_doc["manifestFilesS3Key"] == prefix + AWS_FILES_KEY
    assert get("manifest-summary.md5").decode() == md5_base64(get(AWS_SUMMARY_KEY))
    files = [json.loads(line) for line in get(AWS_FILES_KEY).splitlines()]
    assert get("manifest-files.md5").decode() == md5_base64(get(AWS_FILES_KEY))
    assert sum(line["itemCount"] for line in files) == 400
    for line in files:
        head = s3_client.head_object(Bucket=s3_bucket, Key=line["dataFileS3Key"])
        assert head["ETag"].strip('"') == line["etag"]
    manifest = decode_manifest(get(MANIFEST_KEY))
    assert manifest.plan.table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    report = ddbpipe.verify_export(dest, read_data=True, s3_endpoint_url=s3_server.endpoint)
    assert report.ok, report.problems
    assert report.items_read == 400
    # Nothing of the run's state is left behind.
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [k for k in keys if STATE_PREFIX in k]


def test_manifest_keeps_what_it_takes_to_recreate_the_table(
    tmp_path: Path, endpoint: str, dynamodb_client: Any
) -> None:
    table = f"schema-{uuid.uuid4().hex[:12]}"
    dynamodb_client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                              for n in ("pk", "sk", "name", "lsi")],
        BillingMode="PROVISIONED",
        ProvisionedThroughput={"ReadCapacityUnits": 7, "WriteCapacityUnits": 9},
        GlobalSecondaryIndexes=[{
            "IndexName": "by-name", "KeySchema": [{"AttributeName": "name", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
            "ProvisionedThroughput": {"ReadCapacityUnits": 3, "WriteCapacityUnits": 4},
        }],
        LocalSecondaryIndexes=[{
            "IndexName": "by-lsi", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                                 {"AttributeName": "lsi", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    try:
        dynamodb_client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"}
        )
        dynamodb_client.put_item(TableName=table, Item={"pk": {"S": "a"}, "sk": {"S": "b"}})
        dest = tmp_path / "export"
        ddbpipe.export_table(table, str(dest), segments=1, endpoint_url=endpoint)
        schema = decode_manifest((dest / MANIFEST_KEY).read_bytes()).plan.table
        assert schema["BillingMode"] == "PROVISIONED"
        assert schema["ProvisionedThroughput"] == {"ReadCapacityUnits": 7, "WriteCapacityUnits": 9}
        (gsi,) = schema["GlobalSecondaryIndexes"]
        assert gsi["IndexName"] == "by-name"
        assert gsi["Projection"] == {"ProjectionType": "KEYS_ONLY"}
        assert gsi["ProvisionedThroughput"] == {"ReadCapacityUnits": 3, "WriteCapacityUnits": 4}
        (lsi,) = schema["LocalSecondaryIndexes"]
        assert lsi["IndexName"] == "by-lsi" and lsi["Projection"]["ProjectionType"] == "ALL"
        assert schema["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"
        assert schema["TimeToLive"] == {"Enabled": True, "AttributeName": "expires"}
    finally:
        dynamodb_client.delete_table(TableName=table)


def test_finished_destination_is_never_written_again(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(plain_items(20))
    dest = tmp_path / "export"
    ddbpipe.export_table(table, str(dest), segments=2, endpoint_url=endpoint)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    with pytest.raises(ddbpipe.DestinationExistsError, match="already holds a finished export"):
        ddbpipe.export_table(table, str(dest), segments=2, endpoint_url=endpoint)
    with pytest.raises(ddbpipe.DestinationExistsError):
        ddbpipe.export_table(table, str(dest), resume=True, endpoint_url=endpoint)
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before


def test_missing_table_is_a_one_line_error_and_writes_nothing(
    tmp_path: Path, endpoint: str
) -> None:
    dest = tmp_path / "never"
    with pytest.raises(ddbpipe.TableNotFoundError) as caught:
        ddbpipe.export_table("no-such-table", str(dest), endpoint_url=endpoint)
    message = str(caught.value)
    assert "no-such-table" in message and "\n" not in message
    assert not dest.exists()


def test_missing_bucket_is_a_clear_error(endpoint: str, s3_server: Any, make_table: Any) -> None:
    table = make_table(plain_items(3))
    with pytest.raises(ddbpipe.BucketNotFoundError, match="no-such-bucket-x"):
        ddbpipe.export_table(
            table, "s3://no-such-bucket-x/p", endpoint_url=endpoint,
            s3_endpoint_url=s3_server.endpoint,
        )


def test_resume_without_unfinished_export_is_refused(tmp_path: Path, endpoint: str,
                                                     make_table: Any) -> None:
    table = make_table(plain_items(3))
    with pytest.raises(ddbpipe.ResumeError, match="nothing to resume"):
        ddbpipe.export_table(table, str(tmp_path / "empty"), resume=True, endpoint_url=endpoint)


def test_cancelled_export_resumes_without_missing_or_duplicate_items(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(plain_items(3000))
    dest = tmp_path / "export"
    options = ExportOptions(
        table=table, destination=str(dest), segments=3, shard_bytes=8 * 1024, page_size=50,
        aws=AwsOptions(endpoint_url=endpoint),
    )

    async def cancel_after_some_shards() -> None:
        progress = JobProgress()
        job = asyncio.create_task(run_export(options, progress))
        while progress.shards < 5:
            await asyncio.sleep(0.005)
            assert not job.done()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(cancel_after_some_shards())
    assert (dest / STATE_KEY).exists() and not (dest / MANIFEST_KEY).exists()
    # A shard stored just before the kill but never checkpointed must not survive.
    (dest / "data" / "00001-099999.json.zst").write_bytes(b"left over")
    with pytest.raises(ddbpipe.DestinationExistsError, match="--resume"):
        ddbpipe.export_table(table, str(dest), endpoint_url=endpoint)
    with pytest.raises(ddbpipe.ResumeError, match="format"):
        ddbpipe.export_table(table, str(dest), resume=True, format="parquet",
                             endpoint_url=endpoint)
    summary = ddbpipe.export_table(table, str(dest), resume=True, endpoint_url=endpoint)
    assert summary.resumed and summary.items == 3000
    assert sorted_items(read_local_export(dest)) == sorted_items(scan_table(dynamodb_client, table))
    assert not (dest / "data" / "00001-099999.json.zst").exists()
    assert ddbpipe.verify_export(str(dest), read_data=True).ok


def test_max_rcu_holds_the_read_rate(tmp_path: Path, endpoint: str, make_table: Any) -> None:
    table = make_table(plain_items(2000))
    max_rcu, segments, page_size = 5.0, 2, 100
    summary = ddbpipe.export_table(
        table, str(tmp_path / "e"), segments=segments, max_rcu=max_rcu, page_size=page_size,
        endpoint_url=endpoint,
    )
    assert summary.items == 2000
    # Each page of 100 items (< 16 KB) costs at most 2 RCU (4 KB units, halved); the last page
    # of each segment is charged after it was read, and the bucket starts with 1 s of credit.
    unpaid = max_rcu + segments * 2.0
    assert summary.consumed_rcu > 2 * unpaid, "the table must cost well over the free credit"
    assert summary.seconds >= (summary.consumed_rcu - unpaid) / max_rcu


def test_segment_plan_follows_table_size() -> None:
    assert plan_segments(0, cores=2) == 2
    assert plan_segments(100 * 1024**3, cores=2) == 50
    assert plan_segments(10**18, cores=2) == 10_000


def test_the_export_reads_the_time_from_the_clock_it_is_given(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(plain_items(50))
    wall = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()
    options = ExportOptions(table=table, destination=str(tmp_path / "e"), segments=2,
                            aws=AwsOptions(endpoint_url=endpoint))
    summary = asyncio.run(run_export(options, clock=ManualClock(wall_start=wall)))
    manifest = decode_manifest((tmp_path / "e" / MANIFEST_KEY).read_bytes())
    assert manifest.plan.start_time == manifest.end_time == "2031-05-06T07:08:09.000Z"
    assert summary.export_id.startswith(f"{int(wall * 1000):013d}-")
    assert summary.seconds == 0  # nothing waited on the manual clock
