"""A capacity budget is a promise to production traffic, kept from the first call.

The rule, for ``--max-rcu`` (export) and ``--target-wcu`` (import) alike, with ``rate`` the
budget and ``call`` the largest Scan page or batch of the job: no 1 s window above
``2 x rate + call``, no 5 s window above ``5 x 1.1 x rate``, and the job's average within 5%
of the rate.

Checked exactly on simulated time: the real jobs run against DynamoDB Local, their calls
forwarded in process, each metered with the capacity DynamoDB Local reports, at the moment
it was sent on the job's ``ManualClock``. Through the capacity simulator in real time, only
the upper bounds (a loaded machine can only slow a job down). ``ReadBudget`` itself: how the
first pages of a parallel Scan are reserved.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import ddbpipe
from ddbpipe import codec
from ddbpipe.codec import ScanPage
from ddbpipe.config import AwsOptions, ExportOptions, ImportOptions
from ddbpipe.dynamo import DynamoClient, HttpReply, MockTransport
from ddbpipe.export_job import run_export
from ddbpipe.import_job import run_import
from ddbpipe.retry import ManualClock
from ddbpipe.scan import READ_BURST_SECONDS, ReadBudget, read_bucket

# --- the rule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """How a job spent capacity: its busiest windows, its average, its largest call."""

    first_second: float
    worst_second: float
    worst_five_seconds: float
    average: float
    largest_call: float


def windows_of(spent: Sequence[tuple[float, float]], seconds: float) -> Windows:
    """``spent``: (moment, units) of each call, in any order; ``seconds``: the job's duration."""
    spent = sorted(spent)
    start = spent[0][0]

    def worst(width: float) -> float:
        # A busiest window starts at a call.
        return max(sum(u for t, u in spent if begin <= t < begin + width) for begin, _ in spent)

    return Windows(
        first_second=sum(units for moment, units in spent if moment < start + 1),
        worst_second=worst(1.0),
        worst_five_seconds=worst(5.0),
        average=sum(units for _, units in spent) / seconds,
        largest_call=max(units for _, units in spent),
    )


def assert_kept(windows: Windows, rate: float, *, exact: bool) -> None:
    assert windows.worst_second <= 2 * rate + windows.largest_call, windows
    assert windows.worst_five_seconds <= 1.1 * 5 * rate, windows
    assert windows.average <= 1.05 * rate, windows
    if exact:
        assert windows.average >= 0.95 * rate, windows


# --- jobs on simulated time --------------------------------------------------------------------


