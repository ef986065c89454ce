"""An aiohttp handler served on a loopback port from a background thread of its own.

The endpoints the tests and benchmarks put in front of DynamoDB Local and moto (the capacity
simulator, the fault endpoint) run beside the code under test, which has its own event loop;
each serves from a thread and a loop of its own, on a port bound before serving, so the port
is theirs with no window for another process to take it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL


class Handler(Protocol):
    """What a server serves: ``handle`` for every request, ``start``/``close`` around it
    (on the server's loop, e.g. to open and close a client session to the upstream)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def handle(self, request: web.Request) -> web.StreamResponse: ...


class LoopbackServer:
    """Serves ``handler`` at ``endpoint`` (``http://127.0.0.1:<port>``) once started.

    ``client_max_size`` bounds a request's body; ``shutdown_timeout`` is how long ``stop``
    waits for requests still being answered (a stalled one is then cancelled).
    """

    def __init__(
        self, handler: Handler, *, name: str, client_max_size: int,
        shutdown_timeout: float = 0.5,
    ) -> None:
        self._handler = handler
        self._client_max_size = client_max_size
        self._shutdown_timeout = shutdown_timeout
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> None:
        await self._handler.start()
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handler.handle)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._handler.close()
        # Requests still waiting (a stalled reply) end here, not when the loop is gone.
        waiting = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


# --- forwarding a request to the service behind a proxy --------------------------------------

#: Headers about one hop's connection or framing, which a proxy does not pass on.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "transfer-encoding", "expect", "host", "upgrade",
    "content-length",
})


@dataclass(frozen=True)
class UpstreamReply:
    """The service's reply, without the headers of its hop."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    #: As the service said it (a reply to HEAD has none of the body it describes).
    content_length: int


async def forward(
    session: aiohttp.ClientSession, upstream: str, request: web.Request, body: bytes
) -> UpstreamReply:
    """``request`` (with its ``body``, already read) sent on to ``upstream`` as it came."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    url = URL(upstream + request.raw_path, encoded=True)
    async with session.request(request.method, url, headers=headers, data=body) as reply:
        payload = await reply.read()
        kept: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP
        )
        return UpstreamReply(reply.status, kept, payload, reply.content_length or 0)

