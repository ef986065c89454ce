"""The capacity model on a manual clock: partition buckets, burst credit, hot keys, the
decision on a BatchWriteItem, statistics."""

from __future__ import annotations

from typing import Any

import pytest

from ddbpipe import codec
from ddbpipe.retry import ManualClock
from tools.capacity_model import (
    PARTITION_WCU_CAP,
    KeySchema,
    PartitionBucket,
    SimulatedTable,
    TableCapacity,
    batch_request_items,
    partition_of,
    plan_batch_write,
)


def padded_item(key: str, pad_bytes: int = 2000) -> dict[str, Any]:
    return {"pk": {"S": key}, "pad": {"S": "x" * pad_bytes}}


def key_in_other_partition(hot: str, partitions: int) -> str:
    hot_partition = partition_of({"S": hot}, partitions)
    return next(
        key
        for key in (f"cold-{index}" for index in range(1000))
        if partition_of({"S": key}, partitions) != hot_partition
    )


# --- buckets and partitions --------------------------------------------------------------------


def test_bucket_refills_at_its_rate_and_saves_nothing_without_burst() -> None:
    clock = ManualClock()
    bucket = PartitionBucket(rate=100, burst_seconds=0, clock=clock)
    assert bucket.try_take(100)
    assert not bucket.try_take(1)
    clock.advance(0.5)
    assert bucket.try_take(50)
    assert not bucket.try_take(1)
    clock.advance(60)  # idle time is not saved up without burst credit
    assert bucket.tokens == pytest.approx(100)


def test_refunded_units_can_be_taken_again_up_to_the_capacity() -> None:
    clock = ManualClock()
    bucket = PartitionBucket(rate=10, clock=clock)
    assert bucket.try_take(10)
    bucket.refund(4)
    assert bucket.try_take(4)
    assert not bucket.try_take(1)
    bucket.refund(1000)
    assert bucket.tokens == pytest.approx(10)


def test_burst_credit_lets_a_larger_batch_through_after_idle_time() -> None:
    clock = ManualClock()
    table = TableCapacity(SimulatedTable(wcu=100, burst_seconds=300), clock=clock)
    clock.advance(10)  # 10 s idle: 1 s allowance + 10 s of saved credit
    accepted = table.admit_writes([(0, 1)] * 1200)
    assert accepted.count(True) == 1100

    clock.advance(10_000)  # saved credit stops at burst_seconds
    assert table.admit_writes([(0, 1)] * 40_000).count(True) == 100 * 301

    without_burst = TableCapacity(SimulatedTable(wcu=100), clock=clock)
    clock.advance(10)
    assert without_burst.admit_writes([(0, 1)] * 1200).count(True) == 100


def test_hot_partition_key_gets_only_its_partitions_share() -> None:
    clock = ManualClock()
    table = TableCapacity(SimulatedTable(wcu=400, partitions=4), clock=clock)
    hot = table.partition_of({"S": "hot"})
    cold = table.partition_of({"S": key_in_other_partition("hot", 4)})
    accepted_hot = 0
    for _ in range(10):  # 10 s, offering the hot key far more than its share every 0.1 s
        for _ in range(10):
            accepted_hot += table.admit_writes([(hot, 1)] * 50).count(True)
            clock.advance(0.1)
        assert table.admit_writes([(cold, 1)] * 50).count(True) == 50
    # One second's allowance at the start, then 100 WCU/s: a quarter of the table's 400.
    assert accepted_hot == pytest.approx(100 + 100 * 9.9, abs=1)


def test_a_partition_never_exceeds_1000_wcu_even_on_a_huge_table() -> None:
    clock = ManualClock()
    config = SimulatedTable(wcu=40_000, partitions=4)
    assert config.partition_wcu == PARTITION_WCU_CAP
    table = TableCapacity(config, clock=clock)
    clock.advance(5)
    assert table.admit_writes([(0, 1)] * 5000).count(True) == 1000


def test_an_item_larger_than_the_bucket_passes_when_full_and_leaves_debt() -> None:
    clock = ManualClock()
    bucket = PartitionBucket(rate=10, clock=clock)
    assert bucket.try_take(400)  # a 400 KB item on a 10 WCU table
    assert bucket.tokens == pytest.approx(-390)
    clock.advance(30)
    assert not bucket.try_take(1)
    clock.advance(10)
    assert bucket.try_take(1)


def test_partition_of_is_stable_and_spreads_keys() -> None:
    assert partition_of({"S": "a"}, 8) == partition_of({"S": "a"}, 8)
    assert partition_of({"S": "1"}, 1000) != partition_of({"N": "1"}, 1000)
    used = {partition_of({"S": f"key-{index}"}, 4) for index in range(100)}
    assert used == {0, 1, 2, 3}


# --- a BatchWriteItem ----------------------------------------------------------------------------


def batch_of(table: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"RequestItems": {table: [{"PutRequest": {"Item": item}} for item in items]}}


