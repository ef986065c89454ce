"""The S3 store against moto's S3 server: layout, multipart, errors, retries, resumed reads.

botocore's retries are proven through a faulty proxy in front of moto (real HTTP error
replies); what botocore cannot retry (a body that drops mid-read) through a client that
wraps the real one and drops the connection, given to the store as its client factory;
credentials that expire through the fault endpoint (``tools/fault_endpoint.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ResponseStreamingError

from ddbpipe.config import AwsOptions
from ddbpipe.errors import (
    AccessDeniedError,
    AwsRequestError,
    BucketNotFoundError,
    ConfigError,
    CredentialsError,
    DdbpipeError,
    ServiceUnavailableError,
    StorageError,
    ThrottledError,
)
from ddbpipe.retry import ManualClock
from ddbpipe.storage import ObjectInfo, ObjectStore, open_store
from ddbpipe.storage.s3 import ClientFactory, S3Store, default_client_factory
from ddbpipe.storage.uploads import MULTIPART_THRESHOLD
from tests.endpoints import faulty_s3_proxy
from tests.stores import NO_WAIT, S3_PREFIX, StoreFactory, md5, run, s3_store_factory, write_file
from tools.fault_endpoint import (
    ROTATING_PROFILE,
    FaultCounts,
    FaultEndpoint,
    write_rotating_profile,
)

T = TypeVar("T")


@pytest.fixture
def s3_options(s3_server: Any) -> AwsOptions:
    return AwsOptions(s3_endpoint_url=s3_server.endpoint)


@pytest.fixture
def s3_store(s3_server: Any, s3_bucket: str) -> StoreFactory:
    return s3_store_factory(s3_server.endpoint, s3_bucket)


# -- clients that wrap the real one ----------------------------------------------------------


class WrappedClient:
    """Passes every call to the real (moto-backed) client; subclasses step in on some."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def wrapping(options: AwsOptions, wrap: Callable[[Any], WrappedClient]) -> ClientFactory:
    """The store's own client factory, each client it makes wrapped by ``wrap``."""
    real = default_client_factory(options, NO_WAIT.max_attempts)

    @asynccontextmanager
    async def create() -> AsyncIterator[WrappedClient]:
        async with real() as client:
            yield wrap(client)

    return create


class DroppingBody:
    """A response body whose connection drops after ``good_reads`` reads."""

    def __init__(self, body: Any, good_reads: int) -> None:
        self.body, self.good_reads = body, good_reads
        self.delivered = 0

    async def __aenter__(self) -> DroppingBody:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.body.aclose()

    async def read(self, amount: int) -> bytes:
        if self.good_reads == 0:
            raise ResponseStreamingError(error="connection reset by peer")
        self.good_reads -= 1
        data: bytes = await self.body.read(amount)
        self.delivered += len(data)
        return data


