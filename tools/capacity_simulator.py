"""A DynamoDB endpoint that throttles like DynamoDB, in front of DynamoDB Local.

DynamoDB Local stores data faithfully but never throttles, so importer tests and benchmarks
could never see a ``ProvisionedThroughputExceededException`` or ``UnprocessedItems``. This
loopback HTTP proxy, served from a background thread, forwards every request to a backend
DynamoDB Local; for the tables it was told about with ``configure()`` it first asks the
capacity model (``capacity_model.py``) which writes and reads the table accepts, forwards only
those, and answers the rest with DynamoDB's exact reply shapes; it meters what they consumed,
per second too (``stats``). Everything else (other tables, other actions, requests the model
cannot read) passes through untouched, so the backend gives DynamoDB's real answers and
validation errors.

Usage::

    with start_capacity_simulator(dynamodb_local.endpoint) as simulator:
        simulator.configure("orders", wcu=400, partitions=4)
        client = boto3.client("dynamodb", endpoint_url=simulator.endpoint)
        ...
        print(simulator.stats("orders").items_throttled)
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from ddbpipe.retry import Clock, SystemClock
from tools.capacity_model import (
    PARTITION_RCU_CAP,
    PARTITION_WCU_CAP,
    KeySchema,
    SimulatedTable,
    SimulatorStats,
    TableCapacity,
    batch_request_items,
    plan_batch_write,
    plan_single_write,
    read_units_of_reply,
    throttle_error,
)
from tools.loopback_server import LoopbackServer

__all__ = ["CapacitySimulator", "in_process_transport", "start_capacity_simulator"]

TARGET_PREFIX = "DynamoDB_20120810."
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

#: Headers that describe one hop's connection or body encoding, not the request itself.
#: Accept-Encoding is dropped so the backend answers uncompressed and replies can be parsed.
HOP_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "expect"}
)
HOP_REPLY_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


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
    return _json_reply(400, throttle_error())


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


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


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
        self._schemas: dict[str, KeySchema] = {}
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
            return await self._relay(call)
        return await handler(call)

    # writes

    async def _batch_write(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body)
        request_items = batch_request_items(payload)
        capacities = self._capacities(request_items or {})
        if payload is None or request_items is None or not capacities:
            # Invalid, or nothing to throttle: the untouched request is the most faithful.
            return await self._relay(call)
        schemas = await self._key_schemas(request_items, call)
        plan = plan_batch_write(request_items, schemas, capacities) if schemas else None
        if plan is None:
            return await self._relay(call)  # the backend gives the real validation error
        admission = plan.admit()
        if admission.nothing_accepted:
            admission.record(call_refused=True)
            return _throttled_reply()
        forwarded = msgspec.json.encode(
            dict(payload, RequestItems=admission.accepted_request_items())
        )
        reply = await self._forward(_Call(call.action, forwarded, call.headers))
        if reply.status != 200:
            admission.refund()
            return reply.relay()
        admission.record(call_refused=False)
        stored = _decode(reply.body) or {}
        return _json_reply(200, admission.reply(stored, with_capacity=_wants_capacity(payload)))

    async def _single_write(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body) or {}
        table = payload.get("TableName")
        capacity = self._capacity(table) if isinstance(table, str) else None
        if not isinstance(table, str) or capacity is None:
            return await self._relay(call)
        schema = await self._key_schema(table, call)
        write = plan_single_write(call.action, payload, schema, capacity) if schema else None
        if write is None:
            return await self._relay(call)
        if not capacity.admit_writes([write])[0]:
            capacity.record_writes([], 1, call_refused=True)
            return _throttled_reply()
        reply = await self._forward(call)
        if reply.charged_capacity():
            capacity.record_writes([write], 0, call_refused=False)
        else:
            capacity.refund_writes([write])
        return reply.relay()

    # reads

    async def _read(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body)
        table = payload.get("TableName") if payload else None
        capacity = self._capacity(table) if isinstance(table, str) else None
        if capacity is None:
            return await self._relay(call)
        # Reads of every configured table are metered; only those with an rcu are throttled.
        if not capacity.may_read():
            return _throttled_reply()
        started_at = capacity.now()
        reply = await self._forward(call)
        if reply.status == 200:
            units = read_units_of_reply(_decode(reply.body) or {}, payload or {})
            capacity.charge_read(units, started_at=started_at)
        return reply.relay()

    # tables

    async def _schema_change(self, call: _Call) -> web.StreamResponse:
        payload = _decode(call.body) or {}
        # A table re-created under the same name may have another key schema.
        self._schemas.pop(str(payload.get("TableName")), None)
        return await self._relay(call)

    async def _key_schemas(
        self, request_items: dict[str, Any], call: _Call
    ) -> dict[str, KeySchema] | None:
        """The key schema of every table of a batch; None if one is unknown."""
        schemas = {}
        for table in request_items:
            schema = await self._key_schema(table, call)
            if schema is None:
                return None
            schemas[table] = schema
        return schemas

    async def _key_schema(self, table: str, call: _Call) -> KeySchema | None:
        """The table's key schema from the backend's DescribeTable (cached); None if unknown."""
        if table in self._schemas:
            return self._schemas[table]
        headers = CIMultiDict(call.headers)
        headers["X-Amz-Target"] = TARGET_PREFIX + "DescribeTable"
        body = msgspec.json.encode({"TableName": table})
        reply = await self._forward(_Call("DescribeTable", body, headers))
        described = _decode(reply.body) if reply.status == 200 else None
        schema = KeySchema.from_description(described) if described else None
        if schema is not None:
            self._schemas[table] = schema
        return schema

    # plumbing

    def _capacity(self, table: str | None) -> TableCapacity | None:
        with self._tables_lock:
            return self._tables.get(table) if table is not None else None

    def _capacities(self, tables: dict[str, Any]) -> dict[str, TableCapacity]:
        """The simulated tables among ``tables``."""
        with self._tables_lock:
            return {table: self._tables[table] for table in tables if table in self._tables}

    @staticmethod
    def _forwarded(request: web.Request) -> CIMultiDict[str]:
        # The client's own headers, signature included: DynamoDB Local checks only its syntax.
        return CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_REQUEST_HEADERS
        )

    async def _relay(self, call: _Call) -> web.Response:
        return (await self._forward(call)).relay()

    async def _forward(self, call: _Call, method: str = "POST", path: str = "/") -> _BackendReply:
        assert self._session is not None, "the proxy is not started"
        url = self._backend + path
        async with self._session.request(method, url, data=call.body, headers=call.headers) as r:
            return _BackendReply(r.status, await r.read(), CIMultiDict(r.headers))


# --- the server thread ---------------------------------------------------------------------------


class CapacitySimulator(LoopbackServer):
    """The running simulator: a loopback HTTP endpoint served from a background thread.

    ``clock`` times every configured table's capacity (``SystemClock`` by default).
    """

    def __init__(self, backend_endpoint: str, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._tables: dict[str, TableCapacity] = {}
        self._tables_lock = threading.Lock()
        self._proxy = _Proxy(backend_endpoint.rstrip("/"), self._tables, self._tables_lock)
        # Room for a 16 MB BatchWriteItem, DynamoDB's own limit.
        super().__init__(self._proxy, name="capacity-simulator", client_max_size=20 * 1024 * 1024)

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
        write_order: str = "given",
    ) -> None:
        """Throttle ``table`` from now on, with fresh buckets and statistics (``write_order``:
        see ``SimulatedTable``)."""
        config = SimulatedTable(
            wcu=wcu,
            partitions=partitions,
            burst_seconds=burst_seconds,
            rcu=rcu,
            partition_wcu_cap=partition_wcu_cap,
            partition_rcu_cap=partition_rcu_cap,
            write_order=write_order,
        )
        with self._tables_lock:
            self._tables[table] = TableCapacity(config, clock=self._clock)

    def unconfigure(self, table: str) -> None:
        """Let ``table`` pass through unthrottled again."""
        with self._tables_lock:
            self._tables.pop(table, None)

    def stats(self, table: str) -> SimulatorStats:
        return self._table(table).stats()

    def reset_stats(self, table: str) -> None:
        self._table(table).reset_stats()

    def _table(self, table: str) -> TableCapacity:
        with self._tables_lock:
            if table not in self._tables:
                raise KeyError(f"table {table!r} is not configured in the capacity simulator")
            return self._tables[table]


def start_capacity_simulator(
    backend_endpoint: str, *, clock: Clock | None = None
) -> CapacitySimulator:
    """Serve a throttling DynamoDB endpoint in front of ``backend_endpoint`` (DynamoDB Local)."""
    return CapacitySimulator(backend_endpoint, clock=clock).start()


def in_process_transport(
    capacity: TableCapacity, schema: KeySchema, *, latency: float = 0.0
) -> Any:
    """A ``MockTransport`` that answers BatchWriteItem from ``capacity`` in this process, in
    DynamoDB's shapes (UnprocessedItems and ConsumedCapacity, or the throttling exception when
    nothing was accepted), after ``latency`` seconds; accepted writes count as stored. For a
    writer's tests and the hot-partition benchmark, which need no backend behind the model."""
    import json

    from ddbpipe.dynamo import HttpReply, MockTransport

    def answer_now(body: bytes) -> HttpReply:
        request_items = batch_request_items(json.loads(body))
        assert request_items is not None, body
        tables = list(request_items)
        plan = plan_batch_write(request_items, dict.fromkeys(tables, schema),
                                dict.fromkeys(tables, capacity))
        assert plan is not None, body
        admission = plan.admit()
        admission.record(call_refused=admission.nothing_accepted)
        refused = admission.nothing_accepted
        document = throttle_error() if refused else admission.reply({}, with_capacity=True)
        return HttpReply(400 if refused else 200,
                         {"Content-Type": JSON_CONTENT_TYPE}, json.dumps(document).encode())

    async def answer_later(body: bytes) -> HttpReply:
        await asyncio.sleep(latency)
        return answer_now(body)

    def answer(url: str, body: bytes, headers: Any) -> Any:
        assert headers["X-Amz-Target"].endswith(".BatchWriteItem")
        return answer_later(body) if latency > 0 else answer_now(body)

    return MockTransport(answer)
