"""ddbpipe against services that fail: the fault endpoint (``tools/fault_endpoint.py``) in
front of moto's S3 and DynamoDB Local.

First the endpoint itself, to botocore's eyes: each fault has the service's own shape. Then
exports and imports through it at a 25% fault rate (every kind, several seeds) must be exact,
and an outage longer than the retry budget must end in one clear error and a state that a
resume through a healthy endpoint finishes exactly.

Kept fast: the clients' read timeouts are short (a stalled reply costs that long),
botocore's own backoff (in real time) is scaled down to a hundredth, and the jobs wait on a
``ManualClock``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiobotocore.config import AioConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.retries.standard import ExponentialBackoff

import ddbpipe
from ddbpipe import dynamo
from ddbpipe.config import AwsOptions, ExportOptions, ImportOptions
from ddbpipe.errors import CredentialsError, TransientError
from ddbpipe.export_job import ExportSummary, run_export
from ddbpipe.import_job import ImportSummary, run_import
from ddbpipe.manifest import MANIFEST_KEY, STATE_KEY
from ddbpipe.retry import ManualClock
from ddbpipe.storage import s3 as s3_store
from tests.exports import plain_items, scan_table, sorted_items
from tools.fault_endpoint import (
    ROTATING_PROFILE,
    FaultEndpoint,
    Service,
    start_fault_endpoint,
    write_rotating_profile,
)
from tools.services import LOCAL_CREDENTIALS

SEEDS = (1, 2, 3)
FAULT_RATE = 0.25
#: The clients' read timeout in these tests; a stalled reply outlasts it.
READ_TIMEOUT = 0.5
STALL_SECONDS = 3.0
ITEMS = 600


@pytest.fixture
def fast_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short read timeouts for both clients, and botocore's backoff (up to 1 s, 2 s, ... of
    real time before S3 retry n) a hundredth as long."""
    monkeypatch.setattr(dynamo, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(
        total=None, sock_connect=10, sock_read=READ_TIMEOUT))
    monkeypatch.setattr(s3_store, "AioConfig", lambda **settings: AioConfig(
        **{**settings, "read_timeout": READ_TIMEOUT}))
    real_delay = ExponentialBackoff.delay_amount
    monkeypatch.setattr(ExponentialBackoff, "delay_amount",
                        lambda backoff, context: real_delay(backoff, context) / 100)


@pytest.fixture
def rotating_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AwsOptions:
    """AWS options of a profile whose credentials are renewed each time they are resolved
    (as a role's or SSO's), so a run survives an expired token."""
    config = write_rotating_profile(
        tmp_path, access_key=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return AwsOptions(profile=ROTATING_PROFILE)


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an import's checkpoint and dead letters go there


def faulty(upstream: str, service: Service, seed: int, **settings: Any) -> FaultEndpoint:
    settings.setdefault("rate", FAULT_RATE)
    return start_fault_endpoint(upstream, service=service, seed=seed,
                                stall_seconds=STALL_SECONDS, **settings)


def through(options: AwsOptions, dynamodb: str, s3: str) -> AwsOptions:
    return AwsOptions(profile=options.profile, region=options.region, endpoint_url=dynamodb,
                      s3_endpoint_url=s3)


# --- the endpoint, as botocore sees it ----------------------------------------------------------


def single_attempt_client(service: str, endpoint: str) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                    read_timeout=READ_TIMEOUT, s3={"addressing_style": "path"})
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", config=config)


