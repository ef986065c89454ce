"""HotKeys: hot partition keys learned from throttled writes and paced on their own.

Unit tests on a manual clock, then the import's writer against the capacity model on simulated
time (the writer, its controller, the client and the table share one ManualClock, so the
results are the same on any machine, under any load).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from benchmarks.hot_partition import import_writer
from benchmarks.import_bench import HOT_KEY, hot_partition_bound, throttled_items
from ddbpipe.hot_keys import HotKeys
from ddbpipe.records import WriteRecord, new_record
from ddbpipe.retry import ManualClock
from ddbpipe.writer import TableWriter
from tools import sample_data
from tools.capacity_model import KeySchema, SimulatedTable, TableCapacity
from tools.capacity_simulator import in_process_transport


def record(pk: str, n: int = 0) -> WriteRecord:
    return new_record("put", {"pk": {"S": pk}, "sk": {"N": str(n)}}, source="s",
                      key_names=("pk", "sk"))


def pk(name: str) -> tuple[str, str]:
    """A partition key as records carry it."""
    return ("S", name)


HOT, COLD = record("hot"), record("cold")


def backlog_of(**waiting: int):  # type: ignore[no-untyped-def]
    return lambda key: waiting.get(key[1], 0)


def learned(keys: HotKeys, clock: ManualClock, *, rate: float = 100.0) -> HotKeys:
    """``keys`` after a throttle of "hot" with 50 of 100 ready records: hot at 35 units/s."""
    keys.throttled([HOT], [HOT, COLD], backlog=backlog_of(hot=50), ready=100, rate=rate)
    return keys


# --- learning ---------------------------------------------------------------------------------


def test_a_throttled_key_with_a_backlog_beside_others_is_learned_at_its_share_of_the_rate() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock), clock)
    assert keys.learned == 1
    # Half of what is ready, at 100 units/s, cut by 0.7.
    assert keys.rate(pk("hot")) == pytest.approx(35.0)
    assert keys.rate(pk("cold")) is None


@pytest.mark.parametrize(("waiting", "ready"), [
    (50, 60),   # the others have 10 ready: the hot key is nearly all there is to write
    (10, 100),  # a key with 10 ready is no hotter than any other
])
def test_no_key_is_learned_without_a_backlog_beside_others(waiting: int, ready: int) -> None:
    keys = HotKeys(clock=ManualClock())
    blamed = keys.throttled([HOT], [HOT, COLD], backlog=backlog_of(hot=waiting), ready=ready,
                            rate=100.0)
    assert not blamed
    assert keys.learned == 0 and len(keys) == 0


# --- blame --------------------------------------------------------------------------------------


def test_a_hot_key_over_represented_among_the_throttled_writes_takes_the_blame() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock), clock)
    clock.advance(1.0)
    sent = [record("hot", n) for n in range(5)] + [record(f"c{n}") for n in range(20)]
    # 4 of the 5 throttled writes are the hot key's, which is 5 of the 25 sent: its partition.
    throttled = sent[:4] + sent[5:6]
    rate_before = keys.rate(pk("hot"))
    assert keys.throttled(throttled, sent, backlog=backlog_of(hot=50), ready=100, rate=100.0)
    assert keys.rate(pk("hot")) == pytest.approx(0.7 * rate_before)


def test_writes_refused_alike_are_the_tables_shortage_and_not_the_hot_keys() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock), clock)
    clock.advance(1.0)
    sent = [record("hot", n) for n in range(5)] + [record(f"c{n}") for n in range(20)]
    rate_before = keys.rate(pk("hot"))
    # One in five of each: a one-partition table short of capacity.
    throttled = sent[:1] + sent[5:9]
    assert not keys.throttled(throttled, sent, backlog=backlog_of(hot=50), ready=100, rate=100.0)
    # The whole call refused is the same.
    assert not keys.throttled(sent, sent, backlog=backlog_of(hot=50), ready=100, rate=100.0)
    assert keys.rate(pk("hot")) == rate_before


def test_a_hot_keys_rate_is_cut_once_per_cooldown_and_at_its_floor_takes_no_blame() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock, floor=10.0, cooldown=0.5), clock)
    cut = {"backlog": backlog_of(hot=50), "ready": 100, "rate": 100.0}
    clock.advance(0.5)  # a cooldown since it was learned, before any growth
    assert keys.throttled([HOT], [HOT, COLD], **cut)
    assert keys.rate(pk("hot")) == pytest.approx(35.0 * 0.7)
    clock.advance(0.1)  # within the cooldown: blamed, not cut again
    assert keys.throttled([HOT], [HOT, COLD], **cut)
    assert keys.rate(pk("hot")) == pytest.approx(35.0 * 0.7)
    assert keys.cuts == 1
    for _ in range(5):
        clock.advance(0.5)
        keys.throttled([HOT], [HOT, COLD], **cut)
    assert keys.rate(pk("hot")) == 10.0
    assert not keys.throttled([HOT], [HOT, COLD], **cut)


def test_a_hot_keys_rate_grows_without_cuts_and_it_is_forgotten_at_the_cap() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock, cap=100.0, cooldown=0.5, growth=1.1), clock)
    clock.advance(0.5)  # the cooldown: no growth yet
    assert keys.rate(pk("hot")) == pytest.approx(35.0)
    clock.advance(1.0)  # two cooldowns' growth
    assert keys.rate(pk("hot")) == pytest.approx(35.0 * 1.1**2)
    clock.advance(6.0)  # 35 * 1.1 ** 14 > 100
    assert keys.rate(pk("hot")) is None
    assert len(keys) == 0


# --- pacing -------------------------------------------------------------------------------------


def test_a_hot_keys_records_are_held_to_its_rate_and_others_pass() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock), clock)  # 35 units/s, 3.5 units of burst
    assert not keys.admit(HOT)  # it starts with nothing saved
    assert keys.held_back
    assert keys.admit(COLD)
    clock.advance(0.1)
    admitted = sum(keys.admit(record("hot", n)) for n in range(10))
    assert admitted == 3
    # A write bigger than the burst passes on a full bucket.
    big = new_record("put", {"pk": {"S": "hot"}, "sk": {"N": "1"}, "pad": {"S": "x" * 9000}},
                     source="s", key_names=("pk", "sk"))
    clock.advance(1.0)
    assert keys.admit(big)
    assert not keys.admit(HOT)


def test_release_forgets_every_hot_key() -> None:
    clock = ManualClock()
    keys = learned(HotKeys(clock=clock), clock)
    keys.admit(HOT)
    keys.release()
    assert len(keys) == 0 and not keys.held_back and keys.released == 1
    assert keys.admit(HOT)


@pytest.mark.parametrize("settings", [
    {"floor": 0.0}, {"floor": 2000.0}, {"beta": 1.0}, {"growth": 1.0}, {"margin": 0.5},
])
def test_settings_that_cannot_work_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="HotKeys needs"):
        HotKeys(**settings)  # type: ignore[arg-type]


# --- the import's writer against the capacity model, on simulated time ----------------------


@dataclass
class Outcome:
    seconds: float
    of_bound: float
    resends_per_item: float
    #: When the last write outside the hot partition was done, as a fraction of the job.
    others_done: float
    hot_keys: HotKeys | None
    controller_cuts: int


def import_hot_partition(
    *, with_hot_keys: bool, write_order: str, partitions: int = 4, items: int = 3000
) -> Outcome:
    """The hot-partition scenario (``benchmarks/hot_partition.py``): 30% of ~1 KB items under
    one partition key, a 400 WCU/s table, --target-wcu 2000, the writer built as an import
    builds it."""
    clock = ManualClock()
    written = throttled_items(items, 0.3)
    records = [new_record("put", sample_data.to_wire(item), source="s", key_names=("pk", "sk"))
               for item in written]
    table = TableCapacity(SimulatedTable(wcu=400, partitions=partitions,
                                         write_order=write_order), clock=clock)
    hot_partition = table.partition_of({"S": HOT_KEY})
    others_done = 0.0

    def note(batch: list[WriteRecord], consumed: float) -> None:
        nonlocal others_done
        if any(table.partition_of(r.item["pk"]) != hot_partition for r in batch):
            others_done = clock.monotonic()

    async def source() -> AsyncIterator[WriteRecord]:
        for one in records:
            yield one

    async def scenario() -> TableWriter:
        writer = import_writer(in_process_transport(table, KeySchema("pk", "sk")), clock,
                               target_wcu=2000.0, with_hot_keys=with_hot_keys, on_written=note)
        await writer.write(source())
        return writer

    started = clock.monotonic()
    writer = asyncio.run(scenario())
    seconds = clock.monotonic() - started
    stats = table.stats()
    assert writer.written == stats.items_accepted == items
    assert writer.dead_lettered == 0
    controller = writer.controller
    assert controller is not None
    return Outcome(seconds, seconds / hot_partition_bound(written, 400, partitions),
                   stats.items_throttled / items, (others_done - started) / seconds,
                   writer.hot_keys, getattr(controller, "cuts", 0))


def test_with_a_hot_key_the_other_partitions_keep_their_speed() -> None:
    # DynamoDB writes a batch's items in parallel: which of them a short partition refuses is
    # not said, so the model picks at random.
    paced = import_hot_partition(with_hot_keys=True, write_order="random")
    one_rate = import_hot_partition(with_hot_keys=False, write_order="random")
    assert paced.hot_keys is not None and paced.hot_keys.learned >= 1
    assert paced.hot_keys.cuts >= 1
    # The other partitions are done long before the hot one; with one rate for the whole
    # table they are held to its pace and finish with it.
    assert paced.others_done <= 0.8, paced
    assert one_rate.others_done >= 0.95, one_rate
    # The job still ends with the hot partition, within the goal, with few re-sends.
    assert paced.of_bound <= 1.10, paced
    assert paced.resends_per_item <= 0.15, paced


def test_on_a_one_partition_table_the_import_slows_as_without_hot_keys() -> None:
    # There every key's writes are refused alike: no key is to blame, the import's rate is.
    paced = import_hot_partition(with_hot_keys=True, write_order="random", partitions=1,
                                 items=2000)
    one_rate = import_hot_partition(with_hot_keys=False, write_order="random", partitions=1,
                                    items=2000)
    assert paced.controller_cuts >= 1
    assert paced.seconds <= 1.05 * one_rate.seconds, (paced, one_rate)
    assert paced.resends_per_item <= one_rate.resends_per_item + 0.02, (paced, one_rate)


def test_when_the_replies_do_not_single_out_the_hot_key_nothing_changes() -> None:
    # In the batch's order the hot key's writes come first and take the partition's units;
    # the refusals fall on the other keys there, and the import behaves as with one rate.
    paced = import_hot_partition(with_hot_keys=True, write_order="given")
    one_rate = import_hot_partition(with_hot_keys=False, write_order="given")
    assert paced.of_bound <= 1.10, paced
    assert paced.seconds <= 1.05 * one_rate.seconds, (paced, one_rate)