class DroppingClient(WrappedClient):
    """The first ``drops`` GetObject bodies drop after ``good_reads`` reads.

    ``requests`` holds the parameters of every GetObject, ``bodies`` the bodies that drop;
    ``before_resume(real_client)`` runs before each GetObject after the first.
    """

    def __init__(
        self,
        client: Any,
        *,
        good_reads: int,
        drops: int = 1,
        before_resume: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(client)
        self.good_reads, self.drops, self.before_resume = good_reads, drops, before_resume
        self.requests: list[dict[str, Any]] = []
        self.bodies: list[DroppingBody] = []

    async def get_object(self, **params: Any) -> Any:
        if self.requests and self.before_resume is not None:
            await self.before_resume(self.client)
        self.requests.append(params)
        reply = await self.client.get_object(**params)
        if len(self.requests) <= self.drops:
            self.bodies.append(DroppingBody(reply["Body"], self.good_reads))
            reply["Body"] = self.bodies[-1]
        return reply


def dropping_store(
    s3_options: AwsOptions, bucket: str, *, clock: ManualClock | None = None, **drops: Any
) -> tuple[StoreFactory, list[DroppingClient]]:
    """A store whose client drops GetObject bodies (``DroppingClient(**drops)``), and the
    clients it made, to inspect."""
    made: list[DroppingClient] = []

    def wrap(client: Any) -> DroppingClient:
        made.append(DroppingClient(client, **drops))
        return made[-1]

    factory = wrapping(s3_options, wrap)
    endpoint = str(s3_options.s3_endpoint_url)
    return s3_store_factory(endpoint, bucket, client_factory=factory, clock=clock), made


# -- layout ----------------------------------------------------------------------------------


def test_s3_keys_live_under_the_prefix(
    s3_store: StoreFactory, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="elsewhere/x", Body=b"not ours")

    async def scenario(store: ObjectStore) -> list[ObjectInfo]:
        await store.put_bytes("data/a", b"1")
        return await store.list()

    assert [i.key for i in run(s3_store, scenario)] == ["data/a"]
    stored = s3_client.get_object(Bucket=s3_bucket, Key=S3_PREFIX + "data/a")
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


def test_s3_read_of_an_empty_prefix_names_it(s3_bucket: str, s3_options: AwsOptions) -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(StorageError, match=f"nothing at s3://{s3_bucket}/nothing/here"):
            await store.ensure_ready(for_write=False)

    run(lambda: open_store(f"s3://{s3_bucket}/nothing/here/", s3_options), scenario)


class CallRecordingClient(WrappedClient):
    """Keeps the method name and parameters of every API call made through it."""

    def __init__(self, client: Any, calls: list[tuple[str, dict[str, Any]]]) -> None:
        super().__init__(client)
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        async def call(**params: Any) -> Any:
            self.calls.append((name, params))
            return await method(**params)

        return call


@pytest.mark.parametrize(
    "ready_for", [{"for_write": True}, {"for_write": False, "may_be_empty": True},
                  {"for_write": False}],
    ids=["write", "read-may-be-empty", "read"])
def test_s3_the_bucket_check_is_one_listing_held_to_the_prefix(
    s3_options: AwsOptions, s3_bucket: str, ready_for: dict[str, bool]
) -> None:
    # A policy that holds listings to the prefix refuses HeadBucket (a listing of no prefix).
    calls: list[tuple[str, dict[str, Any]]] = []
    factory = wrapping(s3_options, lambda client: CallRecordingClient(client, calls))

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("manifest.json", b"{}")  # something to read
        calls.clear()
        await store.ensure_ready(**ready_for)

    endpoint = str(s3_options.s3_endpoint_url)
    run(s3_store_factory(endpoint, s3_bucket, client_factory=factory), scenario)
    assert calls == [("list_objects_v2", {"Bucket": s3_bucket, "Prefix": S3_PREFIX, "MaxKeys": 1})]


# -- uploads ---------------------------------------------------------------------------------


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


class SignallingClient(WrappedClient):
    """Sets ``part_stored`` once an UploadPart has succeeded."""

    def __init__(self, client: Any, part_stored: asyncio.Event) -> None:
        super().__init__(client)
        self.part_stored = part_stored

    async def upload_part(self, **params: Any) -> Any:
        reply = await self.client.upload_part(**params)
        self.part_stored.set()
        return reply


def test_s3_cancelled_multipart_upload_is_aborted(
    s3_options: AwsOptions, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    path, _ = big_file(tmp_path / "big", MULTIPART_THRESHOLD + (8 << 20))
    part_stored = asyncio.Event()
    factory = wrapping(s3_options, lambda client: SignallingClient(client, part_stored))

    async def scenario(store: ObjectStore) -> None:
        upload = asyncio.create_task(store.put_file("data/big", path))
        await part_stored.wait()
        assert not upload.done()
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
        assert await store.head("data/big") is None

    endpoint = str(s3_options.s3_endpoint_url)
    run(s3_store_factory(endpoint, s3_bucket, client_factory=factory), scenario)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)
    assert not os.path.exists(path)


def test_s3_single_part_etag_is_the_md5(s3_store: StoreFactory, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    path = write_file(tmp_path / "shard", data)

    async def scenario(store: ObjectStore) -> ObjectInfo:
        return await store.put_file("data/shard", path)

    assert run(s3_store, scenario).etag == md5(data)


# -- errors ----------------------------------------------------------------------------------


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

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(ServiceUnavailableError, match=re.escape(endpoint)) as caught:
            await store.put_bytes("k", b"v")
        assert caught.value.transient

    run(s3_store_factory(endpoint, "b"), scenario)


def test_s3_missing_credentials(s3_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(CredentialsError, match="no AWS credentials"):
            await store.put_bytes("k", b"v")

    run(s3_store, scenario)


def test_s3_malformed_endpoint_is_a_config_error() -> None:
    async def scenario(store: ObjectStore) -> None:
        with pytest.raises(ConfigError, match="not a url"):
            await store.put_bytes("k", b"v")

    run(s3_store_factory("not a url", "bucket"), scenario)


# -- botocore's retries, through a faulty proxy in front of moto -----------------------------


def put_through_proxy(
    s3_server: Any, bucket: str, **faults: Any
) -> tuple[int, ObjectInfo | DdbpipeError]:
    """Put "k" through a ``faulty_s3_proxy(**faults)``: the requests the proxy saw, and the
    put's result or error."""

    async def scenario() -> tuple[int, ObjectInfo | DdbpipeError]:
        async with faulty_s3_proxy(s3_server.endpoint, **faults) as proxy:
            async with s3_store_factory(proxy.endpoint, bucket)() as store:
                try:
                    outcome: ObjectInfo | DdbpipeError = await store.put_bytes("k", b"v")
                except DdbpipeError as error:
                    outcome = error
            return proxy.requests, outcome

    return asyncio.run(scenario())


def test_s3_throttled_calls_are_retried(s3_server: Any, s3_bucket: str, s3_client: Any) -> None:
    requests, outcome = put_through_proxy(s3_server, s3_bucket, faults=2)
    assert requests == 3
    assert outcome == ObjectInfo(key="k", size=1, etag=md5(b"v"))
    assert s3_client.get_object(Bucket=s3_bucket, Key=S3_PREFIX + "k")["Body"].read() == b"v"


def test_s3_retries_are_bounded(s3_server: Any, s3_bucket: str) -> None:
    requests, outcome = put_through_proxy(s3_server, s3_bucket, faults=99)
    assert requests == NO_WAIT.max_attempts
    assert isinstance(outcome, ThrottledError)
    assert re.search(f"PutObject.*{S3_PREFIX}k.*SlowDown", str(outcome)), outcome
    assert "\n" not in str(outcome)


def test_s3_terminal_errors_are_not_retried(s3_server: Any, s3_bucket: str) -> None:
    requests, outcome = put_through_proxy(
        s3_server, s3_bucket, faults=99, status=403, code="AccessDenied", message="Access Denied"
    )
    assert requests == 1
    assert isinstance(outcome, AccessDeniedError)
    assert "s3:PutObject" in str(outcome)
    assert (outcome.action, outcome.code) == ("PutObject", "AccessDenied")


# -- reads that resume -----------------------------------------------------------------------


def test_s3_streaming_read_resumes_after_a_dropped_connection(
    s3_options: AwsOptions, s3_bucket: str
) -> None:
    data = os.urandom(100_000)
    make_store, clients = dropping_store(s3_options, s3_bucket, good_reads=3)

    async def scenario(store: ObjectStore) -> None:
        etag = (await store.put_bytes("data/shard", data)).etag
        chunks = [c async for c in store.iter_chunks("data/shard", chunk_size=10_000)]
        assert b"".join(chunks) == data
        first, resumed = clients[0].requests
        assert "Range" not in first
        assert resumed["Range"] == "bytes=30000-"
        assert resumed["IfMatch"].strip('"') == etag

    run(make_store, scenario)


def test_s3_get_bytes_resumes_too(s3_options: AwsOptions, s3_bucket: str) -> None:
    data = os.urandom(3 << 20)  # more than one read
    make_store, clients = dropping_store(s3_options, s3_bucket, good_reads=1)

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("manifest.json", data)
        assert await store.get_bytes("manifest.json") == data
        reached = clients[0].bodies[0].delivered
        assert 0 < reached < len(data)
        assert [r.get("Range") for r in clients[0].requests] == [None, f"bytes={reached}-"]

    run(make_store, scenario)


def test_s3_streaming_read_refuses_to_resume_on_a_changed_object(
    s3_options: AwsOptions, s3_bucket: str
) -> None:
    async def replace_object(client: Any) -> None:
        await client.put_object(Bucket=s3_bucket, Key=S3_PREFIX + "data/shard", Body=b"b" * 50_000)

    make_store, _ = dropping_store(
        s3_options, s3_bucket, good_reads=1, before_resume=replace_object
    )

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("data/shard", b"a" * 50_000)
        with pytest.raises(StorageError, match="changed while it was read"):
            _ = [c async for c in store.iter_chunks("data/shard", chunk_size=10_000)]

    run(make_store, scenario)


def test_s3_a_read_that_keeps_dropping_gives_up(s3_options: AwsOptions, s3_bucket: str) -> None:
    clock = ManualClock()
    make_store, clients = dropping_store(
        s3_options, s3_bucket, clock=clock, good_reads=0, drops=99
    )

    async def scenario(store: ObjectStore) -> None:
        await store.put_bytes("data/shard", b"x" * 1000)
        with pytest.raises(ServiceUnavailableError, match="gave up after 3 attempts") as caught:
            await store.get_bytes("data/shard")
        assert "GetObject" in str(caught.value) and "\n" not in str(caught.value)
        assert len(clients[0].requests) == NO_WAIT.max_attempts
        assert len(clock.sleeps) == NO_WAIT.max_attempts - 1  # paced by the store's clock

    run(make_store, scenario)


def test_an_archived_object_is_frozen_until_restored(s3_store: StoreFactory) -> None:
    from ddbpipe.config import ArchiveOptions

    async def scenario(store: S3Store) -> None:
        await store.put_bytes("data/cold", b"x" * 100,
                              archive=ArchiveOptions(storage_class="DEEP_ARCHIVE"))
        await store.put_bytes("data/warm", b"y" * 100,
                              archive=ArchiveOptions(storage_class="GLACIER_IR"))
        listed = {info.key: info for info in await store.list("data/")}
        assert listed["data/cold"].storage_class == "DEEP_ARCHIVE"
        assert listed["data/warm"].storage_class == "GLACIER_IR"
        cold = await store.head("data/cold")
        assert cold is not None and cold.frozen and cold.restore is None
        assert not listed["data/warm"].frozen  # Glacier Instant Retrieval reads at once
        with pytest.raises(StorageError, match="archived and not restored.*ddbpipe thaw"):
            await store.get_bytes("data/cold")
        assert await store.request_restore("data/cold", days=2, tier="Bulk")
        thawed = await store.head("data/cold")
        assert thawed is not None and thawed.restore is not None
        if thawed.restore == "restored":
            assert not thawed.frozen and await store.get_bytes("data/cold") == b"x" * 100

    run(s3_store, scenario)


# -- credentials that expire (botocore does not retry ExpiredToken) ------------------------


@pytest.fixture
def rotating_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A profile whose credentials get a new session token each time they are resolved."""
    config = write_rotating_profile(tmp_path, access_key="ddbpipelocal", secret_key="secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return ROTATING_PROFILE


def through_expiring_endpoint(
    s3_server: Any, bucket: str, profile: str | None, scenario: Callable[[S3Store], Awaitable[T]]
) -> tuple[T | DdbpipeError, FaultCounts]:
    """Run ``scenario`` on a store behind an endpoint that says the credentials of its first
    request expired (and refuses them from then on): its result or error, and what the
    endpoint saw."""
    with FaultEndpoint(s3_server.endpoint, service="s3", rate=1.0,
                       kinds=["expired_token"]).start() as endpoint:
        options = AwsOptions(profile=profile, s3_endpoint_url=endpoint.endpoint)
        outcome: T | DdbpipeError
        try:
            outcome = run(lambda: S3Store(bucket, S3_PREFIX, options, retry=NO_WAIT), scenario)
        except DdbpipeError as error:
            outcome = error
        return outcome, endpoint.counts()


def test_s3_expired_credentials_are_renewed_once_on_a_new_client(
    s3_server: Any, s3_bucket: str, rotating_profile: str
) -> None:
    async def put_then_head(store: S3Store) -> ObjectInfo | None:
        await store.put_bytes("k", b"v")
        return await store.head("k")

    outcome, counts = through_expiring_endpoint(s3_server, s3_bucket, rotating_profile,
                                                put_then_head)
    assert outcome == ObjectInfo(key="k", size=1, etag=md5(b"v"))
    assert counts.faults == {"expired_token": 1}
    assert counts.forwarded == {"PUT": 1, "HEAD": 1}


def test_s3_a_bare_400_to_a_head_may_be_an_expired_token_too(
    s3_server: Any, s3_bucket: str, rotating_profile: str
) -> None:
    async def head(store: S3Store) -> ObjectInfo | None:
        return await store.head("missing")  # S3 answers HEAD without a body

    outcome, counts = through_expiring_endpoint(s3_server, s3_bucket, rotating_profile, head)
    assert outcome is None
    # botocore itself asks the bucket's region after a bare 400 (with the same credentials).
    assert counts.forwarded == {"HEAD": 1} and counts.faults["expired_token"] >= 1


def test_s3_static_credentials_that_expired_are_one_credentials_error(
    s3_server: Any, s3_bucket: str
) -> None:
    async def put(store: S3Store) -> ObjectInfo:
        return await store.put_bytes("k", b"v")

    outcome, counts = through_expiring_endpoint(s3_server, s3_bucket, None, put)
    assert isinstance(outcome, CredentialsError), outcome
    assert f"s3:PutObject on s3://{s3_bucket}/{S3_PREFIX}k (ExpiredToken" in str(outcome)
    assert "\n" not in str(outcome)
    assert counts.requests == 2  # renewed once, refused again: no more


def test_s3_a_head_refused_bare_twice_names_the_likely_causes(
    s3_server: Any, s3_bucket: str
) -> None:
    async def head(store: S3Store) -> ObjectInfo | None:
        return await store.head("k")

    outcome, counts = through_expiring_endpoint(s3_server, s3_bucket, None, head)
    assert isinstance(outcome, AwsRequestError), outcome
    assert "bare HTTP 400" in str(outcome) and "expired credentials" in str(outcome)
    assert counts.forwarded == {}
