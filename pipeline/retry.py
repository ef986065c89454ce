"""Time and retries: one ``Clock``, one full-jitter backoff policy, one retry loop.

Every part of ddbpipe that reads the time, waits or draws a random delay takes a ``Clock``:
``SystemClock`` in production, ``ManualClock`` in tests, whose ``sleep`` moves simulated time
forward at once, so no test ever really waits.

Whether to retry is the error's to say: ``DdbpipeError.transient`` (see ``errors.py``). How
long to wait is the ``RetryPolicy``'s: exponential backoff with full jitter, the n-th retry
(n = 0, 1, ...) waiting ``random(0, min(max_delay, base_delay * 2**n))``, so the retries of
one congestion event spread out instead of coming back together. ``Attempts`` counts the
failures of one operation and does the waiting; ``retrying`` is the loop around one call.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .errors import ConfigError, DdbpipeError

__all__ = ["Attempts", "Clock", "ManualClock", "RetryPolicy", "SystemClock", "retrying"]

T = TypeVar("T")


class Clock(Protocol):
    """Where time and chance come from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for rates, deadlines, backoff)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (for request signatures)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def random(self) -> float:
        """A number in [0, 1) (for jitter)."""
        ...


class SystemClock:
    """Real time: ``time.monotonic``, ``time.time``, ``asyncio.sleep``, ``random.random``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def random(self) -> float:
        return _random.random()


class ManualClock:
    """Simulated time for tests; nothing ever really waits.

    Time moves only through ``advance()`` or ``sleep()``. ``sleep(s)`` called at time t yields
    to the event loop once, then moves the clock to ``max(now, t + s)`` and returns: sleepers
    that start together overlap in simulated time instead of adding up. Every requested sleep
    is recorded in ``sleeps``. The wall clock is ``wall_start`` plus the simulated time that
    passed; ``random`` is seeded, so a test's jitter is the same on every run.
    """

    def __init__(self, start: float = 0.0, *, wall_start: float = 1.7e9, seed: int = 7) -> None:
        self.now = start
        self.wall_start = wall_start
        self.sleeps: list[float] = []
        self._start = start
        self._random = _random.Random(seed)

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall_start + (self.now - self._start)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + max(seconds, 0.0)
        await asyncio.sleep(0)
        self.now = max(self.now, wake_at)

    def random(self) -> float:
        return self._random.random()


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts an operation gets and how long it waits between them."""

    max_attempts: int = 10
    base_delay: float = 0.05
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("retry delays cannot be negative")

    def ceiling(self, retry_number: int) -> float:
        """The longest wait before retry ``retry_number`` (0 for the first retry)."""
        # The exponent is bounded so a huge retry count cannot overflow a float.
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry_number, 64))

    def delay(self, retry_number: int, clock: Clock) -> float:
        """Full jitter: anywhere from nothing to the ceiling."""
        return clock.random() * self.ceiling(retry_number)


class Attempts:
    """The failures of one operation under a policy: wait before the next try, or give up.

    ``await attempts.failed(error)`` re-raises a terminal error at once, raises a transient
    one once the attempts are used up (same type, saying so), and otherwise tells
    ``on_retry`` and sleeps the backoff. ``succeeded()`` starts the count again (a stream
    that made progress).
    """

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self.retries = 0

    async def failed(
        self, error: DdbpipeError, on_retry: Callable[[DdbpipeError], None] | None = None
    ) -> None:
        if not error.transient:
            raise error
        if self.retries + 1 >= self.policy.max_attempts:
            # Same error type, so callers can still tell a throttle from an outage.
            attempts = self.policy.max_attempts
            raise type(error)(f"{error}; gave up after {attempts} attempts") from error
        if on_retry is not None:
            on_retry(error)
        await self.clock.sleep(self.policy.delay(self.retries, self.clock))
        self.retries += 1

    def succeeded(self) -> None:
        self.retries = 0


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    on_retry: Callable[[DdbpipeError], None] | None = None,
) -> T:
    """``await call()`` until it succeeds, retrying transient ddbpipe errors per ``policy``.

    ``on_retry`` hears of each transient error that will be retried (for counters).
    """
    attempts = Attempts(policy, clock)
    while True:
        try:
            return await call()
        except DdbpipeError as error:
            await attempts.failed(error, on_retry)
