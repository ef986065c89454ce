"""Archived exports: import refuses frozen shards up front, and ``thaw`` restores them; against
moto's S3 server (GLACIER / DEEP_ARCHIVE, RestoreObject, the x-amz-restore header) and
DynamoDB Local.

moto restores an object the moment it is asked to. ``slow_restores`` uses moto's state
manager to make each restore show as under way on the first HeadObject after the request,
and done on the next, so a waiting thaw has something to wait for.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

import ddbpipe
from ddbpipe.config import ArchiveOptions, AwsOptions, ExportOptions, StorageClass
from ddbpipe.errors import ConfigError, StorageError
from ddbpipe.retry import ManualClock
from ddbpipe.thaw import PollSchedule, ThawSummary, run_thaw
from tests.exports import plain_items, scan_table, sorted_items
from tests.test_sources import full_lines, write_aws_export

DDBPIPE = [sys.executable, "-m", "ddbpipe.cli.main"]
ITEMS = 300


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DDBPIPE, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class FrozenExport:
    """An export on S3 whose shards are archived."""

    table: str
    url: str
    bucket: str
    shard_keys: list[str]
    aws: AwsOptions

    @property
    def shards(self) -> int:
        return len(self.shard_keys)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An import's checkpoint and dead-letter files default to the current directory.
    monkeypatch.chdir(tmp_path)


def export_to_s3(
    dynamodb_local: Any, s3_server: Any, s3_client: Any, bucket: str, table: str,
    storage_class: StorageClass | None,
) -> FrozenExport:
    aws = AwsOptions(endpoint_url=dynamodb_local.endpoint, s3_endpoint_url=s3_server.endpoint)
    prefix = f"archive/{uuid.uuid4().hex[:8]}"
    archive = ArchiveOptions(storage_class=storage_class) if storage_class else None
    summary = ddbpipe.export_table(ExportOptions(
        table=table, destination=f"s3://{bucket}/{prefix}", segments=2, shard_bytes=4096,
        page_size=40, aws=aws, archive=archive,
    ))
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/data/")["Contents"]
    shard_keys = sorted(item["Key"] for item in listed)
    assert len(shard_keys) == summary.shards > 2
    return FrozenExport(table, f"s3://{bucket}/{prefix}", bucket, shard_keys, aws)


@pytest.fixture
def frozen_export(
    dynamodb_local: Any, s3_server: Any, s3_client: Any, s3_bucket: str, make_table: Any
) -> FrozenExport:
    """A table exported to moto with its shards in DEEP_ARCHIVE."""
    table = make_table(plain_items(ITEMS))
    return export_to_s3(dynamodb_local, s3_server, s3_client, s3_bucket, table, "DEEP_ARCHIVE")


@pytest.fixture
def slow_restores(s3_server: Any) -> Iterator[None]:
    """Restores on the moto server show as under way once before they are done."""

    def transition(action: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{s3_server.endpoint}/moto-api/state-manager/{action}-transition",
            data=json.dumps(body).encode(), method="POST",
        )
        urllib.request.urlopen(request).read()

    model = {"model_name": "s3::keyrestore"}
    transition("set", {**model, "transition": {"progression": "manual", "times": 1}})
    yield
    transition("unset", model)


def restore_header(s3_client: Any, bucket: str, key: str) -> str | None:
    return s3_client.head_object(Bucket=bucket, Key=key).get("Restore")


def readable_until(s3_client: Any, bucket: str, key: str) -> Any:
    """The expiry of ``key``'s restored copy, once S3 says the restore is done."""
    for _ in range(3):  # under slow_restores a restore shows as under way once
        header = restore_header(s3_client, bucket, key) or ""
        if 'ongoing-request="false"' in header:
            return parsedate_to_datetime(header.split('expiry-date="')[1].rstrip('"'))
    raise AssertionError(f"{key} was never restored: {header!r}")


# --- import refuses frozen shards -------------------------------------------------------------


def test_import_refuses_a_frozen_export_before_writing_anything(
    frozen_export: FrozenExport, make_table: Any, dynamodb_client: Any, tmp_path: Path
) -> None:
    target = make_table()
    aws = AwsOptions(endpoint_url=frozen_export.aws.endpoint_url, region="us-east-1",
                     s3_endpoint_url=frozen_export.aws.s3_endpoint_url)
    with pytest.raises(StorageError) as refused:
        ddbpipe.import_table(frozen_export.url, target, aws=aws)
    message = str(refused.value)
    n = frozen_export.shards
    assert "\n" not in message
    assert message.startswith(
        f"{n} of {n} shards of {frozen_export.url} are in DEEP_ARCHIVE and not restored: "
    )
    assert (f"`ddbpipe thaw {frozen_export.url} --region us-east-1 --s3-endpoint-url "
            f"{aws.s3_endpoint_url} --wait`") in message
    assert scan_table(dynamodb_client, target) == []
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no dead letters


