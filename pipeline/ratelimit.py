"""Token buckets that keep DynamoDB capacity use at a chosen rate.

The clock is injected (``retry.Clock``): production uses ``SystemClock``, tests use
``ManualClock`` whose ``sleep`` moves simulated time forward at once, so rate-limit tests run
in milliseconds.

Two ways to spend from a bucket:

- ``await bucket.acquire(n)`` when the cost is known, or estimated, up front (a batch write
  of n WCU; a Scan page reserving what it will likely cost), then ``bucket.charge(actual -
  n)`` once the reply tells the actual cost: a debt, or a refund;
- ``await bucket.wait_for_credit()`` then ``bucket.charge(n)`` to spend first and count
  after. The balance may go negative; the debt is then paid off in time before the next
  caller gets credit again, so the average rate stays at ``rate``.

``AdaptiveRate`` moves a bucket's rate with throttling (cut on a throttle, regrow along a
CUBIC curve); ``KeyRateLimiter`` keeps a rate per key (DynamoDB's 1,000 WCU/s per
partition-key value) without ever waiting, so callers can hold back one key and go on.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from .retry import Clock, SystemClock

__all__ = [
    "AdaptiveRate", "Bucket", "BudgetSpec", "KeyRateLimiter", "RateController", "TokenBucket",
]

#: A waiter re-checks the balance at least this often, so set_rate() takes effect promptly.
MAX_SLEEP_SLICE = 1.0


#: Float rounding can leave a waiter a hair short of its goal; that much counts as reached.
ROUNDING_SLACK = 1e-9


class Bucket(Protocol):
    """What spends capacity needs of a bucket: a ``TokenBucket`` here, or one leasing from a
    cluster-wide account (``shared_capacity.LeasedBucket``)."""

    @property
    def rate(self) -> float: ...

    def charge(self, amount: float) -> None: ...

    async def acquire(self, amount: float) -> None: ...

    async def wait_for_credit(self) -> None: ...

    def set_rate(self, rate: float) -> None: ...

    def drain(self) -> None: ...

    def follow(self, update_rate: Callable[[], None], *, every: float) -> None: ...


class RateController(Protocol):
    """What a writer tells of throttles and accepted units: ``AdaptiveRate`` here, or one whose
    decisions a cluster-wide account makes (``shared_capacity.SharedController``)."""

    @property
    def rate(self) -> float: ...

    def now(self) -> float: ...

    def attach(self, bucket: Bucket) -> None: ...

    def on_success(self, units: float = 0.0) -> None: ...

    def on_throttle(self, sent_at: float | None = None) -> bool: ...


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
        # Set by ``follow``: brings a controller's rate up to date while a waiter waits.
        self._update_rate: Callable[[], None] | None = None
        self._sleep_slice = MAX_SLEEP_SLICE

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

    def drain(self) -> None:
        """Give up the credit saved so far (a debt stays): the next caller waits for credit
        earned from now on."""
        self._refill()
        self._balance = min(self._balance, 0.0)

    def follow(self, update_rate: Callable[[], None], *, every: float) -> None:
        """While waiting, call ``update_rate()`` at least every ``every`` seconds: the rate of
        a controller that grows with time alone (``AdaptiveRate``) then reaches the waiter,
        which would otherwise wait its whole debt out at the old rate."""
        self._update_rate = update_rate
        self.recheck_every(every)

    def recheck_every(self, seconds: float) -> None:
        """Waiters look at the balance again at least this often: a refund (``charge`` of a
        negative amount) from elsewhere then reaches them within that time."""
        self._sleep_slice = min(seconds, self._sleep_slice)

    def charge(self, amount: float) -> None:
        """Take ``amount`` tokens now, even into debt; later waiters wait the debt out. A
        negative amount refunds, up to a full bucket."""
        self._refill()
        self._balance = min(self.burst, self._balance - amount)

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
            if self._update_rate is not None:
                self._update_rate()
            missing = min(wanted, self.burst) - self.balance
            if missing <= ROUNDING_SLACK:
                return
            await self._clock.sleep(min(missing / self._rate, self._sleep_slice))

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = max(0.0, now - self._updated_at)
        self._updated_at = now
        self._balance = min(self.burst, self._balance + elapsed * self._rate)


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be a positive number, not {rate}")


#: With slow start, the rate doubles this often (seconds) until the target or a throttle.
SLOW_START_DOUBLING = 0.25


class AdaptiveRate:
    """The write rate (capacity units per second) an import runs at, adapted to throttling.

    It starts at ``target`` and never leaves ``[floor, target]``. A throttle (a throttled
    request, or a reply with UnprocessedItems) cuts the rate to ``beta`` times what it was, at
    most once per ``cooldown`` seconds: the replies of every batch that was in flight when the
    table ran out of capacity arrive together and are one congestion event, not many. Without
    throttles the rate grows back along a CUBIC curve in time since the last cut::

        rate(t) = w_max + g * (t - k) ** 3,   k = cbrt((w_max - w_cut) / g),
        g = c * sqrt(w_max * target)

    where ``w_max`` is the rate at the last cut and ``w_cut`` the rate it was cut to
    (``beta * w_max``): concave up to ``w_max`` (where the table last throttled, so it lingers
    there), then convex, probing faster the longer nothing throttles.
    ``g`` scales with the rates, so the curve has the same shape at 100 or 40,000 WCU/s; by
    the geometric mean of ``w_max`` and the target, so that a target far above the table's
    capacity does not make the probes above ``w_max`` steep (at ``c * target`` a 2,000 WCU/s
    target on a 400 WCU/s table throttled 8% of its calls in the simulator benchmark; at the
    geometric mean, 3%), while a deep cut still regains the target quickly.

    A cut goes straight down to the rate the table actually delivered since the previous cut
    (at most ``window`` seconds back) when that is lower than ``beta`` times the rate, even
    within the cooldown, and ``w_max`` becomes that delivered rate: when a target is far above
    the table's capacity, cutting by 0.7 per cooldown would take five cuts (five seconds of
    mostly throttled calls) to get from 2,000 to 400 WCU/s; the delivered rate gets there in
    the second cut, a fifth of a window after the first. The rate is then at ``w_max``, so the
    curve starts convex (``k = 0``): climbing back to where it already was held the rate flat
    for the 3 s of ``k`` plus the cooldown, which cost the hot-partition benchmark 5-10%.

    The cooldown only shields a cut from the replies of calls sent before it. A throttle of a
    call sent after the last cut means that cut was not enough, and cuts again at once: after
    a table's burst credit runs out, the delivered rate it cut to still included that credit
    (in the simulator benchmark, the cooldown then held a rate 10% over the capacity for a
    second, and nearly every call of that second came back partly unprocessed). Such a
    re-cut never goes below what the table delivered since the congestion began (its first
    cut, at most ``window`` back): for a moment after any cut, calls still find the table
    out of credit, and cutting by ``beta`` on each of them took a 1,540 WCU/s rate to 260 on
    a 400 WCU/s table in 0.15 s, after which the climb back cost a one-partition import 15%
    of its time. The delivered rate is measured over the whole congestion, not since the
    latest cut, so it is known within a fifth of a window however fast the cuts come.

    A cut also gives up the credit the bucket saved (``Bucket.drain``): the table is out of
    capacity at that moment, and a bucket that saves a tenth of a second of a 20,000 WCU/s
    target sent 2,000 WCU at once after each cut, into the same shortage.

    ``slow_start`` (a fraction of the target) starts there instead and doubles the rate every
    quarter second until the target or the first throttle, as TCP does: a table whose capacity
    is far below the target then sees an overshoot of at most twice the rate that fit, not
    the whole target, before the first cut. The doubling counts from the first write the table
    accepted, not from when the controller was made: an import that spent its first second
    fetching a file would otherwise start at the whole target (seen in the benchmark: a burst
    at 2,000 WCU/s on a 400 WCU/s table, cut to 100 and held there for 6 s).

    Why CUBIC and not AIMD, measured with the fluid model in ``tests/test_ratelimit.py``
    (target 1,000 WCU/s, capacity C below it for 80 s then back to the target, 0.1 s feedback
    delay, 1 s cooldown; utilisation = written / C from 20 s to 80 s):

    ============================  =========================  ==========  ===================
    controller                    utilisation, C=700/400/    throttled   back to 95% of the
                                  100/30                                 target after
    ============================  =========================  ==========  ===================
    CUBIC, beta 0.7, c 0.004      0.88 / 0.87 / 0.86 / 0.85  < 0.1%      4.8 - 13.9 s
    AIMD, beta 0.7, +5%/s         0.83 / 0.82 / 0.79 / 0.84  up to 0.7%  9.8 - 18.8 s
    AIMD, beta 0.7, +2%/s         0.84 / 0.83 / 0.81 / 0.80  up to 0.3%  14 - 47 s
    AIMD, beta 0.5, +10%/s        0.71 / 0.69 / 0.64 / 0.71  up to 1.8%  3.0 - 9.9 s
    ============================  =========================  ==========  ===================

    Both get below C equally fast (the cuts dominate: 2.1 s at C=400, 9.2 s at C=30). CUBIC
    then keeps more of the capacity in use, because it lingers near the rate that last
    throttled, and it regains the target faster than AIMD's linear climb, whose time grows
    with the gap (or which throttles more if made steeper).

    Every change of the rate is applied to the given ``bucket`` (``TokenBucket.set_rate``).
    """

    def __init__(
        self,
        target: float,
        *,
        clock: Clock | None = None,
        floor: float | None = None,
        bucket: Bucket | None = None,
        beta: float = 0.7,
        cubic_c: float = 0.004,
        cooldown: float = 1.0,
        window: float = 0.5,
        slow_start: float | None = None,
    ) -> None:
        _check_rate(target)
        if not 0 < beta < 1:
            raise ValueError(f"beta must be between 0 and 1, not {beta}")
        self.target = float(target)
        # 1% of the target keeps some progress under any throttling; below 1 unit/s is useless.
        self.floor = min(self.target, floor if floor is not None else max(1.0, target / 100))
        self.beta = beta
        self.cooldown = cooldown
        self.cuts = 0
        self._clock: Clock = clock or SystemClock()
        self._bucket = bucket
        self._c = cubic_c
        self._rate = self.target
        self._w_max = self.target
        self._cut_to = self.target * beta
        self._last_cut: float | None = None
        self._congestion_began = 0.0  # the first of the cuts less than a cooldown apart
        self._blind_recuts = 0  # re-cuts of this congestion made before delivered was known
        self._congestions = 0
        self._slow_starting = False
        # When the slow start's doubling began: at the first write the table accepted.
        self._slow_start_from: float | None = None
        if slow_start is not None:
            self._start_slowly(slow_start)
        self.window = window
        # (time, units) the table accepted, over the last `window` seconds.
        self._delivered: deque[tuple[float, float]] = deque()
        if bucket is not None:
            self.attach(bucket)

    @property
    def rate(self) -> float:
        return self._rate

    def now(self) -> float:
        """This controller's clock, on which ``on_throttle``'s ``sent_at`` is given."""
        return self._clock.monotonic()

    def on_throttle(self, sent_at: float | None = None) -> bool:
        """A throttle was seen; cut the rate unless a cut happened within the cooldown.

        Within the cooldown a cut is still made when the throttled call was sent after the
        last cut (``sent_at``, on this controller's clock: that cut was not deep enough) or
        when the table delivered less than ``beta`` times the rate (it takes far less than we
        send). Returns whether it cut.
        """
        now = self._clock.monotonic()
        delivered = self._delivered_rate(now)
        cooling = self._last_cut is not None and now - self._last_cut < self.cooldown
        far_below = delivered is not None and delivered < self._rate * self.beta
        after_cut = sent_at is not None and self._last_cut is not None and sent_at > self._last_cut
        blind = cooling and delivered is None
        if cooling and not far_below and not after_cut or blind and not self._may_cut_blind():
            return False
        self._advance(now)
        self._slow_starting = False
        cut = self._rate * self.beta
        if delivered is not None and delivered < cut:
            self._w_max, cut = delivered, delivered
        else:
            self._w_max = self._rate
            if cooling and delivered is not None:
                cut = max(cut, min(self._rate, delivered))  # a re-cut: not below delivered
        if not cooling:
            self._congestion_began = now
            self._blind_recuts = 0
            self._congestions += 1
        self._blind_recuts += blind
        self._last_cut = now
        self.cuts += 1
        self._apply(cut)
        self._cut_to = self._rate
        if self._bucket is not None:
            self._bucket.drain()
        return True

    def _may_cut_blind(self) -> bool:
        """Whether a re-cut may go by ``beta`` before the table's delivered rate can be told
        (a fifth of a window into the congestion): once, in the job's first congestion only.

        There the rate came from the slow start's doubling, far above what fits (5,100 WCU/s
        where the table took 2,100), and a second cut halves the way down. In a later
        congestion the rate was below what the table delivered until just before, so one
        cut is enough: the calls throttled right after it meet the table's momentary
        shortage, not a rate still too high. Cutting again on each of them took a 2,100
        WCU/s rate to 1,030 in 13 ms, and the climb back cost the ten-times-larger
        hot-partition scenario a quarter of its time.
        """
        return self._congestions == 1 and self._blind_recuts == 0

    def on_success(self, units: float = 0.0) -> None:
        """The table accepted ``units`` (also the accepted part of a partly throttled call)."""
        now = self._clock.monotonic()
        if units > 0:
            self._delivered.append((now, units))
            if self._slow_starting and self._slow_start_from is None:
                self._slow_start_from = now
            self._forget_before(now - self.window)
        self._advance(now)

    def _delivered_rate(self, now: float) -> float | None:
        """Units per second the table accepted since the congestion began (at most one window
        back).

        Counting from its first cut leaves out what a table's burst credit let through before
        it first throttled: that would make the table look faster than it is. None before
        the first cut, too soon after it to tell, or while nothing has been accepted since.
        """
        self._forget_before(now - self.window)
        if self._last_cut is None:
            return None
        since = max(self._congestion_began, now - self.window)
        if now - since < self.window / 5:
            return None
        accepted = sum(units for moment, units in self._delivered if moment > since)
        # Nothing accepted yet may only mean the replies since the cut are still on their way.
        return accepted / (now - since) if accepted > 0 else None

    def attach(self, bucket: Bucket) -> None:
        """Drive ``bucket`` from now on: its rate is set at once, and it asks for the rate
        again while it waits (a slow start doubles every quarter second once the first write
        was accepted, whether or not more replies arrive)."""
        self._bucket = bucket
        bucket.set_rate(self._rate)
        bucket.follow(self._follow_the_clock, every=SLOW_START_DOUBLING)

    def _follow_the_clock(self) -> None:
        self._advance(self._clock.monotonic())

    def rate_after(self, seconds_since_cut: float) -> float:
        """The growth curve: the rate ``seconds_since_cut`` after the last cut (unclamped)."""
        # Scaled by w_max, not the target: the probe above the last congestion point takes the
        # same time whether the target is at the table's capacity or far above it.
        growth = self._c * (self._w_max * self.target) ** 0.5
        # The time the curve takes from the rate cut to back to w_max: none when the cut went
        # to the delivered rate and that became w_max (a concave climb to where the rate
        # already is held it flat for seconds).
        k = (max(0.0, self._w_max - self._cut_to) / growth) ** (1 / 3)
        return self._w_max + growth * (seconds_since_cut - k) ** 3

    def _forget_before(self, moment: float) -> None:
        while self._delivered and self._delivered[0][0] <= moment:
            self._delivered.popleft()

    def _start_slowly(self, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"slow_start must be in (0, 1], not {fraction}")
        self._slow_starting = True
        self._rate = max(self.floor, self.target * fraction)
        self._slow_start_rate = self._rate

    def _advance(self, now: float) -> None:
        if self._slow_starting:
            if self._slow_start_from is None:
                return  # nothing accepted yet: the starting rate holds
            # Doubling every SLOW_START_DOUBLING seconds until the target or the first throttle.
            doublings = (now - self._slow_start_from) / SLOW_START_DOUBLING
            self._apply(self._slow_start_rate * 2.0**doublings)
            if self._rate >= self.target:
                self._slow_starting = False
            return
        if self._last_cut is None or self._rate >= self.target:
            return
        # The rate holds through the cooldown: replies that were in flight at the cut may still
        # report throttles, and growing meanwhile would undo the cut before it is tested.
        since_cooldown = now - self._last_cut - self.cooldown
        if since_cooldown <= 0:
            return
        grown = self.rate_after(since_cooldown)
        if grown > self._rate:
            self._apply(grown)

    def _apply(self, rate: float) -> None:
        self._rate = min(self.target, max(self.floor, rate))
        if self._bucket is not None:
            self._bucket.set_rate(self._rate)


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as plain values (it travels to a cluster's scheduler): ``rate`` units a second
    with ``burst`` saved up; ``adaptive``: an ``AdaptiveRate`` (an import's) drives the rate,
    starting at ``slow_start`` times it."""

    rate: float
    burst: float
    adaptive: bool = False
    slow_start: float | None = None

    def build(self, clock: Clock) -> tuple[TokenBucket, AdaptiveRate | None]:
        """The bucket, and the controller that moves it if the budget is adaptive."""
        bucket = TokenBucket(self.rate, burst=self.burst, clock=clock)
        controller = (AdaptiveRate(self.rate, bucket=bucket, slow_start=self.slow_start,
                                   clock=clock) if self.adaptive else None)
        return bucket, controller


