"""TokenBucket on simulated time: every test runs in milliseconds and never really sleeps."""

from __future__ import annotations

import asyncio
import time

import pytest

from ddbpipe.ratelimit import ManualClock, SystemClock, TokenBucket


def units_through_in(bucket: TokenBucket, clock: ManualClock, seconds: float, unit: float) -> float:
    """Acquire ``unit`` at a time until simulated time passes ``seconds``; return the total."""

    async def drain() -> float:
        total = 0.0
        while True:
            await bucket.acquire(unit)
            if clock.monotonic() > seconds + 1e-9:
                return total
            total += unit

    return asyncio.run(drain())


def test_acquire_lets_rate_times_seconds_plus_burst_through() -> None:
    clock = ManualClock()
    bucket = TokenBucket(100, burst=50, clock=clock)
    started = time.monotonic()
    passed = units_through_in(bucket, clock, 10.0, unit=1)
    assert 100 * 10 + 50 - 1 <= passed <= 100 * 10 + 50 + 1
    assert time.monotonic() - started < 2, "simulated time must not really wait"


def test_default_burst_is_one_second_of_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(40, clock=clock)
    assert bucket.burst == 40
    passed = units_through_in(bucket, clock, 5.0, unit=4)
    assert 40 * 5 + 40 - 4 <= passed <= 40 * 5 + 40 + 4


def test_debt_from_charge_delays_the_next_wait_for_credit() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, burst=10, clock=clock)

    async def scenario() -> None:
        await bucket.wait_for_credit()  # full bucket: no wait
        assert clock.monotonic() == 0
        bucket.charge(40)  # 10 in the bucket, 30 of debt
        await bucket.wait_for_credit()

    asyncio.run(scenario())
    assert clock.monotonic() == pytest.approx(3.0)
    assert bucket.balance == pytest.approx(0.0, abs=1e-6)


def test_charged_pages_average_out_to_the_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(100, clock=clock)

    async def scan_like() -> float:
        consumed = 0.0
        for _ in range(50):
            await bucket.wait_for_credit()
            bucket.charge(64)  # one Scan page of 512 KB, eventually consistent
            consumed += 64
        return consumed

    consumed = asyncio.run(scan_like())
    # Every charge before the last credit check, less the initial full bucket, was paid off at
    # exactly the rate (the last page is charged after its check, so it is still owed).
    assert clock.monotonic() == pytest.approx((consumed - 64 - 100) / 100)


def test_set_rate_takes_effect_for_the_next_tokens() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, burst=10, clock=clock)

    async def scenario() -> tuple[float, float]:
        bucket.charge(10)  # empty
        await bucket.acquire(10)
        at_old_rate = clock.monotonic()
        bucket.set_rate(100)
        await bucket.acquire(10)
        return at_old_rate, clock.monotonic() - at_old_rate

    at_old_rate, at_new_rate = asyncio.run(scenario())
    assert at_old_rate == pytest.approx(1.0)
    assert at_new_rate == pytest.approx(0.1)
    assert bucket.rate == 100


def test_set_rate_reaches_a_waiter_that_is_already_waiting() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1, burst=100, clock=clock)

    async def scenario() -> None:
        bucket.charge(100)  # empty: 100 s to refill at the old rate
        waiter = asyncio.create_task(bucket.acquire(100))
        await asyncio.sleep(0)
        bucket.set_rate(1000)
        await waiter

    asyncio.run(scenario())
    assert clock.monotonic() < 2


def test_default_burst_follows_set_rate() -> None:
    bucket = TokenBucket(10, clock=ManualClock())
    bucket.set_rate(20)
    assert bucket.burst == 20
    fixed = TokenBucket(10, burst=5, clock=ManualClock())
    fixed.set_rate(20)
    assert fixed.burst == 5


def test_acquire_above_burst_waits_for_a_full_bucket_then_owes_the_rest() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, burst=10, clock=clock)

    async def scenario() -> None:
        await bucket.acquire(25)
        await bucket.wait_for_credit()

    asyncio.run(scenario())
    assert clock.monotonic() == pytest.approx(1.5)


def test_many_concurrent_waiters_all_proceed_in_arrival_order() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, burst=1, clock=clock)
    served: list[int] = []

    async def waiter(number: int) -> None:
        await bucket.acquire(1)
        served.append(number)

    async def scenario() -> None:
        await asyncio.gather(*(waiter(n) for n in range(200)))

    asyncio.run(scenario())
    assert served == list(range(200))
    assert clock.monotonic() == pytest.approx(19.9)


def test_concurrent_credit_waiters_all_proceed() -> None:
    clock = ManualClock()
    bucket = TokenBucket(5, clock=clock)
    bucket.charge(25)  # 5 in the bucket, 20 of debt

    async def scenario() -> None:
        await asyncio.wait_for(
            asyncio.gather(*(bucket.wait_for_credit() for _ in range(50))), timeout=5
        )

    asyncio.run(scenario())
    assert clock.monotonic() == pytest.approx(4.0)


def test_manual_clock_overlapping_sleeps_do_not_add_up() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        await asyncio.gather(clock.sleep(2), clock.sleep(2), clock.sleep(1))

    asyncio.run(scenario())
    assert clock.monotonic() == 2
    assert clock.sleeps == [2, 2, 1]
    clock.advance(0.5)
    assert clock.monotonic() == 2.5


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(10, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(10).set_rate(-1)


def test_system_clock_is_real_time() -> None:
    clock = SystemClock()
    before = clock.monotonic()
    asyncio.run(clock.sleep(0))
    assert clock.monotonic() >= before
