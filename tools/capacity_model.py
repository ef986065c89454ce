"""DynamoDB's provisioned-capacity model: which writes and reads a table accepts, and when.

Pure logic, no I/O; time comes from an injected ``ddbpipe.retry.Clock`` (its ``monotonic``),
so tests drive it on a ``ManualClock``. ``capacity_simulator.py`` puts it behind an HTTP
endpoint in front of DynamoDB Local; a test can also answer calls from it in process.

- a table of ``wcu`` has ``partitions`` partitions; an item goes to the partition picked by
  an MD5 hash of its partition-key value, as in DynamoDB, so a hot key stays in one partition;
- each partition refills ``wcu / partitions`` units per second, capped at 1,000 WCU/s (and
  3,000 RCU/s) whatever the table's rate, and saves unused capacity up to ``burst_seconds``;
- a write whose partition has the units is accepted, the others are throttled. A batch's
  writes are decided in the order given, or with ``write_order="random"`` in a random order:
  DynamoDB writes a batch's items in parallel, so which of them a short partition refuses is
  not said (in the given order, the first writes to a partition take its units and the later
  ones are refused). A BatchWriteItem with some writes accepted is answered HTTP 200 with
  the rest as ``UnprocessedItems``; one with none accepted, like a throttled single write,
  with ``ProvisionedThroughputExceededException`` (HTTP 400).

Requests are costed as DynamoDB costs them (item size, write units, partition key); a request
the model cannot read (malformed, unknown table schema) gets no decision, and the caller
leaves it to the backend, which gives DynamoDB's real validation error.

Not modelled: adaptive capacity (moving unused capacity to hot partitions), partition splits,
on-demand tables, per-partition reads (reads share one table-wide bucket), and throttling of
BatchGetItem and transactions.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ddbpipe import codec
from ddbpipe.errors import CorruptDataError
from ddbpipe.retry import Clock, SystemClock

__all__ = [
    "PARTITION_RCU_CAP",
    "PARTITION_WCU_CAP",
    "WRITE_ORDERS",
    "BatchAdmission",
    "BatchPlan",
    "KeySchema",
    "PartitionBucket",
    "PlannedWrite",
    "SimulatedTable",
    "SimulatorStats",
    "TableCapacity",
    "batch_request_items",
    "partition_of",
    "plan_batch_write",
    "plan_single_write",
    "read_units_of_reply",
    "throttle_error",
]

#: Most units one DynamoDB partition serves per second, whatever the table's provisioning.
PARTITION_WCU_CAP = 1000.0
PARTITION_RCU_CAP = 3000.0
#: The orders a batch's writes may be decided in (``SimulatedTable.write_order``).
WRITE_ORDERS = ("given", "random")

#: DynamoDB's own limits, checked here only to know when to leave validation to the backend.
BATCH_WRITE_MAX_REQUESTS = 25
ITEM_MAX_BYTES = 400 * 1024

THROTTLE_TYPE = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
THROTTLE_MESSAGE = (
    "The level of configured provisioned throughput for the table was exceeded. "
    "Consider increasing your provisioning level with the UpdateTable API."
)


# --- capacity ----------------------------------------------------------------------------------


class PartitionBucket:
    """The capacity of one DynamoDB partition: units refilled at ``rate`` per second.

    It holds one second's allowance plus up to ``burst_seconds`` of unused capacity
    (DynamoDB's burst credit). A new bucket holds one second's worth and no saved credit, so
    tests start from a known state. (ddbpipe's own rate limiter is ``ratelimit.TokenBucket``;
    this is the table it writes to.)
    """

    def __init__(
        self, rate: float, burst_seconds: float = 0.0, *, clock: Clock | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a partition needs a positive rate, not {rate}")
        self.rate = rate
        self.capacity = rate * (1.0 + burst_seconds)
        self._clock: Clock = clock or SystemClock()
        self._tokens = rate
        self._updated = self._clock.monotonic()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self, units: float) -> bool:
        """Take ``units`` if the partition has them; report whether it did."""
        self._refill()
        # An item costing more than the bucket can ever hold (a 400 KB item on a small table)
        # passes when the bucket is full and leaves it in debt, as DynamoDB lets it through.
        if self._tokens >= units or self._tokens >= self.capacity:
            self._tokens -= units
            return True
        return False

    def charge(self, units: float) -> None:
        """Take ``units`` unconditionally (reads are charged after the fact; may go negative)."""
        self._refill()
        self._tokens -= units

    def refund(self, units: float) -> None:
        self._tokens = min(self.capacity, self._tokens + units)

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now


def partition_of(key_value: dict[str, Any], partitions: int) -> int:
    """The partition holding a partition-key value (wire form, e.g. ``{"S": "a"}``)."""
    ((type_tag, value),) = key_value.items()
    digest = hashlib.md5(f"{type_tag}:{value}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % partitions


@dataclass(frozen=True, kw_only=True)
class SimulatedTable:
    """The provisioned capacity enforced for one table."""

    wcu: float
    partitions: int = 1
    burst_seconds: float = 0.0
    #: None: reads are not throttled.
    rcu: float | None = None
    partition_wcu_cap: float = PARTITION_WCU_CAP
    partition_rcu_cap: float = PARTITION_RCU_CAP
    #: "given": a batch's writes are decided in its order; "random": in a random order.
    write_order: str = "given"
    #: Seeds the random order, so a run can be repeated.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.wcu <= 0 or self.partitions < 1 or self.burst_seconds < 0:
            raise ValueError(f"invalid simulated table: {self}")
        if self.write_order not in WRITE_ORDERS:
            raise ValueError(f"write_order must be one of {', '.join(WRITE_ORDERS)}, not "
                             f"{self.write_order!r}")
        if self.rcu is not None and self.rcu <= 0:
            raise ValueError(f"invalid simulated table: {self}")

    @property
    def partition_wcu(self) -> float:
        return min(self.wcu / self.partitions, self.partition_wcu_cap)

    @property
    def table_rcu(self) -> float | None:
        """Reads are modelled table-wide: a Scan page spans partitions."""
        if self.rcu is None:
            return None
        return min(self.rcu, self.partition_rcu_cap * self.partitions)


@dataclass(frozen=True)
class SimulatorStats:
    """What happened to one table's requests since it was configured or its stats reset."""

    accepted_wcu: float = 0.0
    #: Calls answered with ProvisionedThroughputExceededException (writes and reads).
    throttled_requests: int = 0
    #: BatchWriteItem calls answered HTTP 200 with some of this table's items unprocessed.
    calls_with_unprocessed: int = 0
    items_accepted: int = 0
    items_throttled: int = 0
    #: Accepted WCU per partition, indexed by partition number.
    partition_wcu: tuple[float, ...] = ()
    #: (whole seconds since configure/reset, WCU accepted in that second), in time order;
    #: seconds in which nothing was accepted are left out.
    wcu_per_second: tuple[tuple[int, float], ...] = ()
    consumed_rcu: float = 0.0
    throttled_reads: int = 0
    #: (whole seconds since configure/reset, RCU consumed by reads that started in that
    #: second), in time order; seconds without reads are left out.
    rcu_per_second: tuple[tuple[int, float], ...] = ()

    @property
    def items_sent(self) -> int:
        return self.items_accepted + self.items_throttled


@dataclass
class _Counters:
    accepted_wcu: float = 0.0
    throttled_requests: int = 0
    calls_with_unprocessed: int = 0
    items_accepted: int = 0
    items_throttled: int = 0
    partition_wcu: list[float] = field(default_factory=list)
    wcu_per_second: dict[int, float] = field(default_factory=dict)
    consumed_rcu: float = 0.0
    throttled_reads: int = 0
    rcu_per_second: dict[int, float] = field(default_factory=dict)


#: A write as the model sees it: (partition, WCU).
Write = tuple[int, int]


class TableCapacity:
    """One simulated table: its partitions' buckets and its statistics. Thread-safe."""

    def __init__(self, config: SimulatedTable, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._write_buckets = [
            PartitionBucket(config.partition_wcu, config.burst_seconds, clock=self._clock)
            for _ in range(config.partitions)
        ]
        rcu = config.table_rcu
        self._read_bucket = (
            PartitionBucket(rcu, config.burst_seconds, clock=self._clock) if rcu else None
        )
        self._origin = self._clock.monotonic()
        self._counters = self._fresh_counters()
        self._shuffle = (random.Random(config.seed).shuffle if config.write_order == "random"
                         else None)

    def partition_of(self, key_value: dict[str, Any]) -> int:
        return partition_of(key_value, self.config.partitions)

    def admit_writes(self, writes: Iterable[Write]) -> list[bool]:
        """Decide each (partition, WCU) write, in the table's ``write_order``: True if
        accepted (its units taken)."""
        writes = list(writes)
        order = list(range(len(writes)))
        decisions = [False] * len(writes)
        with self._lock:
            if self._shuffle is not None:
                self._shuffle(order)
            for index in order:
                partition, units = writes[index]
                decisions[index] = self._write_buckets[partition].try_take(units)
        return decisions

    def refund_writes(self, writes: Iterable[Write]) -> None:
        """Give back units of accepted writes the backend then refused."""
        with self._lock:
            for partition, units in writes:
                self._write_buckets[partition].refund(units)

    def record_writes(
        self, accepted: Iterable[Write], throttled_items: int, *, call_refused: bool
    ) -> None:
        with self._lock:
            counters = self._counters
            second = int(self._clock.monotonic() - self._origin)
            for partition, units in accepted:
                counters.items_accepted += 1
                counters.accepted_wcu += units
                counters.partition_wcu[partition] += units
                counters.wcu_per_second[second] = counters.wcu_per_second.get(second, 0.0) + units
            counters.items_throttled += throttled_items
            if call_refused:
                counters.throttled_requests += 1
            elif throttled_items:
                counters.calls_with_unprocessed += 1

    def may_read(self) -> bool:
        """Whether a read may start; False (and counted) when the table's read bucket is dry."""
        with self._lock:
            if self._read_bucket is None or self._read_bucket.tokens > 0:
                return True
            self._counters.throttled_requests += 1
            self._counters.throttled_reads += 1
            return False

    def now(self) -> float:
        """This table's clock (``charge_read``'s ``started_at`` is given on it)."""
        return self._clock.monotonic()

    def charge_read(self, units: float, *, started_at: float | None = None) -> None:
        """Charge a finished read; it is metered in the second it started (default: now).

        Metering by the start keeps a slow backend from moving reads into a later second.
        """
        with self._lock:
            if self._read_bucket is not None:
                self._read_bucket.charge(units)
            counters = self._counters
            counters.consumed_rcu += units
            moment = self._clock.monotonic() if started_at is None else started_at
            second = int(max(0.0, moment - self._origin))
            counters.rcu_per_second[second] = counters.rcu_per_second.get(second, 0.0) + units

    def stats(self) -> SimulatorStats:
        with self._lock:
            counters = self._counters
            return SimulatorStats(
                accepted_wcu=counters.accepted_wcu,
                throttled_requests=counters.throttled_requests,
                calls_with_unprocessed=counters.calls_with_unprocessed,
                items_accepted=counters.items_accepted,
                items_throttled=counters.items_throttled,
                partition_wcu=tuple(counters.partition_wcu),
                wcu_per_second=tuple(sorted(counters.wcu_per_second.items())),
                consumed_rcu=counters.consumed_rcu,
                throttled_reads=counters.throttled_reads,
                rcu_per_second=tuple(sorted(counters.rcu_per_second.items())),
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._origin = self._clock.monotonic()
            self._counters = self._fresh_counters()

    def _fresh_counters(self) -> _Counters:
        return _Counters(partition_wcu=[0.0] * self.config.partitions)


# --- reading requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySchema:
    """A table's key attribute names, from its DescribeTable."""

    partition_key: str
    sort_key: str | None = None

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> KeySchema | None:
        """The schema in a DescribeTable reply; None if it names no partition key."""
        elements = (described.get("Table") or {}).get("KeySchema") or []
        roles = {element.get("KeyType"): element.get("AttributeName") for element in elements}
        if not roles.get("HASH"):
            return None
        return cls(partition_key=roles["HASH"], sort_key=roles.get("RANGE"))

    def key_of(self, item: dict[str, Any]) -> tuple[str, ...] | None:
        """A hashable identity of the item's primary key; None if a key attribute is unusable."""
        names = [self.partition_key] + ([self.sort_key] if self.sort_key else [])
        values = [item.get(name) for name in names]
        if not all(isinstance(value, dict) and len(value) == 1 for value in values):
            return None
        return tuple(msgspec.json.encode(item[name]).decode() for name in names)


def _size_of(item: Any) -> int | None:
    """An item's size as DynamoDB counts it; None if malformed (the backend will say why)."""
    try:
        return codec.item_size(item)
    except (CorruptDataError, AttributeError, TypeError, ValueError):
        return None


def _units_of_size(size: int | None) -> int | None:
    return None if size is None or size > ITEM_MAX_BYTES else codec.write_units(size)


def _write_units_of(request: dict[str, Any]) -> int | None:
    """WCU of one BatchWriteItem request (``{"PutRequest": ...}`` or ``{"DeleteRequest": ...}``)."""
    if "PutRequest" in request:
        return _units_of_size(_size_of(request["PutRequest"]["Item"]))
    # DynamoDB charges a delete by the size of the item it removes, which only the backend
    # knows; 1 WCU is the common case of items up to 1 KB.
    return 1


def _item_of_request(request: Any) -> dict[str, Any] | None:
    """The item (put) or key (delete) of a BatchWriteItem request; None if malformed."""
    if not isinstance(request, dict) or len(request) != 1:
        return None
    if "PutRequest" in request:
        body, field_name = request["PutRequest"], "Item"
    elif "DeleteRequest" in request:
        body, field_name = request["DeleteRequest"], "Key"
    else:
        return None
    item = body.get(field_name) if isinstance(body, dict) else None
    return item if isinstance(item, dict) else None


def _single_write_units(action: str, payload: dict[str, Any]) -> int | None:
    """WCU of a PutItem/UpdateItem/DeleteItem; None if malformed."""
    if action == "PutItem":
        return _units_of_size(_size_of(payload.get("Item")))
    if action == "UpdateItem":
        # The true cost is the larger of the item before and after the update, known only to
        # the backend; the key plus the new values is a lower bound that tracks item growth.
        key_size = _size_of(payload.get("Key"))
        values_size = _size_of(payload.get("ExpressionAttributeValues") or {})
        if key_size is None or values_size is None:
            return None
        return _units_of_size(key_size + values_size)
    return 1  # DeleteItem: approximated as 1 WCU, as in a batch


def _key_attributes(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    found = payload.get("Item") if action == "PutItem" else payload.get("Key")
    return found if isinstance(found, dict) else {}


def read_units_of_reply(reply: dict[str, Any], payload: dict[str, Any]) -> float:
    """RCU a read consumed: the backend's ConsumedCapacity, else estimated from the items."""
    consumed = reply.get("ConsumedCapacity")
    if isinstance(consumed, dict):
        return float(consumed.get("CapacityUnits", 0.0))
    items = reply.get("Items")
    if items is None:
        items = [reply["Item"]] if "Item" in reply else []
    size = sum(codec.item_size(item) for item in items)
    return codec.read_units(size, bool(payload.get("ConsistentRead")))


# --- admission ---------------------------------------------------------------------------------


def plan_single_write(
    action: str, payload: dict[str, Any], schema: KeySchema, capacity: TableCapacity
) -> Write | None:
    """(partition, WCU) of a PutItem/DeleteItem/UpdateItem; None if it cannot be costed."""
    key_value = _key_attributes(action, payload).get(schema.partition_key)
    units = _single_write_units(action, payload)
    if units is None or not isinstance(key_value, dict) or len(key_value) != 1:
        return None
    return capacity.partition_of(key_value), units


@dataclass(frozen=True)
class PlannedWrite:
    """One request of a BatchWriteItem, with where it lands and what it costs."""

    request: dict[str, Any]
    partition: int
    units: int


def batch_request_items(payload: Any) -> dict[str, list[Any]] | None:
    """A BatchWriteItem's RequestItems if well formed (1 to 25 requests); None otherwise."""
    request_items = payload.get("RequestItems") if isinstance(payload, dict) else None
    if not isinstance(request_items, dict) or not request_items:
        return None
    if not all(isinstance(requests, list) and requests for requests in request_items.values()):
        return None
    total = sum(len(requests) for requests in request_items.values())
    return request_items if total <= BATCH_WRITE_MAX_REQUESTS else None


def plan_batch_write(
    request_items: dict[str, list[Any]],
    schemas: Mapping[str, KeySchema],
    capacities: Mapping[str, TableCapacity],
) -> BatchPlan | None:
    """Each request with its partition and WCU; None if any cannot be costed or repeats a key.

    ``schemas`` has every table of the batch; ``capacities`` the simulated ones (the others'
    writes are always accepted).
    """
    writes: dict[str, list[PlannedWrite]] = {}
    for table, requests in request_items.items():
        planned = _plan_table_writes(requests, schemas[table], capacities.get(table))
        if planned is None:
            return None
        writes[table] = planned
    return BatchPlan(writes, {t: c for t, c in capacities.items() if t in writes})


def _plan_table_writes(
    requests: list[Any], schema: KeySchema, capacity: TableCapacity | None
) -> list[PlannedWrite] | None:
    planned: list[PlannedWrite] = []
    seen: set[tuple[str, ...]] = set()
    for request in requests:
        item = _item_of_request(request)
        key = schema.key_of(item) if item is not None else None
        units = _write_units_of(request) if key is not None else None
        if item is None or key is None or key in seen or units is None:
            return None
        seen.add(key)
        partition = capacity.partition_of(item[schema.partition_key]) if capacity else 0
        planned.append(PlannedWrite(request, partition, units))
    return planned


@dataclass(frozen=True)
class BatchPlan:
    """A costed BatchWriteItem: each table's writes, and the simulated tables' capacity."""

    writes: dict[str, list[PlannedWrite]]
    capacities: dict[str, TableCapacity]

    def admit(self) -> BatchAdmission:
        """Decide every write now, taking the units of those accepted."""
        accepted: dict[str, list[PlannedWrite]] = {}
        throttled: dict[str, list[PlannedWrite]] = {}
        for table, writes in self.writes.items():
            capacity = self.capacities.get(table)
            decisions = (
                capacity.admit_writes((w.partition, w.units) for w in writes)
                if capacity is not None
                else [True] * len(writes)
            )
            accepted[table] = [w for w, ok in zip(writes, decisions, strict=True) if ok]
            throttled[table] = [w for w, ok in zip(writes, decisions, strict=True) if not ok]
        return BatchAdmission(accepted, throttled, self.capacities)


@dataclass(frozen=True)
class BatchAdmission:
    """The decision on one BatchWriteItem: per table, the writes accepted and throttled.

    When nothing was accepted the whole call is throttled (``throttle_error``). Otherwise the
    accepted writes go on (``accepted_request_items``) and the reply (``reply``) returns the
    throttled ones as UnprocessedItems. ``record`` counts the outcome in each simulated
    table's statistics; ``refund`` gives the units back if the accepted writes failed after all.
    """

    accepted: dict[str, list[PlannedWrite]]
    throttled: dict[str, list[PlannedWrite]]
    capacities: dict[str, TableCapacity]

    @property
    def nothing_accepted(self) -> bool:
        return not any(self.accepted.values())

    def accepted_request_items(self) -> dict[str, list[dict[str, Any]]]:
        return {t: [w.request for w in writes] for t, writes in self.accepted.items() if writes}

    def record(self, *, call_refused: bool) -> None:
        for table, capacity in self.capacities.items():
            passed = [(w.partition, w.units) for w in self.accepted[table]]
            capacity.record_writes(passed, len(self.throttled[table]), call_refused=call_refused)

    def refund(self) -> None:
        for table, capacity in self.capacities.items():
            capacity.refund_writes((w.partition, w.units) for w in self.accepted[table])

    def reply(self, stored: dict[str, Any], *, with_capacity: bool) -> dict[str, Any]:
        """DynamoDB's reply, given the reply of whatever stored the accepted writes.

        ``stored``'s own UnprocessedItems and ItemCollectionMetrics are kept;
        ``with_capacity`` (the call asked for ReturnConsumedCapacity) adds ConsumedCapacity.
        """
        unprocessed: dict[str, list[Any]] = {
            table: [w.request for w in writes] for table, writes in self.throttled.items() if writes
        }
        for table, requests in (stored.get("UnprocessedItems") or {}).items():
            unprocessed.setdefault(table, []).extend(requests)
        result: dict[str, Any] = {"UnprocessedItems": unprocessed}
        if with_capacity:
            result["ConsumedCapacity"] = self._consumed_capacity(stored)
        if stored.get("ItemCollectionMetrics"):
            result["ItemCollectionMetrics"] = stored["ItemCollectionMetrics"]
        return result

    def _consumed_capacity(self, stored: dict[str, Any]) -> list[dict[str, Any]]:
        """Our WCU for simulated tables; the store's own figure for the others."""
        reported = {entry.get("TableName"): entry for entry in stored.get("ConsumedCapacity", [])}
        entries = []
        for table, writes in self.accepted.items():
            if table in self.capacities:
                units = float(sum(w.units for w in writes))
                entries.append({"TableName": table, "CapacityUnits": units})
            elif table in reported:
                entries.append(reported[table])
        return entries


def throttle_error() -> dict[str, str]:
    """The body of DynamoDB's ProvisionedThroughputExceededException (sent with HTTP 400)."""
    return {"__type": THROTTLE_TYPE, "message": THROTTLE_MESSAGE}
