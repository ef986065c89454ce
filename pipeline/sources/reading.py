"""Reading one source file into records, in one pass down the layers.

Stored chunks -> integrity check of the stored bytes (size, SHA-256/MD5) -> decompression ->
lines or Parquet rows -> records. A file's checksum is verified before any of its records is
handed out, so a damaged file never writes a single item.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator, Sequence

from ..integrity import check_count, check_stored_bytes, stop_at_first
from ..records import RecordMaker, WriteRecord
from ..schema import KeyAttributes
from ..shards import decompressed, iter_shard_items, lines
from ..storage import ObjectStore
from .aws_export import change_of_line
from .common import ImportSource, SourceFile, SourceKind, location_prefix

__all__ = ["RECORDS_PER_BATCH", "read_records"]

#: Records handed out per batch: small enough to interleave files, big enough to amortise.
RECORDS_PER_BATCH = 1000
#: Kinds whose files hold only items (``{"Item"}`` lines or Parquet rows): puts.
_ITEM_KINDS: tuple[SourceKind, ...] = ("ddbpipe", "aws-full")


async def read_records(
    store: ObjectStore,
    source: ImportSource,
    file: SourceFile,
    table_keys: KeyAttributes,
) -> AsyncIterator[list[WriteRecord]]:
    """The writes in ``file``, in batches of up to ``RECORDS_PER_BATCH``, in file order.

    ``table_keys`` are the target table's key attributes: each record gets its key and, if
    DynamoDB would refuse it, its ``problem`` (``records.check_item``). The whole stored file
    is downloaded and checked (``integrity.check_stored_bytes``) before the first batch; a
    problem raises its error (``CorruptDataError``) and nothing of the file is handed out.
    Records are then decoded lazily, a batch at a time. Undecodable data, or an item count
    other than the recorded one (found at the end), raises ``CorruptDataError`` naming the
    file *after* earlier batches were handed out: the importer must treat the whole file as
    failed.
    """
    prefix = location_prefix(store)
    # Shards are bounded (tens of MB), so the whole file is held to check it first.
    chunks = [chunk async for chunk in store.iter_chunks(file.key)]
    # Hashing releases the GIL, so a thread overlaps it with the writes. Decoding does not:
    # in a thread it would only contend for the GIL (measured: ~30% more CPU per item).
    stop_at_first(await asyncio.to_thread(list, check_stored_bytes(file, chunks, prefix)))
    where = prefix + file.key
    records = _records(chunks, source.kind, where, RecordMaker(file.key, where, table_keys))
    counted = 0
    while batch := list(itertools.islice(records, RECORDS_PER_BATCH)):
        counted += len(batch)
        yield batch
        await asyncio.sleep(0)  # a turn for the replies between batches
    stop_at_first(check_count(file, counted, prefix))


def _records(
    chunks: Sequence[bytes], kind: SourceKind, where: str, record: RecordMaker
) -> Iterator[WriteRecord]:
    """Puts of the items of ddbpipe and full AWS exports; for incremental exports and loose
    files, the writes of their change lines (put NewImage, or delete Keys)."""
    if kind in _ITEM_KINDS:
        for number, item in enumerate(iter_shard_items(chunks, where), start=1):
            yield record("put", item, number)
    else:
        for number, line in lines(decompressed(chunks, where)):
            write, raw = change_of_line(line, where, number)
            yield record(write, raw, number)
