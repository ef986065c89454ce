"""Import sources against real files: exports made by the real exporter, AWS-native export
layouts built to the letter of FACTS.md, on moto's S3 server and in local directories."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

import ddbpipe
from ddbpipe import codec
from ddbpipe.config import AwsOptions
from ddbpipe.errors import CorruptDataError, FormatVersionError, StorageError
from ddbpipe.manifest import MANIFEST_KEY, STATE_KEY
from ddbpipe.records import WriteRecord
from ddbpipe.schema import KeyAttributes
from ddbpipe.sources import RECORDS_PER_BATCH, ImportSource, open_source, read_records
from ddbpipe.storage import open_store
from tests.exports import (
    FIDELITY_ITEMS,
    flip_middle_byte,
    normalized,
    plain_items,
    scan_table,
    sorted_items,
)

EXPORT_ID = "01234567890123-abcdefgh"
Put = Callable[[str, bytes], None]


@pytest.fixture
def s3_options(s3_server: Any) -> AwsOptions:
    return AwsOptions(s3_endpoint_url=s3_server.endpoint)


# --- helpers --------------------------------------------------------------------------------


async def _open_and_read(
    url: str, aws: AwsOptions | None
) -> tuple[ImportSource, list[list[WriteRecord]]]:
    async with open_store(url, aws) as store:
        source = await open_source(store)
        batches = []
        for file in source.files:
            async for batch in read_records(store, source, file, _table_keys(source)):
                batches.append(batch)
        return source, batches


def _table_keys(source: ImportSource) -> KeyAttributes:
    """The source's own keys, else a table keyed by pk (all of this file's test items are)."""
    return source.key_attributes or (("pk", "S"),)


def read_source(url: str, aws: AwsOptions | None = None) -> tuple[ImportSource, list[WriteRecord]]:
    source, batches = asyncio.run(_open_and_read(url, aws))
    return source, [record for batch in batches for record in batch]


def open_only(url: str, aws: AwsOptions | None = None) -> ImportSource:
    async def main() -> ImportSource:
        async with open_store(url, aws) as store:
            return await open_source(store)

    return asyncio.run(main())


def read_file_until_error(url: str, key: str) -> tuple[list[WriteRecord], Exception]:
    """Records handed out from one file before it raised, and the error."""

    async def main() -> tuple[list[WriteRecord], Exception]:
        received: list[WriteRecord] = []
        async with open_store(url) as store:
            source = await open_source(store)
            (file,) = [f for f in source.files if f.key == key]
            try:
                async for batch in read_records(store, source, file, _table_keys(source)):
                    received += batch
            except Exception as error:  # noqa: BLE001 - the test inspects it
                return received, error
        raise AssertionError(f"reading {key} did not fail")

    return asyncio.run(main())


def wire(value: Any) -> Any:
    """boto3-style DynamoDB JSON (binary as bytes) -> JSON-ready (binary as base64)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {name: wire(inner) for name, inner in value.items()}
    if isinstance(value, list):
        return [wire(inner) for inner in value]
    return value


