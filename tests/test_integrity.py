"""integrity: the rules of a stored export as typed problems, in both modes (cheap: listings
and manifests; read-all: stored bytes), and their two consumers: verify collects every
problem, an import stops at the first with the error it means and writes nothing."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import ddbpipe
from ddbpipe.errors import CorruptDataError, StorageError, TerminalError
from ddbpipe.integrity import (
    ChecksumMismatch,
    CountMismatch,
    ManifestChecksumMismatch,
    ManifestsDisagree,
    MissingFile,
    Problem,
    RecordedFile,
    SizeMismatch,
    UndecodableFile,
    UnlistedFile,
    UnreadableManifest,
    check_count,
    check_listing,
    check_stored_bytes,
    check_unlisted,
    read_all,
    read_checked_manifest,
    stop_at_first,
)
from ddbpipe.manifest import AWS_FILES_KEY, AWS_FILES_MD5_KEY, AWS_SUMMARY_MD5_KEY, MANIFEST_KEY
from ddbpipe.shards import ShardWriter
from ddbpipe.spool import StoredBytes
from ddbpipe.storage import ObjectInfo, open_store
from tests.exports import cut_off, flip_middle_byte, plain_items, shard_paths
from tests.test_sources import b64_md5, full_lines, local_put, write_aws_export

KEYS = (("pk", "S"),)


def stored_shard(tmp_path: Path, items: int = 200) -> tuple[RecordedFile, bytes]:
    """A real zstd shard's stored bytes and what a manifest would record of them."""
    writer = ShardWriter("ndjson", "zstd", KEYS, spool_dir=str(tmp_path))
    writer.add_items([json.dumps(item).encode() for item in plain_items(items)])
    shard = writer.close()
    data = Path(shard.path).read_bytes()
    recorded = RecordedFile(
        key="data/00000-000000.json.zst", size=shard.stored_bytes, items=shard.items,
        sha256=shard.sha256, md5_b64=shard.md5_b64, etag=shard.md5_hex, recorded_in=MANIFEST_KEY,
    )
    return recorded, data


