"""The request signer of DynamoClient: its headers equal botocore's SigV4Auth for the same
request at the same time (as the client sends them, seen through a MockTransport), its
signing-key cache follows the date and the credentials, and a server that verifies
signatures accepts what goes over the wire."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest
from aiohttp import web

from ddbpipe.dynamo import TARGET_PREFIX, DynamoClient, HttpReply, MockTransport
from ddbpipe.errors import CredentialsError
from ddbpipe.retry import ManualClock
from ddbpipe.sigv4 import CONTENT_TYPE, SigV4Signer
from tests.endpoints import serving as serve_post

UTC = dt.UTC
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexample+token=="

TIMES = [
    dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    dt.datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC),
    dt.datetime(2026, 7, 15, 12, 34, 56, 789_000, tzinfo=UTC),
]
REGIONS = ["us-east-1", "eu-central-1"]
ACTIONS = ["Scan", "BatchWriteItem"]
BODIES = [
    b"",
    b'{"TableName":"t"}',
    '{"Item":{"pk":{"S":"Grüße, 世界"}}}'.encode(),
    b'{"RequestItems":{"t":[' + b",".join([b'{"PutRequest":{}}'] * 5000) + b"]}}",
]
ENDPOINTS = [
    "https://dynamodb.eu-central-1.amazonaws.com",  # default port, implicit
    "https://dynamodb.us-east-1.amazonaws.com:443/",  # default port, explicit
    "http://localhost:80",  # default http port, explicit
    "http://127.0.0.1:8000",  # non-default port
    "https://DynamoDB.Example.COM:8443",  # non-default port, host case folded
    "http://user:secret@localhost:4566",  # user info is never signed
    "http://[::1]:8000",  # IPv6 literal
    "http://localhost:8000/prefix/../a//b~c",  # a path, normalised as botocore does
]
CREDENTIALS = {
    "no token": botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY),
    "session token": botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY, TOKEN),
    "token with spaces": botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY, " a  b c "),
}
EXTRA_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "ddbpipe"}


def clock_at(when: dt.datetime) -> ManualClock:
    """A clock whose wall time is ``when``; move it with ``set_time``."""
    return ManualClock(wall_start=when.timestamp())


def set_time(clock: ManualClock, when: dt.datetime) -> None:
    clock.wall_start = when.timestamp() - clock.now


def botocore_headers(
    endpoint: str,
    region: str,
    credentials: botocore.credentials.ReadOnlyCredentials,
    action: str,
    body: bytes,
    when: dt.datetime,
) -> dict[str, str]:
    """What botocore's SigV4Auth adds to the request ddbpipe used to build, at ``when``."""
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url=endpoint,
        data=body,
        headers={"X-Amz-Target": TARGET_PREFIX + action, "Content-Type": CONTENT_TYPE},
    )
    # botocore's own clock returns a naive UTC datetime.
    frozen = when.astimezone(UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
        botocore.auth.SigV4Auth(credentials, "dynamodb", region).add_auth(request)
    return dict(request.headers.items())


class SignedClient:
    """A DynamoClient on a MockTransport: ``send`` returns the headers it put on the wire."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        credentials: botocore.credentials.Credentials,
        clock: ManualClock,
    ) -> None:
        self.credentials = credentials
        self.sent: list[dict[str, str]] = []
        self.client = DynamoClient(
            region=region, endpoint=endpoint, credentials=credentials, clock=clock,
            transport=MockTransport(self.reply),
        )

    def reply(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        self.sent.append(dict(headers))
        return HttpReply(200, {}, b"{}")

    def send(self, action: str, body: bytes) -> dict[str, str]:
        asyncio.run(self.client.call_raw(action, body))
        return self.sent[-1]


def signed_only(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in EXTRA_HEADERS}


def assert_matches_botocore(
    client: SignedClient, action: str, body: bytes, when: dt.datetime
) -> dict[str, str]:
    ours = client.send(action, body)
    frozen = client.credentials.get_frozen_credentials()
    endpoint, region = client.client.endpoint, client.client.region
    theirs = botocore_headers(endpoint, region, frozen, action, body, when)
    assert signed_only(ours) == theirs
    return ours


# --- equal to botocore ---------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("credentials_name", list(CREDENTIALS))
def test_headers_equal_botocore_sigv4(endpoint: str, credentials_name: str) -> None:
    credentials = CREDENTIALS[credentials_name]
    for region in REGIONS:
        clock = clock_at(TIMES[0])
        client = SignedClient(endpoint, region, credentials, clock)
        for when in TIMES:
            set_time(clock, when)
            for action in ACTIONS:
                for body in BODIES:
                    assert_matches_botocore(client, action, body, when)


def test_signed_headers_are_the_expected_set() -> None:
    client = SignedClient(
        "http://127.0.0.1:8000", "us-east-1", CREDENTIALS["session token"], clock_at(TIMES[2])
    )
    headers = client.send("Scan", b"{}")
    assert headers["X-Amz-Date"] == "20260715T123456Z"
    assert headers["X-Amz-Security-Token"] == TOKEN
    assert headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260715/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, "
        "Signature="
    )


def test_no_security_token_header_without_a_session_token() -> None:
    client = SignedClient(
        "http://127.0.0.1:8000", "us-east-1", CREDENTIALS["no token"], clock_at(TIMES[0])
    )
    headers = client.send("Scan", b"{}")
    assert "X-Amz-Security-Token" not in headers
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-target," in headers["Authorization"]


def test_accept_encoding_and_user_agent_are_kept() -> None:
    client = SignedClient(
        "http://127.0.0.1:8000", "us-east-1", CREDENTIALS["no token"], clock_at(TIMES[0])
    )
    headers = client.send("Scan", b"{}")
    assert {name: headers[name] for name in EXTRA_HEADERS} == EXTRA_HEADERS


# --- the signing-key cache -----------------------------------------------------------------


def signer_at(when: dt.datetime) -> tuple[SigV4Signer, ManualClock]:
    clock = clock_at(when)
    return SigV4Signer("http://127.0.0.1:8000", "us-east-1", "dynamodb", clock=clock), clock


def assert_signer_matches_botocore(
    signer: SigV4Signer, credentials: botocore.credentials.Credentials, when: dt.datetime
) -> None:
    frozen = credentials.get_frozen_credentials()
    ours = signer.sign(frozen, TARGET_PREFIX + "Scan", b"{}")
    theirs = botocore_headers("http://127.0.0.1:8000", "us-east-1", frozen, "Scan", b"{}", when)
    assert ours == theirs


def test_signing_key_is_derived_once_per_utc_day() -> None:
    day = dt.datetime(2025, 3, 10, 0, 0, 1, tzinfo=UTC)
    signer, clock = signer_at(day)
    for when in (day, day.replace(hour=12), day.replace(hour=23, minute=59)):
        set_time(clock, when)
        assert_signer_matches_botocore(signer, CREDENTIALS["session token"], when)
    assert signer.key_derivations == 1


def test_signing_key_is_derived_again_when_the_date_changes() -> None:
    last_second = dt.datetime(2025, 3, 10, 23, 59, 59, tzinfo=UTC)
    signer, clock = signer_at(last_second)
    assert_signer_matches_botocore(signer, CREDENTIALS["no token"], last_second)
    next_day = dt.datetime(2025, 3, 11, 0, 0, 0, tzinfo=UTC)
    set_time(clock, next_day)
    assert_signer_matches_botocore(signer, CREDENTIALS["no token"], next_day)
    assert signer.key_derivations == 2


class RotatingCredentials:
    """RefreshableCredentials whose clock the test moves; each refresh hands out the next
    (secret, token) pair, valid for an hour."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.now = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
        self.pairs: Iterator[tuple[str, str]] = iter(pairs)
        first = self.metadata()
        self.credentials = botocore.credentials.RefreshableCredentials(
            first["access_key"],
            first["secret_key"],
            first["token"],
            dt.datetime.fromisoformat(first["expiry_time"]),
            self.metadata,
            "test",
            time_fetcher=lambda: self.now,
        )

    def metadata(self) -> dict[str, Any]:
        secret, token = next(self.pairs)
        expiry = self.now + dt.timedelta(hours=1)
        return {
            "access_key": ACCESS_KEY,
            "secret_key": secret,
            "token": token,
            "expiry_time": expiry.isoformat(),
        }

    def expire(self) -> None:
        self.now += dt.timedelta(hours=1)


def test_refreshed_credentials_sign_with_the_new_secret() -> None:
    rotating = RotatingCredentials([("secret-1", "token-1"), ("secret-2", "token-2")])
    when = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    signer, _ = signer_at(when)
    assert_signer_matches_botocore(signer, rotating.credentials, when)
    rotating.expire()
    assert_signer_matches_botocore(signer, rotating.credentials, when)
    assert rotating.credentials.get_frozen_credentials().secret_key == "secret-2"
    assert signer.key_derivations == 2


def test_signing_key_is_kept_when_only_the_token_is_refreshed() -> None:
    rotating = RotatingCredentials([("same-secret", "token-1"), ("same-secret", "token-2")])
    when = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    signer, _ = signer_at(when)
    assert_signer_matches_botocore(signer, rotating.credentials, when)
    rotating.expire()
    assert_signer_matches_botocore(signer, rotating.credentials, when)
    assert signer.key_derivations == 1


def test_the_client_freezes_the_credentials_for_each_request() -> None:
    rotating = RotatingCredentials([("secret-1", "token-1"), ("secret-2", "token-2")])
    when = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    client = SignedClient("http://127.0.0.1:8000", "us-east-1", rotating.credentials,
                          clock_at(when))
    assert client.send("Scan", b"{}")["X-Amz-Security-Token"] == "token-1"
    rotating.expire()
    headers = assert_matches_botocore(client, "Scan", b"{}", when)
    assert headers["X-Amz-Security-Token"] == "token-2"


def test_failing_refresh_is_a_credentials_error() -> None:
    def refuse() -> dict[str, Any]:
        raise botocore.exceptions.NoCredentialsError()

    past = dt.datetime(2020, 1, 1, tzinfo=UTC).isoformat()
    credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
        {"access_key": "a", "secret_key": "s", "token": "t", "expiry_time": past}, refuse, "test"
    )
    client = SignedClient("http://127.0.0.1:8000", "us-east-1", credentials, clock_at(TIMES[0]))
    with pytest.raises(CredentialsError, match="could not refresh the AWS credentials"):
        client.send("Scan", b"{}")
    assert client.sent == []