def json_lines(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def write_aws_export(
    put: Put,
    data_files: list[list[dict[str, Any]]],
    *,
    root: str = "prefix/",
    incremental: bool = False,
    output_format: str = "DYNAMODB_JSON",
    summary_count: int | None = None,
) -> str:
    """An AWS-native export as FACTS.md describes it; ``put(bucket_key, data)`` stores a file.
    Returns the export's prefix from the bucket root."""
    base = f"{root}AWSDynamoDB/{EXPORT_ID}/"
    put(base + "_started", b"")
    entries = []
    for number, lines in enumerate(data_files):
        stored = gzip.compress(json_lines(lines))
        key = f"{base}data/file{number:02d}-{EXPORT_ID[-8:]}.json.gz"
        put(key, stored)
        entries.append(
            {"itemCount": len(lines), "md5Checksum": b64_md5(stored),
             "etag": hashlib.md5(stored).hexdigest(), "dataFileS3Key": key}
        )
    files_doc = json_lines(entries)
    put(base + "manifest-files.json", files_doc)
    put(base + "manifest-files.md5", b64_md5(files_doc).encode())
    summary: dict[str, Any] = {
        "version": "2023-08-01" if incremental else "2020-06-30",
        "exportArn": f"arn:aws:dynamodb:us-east-1:123456789012:table/t/export/{EXPORT_ID}",
        "startTime": "2026-01-01T00:00:00.000Z", "endTime": "2026-01-01T00:05:00.000Z",
        "tableArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t", "tableId": "x",
        "s3Bucket": "bucket", "s3Prefix": root.rstrip("/"), "s3SseAlgorithm": "AES256",
        "s3SseKmsKeyId": None, "manifestFilesS3Key": base + "manifest-files.json",
        "billedSizeBytes": 1000, "outputFormat": output_format,
        "itemCount": sum(map(len, data_files)) if summary_count is None else summary_count,
    }
    if incremental:
        summary.update(
            exportFromTime="2026-01-01T00:00:00.000Z", exportToTime="2026-01-01T01:00:00.000Z",
            outputView="NEW_AND_OLD_IMAGES", exportType="INCREMENTAL_EXPORT",
        )
    else:
        summary["exportTime"] = "2026-01-01T00:00:00.000Z"
    summary_doc = json.dumps(summary).encode()
    put(base + "manifest-summary.json", summary_doc)
    put(base + "manifest-summary.md5", b64_md5(summary_doc).encode())
    return base


def local_put(root: Path) -> Put:
    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return put


def s3_put(s3_client: Any, bucket: str) -> Put:
    def put(key: str, data: bytes) -> None:
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)

    return put


def full_lines(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"Item": wire(item)} for item in items]


def puts_of(records: list[WriteRecord]) -> list[dict[str, Any]]:
    assert all(record.kind == "put" for record in records)
    return sorted_items([normalized(record.item) for record in records])


def assert_sizes_right(records: list[WriteRecord]) -> None:
    for record in records:
        assert record.size == codec.item_size(record.item)


AWS_ITEMS = FIDELITY_ITEMS + plain_items(1500)


# --- ddbpipe exports ------------------------------------------------------------------------