@pytest.mark.parametrize(("kind", "status", "code"), [
    ("server_error", 500, "InternalError"),
    ("throttle", 503, "SlowDown"),
    ("expired_token", 400, "ExpiredToken"),
])
def test_s3_faults_are_s3_error_replies(
    s3_server: Any, s3_bucket: str, kind: Any, status: int, code: str
) -> None:
    with faulty(s3_server.endpoint, "s3", 0, rate=1.0, kinds=[kind]) as endpoint:
        client = single_attempt_client("s3", endpoint.endpoint)
        with pytest.raises(ClientError) as caught:
            client.list_objects_v2(Bucket=s3_bucket)
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        with pytest.raises(ClientError) as bare:
            client.head_bucket(Bucket=s3_bucket)  # S3 answers HEAD without a body
        assert bare.value.response["Error"]["Code"] == str(status)
        assert endpoint.counts().faults == {kind: 2}
        assert endpoint.counts().forwarded == {}


@pytest.mark.parametrize(("kind", "status", "code"), [
    ("server_error", 500, "InternalServerError"),
    ("throttle", 400, "ThrottlingException"),
    ("expired_token", 400, "ExpiredTokenException"),
])
def test_dynamodb_faults_are_dynamodb_error_replies(
    dynamodb_local: Any, kind: Any, status: int, code: str
) -> None:
    with faulty(dynamodb_local.endpoint, "dynamodb", 0, rate=1.0, kinds=[kind]) as endpoint:
        replies: list[Any] = []
        client = single_attempt_client("dynamodb", endpoint.endpoint)
        client.meta.events.register(
            "needs-retry.dynamodb", lambda response, **kw: replies.append(response)
        )
        with pytest.raises(ClientError) as caught:
            client.list_tables()
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        http_reply = replies[0][0]
        # DynamoDB checksums its error replies too.
        assert http_reply.headers["x-amz-crc32"] == str(zlib.crc32(http_reply.content))


def test_dropped_cut_and_stalled_replies_are_connection_failures(
    s3_server: Any, s3_bucket: str, s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"v" * 1000)
    for kind, failure in (("drop", ConnectionClosedError), ("stall", ReadTimeoutError)):
        with faulty(s3_server.endpoint, "s3", 0, rate=1.0, kinds=[kind]) as endpoint:
            with pytest.raises(failure):
                single_attempt_client("s3", endpoint.endpoint).get_object(
                    Bucket=s3_bucket, Key="k")
            assert endpoint.counts().forwarded == {}  # never reached the service
    with faulty(s3_server.endpoint, "s3", 0, rate=1.0, kinds=["cut"]) as endpoint:
        reply = single_attempt_client("s3", endpoint.endpoint).get_object(
            Bucket=s3_bucket, Key="k")
        assert reply["ContentLength"] == 1000  # the head came whole
        with pytest.raises((IncompleteReadError, ResponseStreamingError)):
            reply["Body"].read()
        assert endpoint.counts().forwarded == {"GET": 1}  # the service served it


def test_a_seed_gives_the_same_faults(s3_server: Any, s3_bucket: str) -> None:
    def faults_of(seed: int) -> list[str]:
        seen = []
        with faulty(s3_server.endpoint, "s3", seed, rate=0.5,
                    kinds=["server_error", "throttle"]) as endpoint:
            client = single_attempt_client("s3", endpoint.endpoint)
            for _ in range(30):
                before = endpoint.counts().faults
                try:
                    client.list_objects_v2(Bucket=s3_bucket)
                    seen.append("ok")
                except ClientError:
                    after = endpoint.counts().faults
                    seen.append(next(k for k in after if after[k] != before.get(k)))
        return seen

    first = faults_of(5)
    assert first == faults_of(5) != faults_of(6)
    assert set(first) == {"ok", "server_error", "throttle"}


def test_an_expired_token_stays_expired_and_renewed_credentials_pass(
    s3_server: Any, s3_bucket: str, rotating_credentials: AwsOptions
) -> None:
    with faulty(s3_server.endpoint, "s3", 0, rate=1.0, kinds=["expired_token"]) as endpoint:
        first = boto3.Session(profile_name=ROTATING_PROFILE).client(
            "s3", endpoint_url=endpoint.endpoint, region_name="us-east-1")
        for _ in range(2):  # the same credentials, refused every time
            with pytest.raises(ClientError, match="ExpiredToken"):
                first.list_objects_v2(Bucket=s3_bucket)
        renewed = boto3.Session(profile_name=ROTATING_PROFILE).client(
            "s3", endpoint_url=endpoint.endpoint, region_name="us-east-1")
        renewed.list_objects_v2(Bucket=s3_bucket)  # once only: new credentials pass
        assert endpoint.counts().faults == {"expired_token": 2}


