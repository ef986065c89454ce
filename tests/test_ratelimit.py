"""TokenBucket on simulated time: every test runs in milliseconds and never really sleeps."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ddbpipe.ratelimit import AdaptiveRate, TokenBucket
from ddbpipe.retry import ManualClock


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


def test_a_reservation_settled_below_its_estimate_is_refunded_up_to_the_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, burst=5, clock=clock)

    async def scenario() -> None:
        await bucket.acquire(128)  # a worst-case estimate: waits only for a full bucket
        assert clock.monotonic() == 0
        bucket.charge(2 - 128)  # the reply: it cost 2
        assert bucket.balance == pytest.approx(3)
        bucket.charge(-100)
        assert bucket.balance == pytest.approx(5)

    asyncio.run(scenario())


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


# --- AdaptiveRate ----------------------------------------------------------------------------


def test_adaptive_rate_starts_at_the_target_and_drives_the_bucket() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1, clock=clock)
    controller = AdaptiveRate(400, clock=clock, bucket=bucket)
    assert controller.rate == 400
    controller.attach(bucket)
    assert bucket.rate == 400
    controller.on_throttle()
    assert bucket.rate == pytest.approx(280)


def test_a_burst_of_throttles_within_the_cooldown_is_one_cut() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock, cooldown=1.0)
    assert controller.on_throttle()
    for _ in range(50):  # every in-flight batch of the same congestion event reports it
        clock.advance(0.01)
        assert not controller.on_throttle()
    assert controller.rate == pytest.approx(700)
    assert controller.cuts == 1
    clock.advance(0.6)  # 1.1 s after the first cut: a new congestion event
    controller.on_success()
    before = controller.rate
    assert controller.on_throttle()
    assert controller.rate == pytest.approx(0.7 * before)
    assert controller.cuts == 2


def test_the_rate_holds_through_the_cooldown_then_recovers_to_the_target() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock)
    controller.on_throttle()
    clock.advance(0.9)
    controller.on_success(25)
    assert controller.rate == pytest.approx(700)
    rates = []
    for _ in range(100):
        clock.advance(0.1)
        controller.on_success(25)
        rates.append(controller.rate)
    assert rates == sorted(rates), "without throttles the rate only grows"
    assert rates[-1] == 1000
    # Concave towards the rate that throttled: it spends time near it before going on.
    assert 650 < rates[20] < 1000


def test_the_rate_stays_between_floor_and_target() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(500, clock=clock)
    assert controller.floor == 5
    for _ in range(100):
        controller.on_throttle()
        clock.advance(1.0)
        assert 5 <= controller.rate <= 500
    assert controller.rate == 5
    for _ in range(600):
        clock.advance(1.0)
        controller.on_success()
        assert controller.rate <= 500
    assert controller.rate == 500
    assert AdaptiveRate(50, clock=clock).floor == 1
    assert AdaptiveRate(50, clock=clock, floor=10).floor == 10


def test_adaptive_rate_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        AdaptiveRate(0)
    with pytest.raises(ValueError):
        AdaptiveRate(100, beta=1.0)


# --- the fluid model behind choosing CUBIC over AIMD (numbers in AdaptiveRate's docstring) ----


class AimdRate(AdaptiveRate):
    """The alternative: after the cooldown, grow linearly by ``increase * target`` per second."""

    def __init__(self, target: float, *, clock: ManualClock, increase: float = 0.05) -> None:
        super().__init__(target, clock=clock)
        self.increase = increase

    def rate_after(self, seconds_since_cut: float) -> float:
        return self.beta * self._w_max + self.increase * self.target * seconds_since_cut


@dataclass
class FluidOutcome:
    utilisation: float  # written / capacity while the capacity is below the target
    throttle_ratio: float  # throttled / sent over the same window
    seconds_to_fit: float  # until the rate first fits under the capacity
    seconds_to_recover: float  # after the capacity returns, until 95% of the target


def fluid_model(
    make: Callable[[float, ManualClock], AdaptiveRate],
    *,
    target: float = 1000.0,
    capacity: float,
    capacity_back_at: float = 80.0,
    seconds: float = 140.0,
    feedback_delay: float = 0.1,
    step: float = 0.01,
) -> FluidOutcome:
    """Send at the controller's rate into a table that accepts ``capacity`` units/s (the rest
    throttles); each step's outcome reaches the controller ``feedback_delay`` later."""
    clock = ManualClock()
    controller = make(target, clock)
    in_flight: deque[tuple[float, bool]] = deque()
    sent = written = offered = 0.0
    fit_at = recovered_at = None
    now = 0.0
    while now < seconds:
        available = target if now >= capacity_back_at else capacity
        rate = controller.rate
        if fit_at is None and rate <= capacity:
            fit_at = now
        if recovered_at is None and now >= capacity_back_at and rate >= 0.95 * target:
            recovered_at = now - capacity_back_at
        if 20.0 <= now < capacity_back_at:
            sent += rate * step
            written += min(rate, available) * step
            offered += available * step
        in_flight.append((now + feedback_delay, rate > available))
        clock.advance(step)
        now += step
        while in_flight and in_flight[0][0] <= now + 1e-9:
            _, throttled = in_flight.popleft()
            if throttled:
                controller.on_throttle()
            else:
                controller.on_success()
    assert fit_at is not None and recovered_at is not None
    return FluidOutcome(written / offered, (sent - written) / sent, fit_at, recovered_at)