class KeyRateLimiter:
    """Per-key token buckets, e.g. one per partition-key value at DynamoDB's 1,000 WCU/s cap.

    Non-blocking: ``try_take(key, units)`` says whether the key may spend ``units`` now, so a
    caller holds back the records of a hot key while other keys go ahead. A forgotten key
    starts again with a full bucket, so a key whose bucket has refilled is forgotten: what is
    remembered is the keys used within about ``burst / rate`` seconds (one second at
    DynamoDB's cap), however many keys the table has. An import of distinct keys otherwise
    remembered its last ``max_keys`` keys, about 25 MB, and a job's memory grew with the
    table until it did. ``max_keys`` still bounds the rest: evicting the least recently used
    key almost never lets a key overspend.
    """

    def __init__(
        self,
        rate: float = 1000.0,
        *,
        burst: float | None = None,
        max_keys: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        _check_rate(rate)
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate
        self.max_keys = max_keys
        self._clock: Clock = clock or SystemClock()
        # key -> (balance, time of that balance), least recently used first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def try_take(self, key: Hashable, units: float) -> bool:
        """Spend ``units`` of ``key``'s budget if it has them (or a full bucket) now."""
        now = self._clock.monotonic()
        balance = self._balance(key, now)
        # An item bigger than the burst passes on a full bucket, leaving debt to wait out.
        if balance + ROUNDING_SLACK < min(units, self.burst):
            self._remember(key, balance, now)
            return False
        self._remember(key, balance - units, now)
        return True

    def seconds_until(self, key: Hashable, units: float) -> float:
        """How long until ``try_take(key, units)`` would succeed (0 if it would now)."""
        balance = self._balance(key, self._clock.monotonic())
        return max(0.0, (min(units, self.burst) - balance) / self.rate)

    def _balance(self, key: Hashable, now: float) -> float:
        saved = self._buckets.get(key)
        if saved is None:
            return self.burst
        balance, updated_at = saved
        return min(self.burst, balance + max(0.0, now - updated_at) * self.rate)

    def _remember(self, key: Hashable, balance: float, now: float) -> None:
        self._buckets[key] = (balance, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        # Least recently used first: forget keys from the front while their buckets are full.
        while self._buckets:
            oldest, (saved, updated_at) = next(iter(self._buckets.items()))
            if saved + (now - updated_at) * self.rate < self.burst:
                break
            del self._buckets[oldest]
