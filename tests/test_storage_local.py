"""The local-directory store and the one atomic, durable file write, on real directories."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ddbpipe.errors import StorageError
from ddbpipe.storage import ObjectInfo, ObjectStore, open_store
from ddbpipe.storage.local import TEMP_PREFIX, write_file_atomically
from tests.stores import md5, record_fsyncs, run, write_file


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def refuse(*args: Any) -> None:
    raise OSError(28, "No space left on device")


# -- write_file_atomically -------------------------------------------------------------------


def test_atomic_write_creates_folders_and_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state.json"
    write_file_atomically(target, b"first")
    write_file_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert files_under(tmp_path) == ["a/b/state.json"]


def test_atomic_write_fsyncs_the_file_then_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "state").mkdir()
    fsynced = record_fsyncs(monkeypatch)
    write_file_atomically(tmp_path / "state" / "checkpoint.json", b"{}")
    assert fsynced == ["file", "folder"]


def test_atomic_write_fsyncs_the_folders_it_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced = record_fsyncs(monkeypatch)
    write_file_atomically(tmp_path / "new" / "deeper" / "checkpoint.json", b"{}")
    # "new" into tmp_path, "deeper" into "new", then the file and the folder holding it.
    assert fsynced == ["folder", "folder", "file", "folder"]


def test_atomic_write_with_a_mode_never_shows_the_data_with_wider_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill between the rename and a later chmod would leave a readable checkpoint: the
    # mode must already be on the file when it takes the final name.
    target = tmp_path / "checkpoint.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    modes_at_rename: list[int] = []
    real_replace = os.replace

    def replace(source: Any, destination: Any) -> None:
        modes_at_rename.append(os.stat(source).st_mode & 0o777)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    write_file_atomically(target, b"secret", 0o600)
    assert modes_at_rename == [0o600]
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert target.read_bytes() == b"secret"


def test_failed_atomic_write_keeps_the_old_file_and_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoint.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", refuse)
    written = r"cannot write .*checkpoint\.json.*No space left"
    with pytest.raises(StorageError, match=written) as caught:
        write_file_atomically(target, b"new")
    assert "\n" not in str(caught.value)
    assert target.read_bytes() == b"old"
    assert files_under(tmp_path) == ["checkpoint.json"]


def test_atomic_write_under_a_file_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="a file and a folder are in each other's way"):
        write_file_atomically(tmp_path / "file" / "checkpoint.json", b"{}")


# -- the local store -------------------------------------------------------------------------


def test_local_puts_leave_only_the_keys(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    source = write_file(tmp_path / "shard.tmp", b"x" * 10_000)

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("manifest.json", b"{}")
        await store.put_bytes("manifest.json", b'{"v": 2}')  # replaced in place
        await store.put_file("data/seg-0/shard-0.json.zst", source)

    run(lambda: open_store(str(root)), scenario)
    assert files_under(root) == ["data/seg-0/shard-0.json.zst", "manifest.json"]
    assert (root / "manifest.json").read_bytes() == b'{"v": 2}'


def test_local_failed_put_leaves_no_temp_file_and_keeps_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "dest"

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("manifest.json", b"old")
        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(StorageError, match=r"manifest\.json.*No space left"):
            await store.put_bytes("manifest.json", b"new")

    run(lambda: open_store(str(root)), scenario)
    assert files_under(root) == ["manifest.json"]
    assert (root / "manifest.json").read_bytes() == b"old"


def test_local_put_file_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dest" / "data").mkdir(parents=True)
    source = write_file(tmp_path / "shard.tmp", b"x" * 1000)

    async def scenario(store: ObjectStore) -> None:
        fsynced = record_fsyncs(monkeypatch)
        await store.put_file("data/shard", source)
        assert fsynced == ["file", "folder"]

    run(lambda: open_store(str(tmp_path / "dest")), scenario)


def test_local_listing_skips_temp_files_of_interrupted_writes(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    (root / "data").mkdir(parents=True)
    (root / "data" / f"{TEMP_PREFIX}123-shard").write_bytes(b"half")

    async def scenario(store: ObjectStore) -> list[ObjectInfo]:
        await store.put_bytes("data/shard", b"whole")
        return await store.list()

    assert [i.key for i in run(lambda: open_store(str(root)), scenario)] == ["data/shard"]


def test_local_store_on_a_file_fails_clearly(tmp_path: Path) -> None:
    file = tmp_path / "export.tar"
    file.write_bytes(b"not a folder")

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="is a file, not a directory"):
            await store.ensure_ready(for_write=True)
        with pytest.raises(StorageError, match="is a file, not a directory"):
            await store.ensure_ready(for_write=False)
        with pytest.raises(StorageError, match="export.tar"):
            await store.put_bytes("manifest.json", b"{}")

    run(lambda: open_store(str(file)), scenario)


def test_local_store_under_a_file_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="not a writable directory"):
            await store.ensure_ready(for_write=True)

    run(lambda: open_store(str(tmp_path / "file" / "dest")), scenario)


def test_local_store_under_an_unwritable_folder_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access
    # Root may write anywhere, so deny it the same way the kernel would deny anyone else.
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match=f"cannot create .*{locked}"):
            await store.ensure_ready(for_write=True)

    try:
        run(lambda: open_store(str(locked / "dest")), scenario)
    finally:
        locked.chmod(0o700)


def test_local_put_file_across_filesystems_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "dest"
    data = os.urandom(100_000)
    source = write_file(tmp_path / "shard.tmp", data)

    def cross_device(*args: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    async def scenario(store: ObjectStore) -> ObjectInfo:
        monkeypatch.setattr(os, "rename", cross_device)
        return await store.put_file("data/shard", source)

    assert run(lambda: open_store(str(root)), scenario).etag == md5(data)
    assert files_under(root) == ["data/shard"]
    assert (root / "data" / "shard").read_bytes() == data
    assert not os.path.exists(source)


def test_local_read_of_a_missing_folder_says_nothing_is_there(tmp_path: Path) -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="nothing at .*no such directory"):
            await store.ensure_ready(for_write=False)

    run(lambda: open_store(str(tmp_path / "missing")), scenario)
