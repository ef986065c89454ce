"""One capacity budget for many processes (shared_capacity.py), on simulated time.

The tasks here share an account through ``local_channel``; on a cluster the same messages go
through the Dask scheduler (tests/test_cluster.py).
"""

from __future__ import annotations

import asyncio

import pytest

from ddbpipe.retry import ManualClock
from ddbpipe.shared_capacity import (
    LEASE_AHEAD_SECONDS,
    AccountLink,
    BudgetSpec,
    CapacityAccount,
    LeasedBucket,
    SharedController,
    local_channel,
)


def links(account: CapacityAccount, count: int, clock: ManualClock) -> list[AccountLink]:
    return [AccountLink(local_channel(account), worker=f"w{n}", clock=clock)
            for n in range(count)]


def test_workers_drawing_from_one_account_hold_its_rate_together() -> None:
    clock = ManualClock()
    rate, seconds = 100.0, 30.0
    account = CapacityAccount(BudgetSpec(rate, burst=rate / 4), clock=clock)
    spent: list[tuple[float, float]] = []

    async def worker(link: AccountLink, cost: float) -> None:
        bucket = LeasedBucket(link)
        while clock.monotonic() < seconds:
            await bucket.acquire(cost)
            spent.append((clock.monotonic(), cost))

    async def main() -> None:
        await asyncio.gather(*(worker(link, cost) for link, cost
                               in zip(links(account, 3, clock), (2.0, 5.0, 13.0), strict=True)))

    asyncio.run(main())
    total = sum(cost for _, cost in spent)
    # The rate for the whole time, plus the burst and what each worker leased ahead.
    assert rate * seconds * 0.95 <= total <= rate * seconds + rate / 4 + 3 * (13 + rate * 0.1)
    for start in range(0, 25, 5):  # and no 5 s window more than 10% over
        window = sum(cost for moment, cost in spent if start <= moment < start + 5)
        assert window <= 1.1 * 5 * rate, (start, window)


def test_a_charge_beyond_the_lease_is_a_debt_the_whole_account_waits_out() -> None:
    clock = ManualClock()
    account = CapacityAccount(BudgetSpec(10.0, burst=10.0), clock=clock)
    first, second = links(account, 2, clock)

    async def main() -> None:
        bucket = LeasedBucket(first)
        await bucket.acquire(1.0)
        bucket.charge(50.0)  # the reply said the call cost 51 units
        await bucket.wait_for_credit()  # leases the debt: the account's bucket goes into debt
        started = clock.monotonic()
        await LeasedBucket(second).acquire(1.0)  # another worker waits for it to be paid
        assert clock.monotonic() - started >= 3.0

    asyncio.run(main())


def test_refunds_above_a_lease_ahead_go_back_to_the_account() -> None:
    clock = ManualClock()
    rate = 100.0
    account = CapacityAccount(BudgetSpec(rate, burst=rate), clock=clock)
    (link,) = links(account, 1, clock)

    async def main() -> None:
        bucket = LeasedBucket(link)
        await bucket.acquire(80.0)  # a first page reserved at its worst case
        balance_before = account.bucket.balance  # type: ignore[union-attr]
        bucket.charge(-79.0)  # it cost 1
        assert bucket.balance == pytest.approx(rate * LEASE_AHEAD_SECONDS)
        await link.send()
        returned = account.bucket.balance - balance_before  # type: ignore[union-attr]
        # It kept a lease-ahead already (it leased 80 and that much more), so all 79 go back.
        assert returned == pytest.approx(79.0)

    asyncio.run(main())


def test_a_throttle_seen_by_one_worker_cuts_the_rate_of_all() -> None:
    clock = ManualClock()
    target = 1000.0
    account = CapacityAccount(BudgetSpec(target, burst=100.0, adaptive=True), clock=clock)
    hot, cold = links(account, 2, clock)

    async def main() -> None:
        await hot.send(take=1.0)
        await cold.send(take=1.0)
        clock.advance(0.5)
        controller = SharedController(hot)
        controller.on_success(40.0)
        controller.on_throttle(sent_at=controller.now() - 0.05)
        await asyncio.sleep(0)  # the report goes out at once, without waiting for a lease
        await asyncio.sleep(0)
        assert account.controller is not None and account.controller.cuts == 1
        await cold.send()
        assert cold.rate == pytest.approx(0.7 * target)
        assert SharedController(cold).rate == cold.rate

    asyncio.run(main())


