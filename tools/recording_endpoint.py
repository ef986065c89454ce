"""A recording endpoint in front of DynamoDB Local or moto: every AWS API call that passes.

Tests put it between ddbpipe and a local service to learn which API operations a job really
makes, with which parameters, whatever the code says it does. Each request is forwarded
unchanged and recorded as a ``RecordedCall``:

- ``service``: the service the request is signed for (its SigV4 credential scope), so one
  endpoint in front of moto tells S3, KMS and STS apart;
- ``operation``: the API operation, from the ``X-Amz-Target`` of JSON protocols (DynamoDB,
  KMS), the ``Action`` of query protocols (STS), and for S3's REST protocol from the method,
  path and query as S3 routes them; a request S3 would route elsewhere than the operations
  known here is ``Unknown ...``, so it cannot pass unnoticed;
- ``parameters``: the request's parameters by their API names: the members of a JSON body
  (strings as they are, objects by their keys, lists by their length), an S3 request's
  bucket, key, query and headers named as botocore's model of the operation names them;
- ``status`` and ``reply_headers`` (lower-case names) of the service's reply.

``answer(operation, document)`` makes the endpoint answer an operation the service lacks
(DynamoDB Local has no tagging) with a JSON document instead of forwarding it;
``refuse_next(operation)`` answers the next request of an operation with an error (403
AccessDenied by default), to see what a job calls when a request fails. Both are recorded
like the rest. It is served from a background thread on a loopback port::

    with start_recording_endpoint(s3_server.endpoint) as recorder:
        ddbpipe.export_table(table, "s3://bucket/x", s3_endpoint_url=recorder.endpoint)
        print({call.operation for call in recorder.calls()})
"""

from __future__ import annotations

import json
import re
import threading
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import aiohttp
import botocore.session
from aiohttp import web

from tools.loopback_server import LoopbackServer, forward

__all__ = ["RecordedCall", "RecordingEndpoint", "start_recording_endpoint"]

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")


