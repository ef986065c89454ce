"""The only place that talks to DynamoDB.

Calls are built by hand on DynamoDB's JSON 1.0 protocol, signed with a small SigV4 signer that
matches botocore's, and sent over one shared aiohttp session. Going around botocore's client
keeps the raw reply bytes: the export slices items out of Scan pages instead of paying for
botocore's parser (~10k items/s).

Credentials and region still come from a botocore session, so profiles, environment variables,
config files, SSO and instance roles work as they do in the AWS CLI.

Every failure becomes an error of ``ddbpipe.errors``: throttles and 5xx/connection problems are
transient and retried here with full-jitter backoff; everything else is terminal and names the
action and table.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from random import random as random_fraction
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.credentials
import botocore.exceptions
import botocore.session
import botocore.utils
import msgspec

from .config import AwsOptions
from .errors import (
    AccessDeniedError,
    AwsRequestError,
    ConfigError,
    CredentialsError,
    DdbpipeError,
    ServiceUnavailableError,
    TableNotFoundError,
    ThrottledError,
    TransientError,
)

__all__ = ["DynamoClient", "RetryPolicy"]

log = logging.getLogger(__name__)

SERVICE = "dynamodb"
TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
USER_AGENT = "ddbpipe"

THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
UNAVAILABLE_CODES = frozenset(
    {"InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException"}
)
CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
    }
)
DENIED_CODES = frozenset({"AccessDeniedException", "UnauthorizedOperation"})
#: Codes a DynamoDB look-alike (e.g. DynamoDB Local) answers for an action it does not have.
UNSUPPORTED_CODES = frozenset({"UnknownOperationException", "UnsupportedOperationException"})

#: Waiting for a free pooled connection does not count; a stalled socket does.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for transient errors only.

    The n-th retry (n = 0, 1, ...) sleeps ``random(0, min(max_delay, base_delay * 2**n))``.
    ``sleep`` and ``random`` are injectable so tests never really wait.
    """

    max_attempts: int = 10
    base_delay: float = 0.05
    max_delay: float = 20.0
    sleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, compare=False, repr=False
    )
    random: Callable[[], float] = field(default=random_fraction, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")

    def backoff_cap(self, retry_number: int) -> float:
        # The exponent is bounded so a huge attempt count cannot overflow a float.
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry_number, 64))

    def delay(self, retry_number: int) -> float:
        return self.random() * self.backoff_cap(retry_number)


