"""Live counters of a running job, written by its workers and read by whoever shows progress.

Workers only add to the counters; the CLI (or a library caller) reads them whenever it
likes. Everything runs on one event loop, so plain attributes are enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .retry import Clock, SystemClock


@dataclass
class JobProgress:
    """Counters of an export or an import (capacity is RCU for one, WCU for the other)."""

    segments_total: int = 0
    segments_done: int = 0
    items: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    shards: int = 0
    consumed_capacity: float = 0.0
    throttles: int = 0
    #: Import only: files fully written, items given up on, the write rate aimed at now.
    files_total: int = 0
    files_done: int = 0
    dead_lettered: int = 0
    target_rate: float = 0.0
    current_rate: float = 0.0
    #: On a cluster: the worker processes that reported within the last two seconds.
    workers_busy: int = 0
    #: DynamoDB's estimate of the table's item count (refreshed about every 6 hours by AWS).
    items_estimate: int = 0
    #: What the job waits for while it moves no items (a point-in-time export waiting for
    #: DynamoDB's own export); "" while items move.
    waiting_for: str = ""
    #: Where the rates and the ETA read the time.
    clock: Clock = field(default_factory=SystemClock, repr=False, compare=False)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock.monotonic()

    def add_page(self, items: int, raw_bytes: int, consumed_capacity: float) -> None:
        self.items += items
        self.raw_bytes += raw_bytes
        self.consumed_capacity += consumed_capacity

    def add_throttle(self) -> None:
        self.throttles += 1

    def add_shard(self, stored_bytes: int) -> None:
        self.shards += 1
        self.stored_bytes += stored_bytes

    @property
    def elapsed(self) -> float:
        return max(self.clock.monotonic() - self.started, 1e-9)

    @property
    def items_per_second(self) -> float:
        return self.items / self.elapsed

    @property
    def capacity_per_second(self) -> float:
        return self.consumed_capacity / self.elapsed

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left, from the table's item estimate; None when it cannot be told."""
        if self.items_estimate <= 0 or self.items == 0 or self.items >= self.items_estimate:
            return None
        return (self.items_estimate - self.items) / self.items_per_second
