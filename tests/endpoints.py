"""A throwaway HTTP endpoint for tests that need a DynamoDB-like server of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler, *, shutdown_timeout: float = 60.0) -> AsyncIterator[str]:
    """Serve ``POST /`` with ``handler`` on a free loopback port; yields the endpoint URL.

    ``shutdown_timeout``: how long handlers still running at the end are waited for.
    """
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
