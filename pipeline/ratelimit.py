"""Token buckets that keep DynamoDB capacity use at a chosen rate.

The clock is injected: production uses ``SystemClock``, tests use ``ManualClock`` whose
``sleep`` moves simulated time forward at once, so rate-limit tests run in milliseconds.

Two ways to spend from a bucket:

- ``await bucket.acquire(n)`` when the cost is known up front (a batch write of n WCU);
- ``await bucket.wait_for_credit()`` then ``bucket.charge(n)`` when the cost is only known
  from the reply (a Scan page reports its ConsumedCapacity). The balance may go negative;
  the debt is then paid off in time before the next caller gets credit again, so the average
  rate stays at ``rate``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "TokenBucket"]

#: A waiter re-checks the balance at least this often, so set_rate() takes effect promptly.
MAX_SLEEP_SLICE = 1.0


#: Float rounding can leave a waiter a hair short of its goal; that much counts as reached.
ROUNDING_SLACK = 1e-9


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Simulated time for tests; nothing ever really waits.

    Time moves only through ``advance()`` or ``sleep()``. ``sleep(s)`` called at time t yields
    to the event loop once, then moves the clock to ``max(now, t + s)`` and returns: sleepers
    that start together overlap in simulated time instead of adding up. Every requested sleep
    is recorded in ``sleeps``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + max(seconds, 0.0)
        await asyncio.sleep(0)
        self.now = max(self.now, wake_at)


class TokenBucket:
    """``rate`` units per second, at most ``burst`` saved up (default: one second of rate).

    The bucket starts full. Waiters are served one at a time in arrival order (an
    ``asyncio.Lock`` is FIFO), so no waiter starves. ``acquire`` of more than ``burst`` waits
    for a full bucket and leaves the rest as debt, rather than waiting forever.
    """

    def __init__(
        self, rate: float, burst: float | None = None, *, clock: Clock | None = None
    ) -> None:
        _check_rate(rate)
        if burst is not None and burst <= 0:
            raise ValueError(f"burst must be positive, not {burst}")
        self._clock: Clock = clock or SystemClock()
        self._rate = float(rate)
        # None: the burst is one second of the rate and follows set_rate().
        self._fixed_burst = burst
        self._balance = self.burst
        self._updated_at = self._clock.monotonic()
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._fixed_burst if self._fixed_burst is not None else self._rate

    @property
    def balance(self) -> float:
        """Tokens available now; negative while a charge is being paid off."""
        self._refill()
        return self._balance

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on; tokens earned so far were earned at the old rate."""
        _check_rate(rate)
        self._refill()
        self._rate = float(rate)
        self._balance = min(self._balance, self.burst)

    def charge(self, amount: float) -> None:
        """Take ``amount`` tokens now, even into debt; later waiters wait the debt out."""
        self._refill()
        self._balance -= amount

    async def acquire(self, amount: float) -> None:
        """Wait until ``amount`` tokens are available (or the bucket is full), then take them."""
        async with self._lock:
            await self._wait_until_balance(min(amount, self.burst))
            self._balance -= amount

    async def wait_for_credit(self) -> None:
        """Wait until the balance is no longer negative (all earlier charges paid off)."""
        async with self._lock:
            await self._wait_until_balance(0.0)

    async def _wait_until_balance(self, wanted: float) -> None:
        # Re-evaluated after each slice: set_rate() or charge() may have moved the goal.
        while True:
            missing = min(wanted, self.burst) - self.balance
            if missing <= ROUNDING_SLACK:
                return
            await self._clock.sleep(min(missing / self._rate, MAX_SLEEP_SLICE))

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = max(0.0, now - self._updated_at)
        self._updated_at = now
        self._balance = min(self.burst, self._balance + elapsed * self._rate)


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be a positive number, not {rate}")
