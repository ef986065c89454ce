"""The services the tests, the demo and the benchmarks start leave nothing in the project."""

from __future__ import annotations

from pathlib import Path

from tools import services

METADATA = "dynamodb-local-metadata.json"


def modified_at(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def test_dynamodb_local_keeps_its_files_in_its_own_directory_and_removes_them() -> None:
    # Where it wrote its metadata before: the project root (its working directory then) and
    # the npm package. Neither may change now, whatever an older version left there.
    elsewhere = [services.PROJECT_ROOT / METADATA, services.dynamodb_local_dir() / METADATA]
    before = [modified_at(path) for path in elsewhere]
    server = services.start_dynamodb_local()
    try:
        # It writes its metadata file when it starts, even in memory.
        assert (server.workdir / METADATA).exists()
    finally:
        server.stop()
    assert not server.workdir.exists()
    assert [modified_at(path) for path in elsewhere] == before
