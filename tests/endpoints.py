"""Throwaway HTTP endpoints for tests: a server of a test's own, and a faulty S3 proxy.

``serving`` answers ``POST /`` with a handler (a DynamoDB-like server). ``faulty_s3_proxy``
stands in front of moto's S3 server: its first requests get an S3 error reply (503 SlowDown
by default), the rest are forwarded, so botocore's own retries meet real HTTP replies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from yarl import URL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Headers about one connection, which a proxy does not pass on.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "host", "upgrade"}


@asynccontextmanager
async def serving(handler: Handler, *, shutdown_timeout: float = 60.0) -> AsyncIterator[str]:
    """Serve ``POST /`` with ``handler`` on a free loopback port; yields the endpoint URL.

    ``shutdown_timeout``: how long handlers still running at the end are waited for.
    """
    app = web.Application()
    app.router.add_post("/", handler)
    async with serving_app(app, shutdown_timeout=shutdown_timeout) as endpoint:
        yield endpoint


@asynccontextmanager
async def serving_app(
    app: web.Application, *, shutdown_timeout: float = 60.0
) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields the endpoint URL."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class FaultyS3Proxy:
    """Fails the first ``faults`` requests with an S3 error reply, forwards the rest upstream.

    ``requests`` counts every request received, failed or forwarded; ``seen`` keeps each
    one's method, path and headers. With ``bucket_owner`` it also does what S3 does for a
    bucket of that account: a request that names another expected bucket owner is refused
    with 403 AccessDenied.
    """

    def __init__(
        self,
        upstream: str,
        session: aiohttp.ClientSession,
        *,
        faults: int,
        status: int,
        code: str,
        message: str,
        bucket_owner: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.session = session
        self.faults, self.status, self.code, self.message = faults, status, code, message
        self.bucket_owner = bucket_owner
        self.requests = 0
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.endpoint = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.seen.append((request.method, request.path, dict(request.headers)))
        body = await request.read()  # read in full either way, so the connection stays usable
        if self.requests <= self.faults:
            return self._error_reply(self.status, self.code, self.message)
        expected = request.headers.get("x-amz-expected-bucket-owner")
        if self.bucket_owner and expected and expected != self.bucket_owner:
            return self._error_reply(403, "AccessDenied", "Access Denied")
        return await self._forward(request, body)

    def _error_reply(self, status: int, code: str, message: str) -> web.Response:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>faulty-s3-proxy</RequestId></Error>"
        )
        return web.Response(status=status, body=xml.encode(), content_type="application/xml")

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Content-Length", None)  # set again for the body as forwarded
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with self.session.request(
            request.method, url, headers=headers, data=body
        ) as reply:
            payload = await reply.read()
            kept = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD":  # no body, but the object's length
                return web.Response(status=reply.status, headers=kept)
            kept.pop("Content-Length", None)
            return web.Response(status=reply.status, headers=kept, body=payload)


@asynccontextmanager
async def faulty_s3_proxy(
    upstream: str,
    *,
    faults: int,
    status: int = 503,
    code: str = "SlowDown",
    message: str = "Please reduce your request rate.",
    bucket_owner: str | None = None,
) -> AsyncIterator[FaultyS3Proxy]:
    """A ``FaultyS3Proxy`` in front of the S3 endpoint ``upstream``; ``.endpoint`` is its URL."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        proxy = FaultyS3Proxy(
            upstream, session, faults=faults, status=status, code=code, message=message,
            bucket_owner=bucket_owner,
        )
        # Big enough for a whole multipart part in one request body.
        app = web.Application(client_max_size=128 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", proxy.handle)
        async with serving_app(app) as endpoint:
            proxy.endpoint = endpoint
            yield proxy