@dataclass(frozen=True)
class RecordedCall:
    """One request that reached the endpoint (see the module docstring)."""

    service: str
    operation: str
    parameters: dict[str, Any]
    status: int
    reply_headers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``service:Operation``, as IAM names the service."""
        return f"{self.service}:{self.operation}"


# --- which operation -----------------------------------------------------------------------------


def _service(headers: Mapping[str, str]) -> str:
    match = _SCOPE.search(headers.get("Authorization", ""))
    return match.group(1) if match else "unsigned"


def _json_operation(headers: Mapping[str, str], body: bytes) -> tuple[str, dict[str, Any]]:
    operation = headers.get("X-Amz-Target", "").rpartition(".")[2]
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        document = {}
    return operation, {name: _summary(value) for name, value in document.items()}


def _summary(value: Any) -> Any:
    """A body member, small: objects by their keys (a BatchWriteItem's tables), lists by
    their length."""
    if isinstance(value, dict):
        return sorted(value)
    return len(value) if isinstance(value, list) else value


def _query_operation(body: bytes) -> tuple[str, dict[str, Any]]:
    form = dict(parse_qsl(body.decode("utf-8", "replace")))
    return form.pop("Action", "Unknown"), form


#: How S3 routes a path-style request: by its method and the sub-resource its query names
#: ("" for none), for the bucket and for an object.
_S3_BUCKET_ROUTES = {
    ("HEAD", ""): "HeadBucket", ("GET", "object-lock"): "GetObjectLockConfiguration",
    ("GET", "list-type"): "ListObjectsV2", ("GET", "versions"): "ListObjectVersions",
    ("GET", "uploads"): "ListMultipartUploads", ("GET", "location"): "GetBucketLocation",
    ("GET", ""): "ListObjects", ("PUT", ""): "CreateBucket", ("DELETE", ""): "DeleteBucket",
    ("POST", "delete"): "DeleteObjects",
}
_S3_OBJECT_ROUTES = {
    ("HEAD", ""): "HeadObject", ("GET", ""): "GetObject", ("PUT", ""): "PutObject",
    ("DELETE", ""): "DeleteObject", ("GET", "tagging"): "GetObjectTagging",
    ("PUT", "tagging"): "PutObjectTagging", ("DELETE", "tagging"): "DeleteObjectTagging",
    ("GET", "retention"): "GetObjectRetention", ("PUT", "retention"): "PutObjectRetention",
    ("GET", "legal-hold"): "GetObjectLegalHold", ("PUT", "legal-hold"): "PutObjectLegalHold",
    ("GET", "acl"): "GetObjectAcl", ("PUT", "acl"): "PutObjectAcl",
    ("GET", "attributes"): "GetObjectAttributes", ("POST", "uploads"): "CreateMultipartUpload",
    ("PUT", "uploadId"): "UploadPart", ("POST", "uploadId"): "CompleteMultipartUpload",
    ("DELETE", "uploadId"): "AbortMultipartUpload", ("GET", "uploadId"): "ListParts",
    ("POST", "restore"): "RestoreObject", ("POST", "select"): "SelectObjectContent",
}


def _s3_operation(request: web.Request) -> tuple[str, dict[str, Any]]:
    """S3's operation for a path-style request, and its parameters by their API names."""
    bucket, _, key = request.raw_path.partition("?")[0].lstrip("/").partition("/")
    query = dict(parse_qsl(request.query_string, keep_blank_values=True))
    routes = _S3_OBJECT_ROUTES if key else _S3_BUCKET_ROUTES
    marker = next((name for name in query if (request.method, name) in routes), "")
    operation = routes.get((request.method, marker))
    if operation is None:
        return f"Unknown {request.method} {'object' if key else 'bucket'} ?{marker}", query
    if operation == "PutObject" and "x-amz-copy-source" in request.headers:
        operation = "CopyObject"
    parameters: dict[str, Any] = {"Bucket": unquote(bucket)}
    if key:
        parameters["Key"] = unquote(key)
    parameters.update(_s3_members(operation, request.headers, query))
    return operation, parameters


_S3_MODEL = botocore.session.get_session().get_service_model("s3")


def _s3_members(
    operation: str, headers: Mapping[str, str], query: Mapping[str, str]
) -> dict[str, str]:
    """The operation's header and query parameters present in the request, by API name."""
    found: dict[str, str] = {}
    members = _S3_MODEL.operation_model(operation).input_shape.members
    for name, shape in members.items():
        location = shape.serialization.get("location")
        wire_name = shape.serialization.get("name", name)
        source: Mapping[str, str] = (
            headers if location == "header" else query if location == "querystring" else {}
        )
        if wire_name in source:
            found[name] = source[wire_name]
    return found


def _operation(service: str, request: web.Request, body: bytes) -> tuple[str, dict[str, Any]]:
    if "X-Amz-Target" in request.headers:
        return _json_operation(request.headers, body)
    if service == "s3":
        return _s3_operation(request)
    return _query_operation(body)


# --- replies made here ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    status: int
    code: str
    message: str


def _json_reply(document: dict[str, Any], status: int = 200) -> web.Response:
    body = json.dumps(document).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amz-crc32": str(zlib.crc32(body)),
               "x-amzn-RequestId": uuid.uuid4().hex}
    return web.Response(status=status, body=body, headers=headers)


def _refusal_reply(service: str, request: web.Request, refusal: _Refusal) -> web.Response:
    """The error in the shape of the request's protocol: JSON, S3's XML or the query XML."""
    if "X-Amz-Target" in request.headers:
        return _json_reply({"__type": refusal.code, "message": refusal.message}, refusal.status)
    if request.method == "HEAD":  # S3 answers HEAD without a body
        return web.Response(status=refusal.status)
    error = f"<Error><Code>{refusal.code}</Code><Message>{refusal.message}</Message></Error>"
    if service != "s3":
        error = f"<ErrorResponse>{error}<RequestId>recording</RequestId></ErrorResponse>"
    xml = f'<?xml version="1.0" encoding="UTF-8"?>\n{error}'
    return web.Response(status=refusal.status, body=xml.encode(), content_type="text/xml")


