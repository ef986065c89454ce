"""Parallel Scan: the pages of a segment, and the export's worker per segment (pages in,
shards out, a checkpoint after every stored shard).

``scan_pages`` is the one paging loop over a Scan segment, within a read budget that the
segments of one Scan share (``ReadBudget``: every page reserved before it is requested); the
export and the restore drill both read tables through it. A segment's export is a self-contained
task: its inputs are plain values (``SegmentTask``), its state is in storage (the
checkpoint), its result is the final checkpoint. The data flows one way: raw Scan page ->
items sliced out of the reply bytes -> shard writer -> store -> checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import ScanPage, decode_scan_page, read_units
from .config import ArchiveOptions, Compression, Format
from .dynamo import DynamoClient
from .manifest import SegmentCheckpoint, ShardEntry, encode_checkpoint, segment_state_key
from .progress import JobProgress
from .ratelimit import Bucket, BudgetSpec, TokenBucket
from .retry import Clock
from .schema import KeyAttributes
from .shards import ShardWriter, shard_key
from .storage import ObjectStore


@dataclass(frozen=True, kw_only=True)
class SegmentTask:
    """What one segment worker needs, as plain values."""

    table: str
    segment: int
    total_segments: int
    format: Format
    compression: Compression
    key_attributes: KeyAttributes
    consistent_read: bool
    shard_bytes: int
    page_size: int | None = None
    #: How S3 keeps what the segment writes (shards, and its checkpoints as state).
    archive: ArchiveOptions = field(default_factory=ArchiveOptions)


#: The most one Scan page returns: 1 MB of items (DynamoDB's limit), or ``Limit`` items.
MAX_PAGE_BYTES = 1024 * 1024

#: What a read budget may save up: a quarter second of its rate. Every page is reserved
#: before it is sent, so any T seconds read at most rate x T plus this burst or one page,
#: whichever is larger: a full second of burst would let a 5 s window read 20% over the rate.
READ_BURST_SECONDS = 0.25


def read_budget(max_rcu: float) -> BudgetSpec:
    """A ``--max-rcu`` budget: ``max_rcu`` a second, a quarter second saved."""
    return BudgetSpec(max_rcu, burst=max_rcu * READ_BURST_SECONDS)


def read_bucket(max_rcu: float, clock: Clock) -> TokenBucket:
    """The token bucket of a ``--max-rcu`` budget in this process."""
    return read_budget(max_rcu).build(clock)[0]


class ReadBudget:
    """The read capacity the segments of one parallel Scan share: a token bucket, and what a
    page is likely to cost.

    A page's cost is known only from its reply (the ConsumedCapacity DynamoDB reports), so
    every page, a segment's first included, reserves its likely cost from the bucket before
    it is requested and settles with what its reply reports (a refund, or a debt the next
    pages wait out). Segments thus start no faster than the budget allows, and any window of
    T seconds reads at most ``rate x T`` plus the bucket's burst or one page, whichever is
    larger, plus what replies reported above their reservations.

    The likely cost of a page:

    - a segment's next page: what its previous page cost (pages are full, 1 MB or ``Limit``
      items, until the segment's last, which only refunds);
    - a segment's first page: the most any page of this Scan has cost so far;
    - before any reply: the first page asked for reserves the worst case, a full 1 MB page
      (128 RCU, 256 strongly consistent), and the other segments wait for its reply. That
      reservation costs no time (the bucket starts with its burst, a reservation above the
      burst waits only for a full bucket, and the difference is refunded); waiting for the
      reply costs the other segments one round trip, once. The table's average item size
      (DescribeTable) would save that round trip, but it is up to six hours old, and a first
      page it underestimated would be sent by every segment at once.
    """

    def __init__(self, bucket: Bucket, pages: PageCosts | None = None) -> None:
        self.bucket = bucket
        # The most any page has cost so far; None until the first reply.
        self._page_estimate: float | None = None
        # Other processes' pages of the same Scan (a cluster's tasks): their costs count too.
        self._pages = pages
        self._first_page_out = False
        self._news = asyncio.Event()

    async def read(
        self,
        read_page: Callable[[], Awaitable[ScanPage]],
        previous_cost: float | None,
        *,
        consistent_read: bool = False,
    ) -> ScanPage:
        """``read_page()`` within the budget; ``previous_cost``: what the segment's previous
        page consumed (None before its first)."""
        reservation = await self._estimate(previous_cost, consistent_read)
        try:
            await self.bucket.acquire(reservation.units)
            page = await read_page()
            # A page that failed stays charged what it reserved: it may have been served.
            self.bucket.charge(page.consumed_capacity - reservation.units)
            self._page_estimate = max(page.consumed_capacity, self._page_estimate or 0.0)
            if self._pages is not None:
                self._pages.note_page(page.consumed_capacity)
        finally:
            if reservation.first_of_all:
                self._first_page_done()
        return page

    async def _estimate(self, previous_cost: float | None, consistent_read: bool) -> _Reservation:
        if previous_cost is not None:
            return _Reservation(previous_cost)
        return await self._first_page(read_units(MAX_PAGE_BYTES, consistent_read))

    async def _first_page(self, worst_case: float) -> _Reservation:
        if self._page_estimate is None and self._pages is not None:
            self._page_estimate = self._pages.largest_page()
        while self._page_estimate is None and self._first_page_out:
            await self._news.wait()
        if self._page_estimate is not None:
            return _Reservation(self._page_estimate)
        self._first_page_out = True
        return _Reservation(worst_case, first_of_all=True)

    def _first_page_done(self) -> None:
        """Wake the segments waiting for the first reply: to use its cost, or, if the first
        page failed, for one of them to read a first page instead."""
        self._first_page_out = False
        woken, self._news = self._news, asyncio.Event()
        woken.set()


class PageCosts(Protocol):
    """What the pages of one Scan cost in other processes (``shared_capacity.AccountLink``)."""

    def largest_page(self) -> float | None: ...

    def note_page(self, cost: float) -> None: ...


@dataclass(frozen=True)
class _Reservation:
    units: float
    #: The first page of the Scan: the other segments wait for its reply.
    first_of_all: bool = False


async def scan_pages(
    client: DynamoClient,
    table: str,
    *,
    segment: int,
    total_segments: int,
    read_budget: ReadBudget | None = None,
    consistent_read: bool = False,
    page_size: int | None = None,
    start_key: dict[str, Any] | None = None,
) -> AsyncGenerator[ScanPage, None]:
    """Every page of one Scan segment (after ``start_key``), within ``read_budget``: each
    page is reserved before it is requested and settled with the capacity its reply reports
    (``ReadBudget``)."""

    async def next_page() -> ScanPage:
        body = await client.scan_page(
            table,
            segment=segment,
            total_segments=total_segments,
            exclusive_start_key=start_key,
            consistent_read=consistent_read,
            limit=page_size,
        )
        return decode_scan_page(body)

    previous_cost: float | None = None
    while True:
        if read_budget is None:
            page = await next_page()
        else:
            page = await read_budget.read(
                next_page, previous_cost, consistent_read=consistent_read
            )
        previous_cost = page.consumed_capacity
        yield page
        if page.last_evaluated_key is None:
            return
        start_key = page.last_evaluated_key


#: AWS suggests one Scan segment per ~2 GB of table for large tables.
BYTES_PER_SEGMENT = 2 * 1024**3
MAX_AUTO_SEGMENTS = 10_000


def plan_segments(table_size_bytes: int, cores: int | None = None) -> int:
    """One segment per ~2 GB, at least one per core, at most MAX_AUTO_SEGMENTS."""
    by_size = math.ceil(table_size_bytes / BYTES_PER_SEGMENT)
    return max(1, min(MAX_AUTO_SEGMENTS, max(by_size, cores or os.cpu_count() or 1)))


#: Where a segment's pages come from other than a Scan, from a position (a page's
#: ``last_evaluated_key``; None for the start): a point-in-time export's native data file.
PageSource = Callable[[dict[str, Any] | None], AsyncGenerator[ScanPage, None]]


@dataclass
class _Resources:
    client: DynamoClient | None
    store: ObjectStore
    progress: JobProgress
    read_budget: ReadBudget | None
    pages: PageSource | None = None


async def run_segment(
    task: SegmentTask,
    checkpoint: SegmentCheckpoint,
    *,
    client: DynamoClient | None,
    store: ObjectStore,
    progress: JobProgress,
    read_budget: ReadBudget | None = None,
    pages: PageSource | None = None,
) -> SegmentCheckpoint:
    """Scan the segment from its checkpoint to the end; return the final checkpoint.

    ``pages``: read the segment's pages from there instead of a Scan (then ``client`` may be
    None); shards and checkpoints are made of them the same way."""
    if checkpoint.done:
        return checkpoint
    resources = _Resources(client, store, progress, read_budget, pages)
    return await _SegmentScan(task, checkpoint, resources).run()


class _SegmentScan:
    def __init__(self, task: SegmentTask, checkpoint: SegmentCheckpoint, res: _Resources):
        self.task = task
        self.checkpoint = checkpoint
        self.res = res
        self.writer: ShardWriter | None = None
        # Capacity consumed by pages whose items are not yet in a stored shard.
        self.pending_rcu = 0.0

    async def run(self) -> SegmentCheckpoint:
        try:
            await self._scan_to_end()
        finally:
            if self.writer is not None:
                self.writer.discard()
        return self.checkpoint

    def _pages(self) -> AsyncGenerator[ScanPage, None]:
        if self.res.pages is not None:
            return self.res.pages(self.checkpoint.last_key)
        assert self.res.client is not None, "a Scan needs a client"
        return scan_pages(
            self.res.client,
            self.task.table,
            segment=self.task.segment,
            total_segments=self.task.total_segments,
            read_budget=self.res.read_budget,
            consistent_read=self.task.consistent_read,
            page_size=self.task.page_size,
            start_key=self.checkpoint.last_key,
        )

    async def _scan_to_end(self) -> None:
        pages = self._pages()
        async with contextlib.aclosing(pages):
            async for page in pages:
                await self._take_page(page)
                next_key = page.last_evaluated_key
                full = self.writer is not None and self.writer.raw_bytes >= self.task.shard_bytes
                if next_key is not None and full:
                    await self._store_shard(next_key)
        await self._finish_segment()

    async def _take_page(self, page: ScanPage) -> None:
        self.pending_rcu += page.consumed_capacity
        raw_before = self.writer.raw_bytes if self.writer else 0
        if page.items:
            if self.writer is None:
                self.writer = ShardWriter(
                    self.task.format, self.task.compression, self.task.key_attributes
                )
                raw_before = 0
            # Compression releases the GIL: keep the event loop free for other segments.
            await asyncio.to_thread(self.writer.add_items, page.items)
        raw_added = (self.writer.raw_bytes if self.writer else 0) - raw_before
        self.res.progress.add_page(len(page.items), raw_added, page.consumed_capacity)

    async def _finish_segment(self) -> None:
        if self.writer is not None:
            await self._store_shard(None)
        else:
            self.checkpoint = self.checkpoint.finished(self.pending_rcu)
            self.pending_rcu = 0.0
            await self._save_checkpoint()
        self.res.progress.segments_done += 1

    async def _store_shard(self, last_key: dict[str, Any] | None) -> None:
        writer, self.writer = self.writer, None
        assert writer is not None
        try:
            finished = await asyncio.to_thread(writer.close)
        except BaseException:
            writer.discard()
            raise
        key = shard_key(
            self.task.segment, self.checkpoint.next_seq, self.task.format, self.task.compression
        )
        # put_file takes the temp file over: it is gone afterwards, stored or not.
        stored = await self.res.store.put_file(
            key, finished.path, md5_hex=finished.md5_hex, archive=self.task.archive.for_shards()
        )
        entry = ShardEntry(
            key=key,
            segment=self.task.segment,
            seq=self.checkpoint.next_seq,
            items=finished.items,
            stored_bytes=finished.stored_bytes,
            raw_bytes=finished.raw_bytes,
            sha256=finished.sha256,
            md5=finished.md5_b64,
            etag=stored.etag,
        )
        self.checkpoint = self.checkpoint.after_shard(entry, last_key, self.pending_rcu)
        self.pending_rcu = 0.0
        await self._save_checkpoint()
        self.res.progress.add_shard(finished.stored_bytes)

    async def _save_checkpoint(self) -> None:
        await self.res.store.put_bytes(
            segment_state_key(self.task.segment),
            encode_checkpoint(self.checkpoint),
            archive=self.task.archive.for_state(),
        )
