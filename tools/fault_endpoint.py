"""A fault-injecting endpoint in front of S3 (moto) or DynamoDB (DynamoDB Local).

Tests and benchmarks put it between ddbpipe and a real local service to see ddbpipe meet the
failures AWS's services have. It forwards every request unchanged, except that a share
``rate`` of them, drawn from a random sequence seeded by ``seed``, meets one of ``kinds``:

- ``server_error``: a 500 in the service's own shape (S3's ``InternalError`` XML, DynamoDB's
  ``InternalServerError`` JSON);
- ``throttle``: S3's 503 ``SlowDown``, DynamoDB's 400 ``ThrottlingException``;
- ``drop``: the connection closes before any answer; the request never reaches the service;
- ``cut``: the service serves the request, and its reply is cut mid-body (a reply without a
  body loses the connection instead): the client cannot know that the service acted;
- ``stall``: no answer for ``stall_seconds`` (longer than the client's read timeout), then the
  connection closes; the request never reaches the service;
- ``expired_token``: once per endpoint, S3's 400 ``ExpiredToken`` / DynamoDB's 400
  ``ExpiredTokenException``. From then on every request signed with the same credentials gets
  the same answer, as AWS does once a session has expired: credentials renewed from their
  source (a role, SSO) go on, static ones are refused again.

Error replies are shaped as the service sends them: DynamoDB's carry the ``x-amz-crc32``
header of their body, S3's replies to HEAD have no body. The first ``start_after`` requests
pass untouched (a run that meets an outage mid-way). Requests arrive concurrently, so which
request meets which fault depends on their order; the sequence of draws is the seed's.

``counts()`` says what it did: requests received, forwarded (reached the service) by action,
faults by kind, and the put/delete requests inside forwarded BatchWriteItem calls.

``write_rotating_profile`` writes an AWS config file whose profile gets new session
credentials each time they are resolved, as a role's or SSO's: with it a run survives the
``expired_token`` fault.

It is served from a background thread on a loopback port, as the capacity simulator is::

    with start_fault_endpoint(s3_server.endpoint, service="s3", rate=0.25, seed=1) as faults:
        ddbpipe.export_table(table, "s3://bucket/x", s3_endpoint_url=faults.endpoint)
        print(faults.counts().faults)
"""

from __future__ import annotations

import asyncio
import random
import re
import shlex
import sys
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from tools.loopback_server import LoopbackServer, UpstreamReply, forward

__all__ = [
    "FAULT_KINDS",
    "FaultCounts",
    "FaultEndpoint",
    "FaultKind",
    "ROTATING_PROFILE",
    "Service",
    "start_fault_endpoint",
    "write_rotating_profile",
]

FaultKind = Literal["server_error", "throttle", "drop", "cut", "stall", "expired_token"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "server_error", "throttle", "drop", "cut", "stall", "expired_token",
)
Service = Literal["s3", "dynamodb"]

#: Past ddbpipe's own 60 s read timeouts; tests shorten their clients' timeouts instead.
DEFAULT_STALL_SECONDS = 65.0

# Headers about one hop's connection or framing, which a proxy does not pass on.
_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")
_DYNAMODB_TARGET_PREFIX = "DynamoDB_20120810."


# --- what each service says -------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    status: int
    code: str
    message: str


_REFUSALS: dict[Service, dict[FaultKind, _Refusal]] = {
    "s3": {
        "server_error": _Refusal(
            500, "InternalError", "We encountered an internal error. Please try again."
        ),
        "throttle": _Refusal(503, "SlowDown", "Please reduce your request rate."),
        "expired_token": _Refusal(400, "ExpiredToken", "The provided token has expired."),
    },
    "dynamodb": {
        "server_error": _Refusal(
            500, "com.amazonaws.dynamodb.v20120810#InternalServerError", "Internal server error"
        ),
        "throttle": _Refusal(
            400, "com.amazon.coral.availability#ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
        ),
        "expired_token": _Refusal(
            400, "com.amazon.coral.service#ExpiredTokenException",
            "The security token included in the request is expired",
        ),
    },
}