def test_ddbpipe_ndjson_export_reads_back_every_item_with_its_size(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(FIDELITY_ITEMS + plain_items(2500))
    dest = tmp_path / "export"
    summary = ddbpipe.export_table(
        table, str(dest), segments=3, endpoint_url=endpoint, shard_bytes=64 * 1024,
        page_size=100,
    )
    source, records = read_source(str(dest))
    assert source.kind == "ddbpipe"
    assert source.export_id == summary.export_id
    assert source.item_count == summary.items == len(records)
    assert len(source.files) == summary.shards > 3
    assert all(file.sha256 and file.md5_b64 and file.size for file in source.files)
    assert {file.segment for file in source.files} == {0, 1, 2}
    assert sum(file.items or 0 for file in source.files) == summary.items
    assert source.key_attributes == (("pk", "S"),)
    assert source.table_schema is not None
    assert source.table_schema["TableName"] == table
    assert source.table_schema["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert puts_of(records) == sorted_items(scan_table(dynamodb_client, table))
    # Sizes as DynamoDB counts them, from the table's own items (binary as raw bytes).
    expected = {item["pk"]["S"]: codec.item_size(item) for item in FIDELITY_ITEMS}
    by_key = {record.item["pk"]["S"]: record.size for record in records}
    assert {key: by_key[key] for key in expected} == expected
    assert_sizes_right(records)
    assert {record.source for record in records} == {file.key for file in source.files}


def test_ddbpipe_parquet_export_with_sort_key(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    items = [
        {"pk": {"S": f"c#{i % 5}"}, "sk": {"N": str(i)}, "b": {"B": bytes([i % 256])}}
        for i in range(1200)
    ] + [{**FIDELITY_ITEMS[0], "sk": {"N": "-1"}}]
    table = make_table(items, range_key=("sk", "N"))
    dest = tmp_path / "export"
    ddbpipe.export_table(table, str(dest), segments=2, format="parquet", endpoint_url=endpoint)
    source, records = read_source(str(dest))
    assert source.kind == "ddbpipe"
    assert all(file.key.endswith(".parquet") for file in source.files)
    assert source.key_attributes == (("pk", "S"), ("sk", "N"))
    expected = scan_table(dynamodb_client, table)
    got = [normalized(record.item) for record in records]
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert_sizes_right(records)


def test_ddbpipe_export_on_s3(
    endpoint: str, make_table: Any, dynamodb_client: Any, s3_server: Any, s3_bucket: str,
    s3_options: AwsOptions,
) -> None:
    table = make_table(plain_items(900))
    dest = f"s3://{s3_bucket}/exports/{table}"
    ddbpipe.export_table(
        table, dest, segments=2, compression="gzip", endpoint_url=endpoint,
        s3_endpoint_url=s3_server.endpoint,
    )
    source, records = read_source(dest, s3_options)
    assert source.kind == "ddbpipe"
    assert all(file.key.startswith("data/") for file in source.files)
    assert puts_of(records) == sorted_items(scan_table(dynamodb_client, table))


def test_batches_are_bounded(tmp_path: Path, endpoint: str, make_table: Any) -> None:
    table = make_table(plain_items(2 * RECORDS_PER_BATCH + RECORDS_PER_BATCH // 2))
    dest = tmp_path / "export"
    ddbpipe.export_table(table, str(dest), segments=1, endpoint_url=endpoint)
    source, batches = asyncio.run(_open_and_read(str(dest), None))
    assert len(source.files) == 1
    assert [len(batch) for batch in batches] == [
        RECORDS_PER_BATCH, RECORDS_PER_BATCH, RECORDS_PER_BATCH // 2
    ]


# --- AWS-native exports ---------------------------------------------------------------------


def test_aws_full_export_on_s3(
    s3_client: Any, s3_bucket: str, s3_options: AwsOptions
) -> None:
    base = write_aws_export(
        s3_put(s3_client, s3_bucket), [full_lines(AWS_ITEMS[:700]), full_lines(AWS_ITEMS[700:])]
    )
    source, records = read_source(f"s3://{s3_bucket}/{base}", s3_options)
    assert source.kind == "aws-full"
    assert source.export_id == EXPORT_ID
    assert source.item_count == len(AWS_ITEMS)
    assert [file.items for file in source.files] == [700, len(AWS_ITEMS) - 700]
    assert all(file.key.startswith("data/") and file.md5_b64 for file in source.files)
    assert source.key_attributes is None and source.table_schema is None
    assert puts_of(records) == sorted_items([normalized(item) for item in AWS_ITEMS])
    assert_sizes_right(records)
    # SOURCE may also be the prefix above AWSDynamoDB/ when it holds one export.
    above, records_above = read_source(f"s3://{s3_bucket}/prefix", s3_options)
    assert above.kind == "aws-full" and above.export_id == EXPORT_ID
    assert above.files[0].key.startswith(f"AWSDynamoDB/{EXPORT_ID}/data/")
    assert len(records_above) == len(AWS_ITEMS)


def test_aws_full_export_copied_to_a_local_directory(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS[:10]),
                                                 full_lines(AWS_ITEMS[10:])])
    source, records = read_source(str(tmp_path / base))
    assert source.kind == "aws-full"
    assert [file.key for file in source.files] == [
        f"data/file00-{EXPORT_ID[-8:]}.json.gz", f"data/file01-{EXPORT_ID[-8:]}.json.gz"
    ]
    assert puts_of(records) == sorted_items([normalized(item) for item in AWS_ITEMS])
    above = open_only(str(tmp_path))
    assert above.kind == "aws-full"
    assert above.files[0].key == f"prefix/AWSDynamoDB/{EXPORT_ID}/{source.files[0].key}"


def test_aws_incremental_export_gives_puts_and_deletes(
    s3_client: Any, s3_bucket: str, s3_options: AwsOptions
) -> None:
    def meta(micros: int) -> dict[str, Any]:
        return {"WriteTimestampMicros": {"N": str(micros)}}

    lines = [
        {"Metadata": meta(1), "Keys": {"pk": {"S": "a"}},
         "NewImage": {"pk": {"S": "a"}, "v": {"N": "1"}, "b": {"B": "AAE="}}},
        {"Metadata": meta(2), "Keys": {"pk": {"S": "b"}},
         "OldImage": {"pk": {"S": "b"}, "v": {"N": "7"}}},
        {"Metadata": meta(3), "Keys": {"pk": {"S": "a"}},
         "NewImage": {"pk": {"S": "a"}, "v": {"N": "2"}},
         "OldImage": {"pk": {"S": "a"}, "v": {"N": "1"}}},
        {"Metadata": meta(4), "Keys": {"pk": {"S": "c"}}},
    ]
    base = write_aws_export(s3_put(s3_client, s3_bucket), [lines], incremental=True)
    source, records = read_source(f"s3://{s3_bucket}/{base}", s3_options)
    assert source.kind == "aws-incremental"
    assert source.item_count == 4
    assert [(record.kind, record.item) for record in records] == [
        ("put", {"pk": {"S": "a"}, "v": {"N": "1"}, "b": {"B": "AAE="}}),
        ("delete", {"pk": {"S": "b"}}),
        ("put", {"pk": {"S": "a"}, "v": {"N": "2"}}),
        ("delete", {"pk": {"S": "c"}}),
    ]
    assert records[0].size == len("pk") + 1 + len("v") + 2 + len("b") + 2
    assert records[1].size == len("pk") + 1


# --- loose NDJSON files ---------------------------------------------------------------------


def test_loose_ndjson_files_in_nested_folders(tmp_path: Path) -> None:
    items = [wire(item) for item in FIDELITY_ITEMS] + [wire(i) for i in plain_items(30)]
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "one.json").write_bytes(json_lines([{"Item": i} for i in items[:3]]))
    (tmp_path / "a" / "two.json.gz").write_bytes(
        gzip.compress(json_lines([{"Item": i} for i in items[3:20]]))
    )
    (tmp_path / "a" / "b" / "three.json.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json_lines([{"Item": i} for i in items[20:]]))
    )
    # AWS incremental-shaped lines are accepted too; unrelated files are not read.
    (tmp_path / "a" / "b" / "changes.jsonl").write_bytes(
        json_lines([{"Keys": {"pk": {"S": "gone"}}}, {"Keys": {"pk": {"S": "new"}},
                    "NewImage": {"pk": {"S": "new"}}}])
    )
    (tmp_path / "README.txt").write_text("not data")
    source, records = read_source(str(tmp_path))
    assert source.kind == "ndjson"
    assert source.item_count is None and source.key_attributes is None
    assert sorted(file.key for file in source.files) == [
        "a/b/changes.jsonl", "a/b/three.json.zst", "a/two.json.gz", "one.json"
    ]
    assert all(file.items is None and file.sha256 is None for file in source.files)
    changes = [r for r in records if r.source == "a/b/changes.jsonl"]
    assert [(r.kind, r.item) for r in changes] == [
        ("delete", {"pk": {"S": "gone"}}), ("put", {"pk": {"S": "new"}})
    ]
    others = [r for r in records if r.source != "a/b/changes.jsonl"]
    assert puts_of(others) == sorted_items([normalized(item) for item in items])
    assert_sizes_right(records)


# --- errors ---------------------------------------------------------------------------------


@pytest.fixture
def small_export(tmp_path: Path, endpoint: str, make_table: Any) -> Path:
    table = make_table(plain_items(3000))
    dest = tmp_path / "export"
    ddbpipe.export_table(
        table, str(dest), segments=1, compression="gzip", endpoint_url=endpoint,
        shard_bytes=64 * 1024,
    )
    return dest


def _first_shard(dest: Path) -> str:
    manifest = json.loads((dest / MANIFEST_KEY).read_text())
    return str(manifest["shards"][0]["key"])


def assert_one_line_naming(error: BaseException, name: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert name in message, message


def test_flipped_bytes_fail_before_any_record_of_the_file(small_export: Path) -> None:
    key = _first_shard(small_export)
    flip_middle_byte(small_export / key)
    received, error = read_file_until_error(str(small_export), key)
    assert received == []
    assert isinstance(error, CorruptDataError)
    assert "SHA-256" in str(error)
    assert_one_line_naming(error, key)


def test_truncated_gzip_in_aws_export(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS)])
    export_dir = tmp_path / base
    (data_file,) = (export_dir / "data").iterdir()
    stored = data_file.read_bytes()[:-20]
    data_file.write_bytes(stored)
    # Make the manifests agree with the truncated file, so only the gzip stream is wrong.
    entry = json.loads((export_dir / "manifest-files.json").read_text())
    entry["md5Checksum"] = b64_md5(stored)
    files_doc = json_lines([entry])
    (export_dir / "manifest-files.json").write_bytes(files_doc)
    (export_dir / "manifest-files.md5").write_text(b64_md5(files_doc))
    received, error = read_file_until_error(str(export_dir), f"data/{data_file.name}")
    assert isinstance(error, CorruptDataError)
    assert "truncated gzip" in str(error)
    assert_one_line_naming(error, data_file.name)


def test_damaged_aws_data_file_fails_its_md5(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS)])
    (data_file,) = (tmp_path / base / "data").iterdir()
    data = bytearray(data_file.read_bytes())
    data[100] ^= 0x01
    data_file.write_bytes(bytes(data))
    received, error = read_file_until_error(str(tmp_path / base), f"data/{data_file.name}")
    assert received == []
    assert isinstance(error, CorruptDataError) and "MD5" in str(error)