class MeteredDynamo:
    """Every call a job makes, answered by DynamoDB Local at the moment it is sent on
    ``clock``; the capacity each Scan and BatchWriteItem reply reports is logged with it.

    The call to DynamoDB Local blocks the event loop, so it takes no simulated time: however
    busy the machine, the job's pacing alone decides when capacity is spent. ``patch_into``
    makes every ``DynamoClient`` the job opens send through it (the client's ``transport``
    seam), so the job itself runs unchanged.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.spent: dict[str, list[tuple[float, float]]] = {"Scan": [], "BatchWriteItem": []}

    def patch_into(self, monkeypatch: pytest.MonkeyPatch) -> None:
        open_client = DynamoClient.open.__func__  # type: ignore[attr-defined]
        transport = MockTransport(self._answer)

        def open_metered(cls: type[DynamoClient], options: AwsOptions, **kwargs: Any) -> Any:
            return open_client(cls, options, **kwargs, transport=transport)

        monkeypatch.setattr(DynamoClient, "open", classmethod(open_metered))

    def _answer(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, reply_headers, reply_body = reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as refused:
            status, reply_headers, reply_body = refused.code, dict(refused.headers), refused.read()
        action = headers["X-Amz-Target"].rpartition(".")[2]
        if action in self.spent and status == 200:
            self.spent[action].append((self.clock.monotonic(), _reported_capacity(reply_body)))
        return HttpReply(status, reply_headers, reply_body)


def _reported_capacity(body: bytes) -> float:
    consumed = json.loads(body).get("ConsumedCapacity") or []
    entries = consumed if isinstance(consumed, list) else [consumed]
    return float(sum(entry["CapacityUnits"] for entry in entries))


@pytest.fixture
def metered() -> MeteredDynamo:
    return MeteredDynamo(ManualClock())


def kilobyte_items(count: int, seed: int = 3) -> list[dict[str, Any]]:
    """Items of 0.8 to 1 KB: one WCU each, a few to a 4 KB read unit, pages of varying cost."""
    rng = random.Random(seed)
    return [
        {"pk": {"S": f"item#{n:05d}"}, "pad": {"S": "x" * rng.randint(800, 1000)}}
        for n in range(count)
    ]


def test_max_rcu_holds_from_the_first_page_on_simulated_time(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], metered: MeteredDynamo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pages of ~2.5 RCU against 10 RCU/s: the first pages of 8 segments, sent together, would
    # take twice the budget's second by themselves.
    table = make_table(kilobyte_items(3000))
    max_rcu = 10.0
    options = ExportOptions(
        table=table, destination=str(tmp_path / "export"), segments=8, max_rcu=max_rcu,
        page_size=20, aws=AwsOptions(endpoint_url=dynamodb_local.endpoint),
    )

    metered.patch_into(monkeypatch)

    summary = asyncio.run(run_export(options, clock=metered.clock))

    pages = metered.spent["Scan"]
    assert summary.items == 3000
    assert sum(units for _, units in pages) == pytest.approx(summary.consumed_rcu)
    windows = windows_of(pages, summary.seconds)
    assert_kept(windows, max_rcu, exact=True)
    # The budget's own bound on the first second: the rate, plus its quarter second of burst
    # or one page (whichever is larger), plus one page of replies above their reservations.
    saved = max(max_rcu * READ_BURST_SECONDS, windows.largest_call)
    assert windows.first_second <= max_rcu + saved + windows.largest_call, windows


def test_target_wcu_holds_from_the_first_batch_on_simulated_time(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], metered: MeteredDynamo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = make_table(kilobyte_items(3000))
    export_dir = tmp_path / "export"
    ddbpipe.export_table(source, str(export_dir), segments=4,
                         endpoint_url=dynamodb_local.endpoint)
    target = make_table()
    target_wcu = 100.0
    options = ImportOptions(
        source=str(export_dir), table=target, target_wcu=target_wcu,
        checkpoint=str(tmp_path / "import.checkpoint.json"),
        dead_letter=str(tmp_path / "import.dead-letter.jsonl"),
        aws=AwsOptions(endpoint_url=dynamodb_local.endpoint),
    )

    metered.patch_into(monkeypatch)

    summary = asyncio.run(run_import(options, clock=metered.clock))

    batches = metered.spent["BatchWriteItem"]
    assert summary.items_written == 3000
    assert sum(units for _, units in batches) == pytest.approx(summary.consumed_wcu)
    assert_kept(windows_of(batches, summary.seconds), target_wcu, exact=True)


# --- through the capacity simulator, in real time ------------------------------------------


def test_max_rcu_holds_through_the_capacity_simulator(
    tmp_path: Path, make_table: Callable[..., str], capacity_simulator: Any
) -> None:
    # ~1.5 RCU pages against 30 RCU/s: about ten seconds of budget. The simulator meters each
    # read in the second it arrived; a busy machine only delays reads, never adds any.
    max_rcu = 30.0
    summary, items, per_second = export_through_the_simulator(
        tmp_path, make_table, capacity_simulator, max_rcu, segments=4)
    # Whole seconds, not pages: the rule's page is the largest one a page of 10 items can cost.
    largest_page = codec.read_units(10 * max(map(codec.item_size, items)), consistent=False)
    windows = replace(windows_of(per_second, summary.seconds), largest_call=largest_page)
    assert_kept(windows, max_rcu, exact=False)


def export_through_the_simulator(
    tmp_path: Path, make_table: Callable[..., str], simulator: Any, max_rcu: float,
    **settings: Any,
) -> tuple[Any, list[dict[str, Any]], list[tuple[float, float]]]:
    """An export of 2,000 items of about 1 KB, 10 to a page, at ``max_rcu`` through the
    capacity simulator: its summary, the items, and the RCU the simulator metered per second
    (checked to be what the export reported)."""
    items = kilobyte_items(2000)
    table = make_table(items)
    simulator.configure(table, wcu=10_000)
    summary = ddbpipe.export_table(
        table, str(tmp_path / "export"), max_rcu=max_rcu, page_size=10,
        endpoint_url=simulator.endpoint, **settings,
    )
    stats = simulator.stats(table)
    assert summary.items == 2000
    assert stats.consumed_rcu == pytest.approx(summary.consumed_rcu)
    return summary, items, sorted((float(second), units) for second, units in stats.rcu_per_second)


# --- ReadBudget: the first pages ---------------------------------------------------------------


def page(consumed: float) -> ScanPage:
    return ScanPage(
        items=[], count=0, scanned_count=0, last_evaluated_key={"pk": {"S": "next"}},
        consumed_capacity=consumed,
    )


class Pages:
    """Scan pages answered on a manual clock after ``latency``; logs when each was sent."""

    def __init__(self, clock: ManualClock, cost: float, latency: float = 0.1) -> None:
        self.clock, self.cost, self.latency = clock, cost, latency
        self.sent: list[float] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def read(self) -> ScanPage:
        self.sent.append(self.clock.monotonic())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.clock.sleep(self.latency)
            return page(self.cost)
        finally:
            self.in_flight -= 1


def test_the_first_page_goes_alone_and_the_others_reserve_its_cost() -> None:
    clock = ManualClock()
    budget = ReadBudget(read_bucket(100.0, clock))
    pages = Pages(clock, cost=20.0)

    async def first_pages() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(8):
                group.create_task(budget.read(pages.read, None))

    asyncio.run(first_pages())
    # The first page reserved a full 1 MB page (128 RCU) on a bucket of 25; its reply refunded
    # the difference, and the other seven reserved its cost, 20 RCU each.
    assert pages.sent[0] == 0.0
    assert pages.sent[1] >= pages.latency
    # Each first page went out once the bucket (25 at the start, 100 a second) had its cost.
    for sent_before, moment in enumerate(pages.sent, start=1):
        assert 20 * sent_before <= 25 + 100 * moment + 1e-6, pages.sent


def test_the_worst_case_reserved_for_the_first_page_costs_no_time() -> None:
    # A budget far below a full page: the first page reserves 128 RCU but waits only for the
    # bucket (it starts full), and the refund leaves the next pages what they would have had.
    clock = ManualClock()
    budget = ReadBudget(read_bucket(4.0, clock))
    pages = Pages(clock, cost=0.5, latency=0.0)

    async def two_pages() -> None:
        await budget.read(pages.read, None)
        await budget.read(pages.read, 0.5)

    asyncio.run(two_pages())
    assert pages.sent == [0.0, 0.0]
    assert budget.bucket.balance == pytest.approx(0.0)


def test_a_first_page_that_fails_hands_the_first_read_to_another_segment() -> None:
    clock = ManualClock()
    budget = ReadBudget(read_bucket(100.0, clock))
    pages = Pages(clock, cost=10.0)

    async def fails() -> ScanPage:
        await clock.sleep(0.1)
        raise ConnectionError("dropped")

    async def segments() -> list[ScanPage | BaseException]:
        first = asyncio.create_task(budget.read(fails, None))
        await asyncio.sleep(0)
        others = [asyncio.create_task(budget.read(pages.read, None)) for _ in range(3)]
        return await asyncio.gather(first, *others, return_exceptions=True)

    results = asyncio.run(segments())
    assert isinstance(results[0], ConnectionError)
    assert all(isinstance(result, ScanPage) for result in results[1:])
    # One of the others read the next first page alone; the last two followed its reply.
    assert pages.sent[1] >= pages.sent[0] + pages.latency
    assert pages.most_in_flight <= 2