def test_import_with_create_table_refuses_before_creating_the_table(
    frozen_export: FrozenExport, dynamodb_client: Any
) -> None:
    target = f"copy-{uuid.uuid4().hex[:10]}"
    with pytest.raises(StorageError, match="not restored"):
        ddbpipe.import_table(frozen_export.url, target, create_table=True, aws=frozen_export.aws)
    assert target not in dynamodb_client.list_tables()["TableNames"]


def test_cli_import_refusal_is_one_line_naming_a_thaw_that_works(
    frozen_export: FrozenExport, make_table: Any, dynamodb_client: Any
) -> None:
    target = make_table()
    s3_endpoint = str(frozen_export.aws.s3_endpoint_url)
    result = run("import", frozen_export.url, target, "--endpoint-url",
                 str(frozen_export.aws.endpoint_url), "--s3-endpoint-url", s3_endpoint)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    n = frozen_export.shards
    assert line.startswith(f"error: {n} of {n} shards of {frozen_export.url} are in DEEP_ARCHIVE")
    assert scan_table(dynamodb_client, target) == []
    # The command it names, as given (without --wait, which waits for real), thaws them all.
    command = shlex.split(line.split("`")[1])
    assert command == ["ddbpipe", "thaw", frozen_export.url, "--s3-endpoint-url", s3_endpoint,
                       "--wait"]
    thawed = run(*command[1:-1], "--json")
    assert thawed.returncode == 0, thawed.stderr
    assert json.loads(thawed.stdout)["requested"] == n


def test_import_refuses_frozen_files_of_an_aws_export(
    dynamodb_local: Any, s3_server: Any, s3_client: Any, s3_bucket: str, make_table: Any
) -> None:
    def put_data_in_glacier(key: str, data: bytes) -> None:
        cold = {"StorageClass": "GLACIER"} if "/data/" in key else {}
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=data, **cold)

    base = write_aws_export(put_data_in_glacier, [full_lines(plain_items(5, p)) for p in "ab"])
    with pytest.raises(StorageError) as refused:
        ddbpipe.import_table(f"s3://{s3_bucket}/{base}", make_table(),
                             endpoint_url=dynamodb_local.endpoint,
                             s3_endpoint_url=s3_server.endpoint)
    # ddbpipe thaw reads our manifest only: an AWS export is restored through S3 itself.
    assert "2 of 2 files of " in str(refused.value) and "GLACIER" in str(refused.value)
    assert "S3 RestoreObject" in str(refused.value) and "ddbpipe thaw" not in str(refused.value)


def test_verify_read_data_refuses_a_frozen_export(frozen_export: FrozenExport) -> None:
    with pytest.raises(StorageError, match=f"{frozen_export.shards} of .* `ddbpipe thaw "):
        ddbpipe.verify_export(frozen_export.url, read_data=True,
                              s3_endpoint_url=frozen_export.aws.s3_endpoint_url)
    # The cheap verify reads no shard, so it is not refused.
    assert ddbpipe.verify_export(frozen_export.url,
                                 s3_endpoint_url=frozen_export.aws.s3_endpoint_url).ok


# --- thaw ---------------------------------------------------------------------------------------


def test_thaw_wait_restores_every_shard_then_the_import_is_exact(
    frozen_export: FrozenExport, slow_restores: None, make_table: Any, dynamodb_client: Any,
    s3_client: Any,
) -> None:
    clock = ManualClock()
    heard: list[ThawSummary] = []
    summary = asyncio.run(run_thaw(
        frozen_export.url, wait=True, aws=frozen_export.aws, clock=clock,
        poll=PollSchedule(first=60, longest=900, growth=2), on_progress=heard.append,
    ))
    n = frozen_export.shards
    assert (summary.requested, summary.already_in_progress, summary.already_restored,
            summary.not_archived) == (n, 0, 0, 0)
    assert summary.pending == 0 and summary.checks == 2 and summary.waited
    # Each restore showed as under way at the first check: the second came after a longer wait.
    assert clock.sleeps == [60.0, 120.0]
    assert [(h.pending, h.next_check_seconds) for h in heard] == [(n, 60.0), (n, 120.0)]
    assert summary.seconds == 180.0
    for key in frozen_export.shard_keys:
        assert 'ongoing-request="false"' in (
            restore_header(s3_client, frozen_export.bucket, key) or "")
    target = make_table()
    imported = ddbpipe.import_table(frozen_export.url, target, aws=frozen_export.aws)
    assert imported.items_written == ITEMS and imported.items_dead_lettered == 0
    assert sorted_items(scan_table(dynamodb_client, target)) == sorted_items(
        scan_table(dynamodb_client, frozen_export.table)
    )


def test_a_second_thaw_requests_nothing_new(frozen_export: FrozenExport) -> None:
    settings = dict(s3_endpoint_url=frozen_export.aws.s3_endpoint_url)
    first = ddbpipe.thaw_export(frozen_export.url, **settings)
    n = frozen_export.shards
    assert (first.requested, first.already_restored, first.pending) == (n, 0, n)
    assert not first.waited and first.checks == 0
    again = ddbpipe.thaw_export(frozen_export.url, **settings)
    assert (again.requested, again.already_in_progress, again.already_restored,
            again.pending) == (0, 0, n, 0)