def test_item_count_disagreeing_with_the_manifest_fails_at_the_end(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS)])
    export_dir = tmp_path / base
    entry = json.loads((export_dir / "manifest-files.json").read_text())
    entry["itemCount"] += 1
    files_doc = json_lines([entry])
    (export_dir / "manifest-files.json").write_bytes(files_doc)
    (export_dir / "manifest-files.md5").write_text(b64_md5(files_doc))
    summary = json.loads((export_dir / "manifest-summary.json").read_text())
    summary["itemCount"] += 1
    (export_dir / "manifest-summary.json").write_text(json.dumps(summary))
    (export_dir / "manifest-summary.md5").write_text(b64_md5(json.dumps(summary).encode()))
    key = "data/" + Path(entry["dataFileS3Key"]).name
    received, error = read_file_until_error(str(export_dir), key)
    assert len(received) == len(AWS_ITEMS)
    assert isinstance(error, CorruptDataError)
    assert f"holds {len(AWS_ITEMS)} items" in str(error)
    assert_one_line_naming(error, key)


def test_unknown_format_version_is_refused(small_export: Path) -> None:
    manifest = json.loads((small_export / MANIFEST_KEY).read_text())
    manifest["format_version"] = 99
    (small_export / MANIFEST_KEY).write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="upgrade ddbpipe") as caught:
        open_only(str(small_export))
    assert_one_line_naming(caught.value, MANIFEST_KEY)


