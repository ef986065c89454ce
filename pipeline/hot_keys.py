"""Hot partition keys: learned from the writes a table throttles, and paced on their own.

An import's one rate (``ratelimit.AdaptiveRate``) is cut for every throttle, so a partition
key that overloads its partition holds the whole table to that partition's pace: in the
hot-partition benchmark the three other partitions wrote about 100 of their 300 WCU/s for the
whole job. ``HotKeys`` gives such a key a rate of its own and takes the blame for the throttles
it causes, so the import's rate is cut only for the rest of the table's.

- **Learning:** a partition key is hot when the table throttles one of its writes while it
  has ``learn_backlog`` records ready and other keys have as many (a key that is all there is
  to write sets the import's pace, not a pace of its own). Its rate starts at its share of the
  ready records times the import's rate, cut by ``beta``.
- **Blame:** a reply's throttled writes name a hot key's partition when the hot keys are
  over-represented among them: more than ``margin`` times their share of the batch. A table
  short everywhere (one partition, or capacity below the rate) refuses every key's writes
  alike, and then it is the import's rate that must come down: blaming a hot key there let the
  import's rate stay high while every key was refused (a one-partition table re-sent each item
  once or more).
- **A hot key's rate** is cut by ``beta`` at most once per ``cooldown``, never below ``floor``
  (a key at its floor takes no blame: the throttle is the other keys' doing), and grows by
  ``growth`` per cooldown without a cut; back at ``cap`` (DynamoDB's 1,000 WCU/s per partition
  key) the key is forgotten.
- **Never idle:** hot keys' records are held back only while others can go. When every ready
  record is a hot key's, the writer calls ``release`` and the keys are forgotten, so the
  import's rate paces them as before; holding them back then left their partition idle.

Which writes of a batch DynamoDB refuses when a partition runs short is not specified (it
writes a batch's items in parallel); when the refusals fall on the other keys of the hot
partition, no key is over-represented and nothing is learned, and the import behaves as
without ``HotKeys``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .records import WriteRecord
from .retry import Clock, SystemClock

__all__ = ["HotKeys"]

#: A hot key's bucket holds this many seconds of its rate (at least one write unit).
BURST_SECONDS = 0.1


@dataclass
class _HotKey:
    rate: float
    cut_to: float
    last_cut: float
    balance: float
    updated: float


class HotKeys:
    """The hot partition keys of one writer; see the module docstring. ``learned`` and
    ``released`` count keys learned and releases, ``cuts`` the cuts of hot keys' rates."""

    def __init__(
        self,
        *,
        cap: float = 1000.0,
        floor: float = 1.0,
        learn_backlog: int = 25,
        margin: float = 1.5,
        beta: float = 0.7,
        cooldown: float = 0.5,
        growth: float = 1.1,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < floor < cap or not 0 < beta < 1 or growth <= 1 or margin < 1:
            raise ValueError("HotKeys needs 0 < floor < cap, 0 < beta < 1, growth > 1, "
                             "margin >= 1")
        self.cap = cap
        self.floor = floor
        self.learn_backlog = learn_backlog
        self.margin = margin
        self.beta = beta
        self.cooldown = cooldown
        self.growth = growth
        self.learned = 0
        self.released = 0
        self.cuts = 0
        #: Set when ``admit`` held a record back (the writer clears it before each batch).
        self.held_back = False
        self._clock: Clock = clock or SystemClock()
        self._hot: dict[Hashable, _HotKey] = {}

    def __len__(self) -> int:
        return len(self._hot)

    def rate(self, key: Hashable) -> float | None:
        """A hot key's rate now; None for a key that is not hot."""
        hot = self._hot.get(key)
        if hot is None or not self._grow(key, hot, self._clock.monotonic()):
            return None
        return hot.rate

    def admit(self, record: WriteRecord) -> bool:
        """Whether ``record`` may go now: always, unless its partition key is hot and over its
        rate (then ``held_back`` is set)."""
        key = record.key[0]
        hot = self._hot.get(key)
        if hot is None:
            return True
        now = self._clock.monotonic()
        if not self._grow(key, hot, now):
            return True
        burst = max(hot.rate * BURST_SECONDS, 1.0)
        hot.balance = min(burst, hot.balance + (now - hot.updated) * hot.rate)
        hot.updated = now
        # A write bigger than the burst passes on a full bucket, leaving debt to wait out.
        if hot.balance + 1e-9 < min(record.units, burst):
            self.held_back = True
            return False
        hot.balance -= record.units
        return True

    def throttled(
        self, throttled: list[WriteRecord], sent: list[WriteRecord], *,
        backlog: Callable[[Hashable], int], ready: int, rate: float,
    ) -> bool:
        """The table returned ``throttled`` of the batch ``sent``, while the import ran at
        ``rate`` with ``ready`` records waiting, ``backlog(key)`` of them a partition key's.
        Learns hot keys and cuts those to blame; returns whether hot keys took the blame (the
        import's rate need not be cut)."""
        now = self._clock.monotonic()
        self._learn({record.key[0] for record in throttled}, now, backlog, ready, rate)
        blamed = [record.key[0] for record in throttled if self._can_slow(record.key[0], now)]
        if not blamed:
            return False
        hot_sent = sum(1 for record in sent if record.key[0] in self._hot)
        if len(blamed) / len(throttled) <= self.margin * hot_sent / len(sent):
            return False  # refused alike: the table is short, not one partition
        for key in set(blamed):
            hot = self._hot[key]
            if now - hot.last_cut >= self.cooldown:
                hot.rate = hot.cut_to = max(self.floor, hot.rate * self.beta)
                hot.last_cut = now
                hot.balance = min(hot.balance, 0.0)
                self.cuts += 1
        return True

    def release(self) -> None:
        """Forget every hot key: nothing else is ready, so none may be held back."""
        if self._hot:
            self.released += 1
        self._hot.clear()
        self.held_back = False

    def _learn(self, keys: set[Hashable], now: float, backlog: Callable[[Hashable], int],
               ready: int, rate: float) -> None:
        for key in keys - self._hot.keys():
            waiting = backlog(key)
            if waiting >= self.learn_backlog and ready - waiting >= self.learn_backlog:
                start = min(self.cap, max(self.floor, rate * waiting / ready * self.beta))
                self._hot[key] = _HotKey(rate=start, cut_to=start, last_cut=now, balance=0.0,
                                         updated=now)
                self.learned += 1

    def _can_slow(self, key: Hashable, now: float) -> bool:
        """A hot key whose rate is above its floor."""
        hot = self._hot.get(key)
        return hot is not None and self._grow(key, hot, now) and hot.rate > self.floor

    def _grow(self, key: Hashable, hot: _HotKey, now: float) -> bool:
        """Grows ``hot``'s rate to ``now``; forgets it at the cap. Returns whether still hot."""
        since = now - hot.last_cut - self.cooldown
        if since > 0:
            hot.rate = min(self.cap, hot.cut_to * self.growth ** (since / self.cooldown))
            if hot.rate >= self.cap:
                del self._hot[key]
                return False
        return True
