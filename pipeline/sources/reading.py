"""Reading one source file into records, in one pass down the layers.

Stored chunks -> integrity check of the stored bytes (size, SHA-256/MD5) -> decompression ->
lines or Parquet rows -> records. A file's checksum is verified before any of its records is
handed out, so a damaged file never writes a single item. A resumed import starts a file at a
position: the records before it are skipped before they become records (NDJSON lines are still
split, and the ``{"Item": ...}`` of item lines or a Parquet row's item still taken out).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TypeVar

from ..errors import ResumeError
from ..integrity import check_count, check_stored_bytes, stop_at_first
from ..records import RecordMaker, WriteRecord
from ..schema import KeyAttributes
from ..shards import decompressed, iter_shard_items, lines
from ..spool import StoredBytes
from ..storage import ObjectStore
from .aws_export import change_of_line
from .common import ImportSource, SourceFile, SourceKind, location_prefix

__all__ = ["RECORDS_PER_BATCH", "read_items", "read_records"]

T = TypeVar("T")

#: Records handed out per batch: small enough to interleave files, big enough to amortise.
#: An import holds up to two batches per file it reads (one in hand, one read ahead), about
#: 0.2 MB each here, so this is a part of what each open file costs.
RECORDS_PER_BATCH = 250
#: Kinds whose files hold only items (``{"Item"}`` lines or Parquet rows): puts.
_ITEM_KINDS: tuple[SourceKind, ...] = ("ddbpipe", "aws-full")


async def read_records(
    store: ObjectStore,
    source: ImportSource,
    file: SourceFile,
    table_keys: KeyAttributes,
    *,
    start: int = 0,
) -> AsyncIterator[list[WriteRecord]]:
    """The writes in ``file`` from position ``start`` on (0 is the first record), in batches
    of up to ``RECORDS_PER_BATCH``, in file order; each record carries its position.

    ``table_keys`` are the target table's key attributes: each record gets its key and, if
    DynamoDB would refuse it, its ``problem`` (``records.check_item``). The whole stored file
    is fetched (``spool.StoredBytes``: a temporary copy) and checked
    (``integrity.check_stored_bytes``) before the first batch; a problem raises its error
    (``CorruptDataError``) and nothing of the file is handed out.
    Records are then decoded lazily, a batch at a time. Undecodable data, or an item count
    other than the recorded one (found at the end), raises ``CorruptDataError`` naming the
    file *after* earlier batches were handed out: the importer must treat the whole file as
    failed. A file with fewer than ``start`` records raises ``ResumeError``: it changed since
    a checkpoint counted them.
    """

    def records(numbered: Iterator[tuple[int, bytes]], where: str) -> Iterator[WriteRecord]:
        maker = RecordMaker(file.key, where, table_keys, first_position=start)
        return _records(numbered, source.kind, where, maker)

    async for batch in _read_file(store, source, file, start, records):
        yield batch


async def read_items(
    store: ObjectStore, source: ImportSource, file: SourceFile, *, start: int = 0
) -> AsyncIterator[list[bytes]]:
    """The items (DynamoDB JSON) of a file of items (a ddbpipe or full AWS export) from
    position ``start`` on, in batches, checked as ``read_records`` checks them."""
    if source.kind not in _ITEM_KINDS:
        raise ValueError(f"{file.key} holds changes, not items")

    def items(numbered: Iterator[tuple[int, bytes]], where: str) -> Iterator[bytes]:
        return (item for _, item in numbered)

    async for batch in _read_file(store, source, file, start, items):
        yield batch


async def _read_file(
    store: ObjectStore,
    source: ImportSource,
    file: SourceFile,
    start: int,
    convert: Callable[[Iterator[tuple[int, bytes]], str], Iterator[T]],
) -> AsyncIterator[list[T]]:
    """The one pass of ``read_records`` and ``read_items``: fetch, check, skip to ``start``,
    then ``convert`` the numbered records a batch at a time, and check the count at the end."""
    prefix = location_prefix(store)
    # Fetched whole, hashed as it arrives (in a thread, beside the writes), and checked
    # before any record. Decoding stays on the loop: in a thread it would only contend for
    # the GIL (measured: ~30% more CPU per item).
    with await StoredBytes.fetch(store, file.key) as stored:
        stop_at_first(check_stored_bytes(file, stored.checksums, prefix))
        where = prefix + file.key
        numbered = _numbered(stored, source.kind, where)
        counted = await _skip(numbered, start)
        if counted < start:
            raise ResumeError(
                f"{where} holds {counted} records, fewer than the {start} a checkpoint counts "
                "as written: it changed since the import began, so start the import over"
            )
        converted = convert(numbered, where)
        while batch := list(itertools.islice(converted, RECORDS_PER_BATCH)):
            counted += len(batch)
            yield batch
            await asyncio.sleep(0)  # a turn for the replies between batches
    stop_at_first(check_count(file, counted, prefix))


def _numbered(
    chunks: Iterable[bytes], kind: SourceKind, where: str
) -> Iterator[tuple[int, bytes]]:
    """One (number, bytes) per record: the items of ddbpipe and full AWS exports by item
    number; for incremental exports and loose files, their change lines by line number."""
    if kind in _ITEM_KINDS:
        return enumerate(iter_shard_items(chunks, where), start=1)
    return lines(decompressed(chunks, where))


async def _skip(numbered: Iterator[tuple[int, bytes]], count: int) -> int:
    """Skip up to ``count`` records; returns how many there were."""
    skipped = 0
    for _ in itertools.islice(numbered, count):
        skipped += 1
        if skipped % RECORDS_PER_BATCH == 0:
            await asyncio.sleep(0)  # the other files' writes go on meanwhile
    return skipped


def _records(
    numbered: Iterator[tuple[int, bytes]], kind: SourceKind, where: str, record: RecordMaker
) -> Iterator[WriteRecord]:
    """Puts of the items; for change lines, their writes (put NewImage, or delete Keys)."""
    if kind in _ITEM_KINDS:
        for number, item in numbered:
            yield record("put", item, number)
    else:
        for number, line in numbered:
            write, raw = change_of_line(line, where, number)
            yield record(write, raw, number)