# --- the proxy -----------------------------------------------------------------------------------


class _Recorder:
    """The aiohttp handler: work out the call, answer or forward it, record it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Condition()
        self._in_flight = 0
        self._arrivals = 0
        self._calls: list[RecordedCall] = []
        self._answers: dict[str, dict[str, Any]] = {}
        self._refusals: dict[str, _Refusal] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            self._arrivals += 1
            self._lock.notify_all()
        try:
            return await self._handle(request)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        service = _service(request.headers)
        operation, parameters = _operation(service, request, body)
        reply = self._made_here(service, operation, request)
        if reply is None:
            reply = await self._forward(request, body)
        reply_headers = {name.lower(): value for name, value in reply.headers.items()}
        with self._lock:
            self._calls.append(
                RecordedCall(service, operation, parameters, reply.status, reply_headers)
            )
        return reply

    def _made_here(
        self, service: str, operation: str, request: web.Request
    ) -> web.Response | None:
        with self._lock:
            refusal = self._refusals.pop(operation, None)
            answer = self._answers.get(operation)
        if refusal is not None:
            return _refusal_reply(service, request, refusal)
        return None if answer is None else _json_reply(answer)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None, "the endpoint is not started"
        reply = await forward(self._session, self.upstream, request, body)
        if request.method == "HEAD":  # no body, but the object's length
            reply.headers["Content-Length"] = str(reply.content_length)
            return web.Response(status=reply.status, headers=reply.headers)
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def wait_idle(self, timeout: float, quiet: float) -> bool:
        """Idle: nothing in flight, and nothing new arrived for ``quiet`` seconds."""
        with self._lock:
            while self._lock.wait_for(lambda: self._in_flight == 0, timeout):
                if not self._lock.wait_for(self._arrived_since(self._arrivals), quiet):
                    return True
            return False

    def _arrived_since(self, arrivals: int) -> Callable[[], bool]:
        return lambda: self._arrivals != arrivals

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def answer(self, operation: str, document: dict[str, Any]) -> None:
        with self._lock:
            self._answers[operation] = document

    def refuse_next(self, operation: str, refusal: _Refusal) -> None:
        with self._lock:
            self._refusals[operation] = refusal


class RecordingEndpoint(LoopbackServer):
    """The running endpoint; ``endpoint`` is its URL, ``calls()`` what passed so far."""

    def __init__(self, upstream: str) -> None:
        self._recorder = _Recorder(upstream)
        # Room for a multipart part and a 16 MB BatchWriteItem.
        super().__init__(self._recorder, name="recording-endpoint",
                         client_max_size=128 * 1024 * 1024)

    def calls(self) -> list[RecordedCall]:
        """Every call recorded so far, in the order their replies were made."""
        return self._recorder.calls()

    def wait_idle(self, timeout: float = 30.0, quiet: float = 0.1) -> bool:
        """Wait until no request is being answered or arriving. A client that gave up on a
        request (a cancelled job) leaves it to finish here, and be recorded, after the job
        returned."""
        return self._recorder.wait_idle(timeout, quiet)

    def clear(self) -> None:
        """Forget the calls recorded so far."""
        self._recorder.clear()

    def answer(self, operation: str, document: dict[str, Any]) -> None:
        """Answer every request of ``operation`` with the JSON ``document`` (status 200)."""
        self._recorder.answer(operation, document)

    def refuse_next(self, operation: str, *, status: int = 403, code: str = "AccessDenied",
                    message: str = "Access Denied") -> None:
        """Answer the next request of ``operation`` with this error, in the service's shape."""
        self._recorder.refuse_next(operation, _Refusal(status, code, message))


def start_recording_endpoint(upstream: str) -> RecordingEndpoint:
    """Serve a ``RecordingEndpoint`` in front of ``upstream``."""
    return RecordingEndpoint(upstream).start()