def test_a_restore_under_way_is_not_requested_again(
    frozen_export: FrozenExport, slow_restores: None, s3_client: Any
) -> None:
    first, *others = frozen_export.shard_keys
    s3_client.restore_object(Bucket=frozen_export.bucket, Key=first,
                             RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}})
    summary = ddbpipe.thaw_export(frozen_export.url, days=7,
                                  s3_endpoint_url=frozen_export.aws.s3_endpoint_url)
    assert summary.already_in_progress == 1 and summary.requested == len(others)
    # Its copy is still the one asked for first (1 day), not one of the thaw's (7 days).
    first_until = readable_until(s3_client, frozen_export.bucket, first)
    other_until = readable_until(s3_client, frozen_export.bucket, others[0])
    assert other_until - first_until > timedelta(days=5)


def test_expedited_is_refused_for_deep_archive_before_any_request(
    frozen_export: FrozenExport,
) -> None:
    s3_endpoint = frozen_export.aws.s3_endpoint_url
    with pytest.raises(ConfigError, match="no Expedited restores for DEEP_ARCHIVE"):
        ddbpipe.thaw_export(frozen_export.url, tier="Expedited", s3_endpoint_url=s3_endpoint)
    assert ddbpipe.thaw_export(frozen_export.url, s3_endpoint_url=s3_endpoint).requested == (
        frozen_export.shards
    )


def test_bad_restore_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown --tier 'Fast'"):
        ddbpipe.thaw_export("s3://bucket/export", tier="Fast")
    with pytest.raises(ConfigError, match="--days must be at least 1"):
        ddbpipe.thaw_export("s3://bucket/export", days=0)


def test_the_poll_interval_grows_to_fifteen_minutes() -> None:
    assert [PollSchedule().delay(n) for n in range(7)] == [60, 120, 240, 480, 900, 900, 900]


def test_a_source_without_a_ddbpipe_export_is_one_line(
    s3_server: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="loose/items.json", Body=b"{}\n")
    with pytest.raises(StorageError, match="holds no ddbpipe export"):
        ddbpipe.thaw_export(f"s3://{s3_bucket}/loose", s3_endpoint_url=s3_server.endpoint)


# --- the command line ---------------------------------------------------------------------------


def test_cli_thaw_json_summary_then_nothing_new(frozen_export: FrozenExport) -> None:
    s3 = ["--s3-endpoint-url", str(frozen_export.aws.s3_endpoint_url)]
    result = run("thaw", frozen_export.url, "--days", "3", "--tier", "Standard", "--json", *s3)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary.keys() == {
        "source", "shards", "days", "tier", "requested", "already_in_progress",
        "already_restored", "not_archived", "pending", "waited", "checks", "seconds",
        "next_check_seconds",
    }
    n = frozen_export.shards
    assert (summary["shards"], summary["requested"], summary["days"], summary["tier"]) == (
        n, n, 3, "Standard")
    again = run("thaw", frozen_export.url, *s3)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines() == [
        f"nothing to thaw: every shard of {frozen_export.url} is readable (0 requested "
        f"(Bulk, 7 days), 0 already in progress, {n} already restored, 0 not archived)"
    ]


def test_cli_thaw_of_an_export_with_nothing_archived_says_so(
    dynamodb_local: Any, s3_server: Any, s3_client: Any, s3_bucket: str, make_table: Any
) -> None:
    warm = export_to_s3(dynamodb_local, s3_server, s3_client, s3_bucket,
                        make_table(plain_items(ITEMS)), None)
    result = run("thaw", warm.url, "--s3-endpoint-url", str(s3_server.endpoint))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().startswith(f"nothing to thaw: every shard of {warm.url}")
    assert f"{warm.shards} not archived" in result.stderr


def test_cli_thaw_of_a_local_source_is_bad_usage(tmp_path: Path) -> None:
    result = run("thaw", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not on S3: only S3 archives shards (GLACIER, DEEP_ARCHIVE), so "
        "there is nothing to thaw; give the export's s3://bucket/prefix"
    ]


def test_cli_thaw_wait_stops_on_ctrl_c_with_a_hint(frozen_export: FrozenExport) -> None:
    process = subprocess.Popen(
        [*DDBPIPE, "thaw", frozen_export.url, "--wait", "--s3-endpoint-url",
         str(frozen_export.aws.s3_endpoint_url)],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    assert process.stderr is not None
    # The first wait is a minute long: interrupt it as soon as it is announced.
    first_line = process.stderr.readline()
    assert "next check in 1 min" in first_line, first_line
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130
    assert rest.strip().splitlines()[-1] == (
        "interrupted; the restores asked for go on: run the same thaw again to see how far "
        "they got (nothing is asked for twice)"
    )
    n = frozen_export.shards
    assert first_line.startswith(f"thawing {frozen_export.url}: {n} requested (Bulk, 7 days)")