def cubic(target: float, clock: ManualClock) -> AdaptiveRate:
    return AdaptiveRate(target, clock=clock)


def aimd(target: float, clock: ManualClock) -> AdaptiveRate:
    return AimdRate(target, clock=clock, increase=0.05)


@pytest.mark.parametrize(
    ("capacity", "cubic_utilisation", "aimd_utilisation"),
    [(700, 0.879, 0.830), (400, 0.871, 0.818), (100, 0.862, 0.794), (30, 0.854, 0.839)],
)
def test_fluid_model_cubic_against_aimd(
    capacity: float, cubic_utilisation: float, aimd_utilisation: float
) -> None:
    with_cubic = fluid_model(cubic, capacity=capacity)
    with_aimd = fluid_model(aimd, capacity=capacity)
    assert with_cubic.utilisation == pytest.approx(cubic_utilisation, abs=0.005)
    assert with_aimd.utilisation == pytest.approx(aimd_utilisation, abs=0.005)
    # Same multiplicative cut: both fit under the capacity equally fast.
    assert with_cubic.seconds_to_fit == pytest.approx(with_aimd.seconds_to_fit)
    assert with_cubic.throttle_ratio < 0.001
    assert with_cubic.throttle_ratio <= with_aimd.throttle_ratio
    # Both regain the target once the capacity is back; CUBIC sooner than AIMD's linear climb.
    assert with_cubic.seconds_to_recover < with_aimd.seconds_to_recover
    assert with_cubic.seconds_to_recover < 15.0


def test_slow_start_doubles_every_quarter_second_up_to_the_target() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock, slow_start=1 / 8)
    assert controller.rate == pytest.approx(125)
    controller.on_success(10)  # the first write accepted starts the doubling
    for expected in (250, 500, 1000, 1000):
        clock.advance(0.25)
        controller.on_success(10)
        assert controller.rate == pytest.approx(expected)


def test_a_waiter_on_a_slow_start_waits_at_the_doubling_rate() -> None:
    # The debt would take 2 s at the starting rate; the rate doubles every quarter second
    # while the waiter waits, with no reply to tell the controller the time.
    clock = ManualClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    controller = AdaptiveRate(1000, bucket=bucket, clock=clock, slow_start=1 / 8)
    assert bucket.rate == pytest.approx(125)
    controller.on_success(10)
    bucket.charge(350)

    asyncio.run(bucket.wait_for_credit())
    # 125, 250 and 500 units/s for a quarter second each, then the 31.25 left at 1,000/s.
    assert clock.monotonic() == pytest.approx(0.78125)
    assert bucket.rate == 1000


def test_slow_start_holds_its_starting_rate_until_a_first_write_is_accepted() -> None:
    # An import may spend seconds fetching its first file: doubling meanwhile would start it
    # at the whole target.
    clock = ManualClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    controller = AdaptiveRate(1000, bucket=bucket, clock=clock, slow_start=1 / 8)
    clock.advance(3.0)
    bucket.charge(100)
    asyncio.run(bucket.wait_for_credit())  # waiting asks the controller for its rate
    assert controller.rate == bucket.rate == pytest.approx(125)
    controller.on_success(0)  # a reply with nothing accepted does not start it either
    clock.advance(0.25)
    controller.on_success(0)
    assert controller.rate == pytest.approx(125)
    controller.on_success(25)
    clock.advance(0.25)
    controller.on_success(25)
    assert controller.rate == pytest.approx(250)


