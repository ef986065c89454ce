"""A DynamoDB endpoint that throttles like DynamoDB, in front of DynamoDB Local.

DynamoDB Local stores data faithfully but never throttles, so importer tests and benchmarks
could never see a ``ProvisionedThroughputExceededException`` or ``UnprocessedItems``. This
proxy forwards every request to a backend DynamoDB Local and, for the tables it was told
about with ``configure()``, enforces DynamoDB's capacity model first:

- a table of ``wcu`` has ``partitions`` partitions; an item goes to the partition picked by
  an MD5 hash of its partition-key value, as in DynamoDB, so a hot key stays in one partition;
- each partition refills ``wcu / partitions`` units per second, capped at 1,000 WCU/s (and
  3,000 RCU/s) whatever the table's rate, and saves unused capacity up to ``burst_seconds``;
- a write whose partition has the units is forwarded; the others are throttled with DynamoDB's
  exact reply shapes: ``UnprocessedItems`` in an HTTP 200 when part of a BatchWriteItem got
  through, ``ProvisionedThroughputExceededException`` (HTTP 400) when nothing did.

Not modelled: adaptive capacity (moving unused capacity to hot partitions), partition splits,
on-demand tables, and throttling of BatchGetItem and transactions (they pass through).

Usage::

    with start_capacity_simulator(dynamodb_local.endpoint) as simulator:
        simulator.configure("orders", wcu=400, partitions=4)
        client = boto3.client("dynamodb", endpoint_url=simulator.endpoint)
        ...
        print(simulator.stats("orders").items_throttled)
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from ddbpipe import codec
from ddbpipe.errors import CorruptDataError

__all__ = [
    "PARTITION_RCU_CAP",
    "PARTITION_WCU_CAP",
    "CapacitySimulator",
    "SimulatedTable",
    "SimulatorStats",
    "TableCapacity",
    "TokenBucket",
    "partition_of",
    "start_capacity_simulator",
]

#: Most units one DynamoDB partition serves per second, whatever the table's provisioning.
PARTITION_WCU_CAP = 1000.0
PARTITION_RCU_CAP = 3000.0

#: DynamoDB's own limits, checked here only to know when to leave validation to the backend.
BATCH_WRITE_MAX_REQUESTS = 25
ITEM_MAX_BYTES = 400 * 1024

TARGET_PREFIX = "DynamoDB_20120810."
THROTTLE_TYPE = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
THROTTLE_MESSAGE = (
    "The level of configured provisioned throughput for the table was exceeded. "
    "Consider increasing your provisioning level with the UpdateTable API."
)
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

#: Headers that describe one hop's connection or body encoding, not the request itself.
#: Accept-Encoding is dropped so the backend answers uncompressed and replies can be parsed.
HOP_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "expect"}
)
HOP_REPLY_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)

Clock = Callable[[], float]


# --- capacity model (pure logic, injectable clock) --------------------------------------------


class TokenBucket:
    """Capacity units refilled at ``rate`` per second.

    The bucket holds one second's allowance plus up to ``burst_seconds`` of unused capacity
    (DynamoDB's burst credit). A new bucket holds one second's worth and no saved credit, so
    tests start from a known state.
    """

    def __init__(self, rate: float, burst_seconds: float = 0.0, now: Clock = time.monotonic):
        if rate <= 0:
            raise ValueError(f"a bucket needs a positive rate, not {rate}")
        self.rate = rate
        self.capacity = rate * (1.0 + burst_seconds)
        self._now = now
        self._tokens = rate
        self._updated = now()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self, units: float) -> bool:
        """Take ``units`` if the bucket has them; report whether it did."""
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
        now = self._now()
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
    """The provisioned capacity the simulator enforces for one table."""

    wcu: float
    partitions: int = 1
    burst_seconds: float = 0.0
    #: None: reads are not throttled.
    rcu: float | None = None
    partition_wcu_cap: float = PARTITION_WCU_CAP
    partition_rcu_cap: float = PARTITION_RCU_CAP

    def __post_init__(self) -> None:
        if self.wcu <= 0 or self.partitions < 1 or self.burst_seconds < 0:
            raise ValueError(f"invalid simulated table: {self}")
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
    #: (whole seconds since configure/reset, WCU accepted in that second), in time order.
    wcu_per_second: tuple[tuple[int, float], ...] = ()
    consumed_rcu: float = 0.0
    throttled_reads: int = 0

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


class TableCapacity:
    """One simulated table: its partitions' buckets and its statistics. Thread-safe."""

    def __init__(self, config: SimulatedTable, now: Clock = time.monotonic) -> None:
        self.config = config
        self._now = now
        self._lock = threading.Lock()
        self._write_buckets = [
            TokenBucket(config.partition_wcu, config.burst_seconds, now)
            for _ in range(config.partitions)
        ]
        rcu = config.table_rcu
        self._read_bucket = TokenBucket(rcu, config.burst_seconds, now) if rcu else None
        self._origin = now()
        self._counters = self._fresh_counters()

    def partition_of(self, key_value: dict[str, Any]) -> int:
        return partition_of(key_value, self.config.partitions)

    def admit_writes(self, writes: Iterable[tuple[int, int]]) -> list[bool]:
        """Decide each (partition, WCU) write in order: True if accepted (its units taken)."""
        with self._lock:
            return [self._write_buckets[p].try_take(units) for p, units in writes]

    def refund_writes(self, writes: Iterable[tuple[int, int]]) -> None:
        """Give back units of accepted writes the backend then refused."""
        with self._lock:
            for partition, units in writes:
                self._write_buckets[partition].refund(units)

    def record_writes(
        self, accepted: Iterable[tuple[int, int]], throttled_items: int, *, call_refused: bool
    ) -> None:
        with self._lock:
            counters = self._counters
            second = int(self._now() - self._origin)
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

    def charge_read(self, units: float) -> None:
        with self._lock:
            if self._read_bucket is not None:
                self._read_bucket.charge(units)
            self._counters.consumed_rcu += units

    @property
    def throttles_reads(self) -> bool:
        return self._read_bucket is not None

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
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._origin = self._now()
            self._counters = self._fresh_counters()

    def _fresh_counters(self) -> _Counters:
        return _Counters(partition_wcu=[0.0] * self.config.partitions)


# --- request inspection ----------------------------------------------------------------------


@dataclass(frozen=True)
class _KeySchema:
    partition_key: str
    sort_key: str | None

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


def _write_units_of(request: dict[str, Any]) -> int | None:
    """WCU of one BatchWriteItem request (``{"PutRequest": ...}`` or ``{"DeleteRequest": ...}``)."""
    if "PutRequest" in request:
        size = _size_of(request["PutRequest"]["Item"])
        return None if size is None or size > ITEM_MAX_BYTES else codec.write_units(size)
    # DynamoDB charges a delete by the size of the item it removes, which only the backend
    # knows; 1 WCU is the common case of items up to 1 KB.
    return 1


def _item_of_request(request: dict[str, Any]) -> dict[str, Any] | None:
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
        size = _size_of(payload.get("Item"))
    elif action == "UpdateItem":
        # The true cost is the larger of the item before and after the update, known only to
        # the backend; the key plus the new values is a lower bound that tracks item growth.
        key_size = _size_of(payload.get("Key"))
        values_size = _size_of(payload.get("ExpressionAttributeValues") or {})
        size = None if key_size is None or values_size is None else key_size + values_size
    else:
        return 1  # DeleteItem: approximated as 1 WCU, see _write_units_of
    return None if size is None or size > ITEM_MAX_BYTES else codec.write_units(size)


# --- replies -----------------------------------------------------------------------------------


def _json_reply(status: int, payload: dict[str, Any]) -> web.Response:
    body = msgspec.json.encode(payload)
    headers = {
        "Content-Type": JSON_CONTENT_TYPE,
        # botocore checks this checksum of the body on every DynamoDB reply that carries it.
        "x-amz-crc32": str(zlib.crc32(body)),
        "x-amzn-RequestId": uuid.uuid4().hex.upper(),
    }
    return web.Response(status=status, body=body, headers=headers)


def _throttled_reply() -> web.Response:
    return _json_reply(400, {"__type": THROTTLE_TYPE, "message": THROTTLE_MESSAGE})


@dataclass
class _BackendReply:
    status: int
    body: bytes
    headers: CIMultiDict[str]

    def relay(self) -> web.Response:
        headers = CIMultiDict(
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in HOP_REPLY_HEADERS
        )
        return web.Response(status=self.status, body=self.body, headers=headers)

    def charged_capacity(self) -> bool:
        """Whether DynamoDB would have consumed the write's capacity despite this reply."""
        return self.status == 200 or b"ConditionalCheckFailedException" in self.body


def _wants_capacity(payload: dict[str, Any]) -> bool:
    return payload.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES")


def _consumed_units(reply: dict[str, Any]) -> float | None:
    consumed = reply.get("ConsumedCapacity")
    if isinstance(consumed, dict):
        return float(consumed.get("CapacityUnits", 0.0))
    return None


def _read_units_of_reply(reply: dict[str, Any], payload: dict[str, Any]) -> float:
    """RCU a read consumed: the backend's ConsumedCapacity, else estimated from the items."""
    reported = _consumed_units(reply)
    if reported is not None:
        return reported
    items = reply.get("Items")
    if items is None:
        items = [reply["Item"]] if "Item" in reply else []
    size = sum(codec.item_size(item) for item in items)
    return codec.read_units(size, bool(payload.get("ConsistentRead")))


# --- the proxy -----------------------------------------------------------------------------------


@dataclass
class _Call:
    """One incoming request."""

    action: str
    body: bytes
    headers: CIMultiDict[str]


class _Proxy:
    """The aiohttp application: forwards to the backend, throttling configured tables."""

    def __init__(self, backend: str, tables: dict[str, TableCapacity], lock: threading.Lock):
        self._backend = backend
        self._tables = tables
        self._tables_lock = lock
        self._schemas: dict[str, _KeySchema] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=256)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "")
        action = target.removeprefix(TARGET_PREFIX)
        call = _Call(action=action, body=await request.read(), headers=self._forwarded(request))
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            return (await self._forward(call, request.method, request.path_qs)).relay()
        handler = {
            "BatchWriteItem": self._batch_write,
            "PutItem": self._single_write,
            "DeleteItem": self._single_write,
            "UpdateItem": self._single_write,
            "GetItem": self._read,
            "Query": self._read,
            "Scan": self._read,
            "CreateTable": self._schema_change,
            "DeleteTable": self._schema_change,
        }.get(action)
        if handler is None:
            return (await self._forward(call)).relay()
        return await handler(call)

    # writes

    async def _batch_write(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body)
        plan = await self._plan_batch(payload, call) if payload is not None else None
        if payload is None or plan is None:
            # Invalid or unknown: the backend gives the real validation error (or does the work).
            return (await self._forward(call)).relay()
        decisions = self._admit_batch(plan)
        accepted = _split_batch(plan, decisions, wanted=True)
        throttled = _split_batch(plan, decisions, wanted=False)
        if not any(accepted.values()):
            self._record_batch(accepted, throttled, call_refused=True)
            return _throttled_reply()
        only_accepted = {t: [w.request for w in writes] for t, writes in accepted.items() if writes}
        forwarded = msgspec.json.encode(dict(payload, RequestItems=only_accepted))
        reply = await self._forward(_Call(call.action, forwarded, call.headers))
        if reply.status != 200:
            self._refund_batch(accepted)
            return reply.relay()
        self._record_batch(accepted, throttled, call_refused=False)
        return _json_reply(200, self._batch_reply(payload, reply, accepted, throttled))

    async def _plan_batch(
        self, payload: dict[str, Any], call: _Call
    ) -> dict[str, list[_PlannedWrite]] | None:
        """Each table's requests with partition and WCU; None leaves the call to the backend."""
        request_items = payload.get("RequestItems")
        if not isinstance(request_items, dict) or not request_items:
            return None
        if not any(self._capacity(table) for table in request_items):
            return None  # nothing to throttle: the untouched request is the most faithful
        total = sum(len(reqs) if isinstance(reqs, list) else 0 for reqs in request_items.values())
        if not 0 < total <= BATCH_WRITE_MAX_REQUESTS:
            return None
        plan: dict[str, list[_PlannedWrite]] = {}
        for table, requests in request_items.items():
            planned = await self._plan_table_writes(table, requests, call)
            if planned is None:
                return None
            plan[table] = planned
        return plan

    async def _plan_table_writes(
        self, table: str, requests: Any, call: _Call
    ) -> list[_PlannedWrite] | None:
        if not isinstance(requests, list) or not requests:
            return None
        schema = await self._key_schema(table, call)
        if schema is None:
            return None
        capacity = self._capacity(table)
        planned: list[_PlannedWrite] = []
        seen: set[tuple[str, ...]] = set()
        for request in requests:
            item = _item_of_request(request)
            key = schema.key_of(item) if item is not None else None
            units = _write_units_of(request) if key is not None else None
            if item is None or key is None or key in seen or units is None:
                return None
            seen.add(key)
            partition = capacity.partition_of(item[schema.partition_key]) if capacity else 0
            planned.append(_PlannedWrite(request, partition, units))
        return planned

    def _admit_batch(self, plan: dict[str, list[_PlannedWrite]]) -> dict[str, list[bool]]:
        decisions: dict[str, list[bool]] = {}
        for table, writes in plan.items():
            capacity = self._capacity(table)
            if capacity is None:
                decisions[table] = [True] * len(writes)
            else:
                decisions[table] = capacity.admit_writes((w.partition, w.units) for w in writes)
        return decisions

    def _refund_batch(self, accepted: dict[str, list[_PlannedWrite]]) -> None:
        for table, writes in accepted.items():
            capacity = self._capacity(table)
            if capacity is not None:
                capacity.refund_writes((w.partition, w.units) for w in writes)

    def _record_batch(
        self,
        accepted: dict[str, list[_PlannedWrite]],
        throttled: dict[str, list[_PlannedWrite]],
        *,
        call_refused: bool,
    ) -> None:
        for table, writes in accepted.items():
            capacity = self._capacity(table)
            if capacity is not None:
                passed = [(w.partition, w.units) for w in writes]
                capacity.record_writes(passed, len(throttled[table]), call_refused=call_refused)

    def _batch_reply(
        self,
        payload: dict[str, Any],
        reply: _BackendReply,
        accepted: dict[str, list[_PlannedWrite]],
        throttled: dict[str, list[_PlannedWrite]],
    ) -> dict[str, Any]:
        backend = _decode(reply.body) or {}
        unprocessed: dict[str, list[Any]] = {
            table: [w.request for w in writes] for table, writes in throttled.items() if writes
        }
        for table, requests in (backend.get("UnprocessedItems") or {}).items():
            unprocessed.setdefault(table, []).extend(requests)
        result: dict[str, Any] = {"UnprocessedItems": unprocessed}
        if _wants_capacity(payload):
            result["ConsumedCapacity"] = self._batch_capacity(backend, accepted)
        if backend.get("ItemCollectionMetrics"):
            result["ItemCollectionMetrics"] = backend["ItemCollectionMetrics"]
        return result

    def _batch_capacity(
        self, backend: dict[str, Any], accepted: dict[str, list[_PlannedWrite]]
    ) -> list[dict[str, Any]]:
        """Our WCU for simulated tables; the backend's figure for the others."""
        reported = {entry.get("TableName"): entry for entry in backend.get("ConsumedCapacity", [])}
        entries = []
        for table, writes in accepted.items():
            if self._capacity(table) is not None:
                units = float(sum(w.units for w in writes))
                entries.append({"TableName": table, "CapacityUnits": units})
            elif table in reported:
                entries.append(reported[table])
        return entries

    async def _single_write(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body) or {}
        table = payload.get("TableName")
        capacity = self._capacity(table) if isinstance(table, str) else None
        write = await self._plan_single_write(payload, call) if capacity else None
        if capacity is None or write is None:
            return (await self._forward(call)).relay()
        if not capacity.admit_writes([write])[0]:
            capacity.record_writes([], 1, call_refused=True)
            return _throttled_reply()
        reply = await self._forward(call)
        if reply.charged_capacity():
            capacity.record_writes([write], 0, call_refused=False)
        else:
            capacity.refund_writes([write])
        return reply.relay()

    async def _plan_single_write(
        self, payload: dict[str, Any], call: _Call
    ) -> tuple[int, int] | None:
        """(partition, WCU) of a PutItem/DeleteItem/UpdateItem; None leaves it to the backend."""
        table = payload["TableName"]
        capacity = self._capacity(table)
        schema = await self._key_schema(table, call)
        key = _key_attributes(call.action, payload)
        key_value = key.get(schema.partition_key) if schema else None
        units = _single_write_units(call.action, payload)
        if capacity is None or units is None:
            return None
        if not isinstance(key_value, dict) or len(key_value) != 1:
            return None
        return capacity.partition_of(key_value), units

    # reads

    async def _read(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body)
        table = payload.get("TableName") if payload else None
        capacity = self._capacity(table) if isinstance(table, str) else None
        if capacity is None or not capacity.throttles_reads:
            return (await self._forward(call)).relay()
        if not capacity.may_read():
            return _throttled_reply()
        reply = await self._forward(call)
        if reply.status == 200:
            capacity.charge_read(_read_units_of_reply(_decode(reply.body) or {}, payload or {}))
        return reply.relay()

    # tables

    async def _schema_change(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body) or {}
        # A table re-created under the same name may have another key schema.
        self._schemas.pop(str(payload.get("TableName")), None)
        return (await self._forward(call)).relay()

    async def _key_schema(self, table: str, call: _Call) -> _KeySchema | None:
        """The table's key schema from the backend's DescribeTable (cached); None if unknown."""
        if table in self._schemas:
            return self._schemas[table]
        headers = CIMultiDict(call.headers)
        headers["X-Amz-Target"] = TARGET_PREFIX + "DescribeTable"
        body = msgspec.json.encode({"TableName": table})
        reply = await self._forward(_Call("DescribeTable", body, headers))
        described = _decode(reply.body) if reply.status == 200 else None
        schema = _schema_from_description(described) if described else None
        if schema is not None:
            self._schemas[table] = schema
        return schema

    # plumbing

    def _capacity(self, table: str | None) -> TableCapacity | None:
        with self._tables_lock:
            return self._tables.get(table) if table is not None else None

    @staticmethod
    def _forwarded(request: web.Request) -> CIMultiDict[str]:
        # The client's own headers, signature included: DynamoDB Local checks only its syntax.
        return CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_REQUEST_HEADERS
        )

    async def _forward(self, call: _Call, method: str = "POST", path: str = "/") -> _BackendReply:
        assert self._session is not None, "the proxy is not started"
        url = self._backend + path
        async with self._session.request(method, url, data=call.body, headers=call.headers) as r:
            return _BackendReply(r.status, await r.read(), CIMultiDict(r.headers))


