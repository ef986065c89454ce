"""``ddbpipe ls``: the catalogue of the exports under a location, read from their manifests
alone. Real exports from DynamoDB Local, an unfinished one (its plan as the exporter encodes
it) and an AWS-native one, on moto's S3 server and in a local directory."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ddbpipe
from ddbpipe.config import ArchiveOptions, AwsOptions, ExportOptions
from ddbpipe.export_job import run_export
from ddbpipe.manifest import (
    MANIFEST_KEY,
    STATE_KEY,
    ExportManifest,
    ExportPlan,
    encode_manifest,
    encode_plan,
)
from ddbpipe.retry import ManualClock
from tests.exports import plain_items
from tests.test_cli import run
from tests.test_sources import EXPORT_ID, Put, full_lines, local_put, s3_put, write_aws_export

#: When the exports in these tests started (their clock's wall time).
EXPORTED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EXPORT_TIME = "2026-01-02T03:04:05.000Z"
LISTED_KEYS = {
    "path", "table", "export_id", "export_time", "items", "stored_bytes", "format", "complete",
    "storage_class", "sse", "kms_key_id", "object_lock_mode", "retain_until",
}
NOTHING_ELSE = dict(
    table_arn=None, sse=None, kms_key_id=None, object_lock_mode=None, retain_until=None,
    error=None,
)


@dataclass(frozen=True)
class Place:
    """Where a catalogue is built: ``url`` is what ls is given; ``put`` stores a file by its
    key from the parent of ``url`` (the bucket root, or the parent directory), and ``prefix``
    is what puts it under ``url``."""

    url: str
    aws: AwsOptions
    put: Put
    prefix: str = "archive/"
    on_s3: bool = False


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        return Place(url=str(tmp_path / "archive"), aws=AwsOptions(), put=local_put(tmp_path))
    s3_server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Place(
        url=f"s3://{bucket}/archive", aws=AwsOptions(s3_endpoint_url=s3_server.endpoint),
        put=s3_put(request.getfixturevalue("s3_client"), bucket), on_s3=True,
    )


def local_place(tmp_path: Path) -> Place:
    return Place(url=str(tmp_path / "archive"), aws=AwsOptions(), put=local_put(tmp_path))


def export_at(place: Place, endpoint: str, table: str, subpath: str, **settings: Any) -> Any:
    """A real export of ``table`` to ``url/subpath``, started at ``EXPORTED_AT``."""
    options = ExportOptions(
        table=table, destination=f"{place.url}/{subpath}", segments=2,
        aws=replace(place.aws, endpoint_url=endpoint), **settings,
    )
    return asyncio.run(run_export(options, clock=ManualClock(wall_start=EXPORTED_AT.timestamp())))


def plan_of(export_id: str, **fields: Any) -> ExportPlan:
    """The plan of an export of table ``orders``, as the exporter saves it first."""
    settings: dict[str, Any] = dict(
        export_id=export_id, table_name="orders",
        table_arn="arn:aws:dynamodb:us-east-1:123456789012:table/orders", table_id="t-1",
        region="us-east-1", data_format="parquet", compression="zstd", segments=4,
        consistent_read=False, shard_bytes=1024, start_time="2026-01-04T00:00:00.000Z",
        key_attributes=(("pk", "S"),),
    )
    return ExportPlan(**{**settings, **fields})


def recording(put: Put, sizes: dict[str, int]) -> Put:
    def put_and_record(key: str, data: bytes) -> None:
        sizes[key] = len(data)
        put(key, data)

    return put_and_record


def build_catalogue(place: Place, endpoint: str, make_table: Any) -> dict[str, dict[str, Any]]:
    """Exports of every kind under ``place``; returns each one's expected entry by path."""
    table = make_table(plain_items(120))
    expected: dict[str, dict[str, Any]] = {}

    def finished(subpath: str, summary: Any, fmt: str, **fields: Any) -> None:
        expected[f"{place.url}/{subpath}"] = {
            **NOTHING_ELSE, "path": f"{place.url}/{subpath}", "kind": "ddbpipe",
            "complete": True, "table": table, "export_id": summary.export_id,
            "export_time": EXPORT_TIME, "items": 120, "stored_bytes": summary.stored_bytes,
            "format": fmt, "storage_class": "STANDARD", **fields,
        }

    ndjson = export_at(place, endpoint, table, "orders/2026-01")
    finished("orders/2026-01", ndjson, "ndjson")
    parquet = export_at(place, endpoint, table, "orders/2026-02", format="parquet")
    finished("orders/2026-02", parquet, "parquet")
    if place.on_s3:  # archive options are S3's
        archive = ArchiveOptions(sse="AES256", storage_class="STANDARD_IA")
        archived = export_at(place, endpoint, table, "vault/2026-03", archive=archive)
        finished("vault/2026-03", archived, "ndjson", sse="AES256", storage_class="STANDARD_IA")

    # An export stopped mid-way: its plan and two shards, no manifest.
    until = datetime(2033, 12, 31, tzinfo=UTC)
    locked = ArchiveOptions(
        sse="aws:kms", sse_kms_key_id="alias/archive", storage_class="GLACIER",
        object_lock_mode="GOVERNANCE", retain_until=until,
    )
    unfinished = f"{place.prefix}orders/2026-04/"
    place.put(unfinished + STATE_KEY, encode_plan(plan_of("1767484800000-0badcafe",
                                                          archive=locked)))
    place.put(unfinished + "data/00000-000000.parquet", b"x" * 700)
    place.put(unfinished + "data/00001-000000.parquet", b"y" * 300)
    expected[f"{place.url}/orders/2026-04"] = {
        "path": f"{place.url}/orders/2026-04", "kind": "ddbpipe", "complete": False,
        "table": "orders", "table_arn": "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
        "export_id": "1767484800000-0badcafe", "export_time": "2026-01-04T00:00:00.000Z",
        "items": None, "stored_bytes": 1000, "format": "parquet", "storage_class": "GLACIER",
        "sse": "aws:kms", "kms_key_id": "alias/archive", "object_lock_mode": "GOVERNANCE",
        "retain_until": "2033-12-31T00:00:00Z", "error": None,
    }

    sizes: dict[str, int] = {}
    items = plain_items(12, prefix="aws")
    base = write_aws_export(
        recording(place.put, sizes), [full_lines(items[:5]), full_lines(items[5:])],
        root=place.prefix + "aws/",
    )
    aws_path = f"{place.url}/aws/AWSDynamoDB/{EXPORT_ID}"
    expected[aws_path] = {
        **NOTHING_ELSE, "path": aws_path, "kind": "aws", "complete": True, "table": "t",
        "table_arn": "arn:aws:dynamodb:us-east-1:123456789012:table/t", "export_id": EXPORT_ID,
        "export_time": "2026-01-01T00:00:00.000Z", "items": 12,
        "stored_bytes": sum(size for key, size in sizes.items() if key.startswith(base + "data/")),
        "format": "DYNAMODB_JSON", "storage_class": "STANDARD", "sse": "AES256",
    }
    return expected