class DynamoClient:
    """An async DynamoDB client that returns raw reply bytes where the export needs them.

    Use ``async with DynamoClient.open(aws) as client:`` (``open`` itself is synchronous and
    resolves region, endpoint and credentials at once, so configuration errors surface early).
    ``throttles`` and ``retries`` count throttled replies and retried calls, for progress.
    """

    region: str
    endpoint: str

    def __init__(
        self,
        *,
        region: str,
        endpoint: str,
        credentials: botocore.credentials.Credentials,
        max_connections: int = 64,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.region = region
        self.endpoint = endpoint.rstrip("/") + "/"
        self.retry = retry or RetryPolicy()
        self.throttles = 0
        self.retries = 0
        self._credentials = credentials
        self._signer = _SigV4Signer(self.endpoint, region)
        self._max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def open(
        cls, aws: AwsOptions, *, max_connections: int = 64, retry: RetryPolicy | None = None
    ) -> DynamoClient:
        """Resolve region, endpoint and credentials the way the AWS CLI does."""
        session = _botocore_session(aws.profile)
        region = _resolve_region(aws, session)
        return cls(
            region=region,
            endpoint=aws.dynamodb_endpoint() or default_endpoint(region),
            credentials=_resolve_credentials(session),
            max_connections=max_connections,
            retry=retry,
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
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    # --- generic calls ---------------------------------------------------------------------

    async def call(
        self, action: str, payload: dict[str, Any], *, resource: str = ""
    ) -> dict[str, Any]:
        """Call ``action`` with a JSON payload and return the decoded reply; retried."""
        body = await self.call_raw(action, msgspec.json.encode(payload), resource=resource)
        return _json_reply(action, resource, body)

    async def call_raw(self, action: str, body: bytes, *, resource: str = "") -> bytes:
        """Send ``body`` as ``action`` and return the raw body of the 200 reply; retried."""
        retry_number = 0
        while True:
            try:
                return await self._send_once(action, body, resource)
            except TransientError as error:
                if isinstance(error, ThrottledError):
                    self.throttles += 1
                if retry_number + 1 >= self.retry.max_attempts:
                    # Same error type, so callers can still tell a throttle from an outage.
                    attempts = self.retry.max_attempts
                    raise type(error)(f"{error}; gave up after {attempts} attempts") from error
                self.retries += 1
                await self.retry.sleep(self.retry.delay(retry_number))
                retry_number += 1

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
        return _json_reply("BatchWriteItem", table, reply)

    # --- one HTTP exchange -------------------------------------------------------------------

    async def _send_once(self, action: str, body: bytes, resource: str) -> bytes:
        headers = self._signed_headers(action, body)
        try:
            async with self._session().post(self.endpoint, data=body, headers=headers) as reply:
                reply_body = await reply.read()
                status = reply.status
                reply_headers = reply.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ServiceUnavailableError(
                f"{_where(action, resource)} could not reach {self.endpoint}: "
                f"{type(error).__name__} {error}".rstrip()
            ) from error
        if status != 200:
            raise self._error_from_reply(action, resource, status, reply_headers, reply_body)
        _check_crc32(action, resource, reply_headers, reply_body)
        return reply_body

    def _signed_headers(self, action: str, body: bytes) -> dict[str, str]:
        # Frozen per request, so refreshable credentials (roles, SSO) renew themselves.
        try:
            credentials = self._credentials.get_frozen_credentials()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise CredentialsError(f"could not refresh the AWS credentials: {error}") from error
        headers = self._signer.sign(credentials, TARGET_PREFIX + action, body)
        # Identity encoding keeps the x-amz-crc32 check valid over the exact bytes received.
        headers["Accept-Encoding"] = "identity"
        headers["User-Agent"] = USER_AGENT
        return headers

    def _session(self) -> aiohttp.ClientSession:
        # Created lazily so it belongs to the running event loop.
        if self._http is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections
            )
            self._http = aiohttp.ClientSession(connector=connector, timeout=DEFAULT_TIMEOUT)
        return self._http

    def _error_from_reply(
        self, action: str, resource: str, status: int, headers: Any, body: bytes
    ) -> DdbpipeError:
        code, message = parse_error(headers, body)
        return classify_error(
            action=action,
            resource=resource,
            region=self.region,
            status=status,
            code=code,
            message=message,
        )


# --- request signing -----------------------------------------------------------------------

_SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _SigV4Signer:
    """AWS Signature V4 for DynamoDB JSON POSTs, equal to botocore's ``SigV4Auth``.

    botocore rebuilds a generic request and re-derives the signing key on every call (~50 us).
    Here what is fixed per endpoint is prepared once, the keyed HMAC is cached until the UTC
    date or the secret key changes, and the timestamp string until the second changes.
    ``clock`` returns the current UTC time (injectable, so tests control the date).
    """

    def __init__(
        self,
        endpoint: str,
        region: str,
        service: str = SERVICE,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.region = region
        self.service = service
        self.clock = clock
        #: How often the signing key was derived (makes the cache observable in tests).
        self.key_derivations = 0
        path, host = _canonical_target(endpoint)
        # The signed headers sort as content-type, host, x-amz-date, [x-amz-security-token],
        # x-amz-target; botocore signs exactly these (none is on its blacklist).
        self._request_head = f"POST\n{path}\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\n"
        self._key_for: tuple[str, str] | None = None
        self._hmac = hmac.new(b"", digestmod=hashlib.sha256)
        self._second: datetime | None = None
        self._timestamp = ""

    def sign(
        self, credentials: botocore.credentials.ReadOnlyCredentials, target: str, body: bytes
    ) -> dict[str, str]:
        """The X-Amz-Target, Content-Type, X-Amz-Date, [X-Amz-Security-Token] and
        Authorization headers of a POST of ``body`` to the endpoint, as botocore would sign it."""
        timestamp = self._now()
        headers = {"X-Amz-Target": target, "Content-Type": CONTENT_TYPE, "X-Amz-Date": timestamp}
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
        signed_names, canonical_request = self._canonical_request(
            timestamp, credentials.token, target, body
        )
        scope = f"{timestamp[:8]}/{self.region}/{self.service}/aws4_request"
        request_hash = _sha256_hex(canonical_request.encode())
        mac = self._keyed_hmac(credentials.secret_key, timestamp[:8])
        mac.update(f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{request_hash}".encode())
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={mac.hexdigest()}"
        )
        return headers

    def _canonical_request(
        self, timestamp: str, token: str | None, target: str, body: bytes
    ) -> tuple[str, str]:
        # SigV4 trims header values and collapses inner whitespace; only these two can vary.
        lines = [self._request_head, f"x-amz-date:{timestamp}\n"]
        if token:
            lines.append(f"x-amz-security-token:{_trim_all(token)}\n")
            signed_names = "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        else:
            signed_names = "content-type;host;x-amz-date;x-amz-target"
        lines.append(f"x-amz-target:{_trim_all(target)}\n\n{signed_names}\n{_sha256_hex(body)}")
        return signed_names, "".join(lines)

    def _now(self) -> str:
        # strftime costs a few microseconds; the string only changes once a second.
        second = self.clock().replace(microsecond=0)
        if second != self._second:
            # A naive time is taken as UTC, as botocore does; an aware one is converted.
            utc = second.astimezone(UTC) if second.tzinfo is not None else second
            self._second, self._timestamp = second, utc.strftime(_SIGV4_TIMESTAMP)
        return self._timestamp

    def _keyed_hmac(self, secret_key: str, date_stamp: str) -> hmac.HMAC:
        # The key takes four HMACs and only changes with the day or the credentials; copying a
        # keyed HMAC also skips re-keying it for every request.
        if self._key_for != (secret_key, date_stamp):
            key = ("AWS4" + secret_key).encode()
            for part in (date_stamp, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._hmac = hmac.new(key, digestmod=hashlib.sha256)
            self._key_for = (secret_key, date_stamp)
            self.key_derivations += 1
        return self._hmac.copy()


def _canonical_target(endpoint: str) -> tuple[str, str]:
    """The canonical URI and the signed host of ``endpoint``, by botocore's rules: dot segments
    and repeated slashes removed, and the host lowercased, without user info or a default port,
    an IPv6 literal in brackets."""
    parts = urlsplit(endpoint)
    path = quote(botocore.utils.normalize_url_path(parts.path), safe="/~")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return path, host


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _trim_all(value: str) -> str:
    return " ".join(value.split())


# --- errors --------------------------------------------------------------------------------


def _json_reply(action: str, resource: str, body: bytes) -> dict[str, Any]:
    """A 200 reply's JSON object; anything else means the endpoint is not DynamoDB-like."""
    try:
        reply = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        reply = None
    if not isinstance(reply, dict):
        raise ServiceUnavailableError(
            f"{_where(action, resource)} returned a reply that is not a JSON object"
        )
    return reply


def parse_error(headers: Any, body: bytes) -> tuple[str, str]:
    """The error code and message of a DynamoDB error reply (either may be empty)."""
    code, message = "", ""
    try:
        document = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        document = {}
    if isinstance(document, dict):
        code = str(document.get("__type") or "")
        message = str(document.get("message") or document.get("Message") or "")
    if not code and headers is not None:
        code = str(headers.get("x-amzn-ErrorType") or "").split(":", 1)[0]
    # "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException" -> the part after '#'.
    return code.rsplit("#", 1)[-1], message


def classify_error(
    *, action: str, resource: str, region: str, status: int, code: str, message: str
) -> DdbpipeError:
    """Map a DynamoDB error reply to ddbpipe's error tree (transient or terminal)."""
    where = _where(action, resource)
    detail = f"{code or f'HTTP {status}'}: {message}" if message else (code or f"HTTP {status}")
    fields = {"service": SERVICE, "action": action, "code": code, "resource": resource}
    if code in THROTTLE_CODES:
        return ThrottledError(f"{where} was throttled ({detail})")
    if status >= 500 or code in UNAVAILABLE_CODES:
        return ServiceUnavailableError(f"{where} failed on the service side ({detail})")
    if code == "ResourceNotFoundException":
        return TableNotFoundError(
            f"table '{resource}' not found in region {region} (dynamodb:{action}): "
            "check the name, --region and --profile",
            **fields,
        )
    if code in CREDENTIAL_CODES:
        return AccessDeniedError(
            f"AWS rejected the credentials for {where} ({detail}): "
            "check or refresh them, or pass another --profile",
            **fields,
        )
    if code in DENIED_CODES:
        return AccessDeniedError(
            f"access denied for {where} ({detail}): grant the permission or use another --profile",
            **fields,
        )
    return AwsRequestError(f"{where} was refused ({detail})", **fields)


def _log_missing_metadata(what: str, resource: str, error: AwsRequestError) -> None:
    # An emulator without the action is expected; a refused permission deserves a warning.
    level = logging.DEBUG if error.code in UNSUPPORTED_CODES else logging.WARNING
    log.log(level, "cannot read the %s of '%s', leaving them out: %s", what, resource, error)


def _where(action: str, resource: str) -> str:
    return f"dynamodb:{action}" + (f" on '{resource}'" if resource else "")


def _check_crc32(action: str, resource: str, headers: Any, body: bytes) -> None:
    # DynamoDB checksums every reply; a mismatch means bytes were damaged in transit.
    expected = headers.get("x-amz-crc32")
    if expected is None or headers.get("Content-Encoding"):
        return
    if str(zlib.crc32(body)) != expected.strip():
        raise ServiceUnavailableError(
            f"the reply to {_where(action, resource)} failed its CRC32 check (damaged in transit)"
        )


# --- region, endpoint and credentials ------------------------------------------------------


def default_endpoint(region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://dynamodb.{region}.{suffix}"


def _botocore_session(profile: str | None) -> botocore.session.Session:
    session = botocore.session.Session(profile=profile)
    try:
        session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound as error:
        raise ConfigError(
            f"AWS profile '{profile or session.profile}' not found: check --profile / AWS_PROFILE"
        ) from error
    return session


def _resolve_region(aws: AwsOptions, session: botocore.session.Session) -> str:
    region = aws.region_name() or session.get_config_variable("region")
    if not region:
        raise ConfigError("no AWS region: pass --region or set AWS_REGION")
    return str(region)


def _resolve_credentials(session: botocore.session.Session) -> botocore.credentials.Credentials:
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as error:
        raise CredentialsError(f"could not load AWS credentials: {error}") from error
    if credentials is None:
        raise CredentialsError(
            "no AWS credentials found: set AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or pass --profile"
        )
    return credentials