@dataclass(frozen=True)
class _PlannedWrite:
    """One request of a BatchWriteItem, with where it lands and what it costs."""

    request: dict[str, Any]
    partition: int
    units: int


def _split_batch(
    plan: dict[str, list[_PlannedWrite]], decisions: dict[str, list[bool]], *, wanted: bool
) -> dict[str, list[_PlannedWrite]]:
    """Each table's writes whose admission decision is ``wanted``."""
    return {
        table: [w for w, passed in zip(writes, decisions[table], strict=True) if passed == wanted]
        for table, writes in plan.items()
    }


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _key_attributes(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    found = payload.get("Item") if action == "PutItem" else payload.get("Key")
    return found if isinstance(found, dict) else {}


def _schema_from_description(described: dict[str, Any]) -> _KeySchema | None:
    elements = (described.get("Table") or {}).get("KeySchema") or []
    roles = {element.get("KeyType"): element.get("AttributeName") for element in elements}
    if not roles.get("HASH"):
        return None
    return _KeySchema(partition_key=roles["HASH"], sort_key=roles.get("RANGE"))


# --- the server thread ---------------------------------------------------------------------------


class CapacitySimulator:
    """The running simulator: a loopback HTTP endpoint served from a background thread."""

    def __init__(self, backend_endpoint: str, now: Clock = time.monotonic) -> None:
        self._now = now
        self._tables: dict[str, TableCapacity] = {}
        self._tables_lock = threading.Lock()
        self._proxy = _Proxy(backend_endpoint.rstrip("/"), self._tables, self._tables_lock)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        # Bound here, before serving, so the port is ours with no window for another process.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="capacity-simulator", daemon=True
        )

    def start(self) -> CapacitySimulator:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def configure(
        self,
        table: str,
        *,
        wcu: float,
        partitions: int = 1,
        burst_seconds: float = 0.0,
        rcu: float | None = None,
        partition_wcu_cap: float = PARTITION_WCU_CAP,
        partition_rcu_cap: float = PARTITION_RCU_CAP,
    ) -> None:
        """Throttle ``table`` from now on, with fresh buckets and statistics."""
        config = SimulatedTable(
            wcu=wcu,
            partitions=partitions,
            burst_seconds=burst_seconds,
            rcu=rcu,
            partition_wcu_cap=partition_wcu_cap,
            partition_rcu_cap=partition_rcu_cap,
        )
        with self._tables_lock:
            self._tables[table] = TableCapacity(config, self._now)

    def unconfigure(self, table: str) -> None:
        """Let ``table`` pass through unthrottled again."""
        with self._tables_lock:
            self._tables.pop(table, None)

    def stats(self, table: str) -> SimulatorStats:
        return self._table(table).stats()

    def reset_stats(self, table: str) -> None:
        self._table(table).reset_stats()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        self._socket.close()

    def __enter__(self) -> CapacitySimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _table(self, table: str) -> TableCapacity:
        with self._tables_lock:
            if table not in self._tables:
                raise KeyError(f"table {table!r} is not configured in the capacity simulator")
            return self._tables[table]

    async def _serve(self) -> None:
        await self._proxy.start()
        # Room for a 16 MB BatchWriteItem, DynamoDB's own limit.
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._proxy.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._proxy.close()


def start_capacity_simulator(
    backend_endpoint: str, *, now: Clock = time.monotonic
) -> CapacitySimulator:
    """Serve a throttling DynamoDB endpoint in front of ``backend_endpoint`` (DynamoDB Local)."""
    return CapacitySimulator(backend_endpoint, now).start()