# --- the library ------------------------------------------------------------------------------


def test_every_export_is_listed_with_its_fields(
    place: Place, endpoint: str, make_table: Any
) -> None:
    expected = build_catalogue(place, endpoint, make_table)
    listed = ddbpipe.list_exports(place.url, aws=place.aws)
    assert [entry.path for entry in listed] == sorted(expected)
    for entry in listed:
        got = entry.to_dict()
        if got["kind"] == "ddbpipe" and got["complete"]:
            # DynamoDB Local's ARN names its own region and account.
            assert got.pop("table_arn").endswith(f":table/{got['table']}")
            got["table_arn"] = None
        assert got == expected[entry.path], entry.path


def test_a_finished_export_that_still_holds_its_state_is_listed_once_as_complete(
    tmp_path: Path,
) -> None:
    place = local_place(tmp_path)
    plan = plan_of("1767484800000-00000001")
    manifest = ExportManifest(plan=plan, tool_version="1", end_time="2026-01-04T00:10:00.000Z",
                              consumed_rcu=0.0, shards=())
    place.put("archive/e/" + STATE_KEY, encode_plan(plan))  # stopped before removing its state
    place.put("archive/e/" + MANIFEST_KEY, encode_manifest(manifest))
    (entry,) = ddbpipe.list_exports(place.url)
    assert entry.complete and entry.items == 0 and entry.path == f"{place.url}/e"


async def _list_async(url: str) -> list[ddbpipe.ListedExport]:
    return await ddbpipe.list_exports_async(url)


def test_the_coroutine_lists_the_same(tmp_path: Path) -> None:
    place = local_place(tmp_path)
    place.put("archive/p/" + STATE_KEY, encode_plan(plan_of("1767484800000-00000002")))
    assert asyncio.run(_list_async(place.url)) == ddbpipe.list_exports(place.url)


# --- the command ------------------------------------------------------------------------------


