"""ObjectStore against the real things: moto's S3 server and real temporary directories."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError

from ddbpipe.config import AwsOptions
from ddbpipe.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ConfigError,
    CredentialsError,
    ServiceUnavailableError,
    StorageError,
    ThrottledError,
)
from ddbpipe.retry import RetryPolicy
from ddbpipe.storage import (
    MULTIPART_THRESHOLD,
    TEMP_PREFIX,
    LocalStore,
    MemoryStore,
    ObjectInfo,
    ObjectStore,
    S3Store,
    open_store,
)

T = TypeVar("T")
StoreFactory = Callable[[], ObjectStore]
NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def run(make_store: StoreFactory, scenario: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store inside the event loop, run the scenario, close the store."""

    async def main() -> T:
        store = make_store()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def s3_options(s3_server: Any) -> AwsOptions:
    return AwsOptions(s3_endpoint_url=s3_server.endpoint)


@pytest.fixture
def s3_store(s3_bucket: str, s3_options: AwsOptions) -> StoreFactory:
    return lambda: S3Store(s3_bucket, "exports/run-1/", s3_options, retry=NO_WAIT)


@pytest.fixture(params=["memory", "local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "memory":
        name = f"test-{uuid.uuid4().hex}"
        return lambda: open_store(f"memory://{name}")
    if request.param == "local":
        return lambda: open_store(str(tmp_path / "dest"))
    return request.getfixturevalue("s3_store")


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


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


def test_reading_an_empty_store_says_nothing_is_there(any_store: StoreFactory) -> None:
    async def scenario(store: ObjectStore) -> None:
        await store.ensure_ready(for_write=True)
        with pytest.raises(StorageError, match="nothing at"):
            await store.ensure_ready(for_write=False)
        await store.put_bytes("manifest.json", b"{}")
        await store.ensure_ready(for_write=False)

    run(any_store, scenario)


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


def test_memory_stores_with_the_same_name_share_objects() -> None:
    name = f"shared-{uuid.uuid4().hex}"

    async def scenario() -> None:
        await open_store(f"memory://{name}").put_bytes("k", b"v")
        assert await open_store(f"memory://{name}").get_bytes("k") == b"v"
        assert await open_store(f"memory://{name}-other").head("k") is None

    asyncio.run(scenario())


# -- local directory -------------------------------------------------------------------------


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


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

    def refuse(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("manifest.json", b"old")
        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(StorageError, match=r"manifest\.json.*No space left"):
            await store.put_bytes("manifest.json", b"new")

    run(lambda: open_store(str(root)), scenario)
    assert files_under(root) == ["manifest.json"]
    assert (root / "manifest.json").read_bytes() == b"old"


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


def test_stores_close_as_context_managers(tmp_path: Path) -> None:
    async def scenario() -> bytes:
        async with open_store(str(tmp_path)) as store:
            await store.put_bytes("k", b"v")
            return await store.get_bytes("k")

    assert asyncio.run(scenario()) == b"v"


def test_local_read_of_a_missing_folder_says_nothing_is_there(tmp_path: Path) -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match="nothing at .*no such directory"):
            await store.ensure_ready(for_write=False)

    run(lambda: open_store(str(tmp_path / "missing")), scenario)


# -- S3 --------------------------------------------------------------------------------------


def test_s3_keys_live_under_the_prefix(
    s3_store: StoreFactory, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="elsewhere/x", Body=b"not ours")

    async def scenario(store: ObjectStore) -> list[ObjectInfo]:
        await store.put_bytes("data/a", b"1")
        return await store.list()

    assert [i.key for i in run(s3_store, scenario)] == ["data/a"]
    stored = s3_client.get_object(Bucket=s3_bucket, Key="exports/run-1/data/a")
    assert stored["Body"].read() == b"1"


def test_s3_list_follows_pagination(s3_store: StoreFactory) -> None:
    keys = [f"data/{n:05d}" for n in range(1001)]  # S3 pages hold 1000 keys

    async def scenario(store: ObjectStore) -> list[ObjectInfo]:
        slots = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with slots:
                await store.put_bytes(key, b"")

        await asyncio.gather(*(put(key) for key in keys))
        return await store.list("data/")

    assert [i.key for i in run(s3_store, scenario)] == keys


def big_file(path: Path, size: int) -> tuple[str, str]:
    """A file of random bytes (so parts in the wrong order would show); returns path, md5."""
    digest = hashlib.md5()
    with open(path, "wb") as file:
        for start in range(0, size, 8 << 20):
            block = os.urandom(min(8 << 20, size - start))
            digest.update(block)
            file.write(block)
    return str(path), digest.hexdigest()


def test_s3_big_file_goes_up_as_multipart(s3_store: StoreFactory, tmp_path: Path) -> None:
    size = MULTIPART_THRESHOLD + 1
    path, expected_md5 = big_file(tmp_path / "big", size)

    async def scenario(store: ObjectStore) -> tuple[ObjectInfo, str, ObjectInfo | None]:
        info = await store.put_file("data/big", path, md5_hex=expected_md5)
        digest = hashlib.md5()
        async for chunk in store.iter_chunks("data/big"):
            digest.update(chunk)
        return info, digest.hexdigest(), await store.head("data/big")

    info, read_back_md5, head = run(s3_store, scenario)
    assert re.fullmatch(r"[0-9a-f]{32}-5", info.etag), info.etag  # 64 MiB + 1 in 16 MiB parts
    assert info.size == size and head == info
    assert read_back_md5 == expected_md5
    assert not os.path.exists(path)


def test_s3_cancelled_multipart_upload_is_aborted(
    s3_store: StoreFactory, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    path, _ = big_file(tmp_path / "big", MULTIPART_THRESHOLD + (8 << 20))

    async def scenario(store: S3Store) -> None:
        first_part_stored = asyncio.Event()
        upload_part = store._upload_part

        async def upload_part_then_signal(*args: Any) -> Any:
            part = await upload_part(*args)
            first_part_stored.set()
            return part

        store._upload_part = upload_part_then_signal
        upload = asyncio.create_task(store.put_file("data/big", path))
        await first_part_stored.wait()
        assert not upload.done()
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
        assert await store.head("data/big") is None

    run(s3_store, scenario)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)
    assert not os.path.exists(path)


def test_s3_single_part_etag_is_the_md5(s3_store: StoreFactory, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    path = write_file(tmp_path / "shard", data)

    async def scenario(store: ObjectStore) -> ObjectInfo:
        return await store.put_file("data/shard", path)

    assert run(s3_store, scenario).etag == md5(data)


def test_s3_missing_bucket(s3_options: AwsOptions) -> None:
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"

    async def scenario(store: ObjectStore) -> None:
        for call in (
            store.ensure_ready(for_write=True),
            store.put_bytes("manifest.json", b"{}"),
            store.get_bytes("manifest.json"),
            store.list("data/"),
        ):
            with pytest.raises(BucketNotFoundError, match=bucket) as caught:
                await call
            assert "\n" not in str(caught.value)

    run(lambda: S3Store(bucket, "x/", s3_options, retry=NO_WAIT), scenario)


def test_s3_unreachable_endpoint_is_transient_and_bounded() -> None:
    from tools.services import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    options = AwsOptions(s3_endpoint_url=endpoint)

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(ServiceUnavailableError, match=re.escape(endpoint)) as caught:
            await store.put_bytes("k", b"v")
        assert caught.value.transient

    run(lambda: S3Store("b", "", options, retry=NO_WAIT), scenario)


def test_s3_missing_credentials(s3_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(CredentialsError, match="no AWS credentials"):
            await store.put_bytes("k", b"v")

    run(s3_store, scenario)


def client_error(code: str, status: int, action: str = "PutObject") -> ClientError:
    reply: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(reply, action)


class FlakyClient:
    """Forwards to the real client, but the first ``failures`` put_object calls fail."""

    def __init__(self, client: Any, error: ClientError, failures: int) -> None:
        self.client, self.error, self.failures, self.calls = client, error, failures, 0

    async def put_object(self, **params: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await self.client.put_object(**params)


def test_s3_transient_errors_are_retried(s3_store: StoreFactory) -> None:
    async def scenario(store: S3Store) -> None:
        flaky = FlakyClient(await store._get_client(), client_error("SlowDown", 503), 2)
        store._client = flaky
        assert (await store.put_bytes("k", b"v")).etag == md5(b"v")
        assert flaky.calls == 3

    run(s3_store, scenario)


def test_s3_retries_are_bounded(s3_store: StoreFactory) -> None:
    async def scenario(store: S3Store) -> None:
        flaky = FlakyClient(await store._get_client(), client_error("SlowDown", 503), 99)
        store._client = flaky
        with pytest.raises(ThrottledError, match="PutObject.*exports/run-1/k"):
            await store.put_bytes("k", b"v")
        assert flaky.calls == NO_WAIT.max_attempts

    run(s3_store, scenario)


def test_s3_terminal_errors_are_not_retried(s3_store: StoreFactory) -> None:
    async def scenario(store: S3Store) -> None:
        flaky = FlakyClient(await store._get_client(), client_error("AccessDenied", 403), 99)
        store._client = flaky
        with pytest.raises(AccessDeniedError, match="s3:PutObject") as caught:
            await store.put_bytes("k", b"v")
        assert flaky.calls == 1
        assert caught.value.action == "PutObject" and caught.value.code == "AccessDenied"

    run(s3_store, scenario)


def test_s3_read_of_an_empty_prefix_names_it(s3_bucket: str, s3_options: AwsOptions) -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match=f"nothing at s3://{s3_bucket}/nothing/here"):
            await store.ensure_ready(for_write=False)

    run(lambda: open_store(f"s3://{s3_bucket}/nothing/here/", s3_options), scenario)


class DroppingBody:
    """A response body whose connection drops after ``good_reads`` reads."""

    def __init__(self, body: Any, good_reads: int) -> None:
        self.body, self.good_reads = body, good_reads

    async def __aenter__(self) -> DroppingBody:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.body.aclose()

    async def read(self, amount: int) -> bytes:
        if self.good_reads == 0:
            raise ResponseStreamingError(error="connection reset by peer")
        self.good_reads -= 1
        data: bytes = await self.body.read(amount)
        return data


def drop_first_connection(store: S3Store, after_reads: int, on_drop: Any = None) -> list[int]:
    """Make the first GetObject body of ``store`` fail; returns the offsets requested."""
    offsets: list[int] = []
    open_range = store._open_range

    async def open_range_then_drop(key: str, offset: int, etag: str | None) -> dict[str, Any]:
        if offsets and on_drop is not None:
            await on_drop()
        offsets.append(offset)
        reply = await open_range(key, offset, etag)
        if len(offsets) == 1:
            reply["Body"] = DroppingBody(reply["Body"], after_reads)
        return reply

    store._open_range = open_range_then_drop
    return offsets


def test_s3_streaming_read_resumes_after_a_dropped_connection(s3_store: StoreFactory) -> None:
    data = os.urandom(100_000)

    async def scenario(store: S3Store) -> None:
        await store.put_bytes("data/shard", data)
        offsets = drop_first_connection(store, after_reads=3)
        chunks = [c async for c in store.iter_chunks("data/shard", chunk_size=10_000)]
        assert b"".join(chunks) == data
        assert offsets == [0, 30_000]

    run(s3_store, scenario)


def test_s3_streaming_read_refuses_to_resume_on_a_changed_object(s3_store: StoreFactory) -> None:
    async def scenario(store: S3Store) -> None:
        await store.put_bytes("data/shard", b"a" * 50_000)

        async def replace_object() -> None:
            await store.put_bytes("data/shard", b"b" * 50_000)

        drop_first_connection(store, after_reads=1, on_drop=replace_object)
        with pytest.raises(StorageError, match="changed while it was read"):
            _ = [c async for c in store.iter_chunks("data/shard", chunk_size=10_000)]

    run(s3_store, scenario)


def test_s3_malformed_endpoint_is_a_config_error() -> None:
    options = AwsOptions(s3_endpoint_url="not a url")

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(ConfigError, match="not a url"):
            await store.put_bytes("k", b"v")

    run(lambda: S3Store("bucket", "", options, retry=NO_WAIT), scenario)