def test_unfinished_ddbpipe_export_asks_for_resume(small_export: Path) -> None:
    (small_export / MANIFEST_KEY).unlink()
    (small_export / STATE_KEY).parent.mkdir()
    (small_export / STATE_KEY).write_text("{}")
    with pytest.raises(CorruptDataError, match="unfinished.*--resume") as caught:
        open_only(str(small_export))
    assert_one_line_naming(caught.value, str(small_export))


def test_missing_shard_is_found_when_opening(small_export: Path) -> None:
    key = _first_shard(small_export)
    (small_export / key).unlink()
    with pytest.raises(StorageError, match="missing") as caught:
        open_only(str(small_export))
    assert_one_line_naming(caught.value, key)


def test_summary_count_disagreeing_with_files(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS)], summary_count=5)
    with pytest.raises(CorruptDataError, match="itemCount 5") as caught:
        open_only(str(tmp_path / base))
    assert_one_line_naming(caught.value, "manifest-summary.json")


def test_manifest_not_matching_its_md5_file(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS)])
    (tmp_path / base / "manifest-files.md5").write_text(b64_md5(b"something else"))
    with pytest.raises(CorruptDataError, match="MD5") as caught:
        open_only(str(tmp_path / base))
    assert_one_line_naming(caught.value, "manifest-files.json")


