"""The BatchWriteItem loop of an import: rate-limited, adaptive, and it never loses a record.

Records flow in from an async iterator, are grouped by a ``BatchBuilder`` and sent as up to
``concurrency`` BatchWriteItem calls at once. Every record ends in exactly one of two ways:
*written* (DynamoDB confirmed it) or *dead-lettered* (DynamoDB rejected it for good, or it
could not be written before its retry deadline), each reported through a callback. At the end
``read == written + dead_lettered``, or ``write`` raises.

- Rate: each batch is charged to the global ``TokenBucket`` at its estimated WCU before it is
  sent and corrected with the ConsumedCapacity of the reply. Throttles (the exception, or
  UnprocessedItems) tell the ``AdaptiveRate`` controller, which lowers the bucket's rate.
- Hot keys: an optional ``KeyRateLimiter`` holds back records of a partition-key value over
  its budget (1,000 WCU/s per key in DynamoDB) while other keys go ahead. An optional
  ``HotKeys`` learns the partition keys whose partitions the table runs short of and paces
  them on their own; the throttles they are blamed for do not cut the import's rate.
- Retries: throttled and unprocessed records go back into the builder after a full-jitter
  backoff of their own (``retry.RetryPolicy``; a record is given up at its deadline, not
  after a number of attempts); a key's later records wait for them, so the order per key
  holds.
- Bad items: a batch refused as invalid is split in halves until the bad record is alone; it
  is dead-lettered with DynamoDB's message and the others are written.

The client should not retry throttles itself (``DynamoClient(retry=RetryPolicy(max_attempts=1))``)
so the controller hears of each throttle at once; retrying here is per record, not per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from .batching import MAX_BATCH_REQUESTS, BatchBuilder
from .dynamo import DynamoClient
from .errors import AwsRequestError, ThrottledError, TransientError
from .hot_keys import HotKeys
from .progress import JobProgress
from .ratelimit import Bucket, KeyRateLimiter, RateController
from .records import Key, WriteRecord, item_key
from .retry import Clock, RetryPolicy, SystemClock

__all__ = ["ITEM_ERROR_CODES", "TableWriter"]

#: Errors that condemn an item, not the run: the batch is split to find the bad item(s).
ITEM_ERROR_CODES = frozenset(
    {"ValidationException", "SerializationException", "ItemCollectionSizeLimitExceededException"}
)

#: How often to look again when every ready record is held back by its key's rate.
KEY_LIMIT_POLL = 0.02

#: Backoff of a record after a 5xx or a dropped connection.
DEFAULT_BACKOFF = RetryPolicy(base_delay=0.05, max_delay=20.0)
#: Backoff of a throttled record: short, because the global bucket already paces a throttled
#: table, and a long per-record wait on top only leaves capacity unused (seen as an idle tail
#: with the last few records).
DEFAULT_THROTTLE_BACKOFF = RetryPolicy(base_delay=0.05, max_delay=1.0)

OnWritten = Callable[[list[WriteRecord], float], None]
OnDeadLetter = Callable[[WriteRecord, str], None]


@dataclass
class _RetryState:
    attempts: int
    first_failure: float


class TableWriter:
    """Writes a stream of records to one table; see the module docstring.

    ``key_attributes``: the table's key attribute names, partition key first.
    ``retry_deadline``: seconds from a record's first failed attempt until it is given up.
    ``buffer_records``: most records held at once (queued, in flight or backing off).
    Counters: ``read``, ``written``, ``dead_lettered``, ``throttled_requests`` (calls refused
    by a throttle), ``unprocessed_items`` (records DynamoDB returned unprocessed),
    ``consumed_wcu`` (as DynamoDB reported it), ``batches`` (calls that got a reply).
    A ``progress`` given is kept up to date in ``consumed_capacity``, ``throttles`` and
    ``current_rate``; items written and dead-lettered reach it through the callbacks' owner.
    """

    def __init__(
        self,
        client: DynamoClient,
        table: str,
        key_attributes: Sequence[str],
        *,
        bucket: Bucket,
        controller: RateController | None = None,
        key_limiter: KeyRateLimiter | None = None,
        hot_keys: HotKeys | None = None,
        concurrency: int = 16,
        retry_deadline: float = 15 * 60.0,
        backoff: RetryPolicy = DEFAULT_BACKOFF,
        throttle_backoff: RetryPolicy = DEFAULT_THROTTLE_BACKOFF,
        buffer_records: int | None = None,
        on_written: OnWritten | None = None,
        on_dead_letter: OnDeadLetter | None = None,
        progress: JobProgress | None = None,
        clock: Clock | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.client = client
        self.table = table
        self.bucket = bucket
        self.controller = controller
        if controller is not None:
            # A controller that did not drive this bucket would cut a rate nobody uses.
            controller.attach(bucket)
        self.key_limiter = key_limiter
        self.hot_keys = hot_keys
        self.concurrency = concurrency
        self.retry_deadline = retry_deadline
        self.backoff = backoff
        self.throttle_backoff = throttle_backoff
        # Enough for every slot to find a full batch, and some to spare for blocked keys.
        self.buffer_records = buffer_records or concurrency * MAX_BATCH_REQUESTS * 4
        self.progress = progress
        self.read = 0
        self.written = 0
        self.dead_lettered = 0
        self.throttled_requests = 0
        self.unprocessed_items = 0
        self.consumed_wcu = 0.0
        self.batches = 0
        self.key_attributes = tuple(key_attributes)
        self._builder = BatchBuilder()
        self._on_written = on_written
        self._on_dead_letter = on_dead_letter
        self._clock: Clock = clock or SystemClock()
        self._retries: dict[Key, _RetryState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        # The dispatcher waits on _changed, the reader on _room (records finished).
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._source_done = False
        self._failure: BaseException | None = None
        self._started = False

    @property
    def outstanding(self) -> int:
        """Records read but neither written nor dead-lettered yet."""
        return self.read - self.written - self.dead_lettered

    async def write(self, records: AsyncIterable[WriteRecord]) -> None:
        """Write every record; returns once each is written or dead-lettered.

        Raises the first error that is not about single items (e.g. the table is gone, or the
        source failed). Cancelling stops promptly; records whose reply had not arrived are
        not counted as written.
        """
        if self._started:
            raise RuntimeError("a TableWriter writes one stream; make a new one")
        self._started = True
        self._spawn(self._feed(records))
        try:
            await self._dispatch()
        finally:
            await self._stop_tasks()
        if self.outstanding != 0:
            raise RuntimeError(
                f"writer bookkeeping broke: read {self.read}, written {self.written}, "
                f"dead-lettered {self.dead_lettered}"
            )

    # --- reading ---------------------------------------------------------------------------

    async def _feed(self, records: AsyncIterable[WriteRecord]) -> None:
        async for record in records:
            while self.outstanding >= self.buffer_records:
                self._room.clear()
                await self._room.wait()
            self._builder.add(record)
            self.read += 1
            self._wake()
        self._source_done = True
        self._wake()

    # --- sending ---------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if batch is None:
                self._slots.release()
                return
            self._spawn(self._send_in_slot(batch))

    async def _next_batch(self) -> list[WriteRecord] | None:
        """The next batch to send, charged to the bucket; None once everything is done."""
        while True:
            self._changed.clear()
            self._raise_failure()
            if self._source_done and self.outstanding == 0:
                return None
            await self.bucket.wait_for_credit()
            # Let the reader top up the builder first, so batches go out as full as they can.
            await asyncio.sleep(0)
            self._raise_failure()
            batch = self._take()
            if batch:
                # Charged before sending (the bucket may go into debt), corrected on reply.
                self.bucket.charge(_estimate(batch))
                return batch
            held_back_by_key_rate = self._builder.ready > 0
            if held_back_by_key_rate and self.hot_keys is not None and self.hot_keys.held_back:
                # Only hot keys are ready: holding them back would leave their partition idle.
                self.hot_keys.release()
                continue
            await self._wait_for_change(KEY_LIMIT_POLL if held_back_by_key_rate else None)

    def _take(self) -> list[WriteRecord]:
        if self.key_limiter is None and self.hot_keys is None:
            return self._builder.take()
        if self.hot_keys is not None:
            self.hot_keys.held_back = False
        return self._builder.take(admit=self._admit)

    def _admit(self, record: WriteRecord) -> bool:
        if self.hot_keys is not None and not self.hot_keys.admit(record):
            return False
        return self.key_limiter is None or self.key_limiter.try_take(record.key[0], record.units)

    async def _send_in_slot(self, batch: list[WriteRecord]) -> None:
        try:
            await self._send(batch)
        finally:
            self._slots.release()
            self._wake()

    async def _send(self, batch: list[WriteRecord]) -> None:
        estimate = _estimate(batch)
        sent_at = self.controller.now() if self.controller is not None else 0.0
        try:
            reply = await self.client.batch_write_raw(self.table, [r.request() for r in batch])
        except ThrottledError as error:
            self.throttled_requests += 1
            self._note_throttle(sent_at, batch, batch)
            self._retry_all(batch, str(error), throttled=True)
        except TransientError as error:
            # 5xx or a dropped connection: nothing to say about capacity, just try again.
            self._retry_all(batch, str(error), throttled=False)
        except AwsRequestError as error:
            if error.code not in ITEM_ERROR_CODES:
                raise
            self.bucket.charge(-estimate)  # refused whole: nothing was written
            await self._isolate_bad_items(batch, error)
        else:
            self._take_reply(batch, reply, estimate, sent_at)

    async def _isolate_bad_items(self, batch: list[WriteRecord], error: AwsRequestError) -> None:
        if len(batch) == 1:
            self._dead_letter(batch[0], str(error))
            return
        # One half after the other, within this batch's slot: the search for a bad item does
        # not take concurrency from the rest of the import.
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            await self.bucket.acquire(_estimate(half))
            await self._send(half)

    def _take_reply(
        self, batch: list[WriteRecord], reply: dict[str, Any], estimate: int, sent_at: float
    ) -> None:
        self.batches += 1
        unprocessed = self._unprocessed_records(batch, reply)
        unprocessed_ids = {id(record) for record in unprocessed}
        processed = [record for record in batch if id(record) not in unprocessed_ids]
        consumed = _consumed_capacity(reply, default=float(_estimate(processed)))
        # The bucket counts attempts: unprocessed records were tried, so they stay charged.
        self.bucket.charge(consumed + _estimate(unprocessed) - estimate)
        self.consumed_wcu += consumed
        if self.progress is not None:
            self.progress.consumed_capacity += consumed
        if self.controller is not None:
            # What was accepted counts even when the rest was throttled: it is the delivered
            # rate the controller cuts to.
            self.controller.on_success(consumed)
            self._report_rate()
        if unprocessed:
            self.unprocessed_items += len(unprocessed)
            self._note_throttle(sent_at, unprocessed, batch)
            self._retry_all(
                unprocessed, "returned as UnprocessedItems (throttled)", throttled=True
            )
        self._mark_written(processed, consumed)

    def _unprocessed_records(
        self, batch: list[WriteRecord], reply: dict[str, Any]
    ) -> list[WriteRecord]:
        requests = (reply.get("UnprocessedItems") or {}).get(self.table) or []
        if not requests:
            return []
        # One record per key in a batch, so the key finds the record a request came from.
        by_key = {record.key: record for record in batch}
        found = [by_key.get(item_key(_request_item(r), self.key_attributes)) for r in requests]
        if None in found or len(found) != len(set(map(id, found))):
            # A reply we cannot map back: retrying the whole batch is safe (puts and deletes
            # are idempotent), counting a record as written that was not would not be.
            return list(batch)
        return [record for record in found if record is not None]

    # --- outcomes --------------------------------------------------------------------------

    def _mark_written(self, records: list[WriteRecord], consumed: float) -> None:
        if not records:
            return
        for record in records:
            self._retries.pop(record.key, None)
            self._builder.finish(record)
        self.written += len(records)
        self._wake()
        if self._on_written is not None:
            self._on_written(records, consumed)

    def _dead_letter(self, record: WriteRecord, reason: str) -> None:
        self._retries.pop(record.key, None)
        self._builder.finish(record)
        self.dead_lettered += 1
        self._wake()
        if self._on_dead_letter is not None:
            self._on_dead_letter(record, reason)

    def _note_throttle(
        self, sent_at: float, throttled: list[WriteRecord], sent: list[WriteRecord]
    ) -> None:
        # Hot keys' throttles cut their own rates; the import's rate is for the rest.
        hot_keys_blamed = self.hot_keys is not None and self.hot_keys.throttled(
            throttled, sent, backlog=self._builder.backlog, ready=self._builder.ready,
            rate=self.bucket.rate)
        if self.controller is not None and not hot_keys_blamed:
            self.controller.on_throttle(sent_at)
            self._report_rate()
        if self.progress is not None:
            self.progress.throttles += 1

    def _report_rate(self) -> None:
        if self.progress is not None and self.controller is not None:
            self.progress.current_rate = self.controller.rate

    def _retry_all(self, records: list[WriteRecord], reason: str, *, throttled: bool) -> None:
        for record in records:
            self._retry_later(record, reason, throttled=throttled)

    def _retry_later(self, record: WriteRecord, reason: str, *, throttled: bool) -> None:
        now = self._clock.monotonic()
        state = self._retries.setdefault(record.key, _RetryState(0, now))
        state.attempts += 1
        if now - state.first_failure >= self.retry_deadline:
            self._dead_letter(
                record,
                f"not written within the retry deadline of {self.retry_deadline:g} s "
                f"({state.attempts} attempts); last error: {reason}",
            )
            return
        policy = self.throttle_backoff if throttled else self.backoff
        self._spawn(self._requeue_after(record, policy.delay(state.attempts - 1, self._clock)))

    async def _requeue_after(self, record: WriteRecord, delay: float) -> None:
        await self._clock.sleep(delay)
        self._builder.retry(record)
        self._wake()

    # --- tasks and wake-ups ----------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
        self._wake()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _wake(self) -> None:
        self._changed.set()
        self._room.set()

    async def _wait_for_change(self, timeout: float | None = None) -> None:
        if timeout is None:
            await self._changed.wait()
            return
        await _first_of(self._changed.wait(), self._clock.sleep(timeout))

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Waited for, so no request is still running when write() returns or raises.
        await asyncio.gather(*tasks, return_exceptions=True)


def _estimate(records: list[WriteRecord]) -> int:
    return sum([record.units for record in records])


def _consumed_capacity(reply: dict[str, Any], *, default: float) -> float:
    entries = reply.get("ConsumedCapacity")
    if not entries:
        return default
    return float(sum(entry.get("CapacityUnits", 0.0) for entry in entries))


def _request_item(request: dict[str, Any]) -> dict[str, Any]:
    """The item (or delete key) of a request DynamoDB returned unprocessed."""
    if "PutRequest" in request:
        item: dict[str, Any] = request["PutRequest"].get("Item") or {}
    else:
        item = (request.get("DeleteRequest") or {}).get("Key") or {}
    return item


async def _first_of(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
