"""Turning record streams into BatchWriteItem batches that spread the load over partitions.

- ``interleave`` merges several source streams round-robin. A sequential Scan returns items
  partition by partition, so replaying one export file in order heats one partition at a
  time; reading several files at once and alternating between them spreads the writes.
- ``BatchBuilder`` groups records into batches DynamoDB accepts (at most 25 requests and
  16 MB, never two requests for one key) while keeping the writes of each key in order, also
  across retries: a key's next record waits until its previous one is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from .records import Key, WriteRecord

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "BatchBuilder", "interleave"]

#: DynamoDB's BatchWriteItem limits.
MAX_BATCH_REQUESTS = 25
MAX_BATCH_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


# --- interleaving streams -------------------------------------------------------------------


class _OpenStream(Generic[T]):
    """One open stream: the chunk being handed out and the fetch of the next one."""

    def __init__(self, chunks: AsyncIterator[list[T]]) -> None:
        self.chunks = chunks
        self.chunk: deque[T] = deque()
        self.ended = False
        self.fetch: asyncio.Task[list[T]] = asyncio.ensure_future(anext(chunks))

    def take(self, count: int) -> list[T]:
        """Up to ``count`` records in hand, refilling from a finished fetch first."""
        if not self.chunk and self.fetch.done():
            self._receive()
        return [self.chunk.popleft() for _ in range(min(count, len(self.chunk)))]

    @property
    def waiting(self) -> bool:
        return not self.chunk and not self.ended

    def _receive(self) -> None:
        try:
            self.chunk.extend(self.fetch.result())
        except StopAsyncIteration:
            self.ended = True
            return
        # One chunk ahead, so a slow read overlaps with handing out this one.
        self.fetch = asyncio.ensure_future(anext(self.chunks))

    async def close(self) -> None:
        self.fetch.cancel()
        with contextlib.suppress(BaseException):
            await self.fetch
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def interleave(
    streams: Iterable[AsyncIterator[list[T]]], *, width: int = 8, per_turn: int = 5
) -> AsyncIterator[T]:
    """Yield the records of several streams of record lists, ``per_turn`` from each in turn.

    At most ``width`` streams are open at once; when one ends the next is taken from
    ``streams``, which may be a lazy generator that opens each file only when asked. A stream
    whose next chunk is not read yet is skipped for that turn, so one slow file does not stall
    the others. Memory: at most two chunks per open stream (the one in hand, one read ahead).
    An error from any stream ends the merge with that error.
    """
    if width < 1 or per_turn < 1:
        raise ValueError("width and per_turn must be at least 1")
    upcoming = iter(streams)
    open_streams: list[_OpenStream[T]] = []
    try:
        _open_more(open_streams, upcoming, width)
        while open_streams:
            handed_out = False
            for stream in list(open_streams):
                records = stream.take(per_turn)
                for record in records:
                    yield record
                handed_out = handed_out or bool(records)
                if stream.ended:
                    open_streams.remove(stream)
                    _open_more(open_streams, upcoming, width)
            if not handed_out and open_streams and all(s.waiting for s in open_streams):
                await asyncio.wait(
                    [s.fetch for s in open_streams], return_when=asyncio.FIRST_COMPLETED
                )
    finally:
        for stream in open_streams:
            await stream.close()


def _open_more(
    open_streams: list[_OpenStream[T]], upcoming: Iterator[AsyncIterator[list[T]]], width: int
) -> None:
    while len(open_streams) < width:
        chunks = next(upcoming, None)
        if chunks is None:
            return
        open_streams.append(_OpenStream(chunks))


# --- batches --------------------------------------------------------------------------------

#: A partition key's turn in a batch: the partition key, its ready keys, its places.
_Turn = tuple[Hashable, Iterator[Key], int]


class _Turns:
    """The order of turns while a batch is filled: a partition key owed more places goes
    again at once; the others in order; a turn used goes again after all of them."""

    def __init__(self, owed: list[_Turn], rest: Iterator[_Turn]) -> None:
        self._now = deque(owed)
        self._rest = rest
        self._later: deque[_Turn] = deque()

    def next(self) -> _Turn | None:
        if self._now:
            return self._now.popleft()
        turn = next(self._rest, None)
        if turn is not None:
            return turn
        return self._later.popleft() if self._later else None

    def again_now(self, turn: _Turn) -> None:
        self._now.appendleft(turn)

    def again_later(self, turn: _Turn) -> None:
        self._later.append(turn)


class BatchBuilder:
    """Collects records into BatchWriteItem batches; keeps each key's writes in order.

    ``add`` queues a record. ``take`` hands out the next batch: at most ``max_requests``
    records and ``max_bytes`` of item size, one record per key, each key's records in the
    order they were added. A key stays *busy* from the moment its record is taken until the
    caller says the write is over: ``finish(record)`` (written, or given up) lets the key's
    next record go; ``retry(record)`` puts the record back first in line for its key. So a
    retried put can never land after a later write of the same key and undo it. Keys are the
    records' own (``WriteRecord.key``, partition key first).
    """

    def __init__(
        self, *, max_requests: int = MAX_BATCH_REQUESTS, max_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._waiting: dict[Key, deque[WriteRecord]] = {}
        # Keys whose next record may go now, grouped by partition key (a key's first value) so
        # a partition held back by ``admit`` is skipped in one step, however many keys it has.
        # Both levels are in the order they became ready.
        self._ready: OrderedDict[Hashable, OrderedDict[Key, None]] = OrderedDict()
        self._ready_count = 0
        # Partition keys by how many ready keys they have (2 or more: the only ones a batch
        # may owe more than one place), so those owed are found without visiting the rest.
        self._by_size: dict[int, dict[Hashable, None]] = {}
        self._busy: set[Key] = set()
        self._held = 0

    def __len__(self) -> int:
        """Records held here (not taken, or put back for a retry)."""
        return self._held

    @property
    def ready(self) -> int:
        """Records that could go into a batch now."""
        return self._ready_count

    def backlog(self, partition_key: Hashable) -> int:
        """Records of ``partition_key`` ready now."""
        keys = self._ready.get(partition_key)
        return len(keys) if keys is not None else 0

    @property
    def busy(self) -> int:
        """Keys with a record taken and not yet finished."""
        return len(self._busy)

    def add(self, record: WriteRecord) -> None:
        key = record.key
        self._waiting.setdefault(key, deque()).append(record)
        self._held += 1
        if key not in self._busy:
            self._make_ready(key)

    def take(
        self, *, partial: bool = True, admit: Callable[[WriteRecord], bool] | None = None
    ) -> list[WriteRecord]:
        """The next batch, or ``[]``; with ``partial=False`` only once a full batch is ready.

        ``admit`` may hold a record back (e.g. its partition key is over its rate): it stays
        first in line for its key while other keys go ahead. Once ``admit`` refuses a record,
        the other records of its partition key are not offered in this ``take``.
        """
        if not partial and self.ready < self.max_requests:
            return []
        chosen: list[Key] = []
        size = 0
        turns = _Turns(*self._turns())
        while (turn := turns.next()) is not None:
            group, keys, places = turn
            key = next(keys, None)
            if key is None:
                continue
            record = self._waiting[key][0]
            # A record too big on its own still goes, alone: DynamoDB's refusal names it.
            if chosen and size + record.size > self.max_bytes:
                break
            if admit is not None and not admit(record):
                continue  # its partition key is held back: none of its others this time
            chosen.append(key)
            size += record.size
            if len(chosen) == self.max_requests:
                break
            if places > 1:
                turns.again_now((group, keys, places - 1))
            else:
                turns.again_later((group, keys, 1))
        return self._take_heads(chosen)

    def _turns(self) -> tuple[list[_Turn], Iterator[_Turn]]:
        """Each partition key's turn in the next batch: its keys, and how many places it has;
        those owed more than one place first (a list), then the others, one place each, in
        the order they became ready (lazily: a batch is full long before a table's thousands
        of ready partition keys are all visited, and visiting them all for every batch cost
        54 us of CPU per item with 1,600 distinct keys ready).

        A partition key's places follow its share of the ready records (at least one): a hot
        tenant with a third of what is ready fills a third of each batch, and one with a
        single record takes one place, in turn. So each partition key's records go out at
        the pace of its backlog and all of them finish about together. With one place each,
        the hot tenant waited behind every other partition key for each of its records, and
        an import ended with its partition writing alone. Only partition keys with enough
        ready keys are owed more than one place; ``_by_size`` finds them.
        """
        total = self._ready_count
        owed = [(group, iter(self._ready[group]), places)
                for size, groups in self._by_size.items()
                if (places := round(self.max_requests * size / total)) > 1
                for group in groups]
        first = {group for group, _, _ in owed}
        rest = ((group, iter(keys), 1) for group, keys in self._ready.items()
                if group not in first)
        return owed, rest

    def finish(self, record: WriteRecord) -> None:
        """The write of ``record`` is over (written or given up); its key's next may go."""
        key = record.key
        self._busy.discard(key)
        if key in self._waiting:
            self._make_ready(key)

    def retry(self, record: WriteRecord) -> None:
        """Put a taken ``record`` back, ahead of its key's later records and of other keys."""
        key = record.key
        self._busy.discard(key)
        self._waiting.setdefault(key, deque()).appendleft(record)
        self._held += 1
        self._make_ready(key, first=True)

    def _make_ready(self, key: Key, *, first: bool = False) -> None:
        keys = self._ready.setdefault(key[0], OrderedDict())
        if key not in keys:
            keys[key] = None
            self._ready_count += 1
            self._resized(key[0], len(keys) - 1, len(keys))
        if first:
            keys.move_to_end(key, last=False)
            self._ready.move_to_end(key[0], last=False)

    def _resized(self, group: Hashable, before: int, after: int) -> None:
        if before >= 2:
            groups = self._by_size[before]
            del groups[group]
            if not groups:
                del self._by_size[before]
        if after >= 2:
            self._by_size.setdefault(after, {})[group] = None

    def _take_heads(self, keys: list[Key]) -> list[WriteRecord]:
        taken = [self._take_head(key) for key in keys]
        # The partition keys that went this time wait behind the others for the next batch.
        for key in keys:
            if key[0] in self._ready:
                self._ready.move_to_end(key[0])
        return taken

    def _take_head(self, key: Key) -> WriteRecord:
        partition = self._ready[key[0]]
        del partition[key]
        self._resized(key[0], len(partition) + 1, len(partition))
        if not partition:
            del self._ready[key[0]]
        self._ready_count -= 1
        queue = self._waiting[key]
        record = queue.popleft()
        if not queue:
            del self._waiting[key]
        self._busy.add(key)
        self._held -= 1
        return record