def test_ion_export_is_refused(tmp_path: Path) -> None:
    base = write_aws_export(local_put(tmp_path), [[]], output_format="ION")
    with pytest.raises(StorageError, match="ION.*DYNAMODB_JSON") as caught:
        open_only(str(tmp_path / base))
    assert_one_line_naming(caught.value, "manifest-summary.json")


def test_empty_directory_and_directory_without_data(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StorageError, match="nothing at"):
        open_only(str(empty))
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(StorageError, match="no ddbpipe export, AWS export or NDJSON files at"):
        open_only(str(empty))


def test_an_aws_export_dynamodb_has_not_finished_is_refused_not_read_as_loose_files(
    tmp_path: Path,
) -> None:
    # DynamoDB writes _started, then data files, and the manifests last.
    base = tmp_path / "AWSDynamoDB" / "01796000000000-abcdef12"
    (base / "data").mkdir(parents=True)
    (base / "_started").write_bytes(b"")
    lines = b"".join(json.dumps(line).encode() + b"\n" for line in full_lines(AWS_ITEMS[:3]))
    (base / "data" / "a.json.gz").write_bytes(gzip.compress(lines))
    with pytest.raises(StorageError, match="has not finished") as caught:
        open_only(str(tmp_path))
    assert_one_line_naming(caught.value, "01796000000000-abcdef12")


def test_two_aws_exports_under_source_is_ambiguous(tmp_path: Path) -> None:
    write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS[:3])], root="one/")
    write_aws_export(local_put(tmp_path), [full_lines(AWS_ITEMS[:3])], root="two/")
    with pytest.raises(StorageError, match="2 AWS exports"):
        open_only(str(tmp_path))


def test_garbage_line_in_loose_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "items.ndjson").write_bytes(b'{"Item": {"pk": {"S": "a"}}}\nnot json\n')
    received, error = read_file_until_error(str(tmp_path), "items.ndjson")
    assert isinstance(error, CorruptDataError)
    assert "line 2" in str(error)
    assert_one_line_naming(error, "items.ndjson")


def test_copied_export_keeps_working(small_export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(small_export, copy)
    source, records = read_source(str(copy))
    assert source.kind == "ddbpipe" and len(records) == 3000


# --- records carry what check_item finds ---------------------------------------------------


KEYS = (("pk", "S"), ("sk", "N"))


def test_records_carry_their_problem_and_key(tmp_path: Path) -> None:
    """What check_item finds is on the record read, so the importer can dead-letter it."""
    lines = [
        {"Item": {"pk": {"S": "fine"}, "sk": {"N": "1.50"}}},
        {"Item": {"pk": {"S": "no-sort-key"}}},
        {"Item": {"pk": {"S": "big"}, "sk": {"N": "2"}, "v": {"S": "x" * 410_000}}},
    ]
    (tmp_path / "items.json").write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in lines))

    async def main() -> list[WriteRecord]:
        async with open_store(str(tmp_path)) as store:
            source = await open_source(store)
            (file,) = source.files
            return [r async for batch in read_records(store, source, file, KEYS) for r in batch]

    fine, no_sort_key, big = asyncio.run(main())
    assert (fine.problem, fine.key) == (None, (("S", "fine"), ("N", "1.5")))
    assert fine.item == lines[0]["Item"] and fine.units == 1
    assert no_sort_key.problem == "missing key attribute 'sk'"
    assert big.problem is not None and big.problem.startswith("item is 410,")
