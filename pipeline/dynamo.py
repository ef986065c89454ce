"""The only place that talks to DynamoDB.

Calls are built by hand on DynamoDB's JSON 1.0 protocol, signed by ``sigv4.SigV4Signer``
(equal to botocore's) and sent through a ``Transport``: pooled aiohttp connections in
production, a ``MockTransport`` handler in tests (as httpx does). Going around botocore's
client keeps the raw reply bytes: the export slices items out of Scan pages instead of paying
for botocore's parser (~10k items/s).

Region, endpoint and credentials are resolved by ``aws.py``, as the AWS CLI does. Every
failure becomes an error of ``ddbpipe.errors`` through ``aws.py``'s one error map: throttles
and 5xx/connection problems are transient and retried here (``retry.retrying``); everything
else is terminal and names the action and table. A reply saying the credentials expired is
neither: the credentials are renewed once (a role or SSO profile asks its source again) and
the same exchange is sent again, outside the retry policy (the import's writer makes one
attempt per call); expired again, it is the terminal ``CredentialsError``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import botocore.credentials
import botocore.exceptions
import botocore.session
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from . import aws
from .config import AwsOptions
from .errors import (
    AwsRequestError,
    CredentialsError,
    DdbpipeError,
    ServiceUnavailableError,
    TableNotFoundError,
    ThrottledError,
)
from .retry import Clock, RetryPolicy, SystemClock, retrying
from .sigv4 import SigV4Signer

__all__ = ["DynamoClient", "HttpReply", "MockTransport", "Transport"]

log = logging.getLogger(__name__)

SERVICE = "dynamodb"
TARGET_PREFIX = "DynamoDB_20120810."
USER_AGENT = "ddbpipe"

#: Codes a DynamoDB look-alike (e.g. DynamoDB Local) answers for an action it does not have.
UNSUPPORTED_CODES = frozenset({"UnknownOperationException", "UnsupportedOperationException"})

#: Waiting for a free pooled connection does not count; a stalled socket does.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


# --- transports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    """One HTTP reply: status, headers (case-insensitive lookups where the transport gives
    them) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends one signed POST and returns the reply. Connection failures raise one of
    ``aws.NETWORK_ERRORS``; any status is a reply, not an error."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """Pooled aiohttp connections, made on first use so they belong to the running loop."""

    def __init__(self, max_connections: int = 64) -> None:
        self.max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        async with self._session().post(url, data=body, headers=dict(headers)) as reply:
            return HttpReply(reply.status, reply.headers, await reply.read())

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_connections
            )
            self._http = aiohttp.ClientSession(connector=connector, timeout=DEFAULT_TIMEOUT)
        return self._http


Handler = Callable[[str, bytes, Mapping[str, str]], "HttpReply | Awaitable[HttpReply]"]


class MockTransport:
    """A transport that answers every request with ``handler(url, body, headers)`` (a reply,
    or an awaitable of one), in process: for tests, as httpx's ``MockTransport``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        reply = self.handler(url, body, headers)
        if not isinstance(reply, HttpReply):
            reply = await reply
        # Header names are case-insensitive on the wire; so they are here.
        return HttpReply(reply.status, CIMultiDictProxy(CIMultiDict(reply.headers)), reply.body)

    async def close(self) -> None:
        return None