def test_slow_start_ends_at_the_first_throttle() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock, slow_start=1 / 8, cooldown=1.0)
    controller.on_success(10)
    clock.advance(0.5)
    controller.on_success(10)
    assert controller.rate == pytest.approx(500)
    assert controller.on_throttle()
    assert controller.rate == pytest.approx(350)
    clock.advance(0.5)  # still cooling down: no doubling any more
    controller.on_success(10)
    assert controller.rate == pytest.approx(350)


def test_a_cut_goes_down_to_what_the_table_delivered_since_the_last_cut() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(2000, clock=clock, cooldown=1.0)
    assert controller.on_throttle()  # no delivery history yet: a plain 0.7 cut
    assert controller.rate == pytest.approx(1400)
    for _ in range(10):  # the table takes 400 units/s while we send 1,400
        clock.advance(0.05)
        controller.on_success(20)
    assert controller.on_throttle()  # inside the cooldown, but far below the rate
    assert controller.rate == pytest.approx(400)
    assert controller.cuts == 2
    clock.advance(0.05)
    controller.on_success(20)
    assert not controller.on_throttle()  # delivered ~ rate now: one congestion event


def test_a_throttle_of_a_call_sent_after_the_cut_cuts_again_within_the_cooldown() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock, cooldown=1.0)
    sent_before = controller.now()
    clock.advance(0.1)
    assert controller.on_throttle(sent_before)
    assert controller.rate == pytest.approx(700)
    clock.advance(0.1)
    # Replies of calls sent before the cut are the same congestion event...
    assert not controller.on_throttle(sent_before)
    assert controller.rate == pytest.approx(700)
    # ...but a call sent after it, still throttled, shows the cut was not deep enough.
    sent_after = controller.now()
    clock.advance(0.05)
    assert controller.on_throttle(sent_after)
    assert controller.rate == pytest.approx(490)
    assert controller.cuts == 2
    assert not controller.on_throttle(sent_after), "that call was sent before the second cut"


def test_re_cuts_in_one_congestion_stop_at_what_the_table_delivered() -> None:
    # Calls sent after each cut still come back throttled for a moment (the table is out of
    # credit): cutting by beta on each took the rate far below what the table delivers.
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock, cooldown=1.0)
    assert controller.on_throttle(controller.now())
    assert controller.rate == pytest.approx(700)  # nothing delivered is known yet
    rates = []
    for _ in range(4):  # the table takes 600 units/s, and a call sent just after each cut is
        clock.advance(0.02)  # throttled all the same
        controller.on_success(12)
        sent = controller.now()
        for _ in range(6):
            clock.advance(0.02)
            controller.on_success(12)
        assert controller.on_throttle(sent)
        rates.append(controller.rate)
    # Not 490, 343, 240, 168 (0.7 each time): the rate the table delivered since it began.
    assert rates == pytest.approx([600] * 4, rel=0.02)


def test_before_delivered_is_known_only_the_first_congestion_re_cuts_and_only_once() -> None:
    clock = ManualClock()
    controller = AdaptiveRate(1000, clock=clock, cooldown=1.0)
    clock.advance(0.1)
    assert controller.on_throttle(controller.now())
    clock.advance(0.01)
    sent = controller.now()
    clock.advance(0.01)
    assert controller.on_throttle(sent)  # the slow start's overshoot: one more cut by beta
    assert controller.rate == pytest.approx(490)
    clock.advance(0.01)
    sent = controller.now()
    clock.advance(0.01)
    assert not controller.on_throttle(sent), "a second blind re-cut"
    assert controller.rate == pytest.approx(490)
    # A later congestion: one cut; the calls throttled just after it meet the table's
    # momentary shortage, and do not cut again before the delivered rate can be told.
    clock.advance(30.0)
    for _ in range(10):  # the table takes all that is sent
        clock.advance(0.05)
        controller.on_success(controller.rate * 0.05)
    risen = controller.rate
    assert controller.on_throttle(controller.now())
    assert controller.rate == pytest.approx(risen * 0.7)
    clock.advance(0.01)
    sent = controller.now()
    clock.advance(0.02)
    assert not controller.on_throttle(sent)
    assert controller.rate == pytest.approx(risen * 0.7)


def test_a_cut_drains_the_credit_the_bucket_saved() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1000, burst=500, clock=clock)
    controller = AdaptiveRate(1000, clock=clock, bucket=bucket)
    assert bucket.balance == pytest.approx(500)
    assert controller.on_throttle(controller.now())
    assert bucket.balance == pytest.approx(0)
    bucket.charge(100)
    bucket.drain()  # a debt stays to be paid off
    assert bucket.balance == pytest.approx(-100)