def test_progress_deltas_add_up_exactly_across_workers_and_messages() -> None:
    clock = ManualClock()
    account = CapacityAccount(None, clock=clock)
    workers = links(account, 3, clock)

    async def main() -> None:
        for round_ in range(5):
            for number, link in enumerate(workers):
                link.progress.add_page(items=10 * (number + 1), raw_bytes=100,
                                       consumed_capacity=0.5)
                if round_ % 2 == number % 2:
                    await link.send()
        for link in workers:
            async with link.reporting(every=1.0):
                link.progress.add_shard(7)

    asyncio.run(main())
    totals = account.status()["totals"]
    assert totals["items"] == 5 * (10 + 20 + 30)
    assert totals["raw_bytes"] == 15 * 100
    assert totals["consumed_capacity"] == pytest.approx(15 * 0.5)
    assert (totals["shards"], totals["stored_bytes"]) == (3, 21)
    assert account.status()["workers"] == 3
    assert account.granted == 0.0  # no budget: nothing leased, nobody waited


def test_file_reports_keep_the_furthest_watermark_and_dead_letters_reach_the_driver_once(
) -> None:
    clock = ManualClock()
    account = CapacityAccount(None, clock=clock)
    first, rerun = links(account, 2, clock)

    def state(watermark: int) -> dict[str, object]:
        return {"size": 10, "watermark": watermark, "dead_lettered": 1, "done": False}

    async def main() -> None:
        first.files["a.json"] = state(40)
        first.dead_letters.append({"source": "a.json", "position": 7})
        await first.send()
        first.files["a.json"] = state(30)  # an older report, overtaken on its way
        await first.send()
        assert (await rerun.file_state("a.json"))["watermark"] == 40  # type: ignore[index]
        assert await rerun.file_state("b.json") is None

    asyncio.run(main())
    status = account.status()
    assert status["files"] == {"a.json": state(40)}
    assert status["dead_letters"] == [{"source": "a.json", "position": 7}]
    # The driver's reply was lost: asked again from the same place, it is sent again.
    assert account.status(dead_letters_from=0)["dead_letters"] == status["dead_letters"]
    # Once acknowledged, it is gone; every file's state is in every reply.
    acknowledged = account.status(dead_letters_from=status["dead_letters_next"])
    assert acknowledged["dead_letters"] == [] and acknowledged["files"] == status["files"]


def test_a_task_that_ends_gives_its_unspent_lease_back() -> None:
    clock = ManualClock()
    rate = 100.0
    account = CapacityAccount(BudgetSpec(rate, burst=rate), clock=clock)
    (link,) = links(account, 1, clock)

    async def main() -> None:
        async with link.reporting():
            await LeasedBucket(link).acquire(1.0)  # leased 1 + a tenth of a second ahead
        # 1 unit spent of the 100 the bucket held: the other 99 are the account's again.
        assert account.bucket.balance == pytest.approx(rate - 1.0)  # type: ignore[union-attr]

    asyncio.run(main())


def test_a_task_whose_account_is_gone_stops_at_its_next_report() -> None:
    clock = ManualClock()
    account = CapacityAccount(None, clock=clock)
    calls = 0

    async def channel(message: dict[str, object]) -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls > 2:  # the driver died: the scheduler no longer knows the job
            raise LookupError("no capacity account for job j: its driver has ended")
        return await account.handle(message)

    link = AccountLink(channel, worker="w", clock=clock)
    scanned = 0

    async def scan_without_a_budget() -> None:
        nonlocal scanned
        async with link.reporting(every=0.5):
            while True:  # it would never stop by itself
                await clock.sleep(0.1)
                scanned += 1

    with pytest.raises(LookupError, match="its driver has ended"):
        asyncio.run(scan_without_a_budget())
    assert scanned <= 16  # stopped at the third report, 1.5 s in
