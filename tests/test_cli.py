"""The ``ddbpipe`` command as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ddbpipe.manifest import MANIFEST_KEY, STATE_PREFIX
from tests.exports import plain_items, read_local_export, scan_table, sorted_items

DDBPIPE = [sys.executable, "-m", "ddbpipe.cli.main"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DDBPIPE, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def exported(tmp_path: Path, endpoint: str, make_table: Any) -> Path:
    table = make_table(plain_items(300))
    dest = tmp_path / "export"
    result = run("export", table, str(dest), "--segments", "3", "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr
    return dest


def test_export_json_summary(tmp_path: Path, endpoint: str, make_table: Any) -> None:
    table = make_table(plain_items(120))
    dest = tmp_path / "export"
    result = run("export", table, str(dest), "--segments", "2", "--json", "--endpoint-url",
                 endpoint)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == 120 and summary["table"] == table
    assert summary["format"] == "ndjson" and summary["compression"] == "zstd"
    assert {"export_id", "destination", "shards", "stored_bytes", "seconds",
            "consumed_rcu"} <= summary.keys()


def test_verify_passes_on_a_good_export(exported: Path) -> None:
    result = run("verify", str(exported), "--read-data", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["items_read"] == 300 and report["problems"] == []


def first_shard(dest: Path) -> Path:
    return sorted((dest / "data").iterdir())[0]


def test_verify_read_data_finds_a_flipped_byte(exported: Path) -> None:
    shard = first_shard(exported)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cheap = run("verify", str(exported))
    assert cheap.returncode == 0  # same size: only reading the data can tell
    result = run("verify", str(exported), "--read-data")
    assert result.returncode == 1
    assert f"problem: data/{shard.name}: SHA-256 does not match" in result.stderr


def test_verify_finds_missing_and_unlisted_shards(exported: Path) -> None:
    shard = first_shard(exported)
    shard.rename(shard.with_name("stray.json.zst"))
    result = run("verify", str(exported))
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert any(f"data/{shard.name}: missing" in line for line in problems)
    assert any("data/stray.json.zst: not listed" in line for line in problems)


def test_verify_finds_a_tampered_aws_manifest(exported: Path) -> None:
    path = exported / "manifest-files.json"
    path.write_bytes(path.read_bytes().replace(b'"itemCount":', b'"itemCount": ', 1))
    result = run("verify", str(exported))
    assert result.returncode == 1
    assert "manifest-files.json: MD5 does not match manifest-files.md5" in result.stderr


def test_verify_refuses_an_unknown_format_version(exported: Path) -> None:
    path = exported / MANIFEST_KEY
    document = msgspec.json.decode(path.read_bytes())
    document["format_version"] = 99
    path.write_bytes(msgspec.json.encode(document))
    result = run("verify", str(exported))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "format version 99" in line and "upgrade ddbpipe" in line


def test_verify_of_nothing_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("verify", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert "empty: the directory holds no files" in result.stderr
    (tmp_path / "empty" / "notes.txt").write_text("not an export")
    result = run("verify", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert "holds no ddbpipe export (ddbpipe-manifest.json is missing)" in result.stderr


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path, endpoint: str) -> None:
    result = run("export", "missing-table", str(tmp_path / "d"), "--endpoint-url", endpoint)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "missing-table" in line
    assert not (tmp_path / "d").exists()
    bad = run("export", "t", str(tmp_path / "d"), "--format", "csv", "--endpoint-url", endpoint)
    assert bad.returncode == 2 and "unknown format 'csv'" in bad.stderr


def test_help_teaches_the_options() -> None:
    result = run("export", "--help")
    assert result.returncode == 0
    for option in ("--segments", "--format", "--compression", "--max-rcu", "--consistent-read",
                   "--resume", "--json", "--region", "--profile", "--endpoint-url",
                   "--s3-endpoint-url"):
        assert option in result.stdout


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout == f"ddbpipe {version('ddbpipe')}\n"


KILLABLE_EXPORT = """
import sys, ddbpipe
ddbpipe.export_table(sys.argv[1], sys.argv[2], segments=4, shard_bytes=4096,
                     page_size=20, endpoint_url=sys.argv[3])
"""


def test_killed_export_resumes_to_exactly_the_table(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(plain_items(6000))
    dest = tmp_path / "export"
    # A killed process cannot remove its temporary shard files: keep them in the test's folder.
    spool = tmp_path / "tmp"
    spool.mkdir()
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_EXPORT, table, str(dest), endpoint],
                               env={**os.environ, "TMPDIR": str(spool)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((dest / STATE_PREFIX).glob("segment-*.json"))) >= 4 and len(
            list((dest / "data").glob("*"))
        ) >= 12:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the export finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (dest / MANIFEST_KEY).exists()
    result = run("export", table, str(dest), "--resume", "--json", "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"] == 6000
    assert sorted_items(read_local_export(dest)) == sorted_items(scan_table(dynamodb_client, table))
    assert run("verify", str(dest), "--read-data").returncode == 0


def test_s3_only_options_with_a_local_destination_are_bad_usage(tmp_path: Path) -> None:
    dest = tmp_path / "local"
    result = run("export", "orders", str(dest), "--sse", "AES256", "--tag", "a=b")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --sse, --tag apply to S3 only, and {dest} is a local directory: drop them or "
        "give an s3:// location"
    ]
    owner = run("import", str(tmp_path), "orders", "--expected-bucket-owner", "111122223333")
    assert owner.returncode == 2 and "--expected-bucket-owner apply to S3 only" in owner.stderr
    assert not dest.exists()


def test_archive_options_that_cannot_work_are_one_line_and_bad_usage(tmp_path: Path) -> None:
    for args, message in (
        (["--storage-class", "FROZEN"], "unknown --storage-class 'FROZEN': use one of STANDARD"),
        (["--object-lock-mode", "COMPLIANCE"], "needs --retain-until or --retain-for"),
        (["--object-lock-mode", "GOVERNANCE", "--retain-until", "31/12/2033"],
         "give a date like 2033-12-31"),
        (["--tag", "novalue"], "--tag 'novalue': give KEY=VALUE"),
        (["--expected-bucket-owner", "me"], "must be a 12-digit AWS account id"),
    ):
        result = run("export", "orders", "s3://bucket/x", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_export_help_shows_the_archive_options_together() -> None:
    # Wide enough that the help's table shows every option name whole.
    result = subprocess.run([*DDBPIPE, "export", "--help"], capture_output=True, text=True,
                            env={**os.environ, "TERMINAL_WIDTH": "120"}, timeout=60)
    assert result.returncode == 0
    assert "S3 archive options" in result.stdout
    for option in ("--sse", "--sse-kms-key-id", "--sse-bucket-key", "--storage-class",
                   "--object-lock-mode", "--retain-until", "--retain-for", "--legal-hold",
                   "--checksum-algorithm", "--tag", "--expected-bucket-owner"):
        assert option in result.stdout