# --- jobs through faults ------------------------------------------------------------------------


def export_through(
    options: AwsOptions, table: str, destination: str, **settings: Any
) -> ExportSummary:
    export = ExportOptions(table=table, destination=destination, segments=4,
                           shard_bytes=16 * 1024, page_size=50, aws=options, **settings)
    return asyncio.run(run_export(export, clock=ManualClock()))


def import_through(options: AwsOptions, source: str, table: str, **settings: Any) -> ImportSummary:
    job = ImportOptions(source=source, table=table, aws=options, **settings)
    return asyncio.run(run_import(job, clock=ManualClock()))


def assert_exact(location: str, aws: AwsOptions, source: str, target: str | None = None) -> None:
    """The export at ``location`` reads whole, each item once, and holds exactly the items of
    ``source``: compared with the table by the restore drill, or, with a ``target`` the
    export was imported into, through that table (which must then equal ``source``)."""
    drill = None if target else source
    report = ddbpipe.verify_export(location, read_data=True, against_table=drill, aws=aws)
    assert report.ok, (report.problems, report.comparison)
    assert report.items_read == ITEMS
    if target is not None:
        client = boto3.client("dynamodb", endpoint_url=aws.endpoint_url, region_name="us-east-1")
        assert sorted_items(scan_table(client, target)) == sorted_items(scan_table(client, source))


@pytest.mark.usefixtures("fast_clients", "in_tmp_dir")
@pytest.mark.parametrize("seed", SEEDS)
def test_export_and_import_through_faults_are_exact(
    seed: int, dynamodb_local: Any, s3_server: Any, s3_bucket: str, make_table: Callable[..., str],
    rotating_credentials: AwsOptions,
) -> None:
    source = make_table(plain_items(ITEMS))
    target = make_table()
    location = f"s3://{s3_bucket}/export"
    healthy = through(rotating_credentials, dynamodb_local.endpoint, s3_server.endpoint)
    with ExitStack() as stack:
        endpoints = [
            stack.enter_context(faulty(dynamodb_local.endpoint, "dynamodb", seed)),
            stack.enter_context(faulty(s3_server.endpoint, "s3", seed)),
        ]
        faulty_aws = through(rotating_credentials, endpoints[0].endpoint, endpoints[1].endpoint)
        exported = export_through(faulty_aws, source, location)
        imported = import_through(faulty_aws, location, target)
    assert exported.items == ITEMS
    assert (imported.items_read, imported.items_written) == (ITEMS, ITEMS)
    assert_exact(location, healthy, source, target)
    for endpoint in endpoints:
        assert sum(endpoint.counts().faults.values()) > 0


@pytest.mark.usefixtures("fast_clients", "in_tmp_dir")
@pytest.mark.parametrize("service", ["s3", "dynamodb"])
def test_an_export_that_meets_an_outage_fails_clearly_and_resumes_exact(
    service: Service, dynamodb_local: Any, s3_server: Any, s3_bucket: str, s3_client: Any,
    make_table: Callable[..., str],
) -> None:
    source = make_table(plain_items(ITEMS))
    location = f"s3://{s3_bucket}/export"
    upstream = {"s3": s3_server.endpoint, "dynamodb": dynamodb_local.endpoint}
    # Healthy for a while (some shards stored), then down for longer than the retry budget.
    with faulty(upstream[service], service, 0, rate=1.0, start_after=15,
                kinds=["server_error", "throttle", "drop"]) as outage:
        endpoints = {**upstream, service: outage.endpoint}
        with pytest.raises(TransientError) as caught:
            export_through(AwsOptions(endpoint_url=endpoints["dynamodb"],
                                      s3_endpoint_url=endpoints["s3"]), source, location)
    message = str(caught.value)
    assert "\n" not in message and ("s3:" in message or "dynamodb:" in message), message
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert f"export/{MANIFEST_KEY}" not in stored and f"export/{STATE_KEY}" in stored
    healthy = AwsOptions(endpoint_url=dynamodb_local.endpoint, s3_endpoint_url=s3_server.endpoint)
    assert export_through(healthy, source, location, resume=True).items == ITEMS
    assert_exact(location, healthy, source)