def damaged(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    return bytes(flipped)


def chunks_of(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def fetched(data: bytes) -> StoredBytes:
    """``data`` as a fetched file, arriving in chunks."""
    stored = StoredBytes()
    for chunk in chunks_of(data):
        stored.append(chunk)
    return stored


# --- the problems ----------------------------------------------------------------------------


def test_each_problem_is_one_line_naming_its_file_and_means_one_error() -> None:
    problems: dict[Problem, type[TerminalError]] = {
        MissingFile(file="data/a.json.zst", listed_in=MANIFEST_KEY, items=1200): StorageError,
        UnlistedFile(file="data/b.json.zst", manifest=MANIFEST_KEY): CorruptDataError,
        SizeMismatch(file="data/a.json.zst", expected=2048, found=1024): CorruptDataError,
        ChecksumMismatch(file="data/a.json.zst", algorithm="SHA-256", expected="ab",
                         found="cd", recorded_in=MANIFEST_KEY): CorruptDataError,
        CountMismatch(file="data/a.json.zst", expected=3, found=2,
                      recorded_in=MANIFEST_KEY): CorruptDataError,
        UndecodableFile(file="data/a.json.zst",
                        reason="data/a.json.zst: corrupt zstd data (x)"): CorruptDataError,
        ManifestChecksumMismatch(file=AWS_FILES_KEY,
                                 checksum_file=AWS_FILES_MD5_KEY): CorruptDataError,
        UnreadableManifest(file=AWS_FILES_KEY, reason="not JSON"): CorruptDataError,
        ManifestsDisagree(file="manifest-summary.json", other=AWS_FILES_KEY,
                          detail="itemCount 5"): CorruptDataError,
    }
    for problem, error_type in problems.items():
        line = str(problem)
        assert line.startswith(problem.file) and "\n" not in line
        error = problem.error()
        assert type(error) is error_type and str(error) == line
    assert str(next(iter(problems))) == (
        "data/a.json.zst: missing (listed in ddbpipe-manifest.json with 1,200 items): the "
        "export is incomplete"
    )


def test_stop_at_first_raises_the_first_problems_error() -> None:
    stop_at_first([])  # nothing to stop for
    first = MissingFile(file="data/a.json")
    with pytest.raises(StorageError) as caught:
        stop_at_first([first, SizeMismatch(file="data/b.json", expected=2, found=1)])
    assert str(caught.value) == str(first)


# --- cheap: listings and manifests ----------------------------------------------------------


def test_check_listing_finds_missing_files_other_sizes_and_etags() -> None:
    files = [
        RecordedFile(key="data/ok", size=10, etag="e1", recorded_in=MANIFEST_KEY),
        RecordedFile(key="data/gone", size=10, items=7, recorded_in=MANIFEST_KEY),
        RecordedFile(key="data/short", size=10, etag="e3", recorded_in=MANIFEST_KEY),
        RecordedFile(key="data/changed", size=10, etag="e4", recorded_in=MANIFEST_KEY),
        RecordedFile(key="data/local", size=10, etag="e5", recorded_in=MANIFEST_KEY),
    ]
    listing = {
        "data/ok": ObjectInfo(key="data/ok", size=10, etag="e1"),
        "data/short": ObjectInfo(key="data/short", size=9, etag="other"),
        "data/changed": ObjectInfo(key="data/changed", size=10, etag="other"),
        "data/local": ObjectInfo(key="data/local", size=10, etag=""),  # local stores list none
    }
    assert list(check_listing(files, listing, "s3://b/p/")) == [
        MissingFile(file="s3://b/p/data/gone", listed_in=MANIFEST_KEY, items=7),
        SizeMismatch(file="s3://b/p/data/short", expected=10, found=9),
        ChecksumMismatch(file="s3://b/p/data/changed", algorithm="ETag", expected="e4",
                         found="other", recorded_in=MANIFEST_KEY),
    ]


def test_check_unlisted_finds_stored_files_no_manifest_lists() -> None:
    files = [RecordedFile(key="data/a"), RecordedFile(key="data/b")]
    assert list(check_unlisted(files, ["data/z", "data/a", "data/c"], MANIFEST_KEY)) == [
        UnlistedFile(file="data/c", manifest=MANIFEST_KEY),
        UnlistedFile(file="data/z", manifest=MANIFEST_KEY),
    ]


def test_read_checked_manifest(tmp_path: Path) -> None:
    document = b'{"itemCount": 3}'
    (tmp_path / "manifest-summary.json").write_bytes(document)

    async def read(*checksum_keys: str, required: bool) -> tuple[bytes | None, list[Problem]]:
        async with open_store(str(tmp_path)) as store:
            return await read_checked_manifest(
                store, "manifest-summary.json", checksum_keys, require_checksum=required
            )

    assert asyncio.run(read(AWS_SUMMARY_MD5_KEY, required=False)) == (document, [])
    assert asyncio.run(read(AWS_SUMMARY_MD5_KEY, required=True)) == (
        document, [MissingFile(file=AWS_SUMMARY_MD5_KEY)]
    )
    (tmp_path / AWS_SUMMARY_MD5_KEY).write_text(b64_md5(document))
    assert asyncio.run(read(AWS_SUMMARY_MD5_KEY, required=True)) == (document, [])
    (tmp_path / "manifest-summary.checksum").write_text(b64_md5(b"another document"))
    assert asyncio.run(read(AWS_SUMMARY_MD5_KEY, "manifest-summary.checksum", required=True)) == (
        document,
        [ManifestChecksumMismatch(file="manifest-summary.json",
                                  checksum_file="manifest-summary.checksum")],
    )
    (tmp_path / "manifest-summary.json").unlink()
    assert asyncio.run(read(AWS_SUMMARY_MD5_KEY, required=True)) == (
        None, [MissingFile(file="manifest-summary.json")]
    )


# --- read-all: stored bytes ------------------------------------------------------------------


def test_stored_bytes_that_match_have_no_problem(tmp_path: Path) -> None:
    recorded, data = stored_shard(tmp_path)
    assert list(check_stored_bytes(recorded, fetched(data).checksums)) == []
    assert read_all(recorded, fetched(data)) == (200, [])


def test_flipped_bytes_fail_both_recorded_digests(tmp_path: Path) -> None:
    recorded, data = stored_shard(tmp_path)
    bad = damaged(data)
    sha256 = hashlib.sha256(bad).hexdigest()
    md5 = base64.b64encode(hashlib.md5(bad).digest()).decode()
    assert list(check_stored_bytes(recorded, fetched(bad).checksums, "s3://bucket/export/")) == [
        ChecksumMismatch(file=f"s3://bucket/export/{recorded.key}", algorithm="SHA-256",
                         expected=recorded.sha256 or "", found=sha256, recorded_in=MANIFEST_KEY),
        ChecksumMismatch(file=f"s3://bucket/export/{recorded.key}", algorithm="MD5",
                         expected=recorded.md5_b64 or "", found=md5, recorded_in=MANIFEST_KEY),
    ]
    # An AWS data file records only its MD5.
    aws_file = RecordedFile(key="data/f.json.gz", md5_b64=recorded.md5_b64)
    (problem,) = check_stored_bytes(aws_file, fetched(bad).checksums)
    assert isinstance(problem, ChecksumMismatch) and problem.algorithm == "MD5"


def test_a_file_of_another_size_is_one_size_problem(tmp_path: Path) -> None:
    recorded, data = stored_shard(tmp_path)
    assert list(check_stored_bytes(recorded, fetched(data[:-10]).checksums)) == [
        SizeMismatch(file=recorded.key, expected=len(data), found=len(data) - 10)
    ]


def test_check_count() -> None:
    recorded = RecordedFile(key="data/a.json", items=3, recorded_in=MANIFEST_KEY)
    assert list(check_count(recorded, 3)) == []
    assert list(check_count(recorded, 2, "s3://bucket/export/")) == [
        CountMismatch(file="s3://bucket/export/data/a.json", expected=3, found=2,
                      recorded_in=MANIFEST_KEY)
    ]
    assert list(check_count(RecordedFile(key="loose.json"), 2)) == []  # nothing recorded


def test_read_all_decodes_and_recounts(tmp_path: Path) -> None:
    recorded, data = stored_shard(tmp_path, items=200)
    miscounted = dataclasses.replace(recorded, items=201)
    assert read_all(miscounted, fetched(data)) == (
        200, [CountMismatch(file=recorded.key, expected=201, found=200, recorded_in=MANIFEST_KEY)]
    )
    items, problems = read_all(recorded, fetched(damaged(data)), "s3://bucket/export/")
    assert items == 0
    assert [type(problem) for problem in problems] == [
        ChecksumMismatch, ChecksumMismatch, UndecodableFile
    ]
    assert str(problems[-1]).startswith(f"s3://bucket/export/{recorded.key}: corrupt zstd data")


# --- verify collects every problem -------------------------------------------------------------


@pytest.fixture
def export_dir(tmp_path: Path, endpoint: str, make_table: Any) -> Path:
    """A local NDJSON export of five or more shards."""
    dest = tmp_path / "export"
    ddbpipe.export_table(
        make_table(plain_items(2000)), str(dest), segments=1, endpoint_url=endpoint,
        shard_bytes=32 * 1024, page_size=100,
    )
    assert len(shard_paths(dest)) >= 5
    return dest


def test_verify_reports_problems_of_every_kind_in_one_report(export_dir: Path) -> None:
    gone, flipped, short, *_ = shard_paths(export_dir)
    gone.unlink()
    flip_middle_byte(flipped)
    cut_off(short)
    (export_dir / "data" / "stray.json.zst").write_bytes(b"left over")
    (export_dir / AWS_SUMMARY_MD5_KEY).write_text(b64_md5(b"something else"))

    cheap = ddbpipe.verify_export(str(export_dir))
    assert {type(problem) for problem in cheap.problems} == {
        MissingFile, SizeMismatch, UnlistedFile, ManifestChecksumMismatch
    }
    full = ddbpipe.verify_export(str(export_dir), read_data=True)
    kinds = [type(problem) for problem in full.problems]
    assert set(kinds) == {
        MissingFile, SizeMismatch, UnlistedFile, ManifestChecksumMismatch, ChecksumMismatch,
        UndecodableFile,
    }
    assert kinds.count(SizeMismatch) == 1  # found by the listing and again when read
    names = {problem.file for problem in full.problems}
    assert {f"data/{path.name}" for path in (gone, flipped, short)} <= names
    assert not full.ok
    assert full.to_dict()["problems"] == [str(problem) for problem in full.problems]


def test_verify_compares_etags_where_the_storage_lists_them(
    endpoint: str, make_table: Any, s3_server: Any, s3_bucket: str, s3_client: Any
) -> None:
    dest = f"s3://{s3_bucket}/export"
    ddbpipe.export_table(make_table(plain_items(300)), dest, segments=1, endpoint_url=endpoint,
                         s3_endpoint_url=s3_server.endpoint)
    key = "export/data/00000-000000.json.zst"
    stored = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=damaged(stored))  # same size
    report = ddbpipe.verify_export(dest, s3_endpoint_url=s3_server.endpoint)
    (problem,) = report.problems
    assert isinstance(problem, ChecksumMismatch) and problem.algorithm == "ETag"
    assert problem.file == "data/00000-000000.json.zst"


# --- an import stops at the first problem -----------------------------------------------------


def import_fails(source: Path, endpoint: str, make_table: Any, dynamodb_client: Any) -> Exception:
    """The error an import of ``source`` stops with; it must have written nothing."""
    target = make_table()
    with pytest.raises(TerminalError) as caught:
        ddbpipe.import_table(str(source), target, endpoint_url=endpoint,
                             checkpoint=str(source.parent / "checkpoint.json"),
                             dead_letter=str(source.parent / "dead-letter.jsonl"))
    assert dynamodb_client.scan(TableName=target)["Count"] == 0
    return caught.value


def missing_then_cut_off(paths: list[Path]) -> None:
    paths[2].unlink()
    cut_off(paths[3])


def cut_off_then_missing(paths: list[Path]) -> None:
    cut_off(paths[2])
    paths[3].unlink()


def all_flipped(paths: list[Path]) -> None:
    # Every shard: files are read several at once, so a good one could be written first.
    for path in paths:
        flip_middle_byte(path)


@pytest.mark.parametrize(
    ("damage", "error_type", "says"),
    [
        (missing_then_cut_off, StorageError, "missing (listed in ddbpipe-manifest.json"),
        (cut_off_then_missing, CorruptDataError, "the file changed or is cut off"),
        (all_flipped, CorruptDataError, "SHA-256 does not match ddbpipe-manifest.json"),
    ],
    ids=["missing", "cut-off", "flipped"],
)
def test_import_stops_at_the_first_problem_with_its_error(
    export_dir: Path, endpoint: str, make_table: Any, dynamodb_client: Any,
    damage: Any, error_type: type[TerminalError], says: str,
) -> None:
    paths = shard_paths(export_dir)
    damage(paths)
    error = import_fails(export_dir, endpoint, make_table, dynamodb_client)
    assert type(error) is error_type and says in str(error)
    if damage is not all_flipped:  # the listing is checked in the manifest's order
        assert str(paths[2]) in str(error)


def test_import_of_an_aws_export_stops_at_its_manifests_problems(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    base = tmp_path / write_aws_export(local_put(tmp_path), [full_lines(plain_items(30))])
    (base / "manifest-files.md5").write_text(b64_md5(b"something else"))
    error = import_fails(base, endpoint, make_table, dynamodb_client)
    assert type(error) is CorruptDataError and "manifest-files.json: MD5 does not match" in str(
        error
    )
    (data_file,) = (base / "data").iterdir()
    data_file.unlink()
    (base / "manifest-files.md5").write_text(b64_md5((base / "manifest-files.json").read_bytes()))
    error = import_fails(base, endpoint, make_table, dynamodb_client)
    assert type(error) is StorageError and data_file.name in str(error)
