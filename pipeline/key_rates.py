"""Which partition-key values DynamoDB throttles, and the rate each of those is given.

A table's capacity is split over partitions, and a partition-key value lives in one. When
one value is hot (a tenant with 30% of the items), its partition throttles long before the
table does. Cutting the whole import's rate then slows every cold partition too, and the
hot one ends up under-used between the cuts: the import takes 1.3-1.5 times as long as the
hot partition needs. Instead, a value whose records come back throttled again and again
(``HOT_AFTER`` within a second) gets a rate of its own, and its throttles stop reaching
the import's controller:

- it starts at what the value was accepted at over the last second or two (until then it
  was sent unhindered: that is what its partition gave it);
- a throttle of it cuts it to ``BETA`` times its rate, at most once per ``COOLDOWN``; it
  climbs back to the rate of that cut within ``RECOVER`` seconds, then grows by ``GROWTH`` a
  second: it probes a little above what its partition takes and stays near it, so the
  partition stays busy, and a throttled record costs one re-send, not a stall (a cut to the
  rate the value was accepted at since would be exact if the writer always had its records
  ready; it does not, when the import's own rate holds them back, and such a cut once sent
  a hot value down to a tenth of its partition's capacity for ten seconds);
- cold values, one record each, never get a rate of their own: their throttles are the
  table's, and the import's controller handles them as before.

``KeyRateLimiter`` asks ``rate`` for each value it admits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from .retry import Clock, SystemClock

__all__ = ["KeyRates"]

#: Throttled records of one value within a window that make it hot.
HOT_AFTER = 3
#: Seconds of the windows in which accepted and throttled records are counted.
WINDOW = 1.0
#: A hot value's rate is cut at most this often...
COOLDOWN = 0.5
#: ...to this fraction of what it was,
BETA = 0.8
#: climbs back to what it was within this many seconds,
RECOVER = 0.5
#: then grows by this fraction a second while it is not throttled.
GROWTH = 0.5
#: No hot value goes below this many units a second.
FLOOR = 1.0
#: Most values given a rate of their own (the least recently throttled go first).
MAX_HOT = 1000


@dataclass
class _HotValue:
    #: The rate when last cut (or found hot), and the rate it was cut to.
    before_cut: float
    after_cut: float
    cut_at: float

    def rate(self, now: float) -> float:
        since = max(0.0, now - self.cut_at)
        if since < RECOVER:
            return self.after_cut + (self.before_cut - self.after_cut) * since / RECOVER
        return self.before_cut * math.exp(GROWTH * (since - RECOVER))


class KeyRates:
    """The rates of the hot partition-key values; see the module."""

    def __init__(self, *, clock: Clock | None = None, cap: float = 1000.0) -> None:
        self.clock: Clock = clock or SystemClock()
        self.cap = cap
        self.hot: dict[Hashable, _HotValue] = {}
        self._window_start = self.clock.monotonic()
        self._accepted: Counter[Hashable] = Counter()  # units: float counts
        self._accepted_before: Counter[Hashable] = Counter()
        self._throttled: Counter[Hashable] = Counter()

    def rate(self, key: Hashable, now: float) -> float | None:
        """The rate of ``key`` if it is hot (growing since its last cut), else None."""
        value = self.hot.get(key)
        return None if value is None else min(self.cap, value.rate(now))

    def reply(self, accepted: list[tuple[Hashable, float]], throttled: list[Hashable]) -> bool:
        """A reply: the (key, units) DynamoDB accepted, the keys of the records it throttled.
        Returns whether the table throttled: a record of a key that is not hot was throttled
        (a reply whose throttled records are all hot keys' is their partitions' doing)."""
        now = self._roll()
        for key, units in accepted:
            self._accepted[key] += units  # type: ignore[assignment]
        for key in throttled:
            self._throttled_once(key, now)
        return any(key not in self.hot for key in throttled)

    def _throttled_once(self, key: Hashable, now: float) -> None:
        """A record of ``key`` came back throttled: ``key`` may turn hot, or its rate is cut."""
        value = self.hot.get(key)
        if value is None:
            self._throttled[key] += 1
            if self._throttled[key] >= HOT_AFTER:
                accepted = max(FLOOR, self._accepted_rate(key, now))
                self.hot[key] = _HotValue(accepted, accepted, now)
                self._forget_the_coldest()
            return
        self.hot[key] = self.hot.pop(key)  # the most recently throttled last
        if now - value.cut_at >= COOLDOWN:
            current = min(self.cap, value.rate(now))
            # Never below what the key was just accepted at: throttled while its partition's
            # other keys fill it, a rate cut again and again would starve it, and it would
            # crawl back once they are done.
            accepted = min(current, self._accepted_rate(key, now))
            value.before_cut = current
            value.after_cut = max(FLOOR, BETA * current, accepted)
            value.cut_at = now

    def _accepted_rate(self, key: Hashable, now: float) -> float:
        """Units a second ``key`` was accepted at over this window and the one before."""
        seconds = WINDOW + (now - self._window_start)
        return (self._accepted[key] + self._accepted_before[key]) / seconds

    def _roll(self) -> float:
        now = self.clock.monotonic()
        if now - self._window_start >= WINDOW:
            passed = now - self._window_start
            self._accepted_before = self._accepted if passed < 2 * WINDOW else Counter()
            self._accepted = Counter()
            self._throttled = Counter()
            self._window_start = now
        return now

    def _forget_the_coldest(self) -> None:
        while len(self.hot) > MAX_HOT:
            del self.hot[next(iter(self.hot))]
