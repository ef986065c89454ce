"""A DynamoDB endpoint that answers at once, from memory, for client-bound benchmarks.

DynamoDB Local scans about 1,100 items/s on this machine's cores, far below what one ddbpipe
process converts, so it cannot show how the client scales with cores. This endpoint serves
one table (``pk`` S, ``sk`` S: ``tools/sample_data``'s items) from Scan pages built once, and
accepts every BatchWriteItem without reading it, so nearly all the CPU a job spends is the
client's. It answers DescribeTable, DescribeTimeToLive and ListTagsOfResource for any table
name (the import's target exists, with the same keys), Scan with Segment/TotalSegments,
ExclusiveStartKey and Limit, and BatchWriteItem (everything processed; no ConsumedCapacity,
so the client counts its own estimate). It meters, per second of its clock, the read units
its Scan pages reported and the items written (one WCU each: the items are under 1 KB);
``InstantStats`` answers them.

Run it in a process of its own, so its work does not share the measured processes' GIL::

    python tools/instant_dynamodb.py --items 400000     # prints the endpoint, serves until killed
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import sample_data  # noqa: E402
from tools.loopback_server import LoopbackServer  # noqa: E402

TARGET_PREFIX = "DynamoDB_20120810."
PAGE_BYTES = 1024 * 1024
JSON = "application/x-amz-json-1.0"
KEYS = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
ATTRIBUTES = [{"AttributeName": "pk", "AttributeType": "S"},
              {"AttributeName": "sk", "AttributeType": "S"}]


class InstantDynamo:
    """The handler: one table of ``items`` (wire JSON texts), split evenly over segments."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items
        self.table_bytes = sum(map(len, items))
        # (total segments, segment, limit) -> that segment's pages (and their read units),
        # built on first use.
        self._pages: dict[tuple[int, int, int | None], list[tuple[bytes, float]]] = {}
        self._lock = threading.Lock()
        self.read_units: Counter[int] = Counter()
        self.written: Counter[int] = Counter()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.headers.get("X-Amz-Target", "").removeprefix(TARGET_PREFIX)
        body = await request.read()
        if action == "BatchWriteItem":
            self.written[int(time.monotonic())] += body.count(b'"PutRequest"')
            return _reply(b'{"UnprocessedItems":{}}')
        if action == "InstantStats":
            stats = {"read_units": sorted(self.read_units.items()),
                     "written": sorted(self.written.items())}
            return _reply(json.dumps(stats).encode())
        payload = json.loads(body)
        if action == "Scan":
            page, units = self._scan(payload)
            self.read_units[int(time.monotonic())] += units
            return _reply(page)
        if action == "DescribeTable":
            return _reply(json.dumps({"Table": self._description(payload["TableName"])}).encode())
        if action == "DescribeTimeToLive":
            return _reply(b'{"TimeToLiveDescription":{"TimeToLiveStatus":"DISABLED"}}')
        if action == "ListTagsOfResource":
            return _reply(b'{"Tags":[]}')
        error = {"__type": "com.amazon.coral.validate#ValidationException",
                 "message": f"the instant endpoint does not answer {action}"}
        return web.Response(status=400, body=json.dumps(error).encode(), content_type=JSON)

    def _description(self, table: str) -> dict[str, Any]:
        return {
            "TableName": table, "TableStatus": "ACTIVE", "KeySchema": KEYS,
            "AttributeDefinitions": ATTRIBUTES, "ItemCount": len(self.items),
            "TableSizeBytes": self.table_bytes,
            "TableArn": f"arn:aws:dynamodb:us-east-1:000000000000:table/{table}",
            "TableId": "00000000-0000-0000-0000-000000000000",
            "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
        }

    def _scan(self, payload: dict[str, Any]) -> tuple[bytes, float]:
        total = int(payload.get("TotalSegments", 1))
        segment = int(payload.get("Segment", 0))
        pages = self._segment_pages(total, segment, payload.get("Limit"))
        start = payload.get("ExclusiveStartKey")
        index = int(start["sk"]["S"].rsplit("#", 1)[1]) + 1 if start else 0
        return pages[index] if index < len(pages) else _page([], None)

    def _segment_pages(
        self, total: int, segment: int, limit: int | None
    ) -> list[tuple[bytes, float]]:
        with self._lock:
            cached = self._pages.get((total, segment, limit))
            if cached is None:
                cached = self._pages[total, segment, limit] = self._build(total, segment, limit)
            return cached

    def _build(self, total: int, segment: int, limit: int | None) -> list[tuple[bytes, float]]:
        share = math.ceil(len(self.items) / total)
        items = self.items[segment * share:(segment + 1) * share]
        pages: list[list[bytes]] = [[]]
        size = 0
        for item in items:
            if pages[-1] and (size + len(item) > PAGE_BYTES or len(pages[-1]) == limit):
                pages.append([])
                size = 0
            pages[-1].append(item)
            size += len(item)
        return [_page(page, None if number == len(pages) - 1 else number)
                for number, page in enumerate(pages)]


def _page(items: list[bytes], number: int | None) -> tuple[bytes, float]:
    size = sum(map(len, items))
    units = math.ceil(size / 4096) / 2  # eventually consistent
    head = b'{"Items":[' + b",".join(items) + b"]," + f'"Count":{len(items)},'.encode()
    tail = f'"ScannedCount":{len(items)},"ConsumedCapacity":{{"CapacityUnits":{units}}}'
    if number is not None:  # the page's number, where a real key would go
        tail += f',"LastEvaluatedKey":{{"pk":{{"S":"page"}},"sk":{{"S":"page#{number}"}}}}'
    return head + tail.encode() + b"}", units


def _reply(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=JSON)


def table_items(count: int) -> list[bytes]:
    """``count`` of sample_data's items as wire JSON, the same for the same count."""
    return [sample_data.to_wire_json(item).encode()
            for item in itertools.islice(sample_data.iter_items(count), count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, required=True)
    args = parser.parse_args()
    server = LoopbackServer(InstantDynamo(table_items(args.items)), name="instant-dynamodb",
                            client_max_size=32 * 1024 * 1024)
    server.start()
    print(server.endpoint, flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
    server.stop()


if __name__ == "__main__":
    main()
