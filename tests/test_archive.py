"""Exports into a locked-down bucket: encryption with a KMS key, Object Lock, storage class,
S3's own checksums and tags on every object, and an expected bucket owner on every S3 call;
against moto's S3 and KMS server and DynamoDB Local."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

import ddbpipe
from ddbpipe.config import ArchiveOptions, AwsOptions, ExportOptions
from ddbpipe.export_job import run_export
from ddbpipe.manifest import MANIFEST_KEY
from ddbpipe.progress import JobProgress
from tests.endpoints import faulty_s3_proxy
from tests.exports import plain_items, scan_table, sorted_items
from tests.test_storage_s3 import CallRecordingClient, wrapping

OWNER = "111122223333"
STRANGER = "999999999999"


@pytest.fixture
def kms_key(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A KMS key on moto's server, which ddbpipe reaches through AWS_ENDPOINT_URL_KMS."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", s3_server.endpoint)
    kms = boto3.client("kms", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    return str(kms.create_key(Description="ddbpipe archive tests")["KeyMetadata"]["KeyId"])


@pytest.fixture
def locked_bucket(s3_client: Any) -> str:
    """A new bucket with Object Lock enabled (and so versioning)."""
    name = f"ddbpipe-vault-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def export_options(table: str, url: str, endpoint: str, s3: str, **settings: Any) -> ExportOptions:
    return ExportOptions(
        table=table, destination=url, segments=2, shard_bytes=4096, page_size=40,
        aws=AwsOptions(endpoint_url=endpoint, s3_endpoint_url=s3), **settings,
    )


def keys_under(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def tags_of(s3_client: Any, bucket: str, key: str, **version: str) -> dict[str, str]:
    tagging = s3_client.get_object_tagging(Bucket=bucket, Key=key, **version)["TagSet"]
    return {tag["Key"]: tag["Value"] for tag in tagging}


ARCHIVE = dict(
    sse="aws:kms", storage_class="STANDARD_IA", object_lock_mode="COMPLIANCE", retain_for="2d",
    legal_hold=True, checksum_algorithm="SHA256", tags=(("team", "data"), ("keep", "7y")),
)


def test_every_object_of_an_archive_export_carries_the_options(
    dynamodb_local: Any, make_table: Any, s3_server: Any, s3_client: Any, locked_bucket: str,
    kms_key: str,
) -> None:
    table = make_table(plain_items(400))
    prefix = "orders/2026-12"
    archive = ArchiveOptions(**ARCHIVE, sse_kms_key_id=kms_key)
    started = datetime.now(UTC)
    summary = ddbpipe.export_table(export_options(
        table, f"s3://{locked_bucket}/{prefix}", dynamodb_local.endpoint, s3_server.endpoint,
        archive=archive,
    ))
    assert summary.items == 400 and summary.shards > 2
    keys = keys_under(s3_client, locked_bucket, prefix)
    shards = [key for key in keys if "/data/" in key]
    assert len(shards) == summary.shards and f"{prefix}/{MANIFEST_KEY}" in keys
    for key in keys:
        head = s3_client.head_object(Bucket=locked_bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith(kms_key), key
        assert head["ObjectLockMode"] == "COMPLIANCE", key
        assert head["ObjectLockLegalHoldStatus"] == "ON", key
        until = head["ObjectLockRetainUntilDate"]
        assert started.replace(microsecond=0) + timedelta(days=2) <= until, key
        assert until <= datetime.now(UTC) + timedelta(days=2, seconds=1), key
        assert head["ChecksumSHA256"], key
        assert tags_of(s3_client, locked_bucket, key) == {"team": "data", "keep": "7y"}, key
        # Data goes cold; manifests stay STANDARD (S3 reports no class for STANDARD).
        assert head.get("StorageClass") == ("STANDARD_IA" if key in shards else None), key
    # The export's state is encrypted but not locked, and gone (a delete marker) at the end.
    versions = s3_client.list_object_versions(Bucket=locked_bucket, Prefix=f"{prefix}/_ddbpipe")
    state = versions.get("Versions", [])
    assert state and all(marker["IsLatest"] for marker in versions.get("DeleteMarkers", []))
    for version in state:
        head = s3_client.head_object(Bucket=locked_bucket, Key=version["Key"],
                                     VersionId=version["VersionId"])
        assert head["ServerSideEncryption"] == "aws:kms" and "ObjectLockMode" not in head
        assert head.get("ObjectLockLegalHoldStatus") != "ON" and "StorageClass" not in head
    # A COMPLIANCE-locked shard cannot be deleted, not even its version.
    shard_version = s3_client.head_object(Bucket=locked_bucket, Key=shards[0])["VersionId"]
    with pytest.raises(ClientError) as refused:
        s3_client.delete_object(Bucket=locked_bucket, Key=shards[0], VersionId=shard_version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # The options in force are recorded in the manifest; the data reads back.
    manifest_body = s3_client.get_object(Bucket=locked_bucket, Key=f"{prefix}/{MANIFEST_KEY}")
    recorded = json.loads(manifest_body["Body"].read())["archive"]
    assert recorded["sse"] == "aws:kms" and recorded["sse_kms_key_id"] == kms_key
    assert recorded["storage_class"] == "STANDARD_IA"
    assert recorded["object_lock_mode"] == "COMPLIANCE" and recorded["legal_hold"] is True
    assert recorded["checksum_algorithm"] == "SHA256"
    assert recorded["tags"] == {"team": "data", "keep": "7y"}
    assert datetime.fromisoformat(recorded["retain_until"]) == until
    report = ddbpipe.verify_export(f"s3://{locked_bucket}/{prefix}", read_data=True,
                                   s3_endpoint_url=s3_server.endpoint)
    assert report.ok and report.items_read == 400


def test_a_bucket_without_object_lock_is_refused_before_anything_is_written(
    dynamodb_local: Any, make_table: Any, s3_server: Any, s3_client: Any, s3_bucket: str
) -> None:
    table = make_table(plain_items(20))
    archive = ArchiveOptions(object_lock_mode="GOVERNANCE", retain_until=datetime(2040, 1, 1,
                             tzinfo=UTC))
    with pytest.raises(ddbpipe.ConfigError, match="does not have Object Lock enabled") as caught:
        ddbpipe.export_table(export_options(
            table, f"s3://{s3_bucket}/x", dynamodb_local.endpoint, s3_server.endpoint,
            archive=archive,
        ))
    assert "\n" not in str(caught.value) and "--object-lock-mode" in str(caught.value)
    assert keys_under(s3_client, s3_bucket, "") == []


def test_a_kms_key_that_does_not_exist_is_refused_before_anything_is_written(
    dynamodb_local: Any, make_table: Any, s3_server: Any, s3_client: Any, s3_bucket: str,
    kms_key: str,
) -> None:
    table = make_table(plain_items(20))
    missing = str(uuid.uuid4())
    archive = ArchiveOptions(sse="aws:kms", sse_kms_key_id=missing)
    with pytest.raises(ddbpipe.ConfigError, match=f"KMS key '{missing}' cannot encrypt") as caught:
        ddbpipe.export_table(export_options(
            table, f"s3://{s3_bucket}/x", dynamodb_local.endpoint, s3_server.endpoint,
            archive=archive,
        ))
    assert "--sse-kms-key-id" in str(caught.value) and "\n" not in str(caught.value)
    assert keys_under(s3_client, s3_bucket, "") == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"storage_class": "FROZEN"}, "unknown --storage-class 'FROZEN'"),
        ({"sse": "AES256", "sse_kms_key_id": "k"}, "--sse-kms-key-id goes with --sse aws:kms"),
        ({"object_lock_mode": "COMPLIANCE"}, "needs --retain-until or --retain-for"),
        ({"retain_for": "7y"}, "need --object-lock-mode"),
        ({"object_lock_mode": "GOVERNANCE", "retain_for": "7 years"}, "e.g. 90d, 7y"),
        ({"tags": (("a", "1"), ("a", "2"))}, "given twice"),
        ({"checksum_algorithm": "MD5"}, "unknown --checksum-algorithm 'MD5'"),
    ],
)
def test_archive_options_that_cannot_work_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ddbpipe.ConfigError, match=message):
        ArchiveOptions(**settings)


def test_a_retention_date_in_the_past_is_refused(
    dynamodb_local: Any, make_table: Any, s3_server: Any, s3_client: Any, locked_bucket: str
) -> None:
    archive = ArchiveOptions(object_lock_mode="GOVERNANCE",
                             retain_until=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(ddbpipe.ConfigError, match="2020-01-01 is not in the future"):
        ddbpipe.export_table(export_options(
            make_table(plain_items(5)), f"s3://{locked_bucket}/x", dynamodb_local.endpoint,
            s3_server.endpoint, archive=archive,
        ))
    assert keys_under(s3_client, locked_bucket, "") == []


def test_a_resumed_archive_export_keeps_every_option(
    dynamodb_local: Any, make_table: Any, dynamodb_client: Any, s3_server: Any, s3_client: Any,
    locked_bucket: str, kms_key: str,
) -> None:
    table = make_table(plain_items(1500))
    url = f"s3://{locked_bucket}/resumed"
    archive = ArchiveOptions(**ARCHIVE, sse_kms_key_id=kms_key)
    options = export_options(table, url, dynamodb_local.endpoint, s3_server.endpoint,
                             archive=archive)

    async def cancel_after_some_shards() -> None:
        progress = JobProgress()
        job = asyncio.create_task(run_export(options, progress))
        while progress.shards < 3:
            await asyncio.sleep(0.005)
            assert not job.done()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(cancel_after_some_shards())
    before = set(keys_under(s3_client, locked_bucket, "resumed/data/"))
    # Resumed without the options: the saved ones apply.
    summary = ddbpipe.export_table(export_options(
        table, url, dynamodb_local.endpoint, s3_server.endpoint, resume=True,
    ))
    assert summary.resumed and summary.items == 1500
    after = set(keys_under(s3_client, locked_bucket, "resumed/data/")) - before
    assert after, "the resume wrote no shard of its own"
    first_head = s3_client.head_object(Bucket=locked_bucket, Key=sorted(before)[0])
    for key in after:
        head = s3_client.head_object(Bucket=locked_bucket, Key=key)
        assert head["SSEKMSKeyId"].endswith(kms_key) and head["StorageClass"] == "STANDARD_IA"
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] == first_head["ObjectLockRetainUntilDate"]
        assert tags_of(s3_client, locked_bucket, key) == {"team": "data", "keep": "7y"}
    report = ddbpipe.verify_export(url, read_data=True, s3_endpoint_url=s3_server.endpoint)
    assert report.ok and report.items_read == 1500
    assert sorted_items(scan_table(dynamodb_client, table))  # the table is still there


def test_resuming_with_other_archive_options_is_refused(
    dynamodb_local: Any, make_table: Any, s3_server: Any, locked_bucket: str, kms_key: str,
    s3_client: Any,
) -> None:
    table = make_table(plain_items(600))
    url = f"s3://{locked_bucket}/other"
    archive = ArchiveOptions(sse="aws:kms", sse_kms_key_id=kms_key)
    options = export_options(table, url, dynamodb_local.endpoint, s3_server.endpoint,
                             archive=archive)

    async def cancel_at_once() -> None:
        progress = JobProgress()
        job = asyncio.create_task(run_export(options, progress))
        while progress.shards < 1:
            await asyncio.sleep(0.005)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(cancel_at_once())
    with pytest.raises(ddbpipe.ResumeError, match="archive options --sse"):
        ddbpipe.export_table(export_options(
            table, url, dynamodb_local.endpoint, s3_server.endpoint, resume=True,
            archive=ArchiveOptions(sse="AES256"),
        ))


def test_every_s3_call_of_every_command_names_the_expected_bucket_owner(
    tmp_path: Any, dynamodb_local: Any, make_table: Any, dynamodb_client: Any, s3_server: Any,
    s3_bucket: str,
) -> None:
    source = make_table(plain_items(200))
    target = make_table()
    url = f"s3://{s3_bucket}/owned"

    async def through_an_owner_checking_proxy() -> tuple[list[Any], int, BaseException]:
        async with faulty_s3_proxy(s3_server.endpoint, faults=0, bucket_owner=OWNER) as proxy:
            aws = AwsOptions(endpoint_url=dynamodb_local.endpoint, s3_endpoint_url=proxy.endpoint,
                             expected_bucket_owner=OWNER)
            await ddbpipe.export_table_async(ExportOptions(
                table=source, destination=url, segments=2, shard_bytes=4096, aws=aws))
            report = await ddbpipe.verify_export_async(url, read_data=True, aws=aws)
            assert report.ok
            await ddbpipe.import_table_async(ddbpipe.ImportOptions(
                source=url, table=target, aws=aws, checkpoint=str(tmp_path / "checkpoint")))
            (listed,) = await ddbpipe.list_exports_async(f"s3://{s3_bucket}/", aws=aws)
            assert listed.complete and listed.items == 200
            thawed = await ddbpipe.thaw_export_async(url, aws=aws)
            assert thawed.requested == 0 and thawed.not_archived == thawed.shards
            owned_calls = len(proxy.seen)
            stranger = AwsOptions(endpoint_url=dynamodb_local.endpoint,
                                  s3_endpoint_url=proxy.endpoint, expected_bucket_owner=STRANGER)
            with pytest.raises(ddbpipe.AccessDeniedError) as refused:
                await ddbpipe.verify_export_async(url, aws=stranger)
            return proxy.seen, owned_calls, refused.value

    seen, owned_calls, refused = asyncio.run(through_an_owner_checking_proxy())
    owners = [headers.get("x-amz-expected-bucket-owner") for _, _, headers in seen]
    assert owned_calls > 20 and owners[:owned_calls] == [OWNER] * owned_calls
    assert owners[owned_calls:] == [STRANGER] and "s3:ListObjectsV2" in str(refused)
    assert sorted_items(scan_table(dynamodb_client, target)) == sorted_items(
        scan_table(dynamodb_client, source))


def recording(options: AwsOptions, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    """The store's client factory, its clients keeping the parameters of every call."""
    return wrapping(options, lambda client: CallRecordingClient(client, calls))


