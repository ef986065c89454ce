"""The jobs' capacity accounts, kept by the Dask scheduler (imported only with Dask).

Every worker can reach the scheduler (a driver on a laptop often cannot be reached from a
cluster), so the scheduler keeps one ``CapacityAccount`` per running job and answers one
handler, ``ddbpipe_capacity``: ``open`` and ``close`` from the driver, ``status`` for its
progress display, ``send`` from the tasks (``shared_capacity.AccountLink``). A driver whose
client leaves the scheduler (it ended, or it was killed) takes its jobs' accounts with it,
so their tasks stop at their next report.
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from .shared_capacity import BudgetSpec, CapacityAccount, Message

HANDLER = "ddbpipe_capacity"
PLUGIN_NAME = "ddbpipe-capacity"


class CapacityPlugin(SchedulerPlugin):
    """Adds the ``ddbpipe_capacity`` handler to the scheduler it is registered with."""

    name = PLUGIN_NAME
    #: A second job on the same cluster keeps the first's plugin (and its accounts).
    idempotent = True

    def __init__(self) -> None:
        self.accounts = _Accounts()

    async def start(self, scheduler: Any) -> None:
        if HANDLER not in scheduler.handlers:  # the accounts of running jobs stay
            scheduler.handlers[HANDLER] = self.accounts.handle

    def remove_client(self, scheduler: Any, client: str, **kwargs: Any) -> None:
        """A driver gone (ended or killed): its jobs' tasks stop at their next report."""
        self.accounts.drop_jobs_of(client)


class _Accounts:
    def __init__(self) -> None:
        self.jobs: dict[str, CapacityAccount] = {}
        self.drivers: dict[str, str] = {}  # job -> the id of the client that opened it

    async def handle(self, action: str, job: str, message: Message | None = None,
                     budget: dict[str, Any] | None = None, driver: str | None = None,
                     dead_letters_from: int = 0) -> Message | None:
        if action == "open":
            self.jobs[job] = CapacityAccount(BudgetSpec(**budget) if budget else None)
            if driver is not None:
                self.drivers[job] = driver
            return None
        if action == "close":
            self.jobs.pop(job, None)
            self.drivers.pop(job, None)
            return None
        account = self.jobs.get(job)
        if account is None:
            # A task of a job whose driver has gone: it should stop, not draw unbudgeted.
            raise LookupError(f"no capacity account for job {job}: its driver has ended")
        if action == "status":
            return account.status(dead_letters_from)
        if action == "send":
            return await account.handle(message or {})
        raise ValueError(f"unknown capacity action {action!r}")

    def drop_jobs_of(self, driver: str) -> None:
        for job in [job for job, owner in self.drivers.items() if owner == driver]:
            self.jobs.pop(job, None)
            del self.drivers[job]


def worker_channel(job: str) -> Any:
    """A channel to the job's account from a task running on a Dask worker (in the worker's
    thread pool, with an event loop of its own): each call hops onto the worker's loop,
    where its connection to the scheduler lives."""
    from distributed import get_worker

    worker = get_worker()
    loop = worker.loop.asyncio_loop  # type: ignore[attr-defined]  # tornado's AsyncIOLoop

    async def call(message: Message) -> Message:
        reply = asyncio.run_coroutine_threadsafe(
            worker.scheduler.ddbpipe_capacity(action="send", job=job, message=message), loop
        )
        result: Message = await asyncio.wrap_future(reply)
        return result

    return call


def worker_name() -> str:
    from distributed import get_worker

    return str(get_worker().address)
