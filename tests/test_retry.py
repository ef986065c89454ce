"""The one clock and the one retry policy: full-jitter backoff, transient errors retried a
bounded number of times, terminal ones never, and no test ever really sleeping."""

from __future__ import annotations

import asyncio

import pytest

from ddbpipe.errors import (
    AccessDeniedError,
    ConfigError,
    DdbpipeError,
    ServiceUnavailableError,
    ThrottledError,
)
from ddbpipe.retry import Attempts, ManualClock, RetryPolicy, SystemClock, retrying


def test_the_backoff_ceiling_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    assert [policy.ceiling(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.ceiling(10**6) == 1.0  # no float overflow however many retries


def test_delays_are_full_jitter_below_the_ceiling() -> None:
    policy, clock = RetryPolicy(base_delay=0.1, max_delay=5.0), ManualClock(seed=3)
    delays = [policy.delay(n % 8, clock) for n in range(2000)]
    assert all(0 <= d <= policy.ceiling(n % 8) for n, d in enumerate(delays))
    # Spread over the whole range, not clustered at the ceiling (as "equal jitter" would be).
    top = [d for n, d in enumerate(delays) if n % 8 == 7]
    assert min(top) < 0.1 * policy.ceiling(7) and max(top) > 0.9 * policy.ceiling(7)


def test_a_policy_needs_one_attempt_at_least() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


class Flaky:
    """Fails with ``errors`` in turn, then returns "done"."""

    def __init__(self, *errors: DdbpipeError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_transient_errors_are_retried_with_backoff_on_the_clock() -> None:
    clock, retried = ManualClock(), []
    call = Flaky(ThrottledError("slow down"), ServiceUnavailableError("500"))
    policy = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=10.0)
    result = asyncio.run(retrying(call, policy=policy, clock=clock, on_retry=retried.append))
    assert result == "done" and call.calls == 3
    assert [type(e) for e in retried] == [ThrottledError, ServiceUnavailableError]
    assert len(clock.sleeps) == 2 and clock.sleeps[0] <= 1.0 and clock.sleeps[1] <= 2.0
    assert clock.monotonic() == pytest.approx(sum(clock.sleeps))


def test_giving_up_keeps_the_error_type_and_says_so() -> None:
    clock = ManualClock()
    call = Flaky(*[ThrottledError("dynamodb:Scan was throttled")] * 5)
    with pytest.raises(ThrottledError, match="throttled; gave up after 4 attempts"):
        asyncio.run(retrying(call, policy=RetryPolicy(max_attempts=4), clock=clock))
    assert call.calls == 4 and len(clock.sleeps) == 3


def test_terminal_errors_are_raised_at_once() -> None:
    clock = ManualClock()
    denied = AccessDeniedError("access denied")
    call = Flaky(denied)
    with pytest.raises(AccessDeniedError) as caught:
        asyncio.run(retrying(call, policy=RetryPolicy(), clock=clock))
    assert caught.value is denied and call.calls == 1 and clock.sleeps == []


def test_progress_starts_the_count_again() -> None:
    # A stream that fails, makes progress, fails again: each run of failures has its budget.
    async def scenario() -> int:
        attempts = Attempts(RetryPolicy(max_attempts=2), ManualClock())
        for _ in range(5):
            await attempts.failed(ServiceUnavailableError("connection reset"))
            attempts.succeeded()
        return attempts.retries

    assert asyncio.run(scenario()) == 0


def test_manual_clock_sleepers_overlap_and_the_wall_clock_follows() -> None:
    clock = ManualClock(wall_start=1_000.0)

    async def two_sleepers() -> None:
        await asyncio.gather(clock.sleep(2.0), clock.sleep(3.0))

    asyncio.run(two_sleepers())
    assert clock.monotonic() == 3.0 and clock.time() == 1_003.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_manual_clock_jitter_is_the_same_on_every_run() -> None:
    first, second = ManualClock(seed=11), ManualClock(seed=11)
    assert [first.random() for _ in range(5)] == [second.random() for _ in range(5)]


def test_system_clock_is_real_time() -> None:
    clock = SystemClock()
    before, wall = clock.monotonic(), clock.time()
    asyncio.run(clock.sleep(0.01))
    assert clock.monotonic() >= before + 0.01 and clock.time() >= wall
    assert 0 <= clock.random() < 1
