"""One worker per Scan segment: pages in, shards out, a checkpoint after every stored shard.

A segment is a self-contained task: its inputs are plain values (``SegmentTask``), its state
is in storage (the checkpoint), its result is the final checkpoint. The data flows one way:
raw Scan page -> items sliced out of the reply bytes -> shard writer -> store -> checkpoint.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .codec import decode_scan_page
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
        self.last_page_rcu = 0.0

    async def run(self) -> SegmentCheckpoint:
        try:
            await self._scan_to_end()
        finally:
            if self.writer is not None:
                self.writer.discard()
        return self.checkpoint

    async def _scan_to_end(self) -> None:
        start_key = self.checkpoint.last_key
        while True:
            page_key = await self._scan_one_page(start_key)
            if page_key is None:
                await self._finish_segment()
                return
            if self.writer is not None and self.writer.raw_bytes >= self.task.shard_bytes:
                await self._store_shard(page_key)
            start_key = page_key

    async def _scan_one_page(self, start_key: dict[str, Any] | None) -> dict[str, Any] | None:
        budget = self.res.read_budget
        # A page's cost is known only from its reply: reserve what the last page cost, then
        # settle the difference, so segments take turns instead of bursting together.
        expected = self.last_page_rcu
        if budget is not None:
            await budget.acquire(expected) if expected > 0 else await budget.wait_for_credit()
        body = await self.res.client.scan_page(
            self.task.table,
            segment=self.task.segment,
            total_segments=self.task.total_segments,
            exclusive_start_key=start_key,
            consistent_read=self.task.consistent_read,
            limit=self.task.page_size,
        )
        page = decode_scan_page(body)
        if budget is not None:
            budget.charge(page.consumed_capacity - expected)
        self.last_page_rcu = page.consumed_capacity
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
        return page.last_evaluated_key

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
