"""One capacity budget for all the processes of a job, and their progress added up.

On a cluster (``cluster.py``) every task runs with its own DynamoDB client, yet ``--max-rcu``
and ``--target-wcu`` hold for the whole job. One ``CapacityAccount`` per job holds the job's
token bucket and, for an import, its adaptive controller; tasks reach it through a
``Channel`` (one async call carrying one message), so the transport is not this module's
business (on Dask: a handler on the scheduler; in tests: the account itself).

A task holds one ``AccountLink``, and through it:

- ``LeasedBucket``, which stands in for a ``TokenBucket``: it leases tokens from the account
  (what the caller needs, plus a little ahead, so a busy worker asks a few times a second,
  not once per request) and charges the same debts and refunds a local bucket would;
- ``SharedController``, which stands in for ``AdaptiveRate``: a throttle goes to the account
  at once, so the cut applies across the cluster; accepted units ride along with the next
  message.

Every message also carries what the task's ``JobProgress`` counted since the last one; the
driver reads the account's totals (``CapacityAccount.status``). Time is the account's:
a throttle travels as its age (seconds since its call was sent), not as a moment on the
worker's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .progress import JobProgress
from .ratelimit import AdaptiveRate, BudgetSpec, TokenBucket
from .retry import Clock, SystemClock

__all__ = [
    "AccountLink",
    "BudgetSpec",
    "CapacityAccount",
    "LeasedBucket",
    "SharedController",
    "local_channel",
]

log = logging.getLogger(__name__)

Message = dict[str, Any]
Channel = Callable[[Message], Awaitable[Message]]

#: A lease covers what was asked plus this many seconds of the job's rate, shared among the
#: workers drawing: the most the cluster holds leased and unspent beyond the bucket's burst.
LEASE_AHEAD_SECONDS = 0.1
#: How often the account's waiters look again for refunds sent by other workers.
REFUND_RECHECK_SECONDS = 0.02
#: A worker counts as drawing while it sent a message within this many seconds.
ACTIVE_WORKER_SECONDS = 2.0
#: How often a task sends its progress when it has nothing else to say.
REPORT_INTERVAL = 0.5
#: The JobProgress counters tasks add to (the rest is the driver's to set).
PROGRESS_COUNTERS = ("items", "raw_bytes", "stored_bytes", "shards", "consumed_capacity",
                     "throttles", "segments_done", "files_done", "dead_lettered")


class CapacityAccount:
    """The account of one job: its budget (None: progress only) and the totals reported."""

    def __init__(self, budget: BudgetSpec | None, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.bucket: TokenBucket | None = None
        self.controller: AdaptiveRate | None = None
        if budget is not None:
            self.bucket, self.controller = budget.build(self.clock)
            # Refunds come from other processes, at any moment: waiters see them promptly.
            self.bucket.recheck_every(REFUND_RECHECK_SECONDS)
        self.totals: dict[str, float] = dict.fromkeys(PROGRESS_COUNTERS, 0)
        self.granted = 0.0
        #: The most a Scan page of this job has cost: a task's first page reserves that,
        #: not the worst case (ReadBudget).
        self.page_cost: float | None = None
        #: An import's files: the furthest state any task reported (``FileWatermark.to_dict``).
        self.files: dict[str, Message] = {}
        # Dead letters not yet acknowledged by the driver, and the number of the first.
        self._dead_letters: list[Message] = []
        self._dead_letters_first = 0
        self._seen: dict[str, float] = {}

    async def handle(self, message: Message) -> Message:
        """Apply what a task reports, then lease it the tokens it asks for (waiting for them)."""
        now = self.clock.monotonic()
        self._seen[message.get("worker", "")] = now
        for name, delta in (message.get("progress") or {}).items():
            if name in self.totals:
                self.totals[name] += delta
        for key, state in (message.get("files") or {}).items():
            # Messages may overtake each other: a watermark never goes back.
            if key not in self.files or state["watermark"] >= self.files[key]["watermark"]:
                self.files[key] = state
        self._dead_letters += message.get("dead_letters") or ()
        if message.get("page_cost"):
            self.page_cost = max(self.page_cost or 0.0, message["page_cost"])
        if self.bucket is not None and message.get("charge"):
            self.bucket.charge(message["charge"])
        if self.controller is not None:
            if message.get("accepted"):
                self.controller.on_success(message["accepted"])
            for age in message.get("throttles") or ():
                self.controller.on_throttle(now - age)
        granted = 0.0
        if self.bucket is not None and message.get("take", 0) > 0:
            granted = message["take"] + self._lease_ahead(now)
            await self.bucket.acquire(granted)
            self.granted += granted
        reply: Message = {"granted": granted, "rate": self.rate, "page_cost": self.page_cost}
        if "file_state" in message:
            reply["file_state"] = self.files.get(message["file_state"])
        return reply

    @property
    def rate(self) -> float:
        return self.bucket.rate if self.bucket is not None else 0.0

    def status(self, dead_letters_from: int = 0) -> Message:
        """The totals reported so far, the rate now and the workers drawing; for the driver,
        every file's state and the dead letters from number ``dead_letters_from`` on (those
        before it it has written down: they are dropped). A reply lost on its way is thus
        answered again by the next call, with nothing lost and nothing twice."""
        written = max(0, dead_letters_from - self._dead_letters_first)
        del self._dead_letters[:written]
        self._dead_letters_first += written
        return {"totals": dict(self.totals), "rate": self.rate,
                "workers": self._active_workers(self.clock.monotonic()),
                "files": dict(self.files), "dead_letters": list(self._dead_letters),
                "dead_letters_next": self._dead_letters_first + len(self._dead_letters)}

    def _lease_ahead(self, now: float) -> float:
        return self.rate * LEASE_AHEAD_SECONDS / max(1, self._active_workers(now))

    def _active_workers(self, now: float) -> int:
        return sum(1 for seen in self._seen.values() if now - seen < ACTIVE_WORKER_SECONDS)


def local_channel(account: CapacityAccount) -> Channel:
    """A channel straight to an account in this process (tests, and a driver's own use)."""
    return account.handle


class AccountLink:
    """One task's line to its job's account: what it reports, sent with every message."""

    def __init__(self, channel: Channel, *, worker: str, clock: Clock | None = None) -> None:
        self.channel = channel
        self.worker = worker
        self.clock: Clock = clock or SystemClock()
        self.rate = 0.0
        self.progress = JobProgress(clock=self.clock)
        self._sent: dict[str, float] = dict.fromkeys(PROGRESS_COUNTERS, 0)
        self.charge = 0.0
        self.accepted = 0.0
        self.throttles: list[float] = []
        #: The most a page has cost, in this task or (from the account) in any.
        self.page_cost: float | None = None
        #: An import task's file state and the dead letters below its watermark, to send.
        self.files: dict[str, Message] = {}
        self.dead_letters: list[Message] = []
        #: The buckets leasing through this link: what they hold unspent goes back at the end.
        self.buckets: list[LeasedBucket] = []
        self._sending: set[asyncio.Task[float]] = set()

    async def send(self, take: float = 0.0) -> float:
        """Send what is pending (and ask for ``take`` tokens); returns the tokens granted."""
        # Built without a pause, so what it carries is counted in exactly one message;
        # messages may overtake each other, which sums do not mind.
        message: Message = {"worker": self.worker, "take": take,
                            "progress": self._progress_delta()}
        if self.charge:
            message["charge"], self.charge = self.charge, 0.0
        if self.accepted:
            message["accepted"], self.accepted = self.accepted, 0.0
        if self.page_cost:
            message["page_cost"] = self.page_cost
        if self.files:
            message["files"], self.files = self.files, {}
        if self.dead_letters:
            message["dead_letters"], self.dead_letters = self.dead_letters, []
        if self.throttles:
            message["throttles"] = [self.clock.monotonic() - t for t in self.throttles]
            self.throttles = []
        reply = await self.channel(message)
        self.rate = reply["rate"]
        if reply.get("page_cost"):
            self.page_cost = max(self.page_cost or 0.0, reply["page_cost"])
        return float(reply["granted"])

    def send_soon(self) -> None:
        """Send what is pending now, without waiting for the reply (a throttle, a refund)."""
        task = asyncio.ensure_future(self.send())
        self._sending.add(task)
        task.add_done_callback(self._after_send)

    def _after_send(self, task: asyncio.Task[float]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The next message carries nothing of it, but the next lease reaches the account
            # or fails the task itself.
            log.debug("a report did not reach the account: %s", task.exception())

    async def file_state(self, key: str) -> Message | None:
        """The furthest state of the file ``key`` that a task reported (a task run again
        after its worker died continues from it), or None."""
        reply = await self.channel({"worker": self.worker, "file_state": key})
        state: Message | None = reply.get("file_state")
        return state

    def largest_page(self) -> float | None:
        return self.page_cost

    def note_page(self, cost: float) -> None:
        self.page_cost = max(self.page_cost or 0.0, cost)

    @contextlib.asynccontextmanager
    async def reporting(self, every: float = REPORT_INTERVAL) -> AsyncIterator[AccountLink]:
        """Send progress every ``every`` seconds while the block runs, and once at its end.

        A report that fails stops the block with its error: the account is gone (its job's
        driver ended or died, or the scheduler did), and a task that went on would scan or
        write unbudgeted, beside a ``--resume`` of the same job.
        """
        owner = asyncio.current_task()
        failures: list[Exception] = []

        async def report() -> None:
            while True:
                await self.clock.sleep(every)
                try:
                    await self.send()
                except Exception as error:
                    failures.append(error)
                    if owner is not None:
                        owner.cancel()
                    return

        task = asyncio.ensure_future(report())
        try:
            yield self
        except BaseException as error:
            await self._stop(task)
            if failures and isinstance(error, asyncio.CancelledError):
                raise failures[0] from None
            self._give_back()
            try:  # what got done before the error still counts
                await self.send()
            except Exception as report_error:  # the block's own error is the one to raise
                log.debug("the last report did not reach the account: %s", report_error)
            raise
        await self._stop(task)
        self._give_back()
        await self.send()

    def _give_back(self) -> None:
        """Tokens leased and not spent go back to the account: a task that ends holding
        them would take them from the job (a tenth of a second of the rate, each time)."""
        for bucket in self.buckets:
            self.charge -= bucket.give_back()

    @staticmethod
    async def _stop(task: asyncio.Future[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _progress_delta(self) -> dict[str, float]:
        delta = {}
        for name in PROGRESS_COUNTERS:
            now = getattr(self.progress, name)
            if now != self._sent[name]:
                delta[name] = now - self._sent[name]
                self._sent[name] = now
        return delta


class LeasedBucket:
    """A ``TokenBucket`` whose tokens are leased from the job's account (see the module).

    The balance is what was leased and not spent yet; a charge beyond it is a debt the next
    ``acquire`` or ``wait_for_credit`` leases to cover, so the account's bucket pays it off
    for the whole cluster. Refunds above one lease-ahead go back to the account.
    """

    def __init__(self, link: AccountLink) -> None:
        self.link = link
        self._balance = 0.0
        self._lock = asyncio.Lock()
        link.buckets.append(self)

    def give_back(self) -> float:
        """The tokens held unspent, now given up (the link returns them to the account)."""
        unspent, self._balance = max(0.0, self._balance), min(0.0, self._balance)
        return unspent

    @property
    def rate(self) -> float:
        return self.link.rate

    @property
    def balance(self) -> float:
        return self._balance

    def charge(self, amount: float) -> None:
        self._balance -= amount
        keep = self.link.rate * LEASE_AHEAD_SECONDS
        if self._balance > keep:
            # A refund the account gets back at once: a first page reserved at its worst case
            # (128 RCU) put the whole cluster's budget in debt until it arrives.
            self.link.charge -= self._balance - keep
            self._balance = keep
            self.link.send_soon()

    async def acquire(self, amount: float) -> None:
        async with self._lock:
            if self._balance < amount:
                self._balance += await self.link.send(take=amount - self._balance)
            self._balance -= amount

    async def wait_for_credit(self) -> None:
        async with self._lock:
            if self._balance < 0:
                self._balance += await self.link.send(take=-self._balance)

    def set_rate(self, rate: float) -> None:
        """The account's controller sets the rate; a worker's has nothing to set."""

    def drain(self) -> None:
        """The account's controller drains the account's bucket; a lease is spent as taken."""

    def follow(self, update_rate: Callable[[], None], *, every: float) -> None:
        """Nothing to follow: the account's controller moves with the account's clock."""


class SharedController:
    """An ``AdaptiveRate`` whose decisions are the account's (see the module)."""

    def __init__(self, link: AccountLink) -> None:
        self.link = link

    @property
    def rate(self) -> float:
        return self.link.rate

    def now(self) -> float:
        return self.link.clock.monotonic()

    def attach(self, bucket: Any) -> None:
        """The account's bucket is the one driven; the worker's leases from it."""

    def on_success(self, units: float = 0.0) -> None:
        self.link.accepted += units

    def on_throttle(self, sent_at: float | None = None) -> bool:
        self.link.throttles.append(self.now() if sent_at is None else sent_at)
        self.link.send_soon()  # a cut should not wait for the next lease
        return False