class DynamoClient:
    """An async DynamoDB client that returns raw reply bytes where the export needs them.

    Use ``async with DynamoClient.open(aws) as client:`` (``open`` itself is synchronous and
    resolves region, endpoint and credentials at once, so configuration errors surface early).
    ``throttles`` and ``retries`` count throttled replies and retried calls, for progress;
    ``on_throttle``, when set, is called at each throttled reply (a live progress display).
    ``transport`` and ``clock`` are the seams for tests: a ``MockTransport`` answers in
    process, a ``ManualClock`` fixes the signing time and never really sleeps.
    ``renew_credentials`` gives credentials anew when DynamoDB says they expired (``open``
    asks the profile's source again); without it an expired token is final.
    ``credentials_renewed`` counts the renewals.
    """

    region: str
    endpoint: str

    def __init__(
        self,
        *,
        region: str,
        endpoint: str,
        credentials: botocore.credentials.Credentials,
        renew_credentials: Callable[[], botocore.credentials.Credentials] | None = None,
        max_connections: int = 64,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.region = region
        self.endpoint = endpoint.rstrip("/") + "/"
        self.retry = retry or RetryPolicy()
        self.clock: Clock = clock or SystemClock()
        self.throttles = 0
        self.on_throttle: Callable[[], None] | None = None
        self.retries = 0
        self.credentials_renewed = 0
        self._credentials = credentials
        self._renew_credentials = renew_credentials
        self._renewing = asyncio.Lock()
        self._signer = SigV4Signer(self.endpoint, region, SERVICE, clock=self.clock)
        self._transport: Transport = transport or AiohttpTransport(max_connections)

    @classmethod
    def open(
        cls,
        options: AwsOptions,
        *,
        max_connections: int = 64,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> DynamoClient:
        """Resolve region, endpoint and credentials the way the AWS CLI does (``aws.py``)."""
        session = aws.session(options, botocore.session.Session)
        region = aws.region(options, session)
        return cls(
            region=region,
            endpoint=aws.dynamodb_endpoint(options, region),
            credentials=aws.credentials(session),
            renew_credentials=functools.partial(aws.fresh_credentials, options),
            max_connections=max_connections,
            retry=retry,
            transport=transport,
            clock=clock,
        )

    async def __aenter__(self) -> DynamoClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    # --- generic calls ---------------------------------------------------------------------

    async def call(
        self, action: str, payload: dict[str, Any], *, resource: str = ""
    ) -> dict[str, Any]:
        """Call ``action`` with a JSON payload and return the decoded reply; retried."""
        body = await self.call_raw(action, msgspec.json.encode(payload), resource=resource)
        return _json_reply(self._call(action, resource), body)

    async def call_raw(self, action: str, body: bytes, *, resource: str = "") -> bytes:
        """Send ``body`` as ``action`` and return the raw body of the 200 reply; retried."""
        call = self._call(action, resource)
        return await retrying(
            lambda: self._send(call, body),
            policy=self.retry,
            clock=self.clock,
            on_retry=self._count_retry,
        )

    # --- the actions ddbpipe uses ------------------------------------------------------------

    async def describe_table(self, table: str) -> dict[str, Any]:
        reply = await self.call("DescribeTable", {"TableName": table}, resource=table)
        description: dict[str, Any] = reply["Table"]
        return description

    async def describe_time_to_live(self, table: str) -> dict[str, Any] | None:
        """The table's TimeToLiveDescription, or None where it cannot be read (optional)."""
        try:
            reply = await self.call("DescribeTimeToLive", {"TableName": table}, resource=table)
        except TableNotFoundError:
            raise
        except AwsRequestError as error:
            _log_missing_metadata("time-to-live setting", table, error)
            return None
        description = reply.get("TimeToLiveDescription")
        return description if isinstance(description, dict) else None

    async def list_tags(self, table_arn: str) -> list[dict[str, str]] | None:
        """All tags of the table (every page), or None where they cannot be read (optional)."""
        tags: list[dict[str, str]] = []
        payload: dict[str, Any] = {"ResourceArn": table_arn}
        try:
            while True:
                reply = await self.call("ListTagsOfResource", payload, resource=table_arn)
                tags.extend(reply.get("Tags") or [])
                next_token = reply.get("NextToken")
                if not next_token:
                    return tags
                payload = {"ResourceArn": table_arn, "NextToken": next_token}
        except AwsRequestError as error:
            _log_missing_metadata("tags", table_arn, error)
            return None

    async def describe_continuous_backups(self, table: str) -> dict[str, Any]:
        """The table's ContinuousBackupsDescription (point-in-time recovery)."""
        reply = await self.call("DescribeContinuousBackups", {"TableName": table},
                                resource=table)
        description: dict[str, Any] = reply.get("ContinuousBackupsDescription") or {}
        return description

    async def scan_page(
        self,
        table: str,
        *,
        segment: int,
        total_segments: int,
        exclusive_start_key: dict[str, Any] | None,
        consistent_read: bool = False,
        limit: int | None = None,
    ) -> bytes:
        """One Scan page of one segment, as the raw reply body (ConsumedCapacity included)."""
        payload: dict[str, Any] = {
            "TableName": table,
            "Segment": segment,
            "TotalSegments": total_segments,
            "ReturnConsumedCapacity": "TOTAL",
        }
        if consistent_read:
            payload["ConsistentRead"] = True
        if exclusive_start_key:
            payload["ExclusiveStartKey"] = exclusive_start_key
        if limit is not None:
            payload["Limit"] = limit
        return await self.call_raw("Scan", msgspec.json.encode(payload), resource=table)

    async def batch_write(self, table: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """BatchWriteItem of put/delete requests; the reply holds UnprocessedItems to resend."""
        return await self.batch_write_raw(table, [msgspec.json.encode(r) for r in requests])

    async def batch_write_raw(self, table: str, requests: Sequence[bytes]) -> dict[str, Any]:
        """``batch_write`` of requests already encoded (``{"PutRequest":...}`` JSON each).

        The body is joined from the bytes as they are: an import's items go out exactly as
        they were read, with no per-item encoding.
        """
        body = b"".join((
            b'{"RequestItems":{', msgspec.json.encode(table), b":[", b",".join(requests),
            b']},"ReturnConsumedCapacity":"TOTAL"}',
        ))
        reply = await self.call_raw("BatchWriteItem", body, resource=table)
        return _json_reply(self._call("BatchWriteItem", table), reply)

    # --- one HTTP exchange -------------------------------------------------------------------

    async def _send(self, call: aws.AwsCall, body: bytes) -> bytes:
        """One exchange, sent once more with renewed credentials if they expired."""
        signed_with = self._credentials
        reply = await self._exchange(call, body)
        if _expired_token(call, reply) and await self._renewed_credentials(call, signed_with):
            reply = await self._exchange(call, body)
        return self._accepted(call, reply)

    async def _exchange(self, call: aws.AwsCall, body: bytes) -> HttpReply:
        headers = self._signed_headers(call.action, body)
        try:
            return await self._transport.post(self.endpoint, body, headers)
        except aws.NETWORK_ERRORS as error:
            raise aws.error_from_exception(call, error, self.endpoint) from error

    def _accepted(self, call: aws.AwsCall, reply: HttpReply) -> bytes:
        """The body of a 200 reply; any other reply raises its error."""
        if reply.status != 200:
            code, message = _error_code(reply.headers, reply.body)
            refused = aws.error_from_reply(call, reply.status, code, message)
            if isinstance(refused, ThrottledError):
                self.throttles += 1
                if self.on_throttle is not None:
                    self.on_throttle()
            raise refused
        _check_crc32(call, reply)
        return reply.body

    async def _renewed_credentials(
        self, call: aws.AwsCall, signed_with: botocore.credentials.Credentials
    ) -> bool:
        """Renew the credentials ``signed_with``, which a refused call was signed with (once
        for all the calls refused together); whether the call may be sent again."""
        if self._renew_credentials is None:
            return False
        async with self._renewing:
            if self._credentials is signed_with:  # not renewed yet by another call
                log.info("the AWS credentials expired (%s); renewing them", call)
                # Resolving them may call STS or SSO: off the event loop.
                self._credentials = await asyncio.to_thread(self._renew_credentials)
                self.credentials_renewed += 1
        return True

    def _signed_headers(self, action: str, body: bytes) -> dict[str, str]:
        # Frozen per request, so refreshable credentials (roles, SSO) renew themselves.
        try:
            credentials = self._credentials.get_frozen_credentials()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise CredentialsError(
                f"could not refresh the AWS credentials: {aws.one_line(error)}"
            ) from error
        headers = self._signer.sign(credentials, TARGET_PREFIX + action, body)
        # Identity encoding keeps the x-amz-crc32 check valid over the exact bytes received.
        headers["Accept-Encoding"] = "identity"
        headers["User-Agent"] = USER_AGENT
        return headers

    def _call(self, action: str, resource: str) -> aws.AwsCall:
        return aws.AwsCall(SERVICE, action, resource=resource, region=self.region)

    def _count_retry(self, error: DdbpipeError) -> None:
        self.retries += 1


# --- replies -------------------------------------------------------------------------------


def _json_reply(call: aws.AwsCall, body: bytes) -> dict[str, Any]:
    """A 200 reply's JSON object; anything else means the endpoint is not DynamoDB-like."""
    try:
        reply = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        reply = None
    if not isinstance(reply, dict):
        raise ServiceUnavailableError(f"{call} returned a reply that is not a JSON object")
    return reply


def _expired_token(call: aws.AwsCall, reply: HttpReply) -> bool:
    if reply.status == 200:
        return False
    return aws.is_expired_token(call, reply.status, _error_code(reply.headers, reply.body)[0])


def _error_code(headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """The error code and message of a DynamoDB error reply (either may be empty)."""
    code, message = "", ""
    try:
        document = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        document = {}
    if isinstance(document, dict):
        code = str(document.get("__type") or "")
        message = str(document.get("message") or document.get("Message") or "")
    if not code:
        code = str(headers.get("x-amzn-ErrorType") or "").split(":", 1)[0]
    # "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException" -> the part after '#'.
    return code.rsplit("#", 1)[-1], message


def _check_crc32(call: aws.AwsCall, reply: HttpReply) -> None:
    # DynamoDB checksums every reply; a mismatch means bytes were damaged in transit.
    expected = reply.headers.get("x-amz-crc32")
    if expected is None or reply.headers.get("Content-Encoding"):
        return
    if str(zlib.crc32(reply.body)) != expected.strip():
        raise ServiceUnavailableError(
            f"the reply to {call} failed its CRC32 check (damaged in transit)"
        )


def _log_missing_metadata(what: str, resource: str, error: AwsRequestError) -> None:
    # An emulator without the action is expected; a refused permission deserves a warning.
    level = logging.DEBUG if error.code in UNSUPPORTED_CODES else logging.WARNING
    log.log(level, "cannot read the %s of '%s', leaving them out: %s", what, resource, error)