def test_a_batch_beyond_the_capacity_is_accepted_in_part_and_the_rest_unprocessed() -> None:
    clock = ManualClock()
    capacity = TableCapacity(SimulatedTable(wcu=25), clock=clock)
    items = [padded_item(f"k{index:02}") for index in range(25)]
    assert {codec.write_units(codec.item_size(item)) for item in items} == {2}
    request_items = batch_request_items(batch_of("t", items))
    assert request_items is not None

    plan = plan_batch_write(request_items, {"t": KeySchema("pk")}, {"t": capacity})
    assert plan is not None
    admission = plan.admit()
    admission.record(call_refused=False)

    # 25 WCU in the bucket: the first 12 items of 2 WCU fit, in order.
    assert admission.accepted_request_items() == {"t": request_items["t"][:12]}
    reply = admission.reply({}, with_capacity=True)
    assert reply == {
        "UnprocessedItems": {"t": request_items["t"][12:]},
        "ConsumedCapacity": [{"TableName": "t", "CapacityUnits": 24.0}],
    }
    stats = capacity.stats()
    assert (stats.items_accepted, stats.items_throttled, stats.accepted_wcu) == (12, 13, 24)
    assert stats.calls_with_unprocessed == 1


def test_in_random_order_a_short_partition_refuses_writes_from_anywhere_in_the_batch() -> None:
    def accepted(order: str, seed: int) -> list[int]:
        capacity = TableCapacity(SimulatedTable(wcu=25, write_order=order, seed=seed),
                                 clock=ManualClock())
        writes = [(0, 2.0)] * 25  # 50 WCU into a partition with 25
        return [n for n, ok in enumerate(capacity.admit_writes(writes)) if ok]

    assert accepted("given", 0) == list(range(12))
    chosen = accepted("random", 0)
    assert len(chosen) == 12 and chosen != list(range(12))
    # Seeded: the same order on every run, another with another seed.
    assert accepted("random", 0) == chosen
    assert accepted("random", 1) != chosen
    with pytest.raises(ValueError, match="write_order must be one of given, random"):
        SimulatedTable(wcu=25, write_order="sorted")


def test_a_batch_with_nothing_accepted_is_refused_whole_and_can_be_refunded() -> None:
    clock = ManualClock()
    capacity = TableCapacity(SimulatedTable(wcu=4), clock=clock)
    schemas = {"t": KeySchema("pk")}
    first = plan_batch_write({"t": [{"PutRequest": {"Item": padded_item("a", 3000)}}]},
                             schemas, {"t": capacity})
    assert first is not None and not first.admit().nothing_accepted  # 3 of the 4 WCU taken
    big = {"t": [{"PutRequest": {"Item": padded_item("big", 4500)}}]}  # 5 WCU
    plan = plan_batch_write(big, schemas, {"t": capacity})
    assert plan is not None
    refused = plan.admit()
    assert refused.nothing_accepted
    refused.record(call_refused=True)
    stats = capacity.stats()
    assert (stats.throttled_requests, stats.items_throttled) == (1, 1)

    clock.advance(1)  # a full bucket again; an accepted write the store then refused...
    accepted = plan.admit()
    assert not accepted.nothing_accepted
    accepted.refund()  # ...gives its units back
    assert not plan.admit().nothing_accepted


def test_batches_the_model_cannot_cost_are_left_to_the_backend() -> None:
    capacity = TableCapacity(SimulatedTable(wcu=100), clock=ManualClock())
    schemas = {"t": KeySchema("pk")}
    assert batch_request_items(batch_of("t", [padded_item(f"k{i}") for i in range(26)])) is None
    assert batch_request_items({"RequestItems": {"t": []}}) is None
    assert batch_request_items({"RequestItems": {}}) is None
    assert batch_request_items(["not", "an", "object"]) is None
    unreadable = [
        [{"PutRequest": {"Item": padded_item("same")}}] * 2,  # one key twice
        [{"PutRequest": {"Item": {"other": {"S": "x"}}}}],  # no partition key
        [{"PutRequest": {"Item": padded_item("big", 410_000)}}],  # over 400 KB
        [{"UpdateRequest": {"Item": padded_item("a")}}],
    ]
    for requests in unreadable:
        assert plan_batch_write({"t": requests}, schemas, {"t": capacity}) is None


def test_stats_time_series_counts_accepted_wcu_per_second() -> None:
    clock = ManualClock()
    table = TableCapacity(SimulatedTable(wcu=10), clock=clock)
    table.record_writes([(0, 3), (0, 2)], 1, call_refused=False)
    clock.advance(1.5)
    table.record_writes([(0, 4)], 0, call_refused=False)
    table.record_writes([], 2, call_refused=True)
    stats = table.stats()
    assert stats.wcu_per_second == ((0, 5), (1, 4))
    assert (stats.items_accepted, stats.items_throttled, stats.items_sent) == (3, 3, 6)
    assert (stats.calls_with_unprocessed, stats.throttled_requests) == (1, 1)
    table.reset_stats()
    assert table.stats().items_sent == 0


def test_reads_are_metered_in_the_second_they_started() -> None:
    clock = ManualClock()
    table = TableCapacity(SimulatedTable(wcu=10), clock=clock)
    table.charge_read(2.0)
    started = table.now()
    clock.advance(1.2)
    table.charge_read(3.0, started_at=started)  # a slow read, counted when it began
    table.charge_read(1.5)
    stats = table.stats()
    assert stats.rcu_per_second == ((0, 5.0), (1, 1.5))
    assert stats.consumed_rcu == 6.5
    assert stats.throttled_reads == 0
