"""DynamoClient against the real DynamoDB Local, and its error mapping and retries against a
small HTTP server that answers with DynamoDB's own error replies; credentials that expire
against a ``MockTransport``."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.credentials import Credentials

from ddbpipe.aws import default_dynamodb_endpoint
from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient, HttpReply, MockTransport
from ddbpipe.errors import (
    AccessDeniedError,
    AwsRequestError,
    ConfigError,
    CredentialsError,
    ServiceUnavailableError,
    TableNotFoundError,
    ThrottledError,
)
from ddbpipe.retry import ManualClock, RetryPolicy
from tests.endpoints import serving as serve_post
from tools.fault_endpoint import ROTATING_PROFILE, write_rotating_profile
from tools.services import free_port

ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"


def fast_policy(max_attempts: int = 10) -> tuple[RetryPolicy, ManualClock]:
    """A policy and the manual clock its backoff sleeps on (``clock.sleeps`` records them)."""
    return RetryPolicy(max_attempts=max_attempts, base_delay=0.05, max_delay=0.3), ManualClock()


def local_client(
    endpoint: str, retry: RetryPolicy | None = None, clock: ManualClock | None = None
) -> DynamoClient:
    return DynamoClient.open(
        AwsOptions(region="us-east-1", endpoint_url=endpoint), retry=retry, clock=clock
    )


def numbered_items(count: int) -> list[dict[str, Any]]:
    return [{"pk": {"S": f"item-{n:04d}"}, "n": {"N": str(n)}} for n in range(count)]


# --- against DynamoDB Local ----------------------------------------------------------------


def test_describe_table_returns_the_table_object(dynamodb_local: Any, make_table: Any) -> None:
    table = make_table(numbered_items(3))

    async def describe() -> dict[str, Any]:
        async with local_client(dynamodb_local.endpoint) as client:
            return await client.describe_table(table)

    description = asyncio.run(describe())
    assert description["TableName"] == table
    assert description["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert description["ItemCount"] == 3


def test_scan_page_returns_raw_json_with_consumed_capacity(
    dynamodb_local: Any, make_table: Any
) -> None:
    table = make_table(numbered_items(5))

    async def scan() -> bytes:
        async with local_client(dynamodb_local.endpoint) as client:
            return await client.scan_page(
                table, segment=0, total_segments=1, exclusive_start_key=None
            )

    body = asyncio.run(scan())
    assert isinstance(body, bytes)
    reply = json.loads(body)
    assert reply["Count"] == 5
    assert sorted(item["pk"]["S"] for item in reply["Items"]) == [
        f"item-{n:04d}" for n in range(5)
    ]
    assert reply["ConsumedCapacity"]["TableName"] == table
    assert reply["ConsumedCapacity"]["CapacityUnits"] > 0


def test_paged_parallel_scan_reads_every_item_exactly_once(
    dynamodb_local: Any, make_table: Any
) -> None:
    table = make_table(numbered_items(200))

    async def scan_segment(client: DynamoClient, segment: int) -> tuple[list[str], int]:
        keys: list[str] = []
        pages = 0
        start_key: dict[str, Any] | None = None
        while True:
            reply = json.loads(
                await client.scan_page(
                    table,
                    segment=segment,
                    total_segments=4,
                    exclusive_start_key=start_key,
                    consistent_read=True,
                    limit=15,
                )
            )
            pages += 1
            keys.extend(item["pk"]["S"] for item in reply["Items"])
            start_key = reply.get("LastEvaluatedKey")
            if start_key is None:
                return keys, pages

    async def scan_all() -> list[tuple[list[str], int]]:
        async with local_client(dynamodb_local.endpoint) as client:
            return await asyncio.gather(*(scan_segment(client, s) for s in range(4)))

    results = asyncio.run(scan_all())
    keys = [key for segment_keys, _ in results for key in segment_keys]
    assert sorted(keys) == [f"item-{n:04d}" for n in range(200)]
    assert sum(pages for _, pages in results) > 4, "the limit should force several pages"


def test_missing_table_names_table_region_and_action(dynamodb_local: Any) -> None:
    async def scan() -> bytes:
        async with local_client(dynamodb_local.endpoint) as client:
            return await client.scan_page(
                "no-such-table", segment=0, total_segments=1, exclusive_start_key=None
            )

    with pytest.raises(TableNotFoundError) as caught:
        asyncio.run(scan())
    error = caught.value
    assert "'no-such-table'" in str(error) and "us-east-1" in str(error)
    assert "dynamodb:Scan" in str(error)
    assert (error.service, error.action, error.resource) == ("dynamodb", "Scan", "no-such-table")
    assert error.code == "ResourceNotFoundException"


def test_validation_error_is_terminal_with_the_message(dynamodb_local: Any) -> None:
    async def describe() -> dict[str, Any]:
        async with local_client(dynamodb_local.endpoint) as client:
            return await client.describe_table("x")  # too short a name for DynamoDB

    with pytest.raises(AwsRequestError) as caught:
        asyncio.run(describe())
    assert caught.value.code == "ValidationException"
    assert "DescribeTable" in str(caught.value)


def test_batch_write_writes_items(
    dynamodb_local: Any, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table()
    requests = [{"PutRequest": {"Item": item}} for item in numbered_items(25)]

    async def write() -> dict[str, Any]:
        async with local_client(dynamodb_local.endpoint) as client:
            return await client.batch_write(table, requests)

    reply = asyncio.run(write())
    assert not reply.get("UnprocessedItems")
    assert reply["ConsumedCapacity"][0]["TableName"] == table
    assert dynamodb_client.scan(TableName=table, Select="COUNT")["Count"] == 25


def test_optional_metadata_time_to_live_and_tags(dynamodb_local: Any, make_table: Any) -> None:
    table = make_table(Tags=[{"Key": "team", "Value": "data"}])

    async def read_metadata() -> tuple[Any, Any]:
        async with local_client(dynamodb_local.endpoint) as client:
            description = await client.describe_table(table)
            return (
                await client.describe_time_to_live(table),
                await client.list_tags(description["TableArn"]),
            )

    time_to_live, tags = asyncio.run(read_metadata())
    assert time_to_live is not None and time_to_live["TimeToLiveStatus"] == "DISABLED"
    # DynamoDB Local answers UnknownOperationException for tagging: optional, so None.
    assert tags is None or {"Key": "team", "Value": "data"} in tags


# --- configuration -------------------------------------------------------------------------


def test_region_comes_from_the_environment_and_picks_the_endpoint() -> None:
    client = DynamoClient.open(AwsOptions())
    assert client.region == "us-east-1"
    assert client.endpoint == "https://dynamodb.us-east-1.amazonaws.com/"
    assert default_dynamodb_endpoint("cn-north-1") == (
        "https://dynamodb.cn-north-1.amazonaws.com.cn"
    )


def test_aws_region_is_honoured_like_the_aws_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore reads only AWS_DEFAULT_REGION; the AWS CLI and the other SDKs read AWS_REGION.
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert DynamoClient.open(AwsOptions()).region == "eu-west-3"
    assert DynamoClient.open(AwsOptions(region="ap-south-1")).region == "ap-south-1"


def test_missing_region_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match="no AWS region: pass --region or set AWS_REGION"):
        DynamoClient.open(AwsOptions())


def test_missing_credentials_is_a_credentials_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        DynamoClient.open(AwsOptions(region="eu-west-1"))


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'nobody-has-this'"):
        DynamoClient.open(AwsOptions(region="eu-west-1", profile="nobody-has-this"))


# --- error mapping and retries against canned replies --------------------------------------

Reply = tuple[int, dict[str, Any]]


def error_reply(status: int, code: str, message: str = "canned", field: str = "message") -> Reply:
    return status, {"__type": ERROR_PREFIX + code, field: message}


OK: Reply = (200, {"Table": {"TableName": "canned"}})


class CannedDynamo:
    """Answers each request with the next canned reply (the last one repeats), with a CRC32
    header as DynamoDB sends; ``damaged`` replies carry a wrong one."""

    def __init__(self, replies: list[Reply], damaged: int = 0) -> None:
        self.replies = replies
        self.damaged = damaged
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        await request.read()
        index = min(len(self.requests), len(self.replies)) - 1
        status, document = self.replies[index]
        body = json.dumps(document).encode()
        checksum = zlib.crc32(body) + (1 if len(self.requests) <= self.damaged else 0)
        return web.Response(
            body=body,
            status=status,
            content_type="application/x-amz-json-1.0",
            headers={"x-amz-crc32": str(checksum)},
        )


@asynccontextmanager
async def canned_server(
    replies: list[Reply], damaged: int = 0
) -> AsyncIterator[tuple[str, CannedDynamo]]:
    canned = CannedDynamo(replies, damaged)
    async with serve_post(canned.handle) as endpoint:
        yield endpoint, canned


def run_against(
    replies: list[Reply],
    retry: tuple[RetryPolicy, ManualClock],
    use: Callable[[DynamoClient], Awaitable[Any]],
    damaged: int = 0,
) -> tuple[Any, DynamoClient, CannedDynamo]:
    async def scenario() -> tuple[Any, DynamoClient, CannedDynamo]:
        async with canned_server(replies, damaged) as (endpoint, canned):
            client = local_client(endpoint, *retry)
            async with client:
                return await use(client), client, canned

    return asyncio.run(scenario())


def describe_canned(client: DynamoClient) -> Awaitable[dict[str, Any]]:
    return client.describe_table("canned")


def assert_full_jitter(delays: list[float], policy: RetryPolicy) -> None:
    assert len(set(delays)) == len(delays), "full jitter draws a new delay for each retry"
    for retry_number, delay in enumerate(delays):
        assert 0 <= delay <= min(policy.max_delay, policy.base_delay * 2**retry_number)


def test_requests_are_signed_dynamodb_json_calls() -> None:
    retry = fast_policy()
    _, _, canned = run_against([OK], retry, describe_canned)
    headers = canned.requests[0]
    assert headers["X-Amz-Target"] == "DynamoDB_20120810.DescribeTable"
    assert headers["Content-Type"] == "application/x-amz-json-1.0"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=ddbpipelocal/")
    assert "/us-east-1/dynamodb/aws4_request" in headers["Authorization"]


def test_throttled_twice_then_success() -> None:
    retry = fast_policy()
    policy, clock = retry
    throttle = error_reply(400, "ProvisionedThroughputExceededException")
    reply, client, canned = run_against([throttle, throttle, OK], retry, describe_canned)
    assert reply == {"TableName": "canned"}
    assert len(canned.requests) == 3
    assert (client.throttles, client.retries) == (2, 2)
    assert len(clock.sleeps) == 2
    assert_full_jitter(clock.sleeps, policy)


def test_server_error_then_success() -> None:
    retry = fast_policy()
    clock = retry[1]
    reply, client, _ = run_against(
        [error_reply(500, "InternalServerError", field="Message"), OK], retry, describe_canned
    )
    assert reply == {"TableName": "canned"}
    assert (client.throttles, client.retries) == (0, 1)
    assert len(clock.sleeps) == 1


def test_always_throttled_gives_up_after_max_attempts() -> None:
    retry = fast_policy(max_attempts=6)
    policy, clock = retry
    with pytest.raises(ThrottledError, match="ThrottlingException") as caught:
        run_against([error_reply(400, "ThrottlingException")], retry, describe_canned)
    assert "dynamodb:DescribeTable on 'canned'" in str(caught.value)
    assert str(caught.value).endswith("gave up after 6 attempts")
    assert len(clock.sleeps) == 5
    assert_full_jitter(clock.sleeps, policy)
    assert max(clock.sleeps) <= policy.max_delay


def test_reply_damaged_in_transit_is_retried() -> None:
    retry = fast_policy()
    clock = retry[1]
    reply, _, canned = run_against([OK], retry, describe_canned, damaged=1)
    assert reply == {"TableName": "canned"}
    assert len(canned.requests) == 2
    assert len(clock.sleeps) == 1


def test_validation_error_is_not_retried() -> None:
    retry = fast_policy()
    clock = retry[1]
    with pytest.raises(AwsRequestError) as caught:
        run_against(
            [error_reply(400, "ValidationException", "1 validation error detected"), OK],
            retry,
            describe_canned,
        )
    error = caught.value
    assert type(error) is AwsRequestError
    assert "1 validation error detected" in str(error)
    assert (error.code, error.action, error.resource) == (
        "ValidationException",
        "DescribeTable",
        "canned",
    )
    assert clock.sleeps == []


def test_a_missing_permission_is_access_denied_naming_the_permission() -> None:
    retry = fast_policy()
    with pytest.raises(AccessDeniedError, match="need dynamodb:DescribeTable") as caught:
        run_against([error_reply(400, "AccessDeniedException")], retry, describe_canned)
    assert caught.value.code == "AccessDeniedException"
    assert retry[1].sleeps == []


@pytest.mark.parametrize("code", ["UnrecognizedClientException", "ExpiredTokenException"])
def test_rejected_credentials_are_a_credentials_error_naming_the_action(code: str) -> None:
    retry = fast_policy()
    with pytest.raises(CredentialsError, match=f"dynamodb:DescribeTable on 'canned' .{code}"):
        run_against([error_reply(400, code)], retry, describe_canned)
    assert retry[1].sleeps == []


def test_access_denied_on_optional_metadata_is_none() -> None:
    retry = fast_policy()

    async def read_metadata(client: DynamoClient) -> tuple[Any, Any]:
        return (
            await client.describe_time_to_live("canned"),
            await client.list_tags("arn:aws:dynamodb:us-east-1:1:table/canned"),
        )

    result, _, _ = run_against([error_reply(400, "AccessDeniedException")], retry, read_metadata)
    assert result == (None, None)


def test_list_tags_follows_every_page() -> None:
    retry = fast_policy()
    pages: list[Reply] = [
        (200, {"Tags": [{"Key": "a", "Value": "1"}], "NextToken": "more"}),
        (200, {"Tags": [{"Key": "b", "Value": "2"}]}),
    ]

    async def list_tags(client: DynamoClient) -> Any:
        return await client.list_tags("arn:aws:dynamodb:us-east-1:1:table/canned")

    tags, _, canned = run_against(pages, retry, list_tags)
    assert tags == [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
    assert len(canned.requests) == 2


def test_unreachable_endpoint_is_transient_and_retried() -> None:
    retry = fast_policy(max_attempts=3)
    clock = retry[1]

    async def describe() -> dict[str, Any]:
        async with local_client(f"http://127.0.0.1:{free_port()}", *retry) as client:
            return await client.describe_table("canned")

    with pytest.raises(ServiceUnavailableError, match="could not reach"):
        asyncio.run(describe())
    assert len(clock.sleeps) == 2


def test_cancelling_during_backoff_raises_cancelled_error_promptly() -> None:
    backoff_started = asyncio.Event()

    class EndlessBackoff(ManualClock):
        async def sleep(self, seconds: float) -> None:
            backoff_started.set()
            await asyncio.sleep(3600)

    async def scenario() -> None:
        async with canned_server([error_reply(400, "ThrottlingException")]) as (endpoint, _):
            client = local_client(endpoint, RetryPolicy(), EndlessBackoff())
            async with client:
                call = asyncio.create_task(client.describe_table("canned"))
                await asyncio.wait_for(backoff_started.wait(), timeout=5)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(call, timeout=1)

    asyncio.run(scenario())


# --- credentials that expire -------------------------------------------------------------------


class ExpiringDynamo:
    """Refuses, as DynamoDB does, every request signed with an expired session token; answers
    the others. ``tokens`` holds the token of every request, in order."""

    def __init__(self, expired: set[str]) -> None:
        self.expired = expired
        self.tokens: list[str] = []

    def handle(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        token = headers.get("X-Amz-Security-Token", "")
        self.tokens.append(token)
        status, document = OK
        if token in self.expired:
            status, document = error_reply(400, "ExpiredTokenException", "token expired")
        reply = json.dumps(document).encode()
        return HttpReply(status, {"x-amz-crc32": str(zlib.crc32(reply))}, reply)


def session_credentials(token: str) -> Credentials:
    return Credentials("ddbpipelocal", "ddbpipelocal", token)


def expiring_client(service: ExpiringDynamo, renewed: list[str] | None) -> DynamoClient:
    """A client signing with token "old" that renews its credentials to the ``renewed``
    tokens in turn (None: it cannot renew them). One attempt per call: a resend after a
    renewal is not a retry."""
    tokens = iter(renewed or [])
    return DynamoClient(
        region="us-east-1", endpoint=default_dynamodb_endpoint("us-east-1"),
        credentials=session_credentials("old"),
        renew_credentials=None if renewed is None else lambda: session_credentials(next(tokens)),
        retry=RetryPolicy(max_attempts=1), transport=MockTransport(service.handle),
        clock=ManualClock(),
    )


def test_expired_credentials_are_renewed_once_and_the_call_sent_again() -> None:
    service = ExpiringDynamo(expired={"old"})
    client = expiring_client(service, renewed=["new"])
    assert asyncio.run(client.describe_table("canned")) == {"TableName": "canned"}
    assert service.tokens == ["old", "new"]
    assert (client.credentials_renewed, client.retries) == (1, 0)


def test_credentials_that_expire_again_are_one_credentials_error() -> None:
    service = ExpiringDynamo(expired={"old"})
    client = expiring_client(service, renewed=["old"])  # static: renewing gives them back
    with pytest.raises(CredentialsError) as caught:
        asyncio.run(client.describe_table("canned"))
    message = str(caught.value)
    assert "dynamodb:DescribeTable on 'canned' (ExpiredTokenException" in message
    assert "\n" not in message
    assert service.tokens == ["old", "old"]


def test_credentials_that_cannot_be_renewed_stop_at_the_first_expiry() -> None:
    service = ExpiringDynamo(expired={"old"})
    with pytest.raises(CredentialsError, match="ExpiredTokenException"):
        asyncio.run(expiring_client(service, renewed=None).describe_table("canned"))
    assert service.tokens == ["old"]


def test_calls_refused_together_renew_the_credentials_once() -> None:
    service = ExpiringDynamo(expired={"old"})
    client = expiring_client(service, renewed=["new", "newer"])

    async def describe_many() -> list[dict[str, Any]]:
        return await asyncio.gather(*(client.describe_table("canned") for _ in range(8)))

    assert asyncio.run(describe_many()) == [{"TableName": "canned"}] * 8
    assert client.credentials_renewed == 1
    assert sorted(service.tokens) == ["new"] * 8 + ["old"] * 8


def test_an_opened_client_renews_credentials_from_the_profile_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_rotating_profile(tmp_path, access_key="ddbpipelocal", secret_key="secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    service = ExpiringDynamo(expired=set())

    def expire_the_first(url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        service.expired = service.expired or {headers["X-Amz-Security-Token"]}
        return service.handle(url, body, headers)

    options = AwsOptions(profile=ROTATING_PROFILE, region="us-east-1")
    client = DynamoClient.open(options, transport=MockTransport(expire_the_first))
    assert asyncio.run(client.describe_table("canned")) == {"TableName": "canned"}
    first, renewed = service.tokens
    assert first != renewed and client.credentials_renewed == 1
