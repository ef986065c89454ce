"""Batches DynamoDB accepts, per-key order, round-robin interleaving and the hot-key cap."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator

import pytest

from ddbpipe.batching import MAX_BATCH_BYTES, BatchBuilder, interleave
from ddbpipe.ratelimit import KeyRateLimiter
from ddbpipe.records import WriteRecord, new_record
from ddbpipe.retry import ManualClock


def record(pk: str, sk: int | None = None, *, size: int = 100, version: int = 0) -> WriteRecord:
    """A put keyed by pk (and sk when given), of a made-up ``size``."""
    item = {"pk": {"S": pk}, "v": {"N": str(version)}}
    if sk is not None:
        item["sk"] = {"N": str(sk)}
    key_names = ("pk",) if sk is None else ("pk", "sk")
    return new_record("put", item, source="file-a", key_names=key_names, size=size)


def drain(builder: BatchBuilder) -> list[list[WriteRecord]]:
    """Take batches until the builder is empty, finishing each batch as if it was written."""
    batches = []
    while len(builder):
        batch = builder.take()
        assert batch, "records are held but none can go"
        batches.append(batch)
        for written in batch:
            builder.finish(written)
    return batches


def test_batches_respect_the_limits_and_never_repeat_a_key() -> None:
    rng = random.Random(11)
    builder = BatchBuilder()
    added = []
    for version in range(5000):
        # 300 keys for 5,000 records: plenty of duplicates, some big items.
        pk, sk = f"user-{rng.randrange(30)}", rng.randrange(10)
        size = rng.choice([100, 1000, 400_000])
        added.append(record(pk, sk, size=size, version=version))
        builder.add(added[-1])
    batches = drain(builder)
    for batch in batches:
        assert 1 <= len(batch) <= 25
        assert sum(r.size for r in batch) <= MAX_BATCH_BYTES
        keys = [r.key for r in batch]
        assert len(keys) == len(set(keys)), "two requests for one key in a batch"
    sent = [r for batch in batches for r in batch]
    assert Counter(map(id, sent)) == Counter(map(id, added)), "every record exactly once"
    assert order_per_key(sent) == order_per_key(added)


def order_per_key(records: list[WriteRecord]) -> dict[object, list[int]]:
    versions: dict[object, list[int]] = defaultdict(list)
    for r in records:
        versions[r.key].append(int(r.item["v"]["N"]))
    return dict(versions)


def test_batches_stop_at_16_mb() -> None:
    builder = BatchBuilder()
    for n in range(25):
        builder.add(record(f"k{n}", size=1_000_000))
    assert [len(b) for b in drain(builder)] == [16, 9]
    builder.add(record("too-big", size=MAX_BATCH_BYTES + 1))
    builder.add(record("small"))
    assert [r.item["pk"]["S"] for r in builder.take()] == ["too-big"]


def test_take_without_partial_waits_for_a_full_batch() -> None:
    builder = BatchBuilder()
    for n in range(24):
        builder.add(record(f"k{n}"))
    assert builder.take(partial=False) == []
    builder.add(record("k24"))
    assert len(builder.take(partial=False)) == 25


def test_a_busy_key_waits_until_its_record_is_finished() -> None:
    builder = BatchBuilder()
    first, second, other = record("a", version=1), record("a", version=2), record("b")
    for r in (first, second, other):
        builder.add(r)
    assert (len(builder), builder.ready) == (3, 2)
    assert builder.take() == [first, other]
    assert (len(builder), builder.ready, builder.busy) == (1, 0, 2)
    assert builder.take() == [], "a's next write must wait for the first one"
    builder.finish(first)
    assert builder.take() == [second]


def test_a_retried_record_goes_before_the_later_records_of_its_key() -> None:
    builder = BatchBuilder()
    first, second = record("a", version=1), record("a", version=2)
    builder.add(first)
    builder.add(second)
    builder.add(record("b"))
    assert builder.take()[0] is first
    builder.retry(first)
    assert builder.take()[0] is first
    builder.finish(first)
    assert builder.take() == [second]


def test_numbers_that_are_equal_are_one_key() -> None:
    for same in ("1.00", "1E0", "0.1e1", "+1"):
        delete = new_record(
            "delete", {"pk": {"S": "a"}, "sk": {"N": same}}, source="x", key_names=("pk", "sk")
        )
        assert record("a", 1).key == delete.key, same
    assert record("a", 10).key == new_record(
        "put", {"pk": {"S": "a"}, "sk": {"N": "1E1"}}, source="x", key_names=("pk", "sk")
    ).key
    assert record("a", 10).key != record("a", 1).key


def test_admit_holds_back_records_while_others_go() -> None:
    builder = BatchBuilder()
    for n in range(10):
        builder.add(record("hot", n, version=n) if n % 2 else record(f"cold-{n}"))
    batch = builder.take(admit=lambda r: r.item["pk"]["S"] != "hot")
    assert [r.item["pk"]["S"] for r in batch] == [f"cold-{n}" for n in range(0, 10, 2)]
    assert len(builder) == 5


# --- interleave ----------------------------------------------------------------------------


async def chunks_of(name: str, count: int, chunk: int = 10) -> AsyncIterator[list[str]]:
    for start in range(0, count, chunk):
        yield [f"{name}{n}" for n in range(start, min(count, start + chunk))]


def run_interleave(*args: object, **kwargs: object) -> list[str]:
    async def collect() -> list[str]:
        return [r async for r in interleave(*args, **kwargs)]  # type: ignore[arg-type]

    return asyncio.run(collect())


def test_interleave_alternates_between_streams_and_drains_all() -> None:
    merged = run_interleave(
        [chunks_of("a", 30), chunks_of("b", 30), chunks_of("c", 12)], width=3, per_turn=5
    )
    assert sorted(merged) == sorted(
        [f"a{n}" for n in range(30)] + [f"b{n}" for n in range(30)] + [f"c{n}" for n in range(12)]
    )
    assert merged[:15] == [f"{s}{n}" for s in "abc" for n in range(5)]
    # Each stream's own order is kept.
    for name in "abc":
        mine = [r for r in merged if r[0] == name]
        assert mine == sorted(mine, key=lambda r: int(r[1:]))
    # The first 60 records mix all three files: no long run from one file while others wait.
    runs = [len(list(group)) for _, group in itertools.groupby(r[0] for r in merged[:60])]
    assert max(runs) <= 5


def test_interleave_keeps_width_streams_open_and_opens_the_next_when_one_ends() -> None:
    opened: list[str] = []
    open_now: set[str] = set()
    most_open = 0

    async def stream(name: str, count: int) -> AsyncIterator[list[str]]:
        nonlocal most_open
        opened.append(name)
        open_now.add(name)
        most_open = max(most_open, len(open_now))
        try:
            async for chunk in chunks_of(name, count, chunk=3):
                await asyncio.sleep(0)
                yield chunk
        finally:
            open_now.discard(name)

    files = [("a", 4), ("b", 20), ("c", 9), ("d", 2), ("e", 7)]
    merged = run_interleave((stream(n, c) for n, c in files), width=2, per_turn=2)
    assert len(merged) == sum(c for _, c in files)
    assert opened == ["a", "b", "c", "d", "e"]
    assert most_open == 2
    assert not open_now


def test_interleave_passes_a_stream_error_on_and_closes_the_others() -> None:
    closed: list[str] = []

    async def good() -> AsyncIterator[list[int]]:
        try:
            while True:
                yield [1, 2, 3]
                await asyncio.sleep(0)
        finally:
            closed.append("good")

    async def bad() -> AsyncIterator[list[int]]:
        yield [4]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run_interleave([good(), bad()], width=2)
    assert closed == ["good"]


# --- the per-partition-key cap ---------------------------------------------------------------


def test_key_rate_limiter_holds_a_hot_key_to_its_rate_while_others_pass() -> None:
    clock = ManualClock()
    limiter = KeyRateLimiter(1000, clock=clock)
    builder = BatchBuilder()
    rng = random.Random(3)
    written: Counter[str] = Counter()
    sequence = 0
    step = 0.01
    for _ in range(1000):  # 10 simulated seconds
        while len(builder) < 2000:
            sequence += 1
            # 30% of all items share one partition key; the rest spread over 5,000 keys.
            pk = "hot" if rng.random() < 0.3 else f"cold-{rng.randrange(5000)}"
            builder.add(record(pk, sequence, size=1000))
        for _ in range(4):  # up to 100 items per step: 10,000 items/s offered
            batch = builder.take(
                admit=lambda r: limiter.try_take(r.key[0], 1)
            )
            for r in batch:
                written["hot" if r.item["pk"]["S"] == "hot" else "cold"] += 1
                builder.finish(r)
        clock.advance(step)
    # 1,000 WCU/s for 10 s plus one second of burst, and not starved either.
    assert 10_000 <= written["hot"] <= 11_000 + 25
    assert written["cold"] >= 8 * written["hot"] / 3, "the other keys must keep going"


def test_key_rate_limiter_forgets_the_least_recently_used_keys() -> None:
    clock = ManualClock()
    limiter = KeyRateLimiter(10, max_keys=3, clock=clock)
    for key in "abcd":
        assert limiter.try_take(key, 10)
    assert len(limiter) == 3
    assert not limiter.try_take("d", 1)
    assert limiter.seconds_until("d", 5) == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.try_take("d", 5)


def test_key_rate_limiter_forgets_keys_whose_buckets_refilled_so_memory_follows_the_rate(
) -> None:
    clock = ManualClock()
    limiter = KeyRateLimiter(10, clock=clock)
    for key in range(1000):  # distinct keys, as a table's items mostly are
        assert limiter.try_take(key, 10)
        clock.advance(0.01)
    # Only the keys of the last second (10 units at 10/s) are not full again yet.
    assert 95 <= len(limiter) <= 101  # (float rounding at the edge)
    assert limiter.try_take("in-debt", 30)  # bigger than the burst: 2 s of debt to wait out
    clock.advance(1.5)
    assert limiter.try_take("fresh", 1)
    assert len(limiter) == 2, "the refilled keys are gone; the one still in debt is not"
    assert not limiter.try_take("in-debt", 1)


def test_key_rate_limiter_lets_an_item_bigger_than_the_burst_through_a_full_bucket() -> None:
    clock = ManualClock()
    limiter = KeyRateLimiter(100, clock=clock)
    assert limiter.try_take("k", 400)  # a 400 KB item on a full bucket
    assert not limiter.try_take("k", 1)
    assert limiter.seconds_until("k", 1) == pytest.approx(3.01)


def test_a_partition_keys_places_in_a_batch_follow_its_share_of_the_ready_records() -> None:
    builder = BatchBuilder()
    for sk in range(30):  # a hot tenant: many items under one partition key, read first
        builder.add(record("hot", sk))
    for n in range(10):
        builder.add(record(f"cold-{n}", 0))
    first = builder.take()
    # 30 of the 40 ready records are the hot tenant's: 19 of the 25 places (round(25 * 3/4)),
    # the other partition keys one place each, in turn.
    assert sum(1 for r in first if r.item["pk"]["S"] == "hot") == 19
    assert sum(1 for r in first if r.item["pk"]["S"] != "hot") == 6
    for taken in first:
        builder.finish(taken)
    builder.add(record("late", 0))
    # 11 hot of 16 ready: 17 places, more than it has; the four cold keys left and "late" go.
    second = [r.item["pk"]["S"] for r in builder.take()]
    assert second.count("hot") == 11 and second.count("late") == 1 and len(second) == 16


def test_a_hot_tenant_is_in_every_batch_however_many_other_partition_keys_wait() -> None:
    # One place each in turn put the hot tenant behind all 400 others for each of its
    # records: one record in 16 batches, and its partition was left to write alone at the end.
    builder = BatchBuilder()
    for sk in range(200):
        builder.add(record("hot", sk))
    for n in range(400):
        builder.add(record(f"cold-{n}", 0))
    hot_per_batch = []
    for _ in range(8):
        batch = builder.take()
        hot_per_batch.append(sum(1 for r in batch if r.item["pk"]["S"] == "hot"))
        for taken in batch:
            builder.finish(taken)
    # A third of what is ready, so about a third of each batch (8 of 25: round(25 * 200/600)).
    assert all(7 <= count <= 9 for count in hot_per_batch), hot_per_batch