def _refusal_reply(service: Service, kind: FaultKind, method: str) -> web.Response:
    refusal = _REFUSALS[service][kind]
    request_id = uuid.uuid4().hex.upper()
    if service == "dynamodb":
        body = msgspec.json.encode({"__type": refusal.code, "message": refusal.message})
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "x-amz-crc32": str(zlib.crc32(body)),
            "x-amzn-RequestId": request_id,
        }
        return web.Response(status=refusal.status, body=body, headers=headers)
    headers = {"x-amz-request-id": request_id}
    if method == "HEAD":  # S3 answers HEAD without a body: only the status tells
        return web.Response(status=refusal.status, headers=headers)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{refusal.code}</Code><Message>{refusal.message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    headers["Content-Type"] = "application/xml"
    return web.Response(status=refusal.status, body=xml.encode(), headers=headers)


def _action(service: Service, request: web.Request) -> str:
    """DynamoDB's action (its X-Amz-Target); S3's HTTP method."""
    if service == "dynamodb":
        return request.headers.get("X-Amz-Target", "").removeprefix(_DYNAMODB_TARGET_PREFIX)
    return request.method


def _write_requests(body: bytes) -> int:
    """The put/delete requests of a BatchWriteItem body (0 for one that cannot be read)."""
    try:
        document = msgspec.json.decode(body)
        return sum(len(requests) for requests in document["RequestItems"].values())
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return 0


def _credentials_of(request: web.Request) -> str:
    """Who signed the request: its session token, else its access key id."""
    token = request.headers.get("X-Amz-Security-Token")
    if token:
        return token
    match = _ACCESS_KEY.search(request.headers.get("Authorization", ""))
    return match.group(1) if match else ""


# --- what it did ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultCounts:
    """What the endpoint did so far."""

    #: Requests received.
    requests: int
    #: Requests that reached the service, by action (DynamoDB's action, S3's HTTP method).
    forwarded: dict[str, int]
    #: Fault replies by kind; ``expired_token`` counts every request refused as expired.
    faults: dict[str, int]
    #: Put/delete requests inside the BatchWriteItem calls that reached the service.
    write_requests: int


class _Counters:
    """Written on the server's thread, read from others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._forwarded: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._write_requests = 0

    def received(self) -> int:
        with self._lock:
            self._requests += 1
            return self._requests

    def forwarded(self, action: str, write_requests: int) -> None:
        with self._lock:
            self._forwarded[action] += 1
            self._write_requests += write_requests

    def fault(self, kind: FaultKind) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> FaultCounts:
        with self._lock:
            return FaultCounts(
                requests=self._requests,
                forwarded=dict(self._forwarded),
                faults=dict(self._faults),
                write_requests=self._write_requests,
            )


# --- the proxy --------------------------------------------------------------------------------


class _Proxy:
    """The aiohttp handler: draw a fault, answer it or forward the request."""

    def __init__(
        self, upstream: str, service: Service, rate: float, seed: int,
        kinds: Sequence[FaultKind], stall_seconds: float, start_after: int,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.service = service
        self.rate = rate
        self.kinds = list(kinds)
        self.stall_seconds = stall_seconds
        self.start_after = start_after
        self.counters = _Counters()
        self._random = random.Random(seed)
        self._expired: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        number = self.counters.received()
        body = await request.read()  # read whole, whatever happens next
        kind = self._fault_for(request, number)
        if kind is None:
            return await self._forward(request, body)
        self.counters.fault(kind)
        if kind in ("server_error", "throttle", "expired_token"):
            return _refusal_reply(self.service, kind, request.method)
        if kind == "cut":
            return await self._forward_cut(request, body)
        if kind == "stall":
            await asyncio.sleep(self.stall_seconds)
        return _hang_up(request)

    def _fault_for(self, request: web.Request, number: int) -> FaultKind | None:
        drawn = self._draw(number)
        signer = _credentials_of(request)
        if signer in self._expired:
            return "expired_token"  # as AWS: expired credentials stay expired
        if drawn == "expired_token":
            self._expired.add(signer)
            self.kinds.remove("expired_token")  # once
        return drawn

    def _draw(self, number: int) -> FaultKind | None:
        if number <= self.start_after:
            return None
        # One draw per request whatever the outcome, so a seed always gives the same sequence.
        if self._random.random() >= self.rate or not self.kinds:
            return None
        return self._random.choice(self.kinds)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        reply = await self._upstream(request, body)
        if request.method == "HEAD":  # no body, but the object's length
            headers = CIMultiDict(reply.headers)
            headers["Content-Length"] = str(reply.content_length)
            return web.Response(status=reply.status, headers=headers)
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def _forward_cut(self, request: web.Request, body: bytes) -> web.StreamResponse:
        reply = await self._upstream(request, body)
        if request.method == "HEAD" or len(reply.body) < 2 or request.transport is None:
            return _hang_up(request)
        # Written straight to the socket: the head and half the body reach the client whole.
        head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        head += [f"Content-Length: {len(reply.body)}", "", ""]
        request.transport.write("\r\n".join(head).encode("latin-1"))
        request.transport.write(reply.body[: len(reply.body) // 2])
        return _hang_up(request)

    async def _upstream(self, request: web.Request, body: bytes) -> UpstreamReply:
        assert self._session is not None, "the endpoint is not started"
        action = _action(self.service, request)
        reply = await forward(self._session, self.upstream, request, body)
        writes = _write_requests(body) if action == "BatchWriteItem" else 0
        self.counters.forwarded(action, writes)
        return reply


def _hang_up(request: web.Request) -> web.Response:
    """Close the connection once what was written is flushed; the reply returned is never
    sent."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


# --- the server thread ------------------------------------------------------------------------


class FaultEndpoint(LoopbackServer):
    """The running endpoint: a loopback HTTP endpoint served from a background thread.

    ``endpoint`` is its URL; ``counts()`` what it did so far (see the module docstring).
    """

    def __init__(
        self,
        upstream: str,
        *,
        service: Service,
        rate: float = 0.0,
        seed: int = 0,
        kinds: Sequence[FaultKind] = FAULT_KINDS,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        start_after: int = 0,
    ) -> None:
        if service not in _REFUSALS:
            raise ValueError(f"unknown service {service!r}: use 's3' or 'dynamodb'")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the fault rate must be between 0 and 1, not {rate}")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: use {FAULT_KINDS}")
        self._proxy = _Proxy(upstream, service, rate, seed, kinds, stall_seconds, start_after)
        # Room for a multipart part and a 16 MB BatchWriteItem.
        super().__init__(self._proxy, name=f"fault-endpoint-{service}",
                         client_max_size=128 * 1024 * 1024)

    def counts(self) -> FaultCounts:
        return self._proxy.counters.snapshot()