# --- on the wire ---------------------------------------------------------------------------


class VerifyingServer:
    """Checks each request's signature as a service would: botocore re-signs the received
    method, path, Host, target, content type and body at the received X-Amz-Date."""

    def __init__(self, credentials: botocore.credentials.Credentials, region: str) -> None:
        self.credentials = credentials.get_frozen_credentials()
        self.region = region
        self.verdicts: list[bool] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = {name: request.headers[name] for name in ("Host", "X-Amz-Target", "Content-Type")}
        if "X-Amz-Security-Token" in request.headers:
            signed["X-Amz-Security-Token"] = request.headers["X-Amz-Security-Token"]
        expected = botocore.awsrequest.AWSRequest(
            method=request.method, url=str(request.url), data=body, headers=signed
        )
        when = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            botocore.auth.SigV4Auth(self.credentials, "dynamodb", self.region).add_auth(expected)
        self.verdicts.append(expected.headers["Authorization"] == request.headers["Authorization"])
        return web.json_response({"Table": {"TableName": "t"}})


@pytest.mark.parametrize("credentials_name", ["no token", "session token"])
def test_requests_on_the_wire_verify_with_the_real_clock(credentials_name: str) -> None:
    credentials = CREDENTIALS[credentials_name]
    server = VerifyingServer(credentials, "eu-central-1")

    async def scenario() -> None:
        async with serve_post(server.handle) as endpoint:
            client = DynamoClient(region="eu-central-1", endpoint=endpoint, credentials=credentials)
            async with client:
                await client.describe_table("t")
                await client.describe_table("t")

    asyncio.run(scenario())
    assert server.verdicts == [True, True]
