"""What every ObjectStore does alike (memory, a real directory, moto's S3 server); open_store."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from ddbpipe.errors import ConfigError, StorageError
from ddbpipe.storage import ObjectInfo, ObjectStore, open_store
from ddbpipe.storage.local import LocalStore
from ddbpipe.storage.memory import MemoryStore
from ddbpipe.storage.s3 import S3Store
from tests.stores import StoreFactory, md5, run, s3_store_factory, write_file


@pytest.fixture(params=["memory", "local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "memory":
        name = f"test-{uuid.uuid4().hex}"
        return lambda: open_store(f"memory://{name}")
    if request.param == "local":
        return lambda: open_store(str(tmp_path / "dest"))
    server: Any = request.getfixturevalue("s3_server")
    return s3_store_factory(server.endpoint, request.getfixturevalue("s3_bucket"))


# -- the same behaviour from every kind of store ---------------------------------------------


def test_bytes_round_trip(any_store: StoreFactory) -> None:
    data = b"hello, shards\n" * 1000

    async def scenario(store: ObjectStore) -> None:
        info = await store.put_bytes("data/shard-0.json.zst", data)
        assert info == ObjectInfo(key="data/shard-0.json.zst", size=len(data), etag=md5(data))
        assert await store.get_bytes("data/shard-0.json.zst") == data
        head = await store.head("data/shard-0.json.zst")
        assert head is not None and head.size == len(data)
        assert head.etag in (md5(data), "")  # local head does not re-read the file
        assert await store.head("data/missing") is None
        chunks = [c async for c in store.iter_chunks("data/shard-0.json.zst", chunk_size=4096)]
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= 4096 and len(chunks) > 1

    run(any_store, scenario)


def test_empty_object_round_trip(any_store: StoreFactory) -> None:
    async def scenario(store: ObjectStore) -> None:
        assert (await store.put_bytes("_SUCCESS", b"")).etag == md5(b"")
        assert await store.get_bytes("_SUCCESS") == b""
        assert [c async for c in store.iter_chunks("_SUCCESS")] == []

    run(any_store, scenario)


def test_list_is_recursive_sorted_and_prefix_filtered(any_store: StoreFactory) -> None:
    keys = ["manifest.json", "data/b", "data/a/2", "data/a/1", "datax", "state/seg-1.json"]

    async def scenario(store: ObjectStore) -> None:
        for key in keys:
            await store.put_bytes(key, key.encode())
        everything = await store.list()
        assert [i.key for i in everything] == sorted(keys)
        assert all(i.size == len(i.key) for i in everything)
        assert [i.key for i in await store.list("data/")] == ["data/a/1", "data/a/2", "data/b"]
        # A prefix is a string prefix, as on S3, not a folder name.
        assert [i.key for i in await store.list("data")] == [
            "data/a/1",
            "data/a/2",
            "data/b",
            "datax",
        ]
        assert [i.key for i in await store.list("data/a/")] == ["data/a/1", "data/a/2"]
        assert await store.list("nothing/") == []

    run(any_store, scenario)


def test_delete(any_store: StoreFactory) -> None:
    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("state/seg-1.json", b"{}")
        await store.delete("state/seg-1.json")
        assert await store.head("state/seg-1.json") is None
        assert await store.list() == []
        await store.delete("state/seg-1.json")  # missing is fine

    run(any_store, scenario)


def test_missing_key_is_a_storage_error(any_store: StoreFactory) -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="data/nope.*not found"):
            await store.get_bytes("data/nope")
        with pytest.raises(StorageError, match="not found"):
            _ = [c async for c in store.iter_chunks("data/nope")]

    run(any_store, scenario)


def test_put_file_takes_the_file_and_returns_its_md5(
    any_store: StoreFactory, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    first = write_file(tmp_path / "shard-a.tmp", data)
    second = write_file(tmp_path / "shard-b.tmp", data[::-1])

    async def scenario(store: ObjectStore) -> None:
        info = await store.put_file("data/a", first)
        assert info == ObjectInfo(key="data/a", size=len(data), etag=md5(data))
        known = await store.put_file("data/b", second, md5_hex=md5(data[::-1]))
        assert known.etag == md5(data[::-1])
        assert await store.get_bytes("data/a") == data
        assert await store.get_bytes("data/b") == data[::-1]

    run(any_store, scenario)
    assert not os.path.exists(first) and not os.path.exists(second)


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../b", "a//b", "a/./b", "dir/"])
def test_keys_that_could_escape_the_root_are_refused(any_store: StoreFactory, key: str) -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="invalid object key"):
            await store.put_bytes(key, b"x")

    run(any_store, scenario)


def test_put_file_under_an_invalid_key_still_takes_the_file(
    any_store: StoreFactory, tmp_path: Path
) -> None:
    path = write_file(tmp_path / "shard.tmp", b"x")

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="invalid object key"):
            await store.put_file("../escape", path)

    run(any_store, scenario)
    assert not os.path.exists(path)


def test_reading_an_empty_store_says_nothing_is_there(any_store: StoreFactory) -> None:
    async def scenario(store: ObjectStore) -> None:
        await store.ensure_ready(for_write=True)
        with pytest.raises(StorageError, match="nothing at"):
            await store.ensure_ready(for_write=False)
        await store.put_bytes("manifest.json", b"{}")
        await store.ensure_ready(for_write=False)

    run(any_store, scenario)


def test_stores_close_as_context_managers(any_store: StoreFactory) -> None:
    async def scenario() -> bytes:
        async with any_store() as store:
            await store.put_bytes("k", b"v")
            return await store.get_bytes("k")

    assert asyncio.run(scenario()) == b"v"


# -- open_store ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "root_key", "shown"),
    [
        ("s3://b", "b", "k/x", "s3://b"),
        ("s3://b/", "b", "k/x", "s3://b"),
        ("s3://b/p/q/", "b", "p/q/k/x", "s3://b/p/q"),
        ("s3://b/p/q", "b", "p/q/k/x", "s3://b/p/q"),
        ("S3://my.bucket-1/exports", "my.bucket-1", "exports/k/x", "s3://my.bucket-1/exports"),
    ],
)
def test_open_store_parses_s3_urls(url: str, bucket: str, root_key: str, shown: str) -> None:
    store = open_store(url)
    assert isinstance(store, S3Store)
    assert store.bucket == bucket
    assert store.root_key("k/x") == root_key
    assert store.url == shown


def test_open_store_local_and_memory(tmp_path: Path) -> None:
    local = open_store(str(tmp_path / "dest"))
    assert isinstance(local, LocalStore)
    assert local.url == str(tmp_path / "dest") and local.bucket is None
    assert local.root_key("data/a") == "data/a"
    assert not (tmp_path / "dest").exists()  # created on the first write, not on open
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    relative = open_store("some/dir")
    assert Path(relative.url).is_absolute()
    memory = open_store("memory://shared")
    assert isinstance(memory, MemoryStore) and memory.bucket is None


@pytest.mark.parametrize("url", ["", "s3://", "s3:///prefix", "s3://bad bucket/x", "gs://b/p"])
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


def test_the_backends_are_importable_from_the_package_too() -> None:
    import ddbpipe.storage as storage

    assert (storage.LocalStore, storage.MemoryStore, storage.S3Store) == (
        LocalStore,
        MemoryStore,
        S3Store,
    )
    with pytest.raises(AttributeError):
        _ = storage.NoSuchStore


# -- memory ----------------------------------------------------------------------------------


def test_memory_stores_with_the_same_name_share_objects() -> None:
    name = f"shared-{uuid.uuid4().hex}"

    async def scenario() -> None:
        await open_store(f"memory://{name}").put_bytes("k", b"v")
        assert await open_store(f"memory://{name}").get_bytes("k") == b"v"
        assert await open_store(f"memory://{name}-other").head("k") is None

    asyncio.run(scenario())
