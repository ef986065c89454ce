"""A job's tasks on a Dask cluster (``--cluster local:N`` or ``tcp://scheduler:8786``).

The driver (the process that runs ``ddbpipe``) plans, opens the job's capacity account on the
scheduler (``capacity_plugin``), hands the tasks out as workers free up, shows one progress
display from the account's totals, and commits the result itself, exactly as a single-process
job does. Dask is an optional extra: only this module and ``capacity_plugin`` import it, and
only when a job asks for a cluster. See docs/SCALING.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from .config import LOCAL_CLUSTER, check_cluster
from .errors import ConfigError, DdbpipeError
from .progress import JobProgress
from .shared_capacity import PROGRESS_COUNTERS, BudgetSpec, Message

log = logging.getLogger(__name__)

__all__ = ["Cluster", "open_cluster", "scheduler_address"]

T = TypeVar("T")

#: Tasks one worker process of ``local:N`` runs at once: a task waits on the network most
#: of the time, so a few per core keep both the cores and DynamoDB busy.
LOCAL_THREADS_PER_WORKER = 4
#: How often the driver reads the job's totals for its progress display.
STATUS_INTERVAL = 0.5
#: Seconds to wait for a scheduler (and for a local cluster's workers) to answer.
CONNECT_TIMEOUT = 30


def scheduler_address(cluster: Any) -> str:
    """What ``cluster=`` may be in the library: a ``--cluster`` value, or a Dask ``Client``
    (whose scheduler the job connects to with a client of its own)."""
    if isinstance(cluster, str):
        return check_cluster(cluster)
    address = getattr(getattr(cluster, "scheduler", None), "address", None)
    if not isinstance(address, str):
        raise ConfigError(f"cluster= takes local:N, a scheduler address or a Dask Client, "
                          f"not {type(cluster).__name__}")
    return address


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "--cluster needs Dask: install ddbpipe with its dask extra "
            "(pip install 'ddbpipe[dask]')"
        ) from None
    return distributed


@contextlib.asynccontextmanager
async def open_cluster(spec: str) -> AsyncIterator[Cluster]:
    """A client of the cluster ``spec`` names (a local one is started, and stopped after)."""
    distributed = _distributed()
    local = LOCAL_CLUSTER.fullmatch(check_cluster(spec))
    async with contextlib.AsyncExitStack() as stack:
        address = spec
        if local is not None:
            cluster = await stack.enter_async_context(distributed.LocalCluster(
                n_workers=int(local.group(1)), threads_per_worker=LOCAL_THREADS_PER_WORKER,
                processes=True, asynchronous=True, dashboard_address=None,
                silence_logs=logging.ERROR,
            ))
            address = cluster.scheduler_address
        try:
            client = await stack.enter_async_context(
                distributed.Client(address, asynchronous=True, timeout=CONNECT_TIMEOUT)
            )
        except (OSError, TimeoutError) as error:
            raise DdbpipeError(
                f"cannot reach the Dask scheduler at {spec} ({_first_line(error)}): check the "
                "address and that the scheduler is running"
            ) from None
        from .capacity_plugin import CapacityPlugin

        await client.register_plugin(CapacityPlugin())
        yield Cluster(client, spec)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Cluster:
    """A connected cluster: its threads, the job accounts, and running tasks."""

    def __init__(self, client: Any, spec: str) -> None:
        self.client = client
        self.spec = spec
        # Per job: the dead letters read so far (the next status read acknowledges them).
        self._dead_letters_seen: dict[str, int] = {}

    async def threads(self) -> int:
        """Tasks the cluster runs at once (its workers' threads)."""
        nthreads = await self.client.scheduler.ncores()
        return max(1, sum(nthreads.values()))

    async def run(
        self,
        function: Callable[..., T],
        inputs: Sequence[tuple[Any, ...]],
        *,
        budget: BudgetSpec | None,
        progress: JobProgress,
        on_status: Callable[[Message], None] | None = None,
    ) -> list[T]:
        """``function(*args, job)`` for each args of ``inputs``, as tasks handed out as
        workers free up; their results in the order of ``inputs``. The job's account lives
        while they run; the progress display follows its totals, and ``on_status`` is given
        each status read (the files and dead letters an import writes down), the last one
        after the tasks ended. The first task to fail cancels the rest and its error is
        raised."""
        job = uuid.uuid4().hex
        scheduler = self.client.scheduler
        await scheduler.ddbpipe_capacity(action="open", job=job, driver=self.client.id,
                                         budget=asdict(budget) if budget else None)
        base = {name: getattr(progress, name) for name in PROGRESS_COUNTERS}
        futures = [
            self.client.submit(function, *args, job, key=f"ddbpipe-{job}-{index}", pure=False)
            for index, args in enumerate(inputs)
        ]
        follow = asyncio.ensure_future(self._follow(job, progress, base, on_status))
        try:
            results: list[T] = await self.client.gather(futures)
            return results
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            await self.client.cancel(futures)
            await self._show(job, progress, base, on_status)
            await scheduler.ddbpipe_capacity(action="close", job=job)

    async def _follow(self, job: str, progress: JobProgress, base: dict[str, float],
                      on_status: Callable[[Message], None] | None) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            try:
                await self._show(job, progress, base, on_status)
            except OSError as error:  # the display waits for the next read
                log.debug("could not read the job's progress: %s", error)

    async def _show(self, job: str, progress: JobProgress, base: dict[str, float],
                    on_status: Callable[[Message], None] | None) -> None:
        status = await self.client.scheduler.ddbpipe_capacity(
            action="status", job=job, dead_letters_from=self._dead_letters_seen.get(job, 0))
        if on_status is not None:
            on_status(status)
        # Acknowledged with the next read: a reply lost on its way is sent again.
        self._dead_letters_seen[job] = status["dead_letters_next"]
        for name, total in status["totals"].items():
            setattr(progress, name, type(base[name])(base[name] + total))
        if status["rate"]:
            progress.current_rate = status["rate"]
        progress.workers_busy = status["workers"]
