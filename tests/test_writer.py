"""TableWriter against the real DynamoDB Local (content, bad items), on a manual clock against
the capacity model (the rate it holds, in simulated seconds), and against a small server
that throttles (no item lost, the controller reacts)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import botocore.credentials
import pytest
from aiohttp import web

from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient, HttpReply
from ddbpipe.errors import TableNotFoundError
from ddbpipe.progress import JobProgress
from ddbpipe.ratelimit import AdaptiveRate, KeyRateLimiter, TokenBucket
from ddbpipe.records import WriteRecord, new_record
from ddbpipe.retry import ManualClock, RetryPolicy
from ddbpipe.writer import TableWriter
from tests.endpoints import serving as serve_post
from tools.capacity_model import KeySchema, SimulatedTable, TableCapacity
from tools.capacity_simulator import in_process_transport

ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"


def writes_only_once(endpoint: str) -> DynamoClient:
    """A client that leaves throttles to the writer instead of retrying them itself."""
    return DynamoClient.open(
        AwsOptions(region="us-east-1", endpoint_url=endpoint), retry=RetryPolicy(max_attempts=1)
    )


def put(
    item: dict[str, Any], source: str = "shard-0", key_names: tuple[str, ...] = ("pk",)
) -> WriteRecord:
    return new_record("put", item, source=source, key_names=key_names)


async def stream(records: list[WriteRecord]) -> AsyncIterator[WriteRecord]:
    for record in records:
        yield record


class Outcomes:
    """What the callbacks reported."""

    def __init__(self) -> None:
        self.written: list[WriteRecord] = []
        self.consumed = 0.0
        self.dead: list[tuple[WriteRecord, str]] = []

    def on_written(self, records: list[WriteRecord], consumed: float) -> None:
        self.written.extend(records)
        self.consumed += consumed

    def on_dead_letter(self, record: WriteRecord, reason: str) -> None:
        self.dead.append((record, reason))


def make_writer(
    client: DynamoClient,
    table: str,
    outcomes: Outcomes,
    *,
    rate: float = 1_000_000.0,
    key_attributes: tuple[str, ...] = ("pk",),
    **options: Any,
) -> tuple[TableWriter, AdaptiveRate]:
    bucket = TokenBucket(rate)
    controller = AdaptiveRate(rate, bucket=bucket)
    writer = TableWriter(
        client,
        table,
        key_attributes,
        bucket=bucket,
        controller=controller,
        on_written=outcomes.on_written,
        on_dead_letter=outcomes.on_dead_letter,
        **options,
    )
    return writer, controller


def scan_all(dynamodb_client: Any, table: str) -> dict[tuple[str, ...], dict[str, Any]]:
    items = {}
    for page in dynamodb_client.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            key = (item["pk"]["S"],) + ((item["sk"]["N"],) if "sk" in item else ())
            items[key] = item
    return items


# --- against DynamoDB Local -----------------------------------------------------------------


def test_every_record_is_written_with_the_last_write_of_each_key_winning(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table(hash_key=("pk", "S"), range_key=("sk", "N"))
    rng = random.Random(5)
    records = []
    for version in range(3000):
        # 2,000 distinct keys, so about a third of the writes overwrite an earlier one.
        pk, sk = f"user-{rng.randrange(200)}", rng.randrange(10)
        item = {"pk": {"S": pk}, "sk": {"N": str(sk)}, "version": {"N": str(version)}}
        item["payload"] = {"S": "x" * rng.randrange(10, 3000)}
        records.append(put(item, source=f"shard-{version % 4}", key_names=("pk", "sk")))
    expected = {(r.item["pk"]["S"], r.item["sk"]["N"]): r.item for r in records}
    outcomes = Outcomes()

    async def scenario() -> TableWriter:
        async with writes_only_once(dynamodb_local.endpoint) as client:
            writer, _ = make_writer(
                client, table, outcomes, key_attributes=("pk", "sk"), concurrency=8
            )
            await writer.write(stream(records))
            return writer

    writer = asyncio.run(scenario())
    assert writer.read == writer.written == 3000
    assert writer.dead_lettered == 0
    assert len(outcomes.written) == 3000 and not outcomes.dead
    assert {id(r) for r in outcomes.written} == {id(r) for r in records}
    assert writer.consumed_wcu == pytest.approx(outcomes.consumed)
    assert writer.consumed_wcu >= sum(max(1, -(-r.size // 1024)) for r in records)
    assert scan_all(dynamodb_client, table) == expected


def test_items_dynamodb_rejects_are_dead_lettered_and_the_rest_written(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table()
    good = [put({"pk": {"S": f"good-{n:03d}"}, "n": {"N": str(n)}}) for n in range(120)]
    empty_set = put({"pk": {"S": "bad-set"}, "tags": {"SS": []}})
    wrong_key_type = put({"pk": {"N": "17"}, "n": {"N": "1"}})
    records = good[:50] + [empty_set] + good[50:90] + [wrong_key_type] + good[90:]
    outcomes = Outcomes()

    async def scenario() -> TableWriter:
        async with writes_only_once(dynamodb_local.endpoint) as client:
            writer, _ = make_writer(client, table, outcomes, concurrency=4)
            await writer.write(stream(records))
            return writer

    writer = asyncio.run(scenario())
    assert (writer.read, writer.written, writer.dead_lettered) == (122, 120, 2)
    reasons = dict((r.item["pk"].get("S", "wrong-type"), reason) for r, reason in outcomes.dead)
    assert set(reasons) == {"bad-set", "wrong-type"}
    assert "ValidationException" in reasons["bad-set"]
    assert "empty" in reasons["bad-set"].lower()
    assert "ValidationException" in reasons["wrong-type"]
    assert "type" in reasons["wrong-type"].lower()
    assert set(scan_all(dynamodb_client, table)) == {(r.item["pk"]["S"],) for r in good}


def dynamo_reply(status: int, document: dict[str, Any]) -> HttpReply:
    headers = {"Content-Type": "application/x-amz-json-1.0"}
    return HttpReply(status, headers, json.dumps(document).encode())


def test_the_write_rate_holds_at_the_target() -> None:
    # Simulated time: the writer's bucket, controller and client and the table share one
    # manual clock, so the rate is measured in simulated seconds, whatever the machine's load.
    clock = ManualClock()
    target, batch_wcu = 400.0, 25
    ample = TableCapacity(SimulatedTable(wcu=100_000, partitions=100), clock=clock)
    # Items of just under 1 KB: one WCU each.
    records = [put({"pk": {"S": f"k-{n:05d}"}, "pad": {"S": "x" * 1000}}) for n in range(2600)]
    assert all(r.size <= 1024 for r in records)
    outcomes = Outcomes()

    async def scenario() -> TableWriter:
        client = DynamoClient(
            region="us-east-1",
            endpoint="https://dynamodb.us-east-1.amazonaws.com",
            credentials=botocore.credentials.Credentials("test-key", "test-secret"),
            retry=RetryPolicy(max_attempts=1),
            transport=in_process_transport(ample, KeySchema("pk")),
            clock=clock,
        )
        bucket = TokenBucket(target, clock=clock)
        writer = TableWriter(
            client, "t", ("pk",), bucket=bucket,
            controller=AdaptiveRate(target, bucket=bucket, clock=clock), concurrency=8,
            on_written=outcomes.on_written, on_dead_letter=outcomes.on_dead_letter, clock=clock,
        )
        await writer.write(stream(records))
        return writer

    writer = asyncio.run(scenario())
    stats = ample.stats()
    assert writer.written == len(outcomes.written) == stats.items_accepted == 2600
    assert (writer.dead_lettered, writer.throttled_requests, writer.unprocessed_items) == (0, 0, 0)
    assert stats.items_throttled == 0
    per_second = dict(stats.wcu_per_second)
    # Second 0 spends the bucket's initial second of burst; seconds 1 to 4 are steady (the
    # run goes on into second 5). A second's count is in whole batches, so each steady second,
    # and the window as a whole, is within one batch of the target.
    window = range(1, 5)
    assert max(per_second) > window[-1], per_second
    assert all(abs(per_second.get(s, 0.0) - target) <= batch_wcu for s in window), per_second
    achieved = sum(per_second.get(s, 0.0) for s in window)
    assert abs(achieved - target * len(window)) <= batch_wcu, per_second


# --- against a server that throttles --------------------------------------------------------


class ThrottlingDynamo:
    """A BatchWriteItem endpoint that keeps what it accepts and throttles at random.

    A call is refused whole (ProvisionedThroughputExceededException) with ``p_throttle``; of
    the others, each request comes back in UnprocessedItems with ``p_unprocessed``.
    """

    def __init__(
        self, *, p_throttle: float, p_unprocessed: float, seed: int = 1, delay: float = 0.0
    ) -> None:
        self.p_throttle = p_throttle
        self.p_unprocessed = p_unprocessed
        self.delay = delay
        self.rng = random.Random(seed)
        self.items: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.error_code = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = json.loads(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error_code:
            return error(400, self.error_code)
        if self.rng.random() < self.p_throttle:
            return error(400, "ProvisionedThroughputExceededException")
        ((table, requests),) = body["RequestItems"].items()
        unprocessed = []
        for one in requests:
            if self.rng.random() < self.p_unprocessed:
                unprocessed.append(one)
                continue
            item = one["PutRequest"]["Item"]
            self.items[item["pk"]["S"]] = item
        consumed = len(requests) - len(unprocessed)
        document: dict[str, Any] = {
            "UnprocessedItems": {table: unprocessed} if unprocessed else {},
            "ConsumedCapacity": [{"TableName": table, "CapacityUnits": float(consumed)}],
        }
        return web.json_response(document, content_type="application/x-amz-json-1.0")


def error(status: int, code: str) -> web.Response:
    document = {"__type": ERROR_PREFIX + code, "message": "canned"}
    return web.json_response(document, status=status, content_type="application/x-amz-json-1.0")


def serving(fake: ThrottlingDynamo) -> AbstractAsyncContextManager[str]:
    # Handlers still sleeping (the cancellation test) are not waited for at shutdown.
    return serve_post(fake.handle, shutdown_timeout=0.1)


def versioned_records(count: int, keys: int) -> list[WriteRecord]:
    return [
        put({"pk": {"S": f"k-{n % keys}"}, "version": {"N": str(n)}}, source=f"s-{n % 3}")
        for n in range(count)
    ]


FAST_RETRIES = {"backoff": RetryPolicy(base_delay=0.001, max_delay=0.02)}


def test_throttles_and_unprocessed_items_lose_nothing_and_slow_the_rate() -> None:
    fake = ThrottlingDynamo(p_throttle=0.15, p_unprocessed=0.2)
    records = versioned_records(2000, keys=700)
    outcomes = Outcomes()

    async def scenario() -> tuple[TableWriter, AdaptiveRate]:
        async with serving(fake) as endpoint, writes_only_once(endpoint) as client:
            writer, controller = make_writer(
                client, "fake", outcomes, concurrency=8, **FAST_RETRIES
            )
            controller.cooldown = 0.01
            writer.progress = progress
            await writer.write(stream(records))
            return writer, controller

    progress = JobProgress()
    writer, controller = asyncio.run(scenario())
    # Throttled calls and replies with UnprocessedItems, each a throttle signal.
    assert progress.throttles > writer.throttled_requests
    assert progress.throttles >= controller.cuts
    assert progress.consumed_capacity == 2000
    assert progress.current_rate == controller.rate
    assert writer.read == writer.written == 2000
    assert writer.dead_lettered == 0
    assert writer.throttled_requests > 0 and writer.unprocessed_items > 0
    assert controller.cuts > 0 and controller.rate < controller.target
    assert writer.consumed_wcu == 2000, "a record is counted once, when it is written"
    # The last version of every key won, even where an earlier version was retried.
    last = {r.item["pk"]["S"]: r.item for r in records}
    assert fake.items == last


def test_records_past_the_retry_deadline_are_dead_lettered_with_the_reason() -> None:
    fake = ThrottlingDynamo(p_throttle=1.0, p_unprocessed=0.0)
    records = versioned_records(60, keys=60)
    outcomes = Outcomes()

    async def scenario() -> TableWriter:
        async with serving(fake) as endpoint, writes_only_once(endpoint) as client:
            writer, _ = make_writer(
                client, "fake", outcomes, retry_deadline=0.3, concurrency=4, **FAST_RETRIES
            )
            await writer.write(stream(records))
            return writer

    writer = asyncio.run(scenario())
    assert (writer.read, writer.written, writer.dead_lettered) == (60, 0, 60)
    assert {id(r) for r, _ in outcomes.dead} == {id(r) for r in records}
    assert all("retry deadline" in reason for _, reason in outcomes.dead)
    assert all("throttled" in reason for _, reason in outcomes.dead)


def test_an_error_about_the_table_stops_the_writer() -> None:
    fake = ThrottlingDynamo(p_throttle=0.0, p_unprocessed=0.0)
    fake.error_code = "ResourceNotFoundException"
    outcomes = Outcomes()

    async def scenario() -> TableWriter:
        async with serving(fake) as endpoint, writes_only_once(endpoint) as client:
            writer, _ = make_writer(client, "fake", outcomes)
            with pytest.raises(TableNotFoundError):
                await writer.write(stream(versioned_records(100, keys=100)))
            return writer

    writer = asyncio.run(scenario())
    assert writer.written == 0 and writer.dead_lettered == 0
    assert not outcomes.written and not outcomes.dead


def test_cancelling_stops_promptly_and_counts_nothing_unconfirmed_as_written() -> None:
    fake = ThrottlingDynamo(p_throttle=0.0, p_unprocessed=0.0, delay=30.0)
    outcomes = Outcomes()

    async def scenario() -> tuple[TableWriter, float]:
        async with serving(fake) as endpoint, writes_only_once(endpoint) as client:
            writer, _ = make_writer(client, "fake", outcomes, concurrency=4)
            task = asyncio.create_task(writer.write(stream(versioned_records(500, keys=500))))
            while fake.calls < 4:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return writer, time.monotonic() - started

    writer, took = asyncio.run(scenario())
    assert took < 1.0
    assert writer.read > 0 and writer.written == 0 and not outcomes.written


def test_a_hot_partition_key_is_held_to_its_cap_while_others_go() -> None:
    fake = ThrottlingDynamo(p_throttle=0.0, p_unprocessed=0.0)
    # Every third record is for one partition key (its sort keys differ).
    records = [
        put(
            {"pk": {"S": "hot" if n % 3 == 0 else f"cold-{n}"}, "sk": {"N": str(n)}},
            key_names=("pk", "sk"),
        )
        for n in range(3000)
    ]
    outcomes = Outcomes()
    hot_written_at: list[float] = []

    def note_hot(written: list[WriteRecord], consumed: float) -> None:
        outcomes.on_written(written, consumed)
        now = time.monotonic()
        hot_written_at.extend(now for r in written if r.item["pk"]["S"] == "hot")

    async def scenario() -> float:
        async with serving(fake) as endpoint, writes_only_once(endpoint) as client:
            writer = TableWriter(
                client,
                "fake",
                ("pk", "sk"),
                bucket=TokenBucket(1_000_000),
                key_limiter=KeyRateLimiter(400, burst=50),
                on_written=note_hot,
            )
            started = time.monotonic()
            await writer.write(stream(records))
            return time.monotonic() - started

    took = asyncio.run(scenario())
    assert len(outcomes.written) == 3000
    assert len(hot_written_at) == 1000
    # 1,000 hot records at 400/s after a burst of 50 take at least 2.4 s, however fast the
    # rest goes (a loaded machine only makes it slower, so no upper bound here).
    hot_span = hot_written_at[-1] - hot_written_at[0]
    assert hot_span >= 0.95 * (1000 - 50) / 400
    assert took >= hot_span
    cold_done = [r for r in outcomes.written[:1500] if r.item["pk"]["S"] != "hot"]
    assert len(cold_done) > 1000, "the other keys were not made to wait for the hot one"