def test_json_has_the_keys_and_the_table_names_each_path(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    place = local_place(tmp_path)
    expected = build_catalogue(place, endpoint, make_table)
    as_json = run("ls", place.url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert [entry["path"] for entry in listed] == sorted(expected)
    assert all(entry.keys() >= LISTED_KEYS for entry in listed)

    as_table = run("ls", place.url)
    assert as_table.returncode == 0, as_table.stderr
    header, *rows = as_table.stdout.splitlines()
    assert header.split()[:3] == ["PATH", "TABLE", "EXPORT"]
    assert [row.split()[0] for row in rows] == sorted(expected)
    unfinished = next(row for row in rows if row.startswith(f"{place.url}/orders/2026-04 "))
    assert "unfinished" in unfinished and "GOVERNANCE until 2033-12-31T00:00:00Z" in unfinished
    assert as_table.stderr.strip() == f"{len(expected)} exports under {place.url}, 3 complete"


def test_a_damaged_or_newer_manifest_is_an_error_row(tmp_path: Path) -> None:
    place = local_place(tmp_path)
    manifest = ExportManifest(plan=plan_of("1767484800000-00000003"), tool_version="1",
                              end_time="2026-01-04T00:10:00.000Z", consumed_rcu=0.0, shards=())
    place.put("archive/good/" + MANIFEST_KEY, encode_manifest(manifest))
    place.put("archive/cut/" + MANIFEST_KEY, encode_manifest(manifest)[:40])
    newer = msgspec.json.decode(encode_manifest(manifest))
    newer["format_version"] = 99
    place.put("archive/newer/" + MANIFEST_KEY, msgspec.json.encode(newer))

    result = run("ls", place.url, "--json")
    assert result.returncode == 0, result.stderr
    by_path = {entry["path"]: entry for entry in json.loads(result.stdout)}
    good, cut, newest = (by_path[f"{place.url}/{name}"] for name in ("good", "cut", "newer"))
    assert good["complete"] and good["error"] is None and good["table"] == "orders"
    assert not cut["complete"] and cut["table"] is None
    assert cut["error"] == (
        f"{place.url}/cut/{MANIFEST_KEY} is not valid JSON (Input data was truncated)"
    )
    assert not newest["complete"] and "format version 99" in newest["error"]
    assert "upgrade ddbpipe" in newest["error"]

    as_table = run("ls", place.url)
    assert as_table.returncode == 0
    assert sum("unreadable" in row for row in as_table.stdout.splitlines()) == 2
    *problems, summary = as_table.stderr.strip().splitlines()
    assert problems == [f"problem: {cut['error']}", f"problem: {newest['error']}"]
    assert summary == f"3 exports under {place.url}, 1 complete, 2 unreadable"


def test_nothing_found_is_said_and_is_not_an_error(
    tmp_path: Path, s3_server: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="elsewhere/notes.txt", Body=b"not an export")
    for where, options in [
        (str(tmp_path), []),
        (f"s3://{s3_bucket}/archive", ["--s3-endpoint-url", s3_server.endpoint]),
    ]:
        result = run("ls", where, *options)
        assert (result.returncode, result.stdout) == (0, ""), result.stderr
        assert result.stderr.strip() == f"no exports under {where}"
        as_json = run("ls", where, "--json", *options)
        assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])


def test_a_missing_location_is_one_line_and_exit_1(tmp_path: Path, s3_server: Any) -> None:
    missing_bucket = run("ls", "s3://ddbpipe-no-such-bucket/archive", "--s3-endpoint-url",
                         s3_server.endpoint)
    assert missing_bucket.returncode == 1
    (line,) = missing_bucket.stderr.strip().splitlines()
    assert line.startswith("error: S3 bucket 'ddbpipe-no-such-bucket' does not exist")
    missing_directory = run("ls", str(tmp_path / "nowhere"))
    assert missing_directory.returncode == 1
    assert missing_directory.stderr.strip() == (
        f"error: nothing at {tmp_path / 'nowhere'}: no such directory"
    )


def test_expected_bucket_owner_with_a_local_path_is_exit_2(tmp_path: Path) -> None:
    result = run("ls", str(tmp_path), "--expected-bucket-owner", "111122223333")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --expected-bucket-owner apply to S3 only")
    with pytest.raises(ddbpipe.ConfigError, match="apply to S3 only"):
        ddbpipe.list_exports(str(tmp_path), aws=AwsOptions(expected_bucket_owner="111122223333"))