@pytest.mark.parametrize(("algorithm", "checksum_type"),
                         [("CRC32C", "FULL_OBJECT"), ("SHA256", "COMPOSITE")])
def test_a_multipart_shard_carries_the_options_and_s3_checks_its_checksum(
    tmp_path: Any, s3_server: Any, s3_client: Any, locked_bucket: str, algorithm: str,
    checksum_type: str,
) -> None:
    from ddbpipe.storage.s3 import S3Store
    from ddbpipe.storage.uploads import MULTIPART_THRESHOLD

    path = tmp_path / "shard"
    path.write_bytes(uuid.uuid4().bytes * ((MULTIPART_THRESHOLD + (1 << 20)) // 16))
    archive = ArchiveOptions(
        sse="AES256", storage_class="GLACIER_IR", object_lock_mode="GOVERNANCE",
        retain_for="1d", checksum_algorithm=algorithm, tags=(("k", "v"),),
    ).resolved(datetime.now(UTC))
    options = AwsOptions(s3_endpoint_url=s3_server.endpoint)
    calls: list[tuple[str, dict[str, Any]]] = []

    async def upload() -> None:
        async with S3Store(locked_bucket, "big/", options,
                           client_factory=recording(options, calls)) as store:
            await store.put_file("data/00000-000000.json.zst", str(path), archive=archive)

    asyncio.run(upload())
    key = "big/data/00000-000000.json.zst"
    head = s3_client.head_object(Bucket=locked_bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-5")  # it went up as a multipart upload
    assert head["ServerSideEncryption"] == "AES256" and head["StorageClass"] == "GLACIER_IR"
    assert head[f"Checksum{algorithm}"] and head.get("ChecksumType") == checksum_type
    assert tags_of(s3_client, locked_bucket, key) == {"k": "v"}
    # moto keeps no lock on multipart uploads, so the request is what shows it was asked for.
    created = [params for name, params in calls if name == "create_multipart_upload"]
    assert created[0]["ObjectLockMode"] == "GOVERNANCE"
    assert created[0]["ObjectLockRetainUntilDate"] == archive.retain_until
    parts = [params for name, params in calls if name == "upload_part"]
    assert len(parts) == 5 and all(part["ChecksumAlgorithm"] == algorithm for part in parts)
    assert all("ContentMD5" in part for part in parts)  # Object Lock needs an integrity header
