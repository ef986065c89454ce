"""Parallel Scan: the pages of a segment, and the export's worker per segment (pages in,
shards out, a checkpoint after every stored shard).

``scan_pages`` is the one paging loop over a Scan segment, paced by a read budget; the export
and the restore drill both read tables through it. A segment's export is a self-contained
task: its inputs are plain values (``SegmentTask``), its state is in storage (the
checkpoint), its result is the final checkpoint. The data flows one way: raw Scan page ->
items sliced out of the reply bytes -> shard writer -> store -> checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from .codec import ScanPage, decode_scan_page
from .config import ArchiveOptions, Compression, Format
from .dynamo import DynamoClient
from .manifest import SegmentCheckpoint, ShardEntry, encode_checkpoint, segment_state_key
from .progress import JobProgress
from .ratelimit import TokenBucket
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


async def scan_pages(
    client: DynamoClient,
    table: str,
    *,
    segment: int,
    total_segments: int,
    read_budget: TokenBucket | None = None,
    consistent_read: bool = False,
    page_size: int | None = None,
    start_key: dict[str, Any] | None = None,
) -> AsyncGenerator[ScanPage, None]:
    """Every page of one Scan segment (after ``start_key``), paced by ``read_budget``.

    A page's cost is known only from its reply: each page reserves what the previous one
    cost, then the bucket is charged the difference from the ConsumedCapacity DynamoDB
    reported, so segments take turns instead of bursting together.
    """
    last_cost = 0.0
    while True:
        if read_budget is not None:
            if last_cost > 0:
                await read_budget.acquire(last_cost)
            else:
                await read_budget.wait_for_credit()
        body = await client.scan_page(
            table,
            segment=segment,
            total_segments=total_segments,
            exclusive_start_key=start_key,
            consistent_read=consistent_read,
            limit=page_size,
        )
        page = decode_scan_page(body)
        if read_budget is not None:
            read_budget.charge(page.consumed_capacity - last_cost)
        last_cost = page.consumed_capacity
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


@dataclass
class _Resources:
    client: DynamoClient
    store: ObjectStore
    progress: JobProgress
    read_budget: TokenBucket | None


async def run_segment(
    task: SegmentTask,
    checkpoint: SegmentCheckpoint,
    *,
    client: DynamoClient,
    store: ObjectStore,
    progress: JobProgress,
    read_budget: TokenBucket | None = None,
) -> SegmentCheckpoint:
    """Scan the segment from its checkpoint to the end; return the final checkpoint."""
    if checkpoint.done:
        return checkpoint
    resources = _Resources(client, store, progress, read_budget)
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

    async def _scan_to_end(self) -> None:
        pages = scan_pages(
            self.res.client,
            self.task.table,
            segment=self.task.segment,
            total_segments=self.task.total_segments,
            read_budget=self.res.read_budget,
            consistent_read=self.task.consistent_read,
            page_size=self.task.page_size,
            start_key=self.checkpoint.last_key,
        )
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
