"""The services the tests, the demo and the benchmarks start leave nothing in the project."""

from __future__ import annotations

from tools import services


def test_dynamodb_local_keeps_its_files_in_its_own_directory_and_removes_them() -> None:
    server = services.start_dynamodb_local()
    try:
        # It writes its metadata file when it starts, even in memory.
        assert (server.workdir / "dynamodb-local-metadata.json").exists()
    finally:
        server.stop()
    assert not server.workdir.exists()
    for folder in (services.PROJECT_ROOT, services.dynamodb_local_dir()):
        assert not (folder / "dynamodb-local-metadata.json").exists()