@pytest.mark.usefixtures("fast_clients", "in_tmp_dir")
def test_an_import_that_meets_an_outage_fails_clearly_and_resumes_exact(
    dynamodb_local: Any, s3_server: Any, s3_bucket: str, make_table: Callable[..., str],
    tmp_path: Path,
) -> None:
    source, target = make_table(plain_items(ITEMS)), make_table()
    location = f"s3://{s3_bucket}/export"
    healthy = AwsOptions(endpoint_url=dynamodb_local.endpoint, s3_endpoint_url=s3_server.endpoint)
    export_through(healthy, source, location)
    checkpoint = tmp_path / "import.checkpoint.json"
    # Down after the source is opened and two of its files are read.
    outage = faulty(s3_server.endpoint, "s3", 0, rate=1.0, start_after=8,
                    kinds=["server_error", "throttle", "drop"])
    with outage, pytest.raises(TransientError) as caught:
        import_through(AwsOptions(endpoint_url=dynamodb_local.endpoint,
                                  s3_endpoint_url=outage.endpoint),
                       location, target, checkpoint=str(checkpoint))
    assert "\n" not in str(caught.value) and "s3:GetObject" in str(caught.value), caught.value
    assert checkpoint.exists()
    resumed = import_through(healthy, location, target, checkpoint=str(checkpoint), resume=True)
    assert resumed.items_read == ITEMS
    assert_exact(location, healthy, source, target)


def expiring(upstream: str, service: Service) -> FaultEndpoint:
    """An endpoint that says the credentials of its first request expired."""
    return faulty(upstream, service, 0, rate=1.0, kinds=["expired_token"])


@pytest.mark.usefixtures("in_tmp_dir")
def test_an_export_renews_credentials_that_expired_mid_run(
    dynamodb_local: Any, s3_server: Any, s3_bucket: str, make_table: Callable[..., str],
    rotating_credentials: AwsOptions,
) -> None:
    source = make_table(plain_items(100))
    with expiring(dynamodb_local.endpoint, "dynamodb") as dynamodb, \
            expiring(s3_server.endpoint, "s3") as s3:
        options = through(rotating_credentials, dynamodb.endpoint, s3.endpoint)
        assert export_through(options, source, f"s3://{s3_bucket}/x").items == 100
    for endpoint in (dynamodb, s3):
        assert endpoint.counts().faults == {"expired_token": 1}


@pytest.mark.usefixtures("in_tmp_dir")
def test_static_credentials_that_expired_are_one_credentials_error(
    dynamodb_local: Any, s3_server: Any, s3_bucket: str, make_table: Callable[..., str],
) -> None:
    source = make_table(plain_items(10))
    with expiring(dynamodb_local.endpoint, "dynamodb") as dynamodb:
        options = AwsOptions(endpoint_url=dynamodb.endpoint, s3_endpoint_url=s3_server.endpoint)
        with pytest.raises(CredentialsError) as caught:
            export_through(options, source, f"s3://{s3_bucket}/x")
    assert "dynamodb:DescribeTable" in str(caught.value) and "ExpiredTokenException" in str(
        caught.value) and "\n" not in str(caught.value)
    assert dynamodb.counts().requests == 2  # renewed once, refused again: no more