def start_fault_endpoint(upstream: str, *, service: Service, **settings: Any) -> FaultEndpoint:
    """Serve a ``FaultEndpoint`` in front of ``upstream``; see ``FaultEndpoint`` for settings."""
    return FaultEndpoint(upstream, service=service, **settings).start()


# --- credentials that can be renewed ----------------------------------------------------------

#: The profile of ``write_rotating_profile``'s config file.
ROTATING_PROFILE = "rotating"

# Prints session credentials good for an hour, with a session token never given before.
_CREDENTIAL_PROCESS = """\
import datetime, json, sys, uuid
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[1], "SecretAccessKey": sys.argv[2],
                  "SessionToken": uuid.uuid4().hex, "Expiration": expires.isoformat()}))
"""


def write_rotating_profile(folder: Path, *, access_key: str, secret_key: str) -> Path:
    """Write, into ``folder``, an AWS config file whose profile ``ROTATING_PROFILE`` gets a new
    session token each time its credentials are resolved (a ``credential_process``, which
    botocore refreshes as it does a role's); returns the file's path (for AWS_CONFIG_FILE).
    """
    script = folder / "rotating_credentials.py"
    script.write_text(_CREDENTIAL_PROCESS)
    command = shlex.join([sys.executable, str(script), access_key, secret_key])
    config = folder / "aws-config"
    config.write_text(f"[profile {ROTATING_PROFILE}]\ncredential_process = {command}\n")
    return config
