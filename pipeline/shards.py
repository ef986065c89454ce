"""The shard format layer: writing shards, and reading any stored data file back to items.

A shard is one stored data file under ``data/``: DynamoDB JSON lines (``{"Item":{...}}``, the
line format of AWS's own exports) compressed with zstd or gzip or left plain, or a Parquet file
(see ``columns.py`` for its columns). The caller decides when to roll to a new shard
(``ShardWriter.raw_bytes`` against its bound); a writer only writes one file.

Checksums are over the stored bytes, computed while they are written: SHA-256 for our manifest,
MD5 in base64 (AWS's manifest-files.json ``md5Checksum``) and hex (the S3 ETag of a single-part
upload).

Reading goes down one layer at a time, each in one place: stored chunks -> ``decompressed``
(by the name's extension) -> ``lines`` (the one NDJSON line splitter) -> the item of each
``{"Item"}`` line; or stored chunks -> the ``_item`` column of Parquet rows.
``iter_shard_items`` strings them together. Errors are ``CorruptDataError`` naming the file
as the caller named it (a key, or a full location).

Reading takes any stored chunks; for a file to be trusted, a ``spool.StoredBytes`` (fetched
whole, hashed as it arrived, checked before any item is used). Parquet reads seek in it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any, BinaryIO

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from . import codec, columns
from .config import Compression, Format
from .errors import CorruptDataError
from .schema import KeyAttributes
from .spool import Checksums, Spool, temp_folder_errors

__all__ = [
    "FinishedShard",
    "NDJSON_SUFFIXES",
    "ShardWriter",
    "decompressed",
    "iter_shard_items",
    "lines",
    "shard_key",
]

# Level 1: on DynamoDB JSON (repetitive type tags and names) it compresses about as well as
# the default level 3 at two to three times the speed, which keeps one core ahead of a Scan.
ZSTD_LEVEL = 1
GZIP_LEVEL = 6
#: A row group holds at most this many rows, and about this many bytes of raw items (one
#: item more, if a single item is larger): what a Parquet conversion holds at a time.
PARQUET_ROW_GROUP_ROWS = 64 * 1024
PARQUET_ROW_GROUP_BYTES = 4 * 1024 * 1024
#: Rows of the ``_item`` column read at a time from a Parquet file (about 100 KB of items),
#: and the stored bytes a Parquet reader reads ahead: what each file open for reading holds
#: besides the page being decoded.
PARQUET_READ_ROWS = 256
PARQUET_READ_BUFFER_BYTES = 64 * 1024
PARQUET_COMPRESSION = "zstd"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's switch for the gzip container
_NDJSON_EXTENSIONS: dict[Compression, str] = {"zstd": ".json.zst", "gzip": ".json.gz",
                                              "none": ".json"}


def shard_key(segment: int, seq: int, format: Format, compression: Compression) -> str:
    """Storage key of a shard, relative to the export's prefix: ``data/00003-000012.json.zst``."""
    return f"data/{segment:05d}-{seq:06d}{_extension(format, compression)}"


def _extension(format: Format, compression: Compression) -> str:
    # Parquet compresses its columns with zstd inside the file, whatever ``compression`` says.
    return ".parquet" if format == "parquet" else _NDJSON_EXTENSIONS[compression]


# --- hashing while writing ------------------------------------------------------------------


class _HashingFile:
    """A write-only file that hashes what passes through it (Parquet writes through this)."""

    def __init__(self, file: BinaryIO, checksums: Checksums) -> None:
        self._file = file
        self._checksums = checksums
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._checksums.update(view)
        return self._file.write(view)

    def tell(self) -> int:
        return self._checksums.size

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self.closed = True  # the owner closes the underlying file

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


# --- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishedShard:
    """A closed shard: a temp file to upload (then delete) and what is known about it."""

    path: str
    items: int
    raw_bytes: int
    stored_bytes: int
    sha256: str
    md5_b64: str
    md5_hex: str


class ShardWriter:
    """Writes one shard to a temp file from the raw items of Scan pages.

    NDJSON streams through the compressor into the file as pages arrive. Parquet spools the
    shard's raw items to a temp file and converts them at ``close`` (the typed columns are
    chosen from all items of the shard); at most ``PARQUET_CONVERSIONS_AT_ONCE`` shards are
    converted at the same time, so memory stays bounded however many segments run.
    """

    def __init__(
        self,
        format: Format,
        compression: Compression,
        key_attributes: KeyAttributes,
        spool_dir: str | None = None,
    ) -> None:
        suffix = _extension(format, compression)
        self.format = format
        self.compression = compression
        self.key_attributes = key_attributes
        self._item_count = 0
        self._raw_bytes = 0
        self._checksums = Checksums()
        # Parquet only: the raw items until close, back to back, and where each one ends.
        self._spool_ends = array("q")
        self._spool_dir = spool_dir
        self._compress, self._flush = _compressor(format, compression)
        with self._temp_folder_errors():
            fd, self._path = tempfile.mkstemp(prefix="shard-", suffix=suffix, dir=spool_dir)
        # Closed by close()/discard(): it lives as long as the writer.
        self._spool = Spool("a shard", spool_dir) if format == "parquet" else None
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    @property
    def item_count(self) -> int:
        return self._item_count

    @property
    def raw_bytes(self) -> int:
        """Uncompressed DynamoDB JSON bytes of the items added so far."""
        return self._raw_bytes

    def add_items(self, items: Sequence[Any]) -> None:
        """Add one Scan page's raw items (bytes-like DynamoDB JSON, e.g. ``msgspec.Raw``)."""
        self._check_open()
        if not items:
            return
        try:
            with self._temp_folder_errors():
                self._add(items)
        except BaseException:
            self.discard()
            raise
        self._item_count += len(items)

    def _add(self, items: Sequence[Any]) -> None:
        if self._spool is not None:
            self._spool.append(b"".join(items))
            ends = accumulate(map(len, items), initial=self._raw_bytes)
            next(ends)  # where this page's first item starts
            self._spool_ends.extend(ends)
            self._raw_bytes = self._spool_ends[-1]
        else:
            pieces = codec.ndjson_pieces(items)
            # The raw bytes are the items themselves, without the {"Item":...} wrapping.
            self._raw_bytes += sum(map(len, pieces)) - len(items) * _LINE_OVERHEAD
            for piece in pieces:
                self._write(self._compress(piece))

    def close(self) -> FinishedShard:
        """Finish the file and return its stats; the caller uploads and deletes ``path``."""
        self._check_open()
        try:
            with self._temp_folder_errors():
                if self.format == "parquet":
                    self._write_parquet()
                else:
                    self._write(self._flush())
                self._file.close()
        except BaseException:
            self.discard()
            raise
        self._done = True
        return FinishedShard(
            path=self._path,
            items=self._item_count,
            raw_bytes=self._raw_bytes,
            stored_bytes=self._checksums.size,
            sha256=self._checksums.sha256,
            md5_b64=self._checksums.md5_b64,
            md5_hex=self._checksums.md5_hex,
        )

    def discard(self) -> None:
        """Drop the shard: close and delete the temp file (safe to call more than once)."""
        self._done = True
        self._file.close()
        self._close_spool()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        # Leaving the block without close() (e.g. on an error) drops the partial file.
        if not self._done:
            self.discard()

    def _temp_folder_errors(self) -> contextlib.AbstractContextManager[None]:
        # The shard file and the Parquet conversion's files (its spool says so itself).
        return temp_folder_errors("a shard", self._spool_dir)

    def _check_open(self) -> None:
        if self._done:
            raise ValueError("shard writer is already closed")

    def _write(self, data: bytes) -> None:
        if data:
            self._checksums.update(data)
            self._file.write(data)

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _spooled_chunks(self, start: int, stop: int) -> Iterator[list[bytes]]:
        """The spooled items of rows ``start`` to ``stop``, in runs of about
        ``columns.DECODE_CHUNK_BYTES``."""
        assert self._spool is not None
        ends = self._spool_ends
        row, offset = start, (ends[start - 1] if start else 0)
        while row < stop:
            end = bisect_left(ends, offset + columns.DECODE_CHUNK_BYTES, row, stop) + 1
            end = min(stop, end)
            data = self._spool.read(offset, ends[end - 1] - offset)
            chunk_ends = ends[row:end]
            # Slicing bytes (a copy) is faster than slicing a memoryview (an object per slice).
            starts = chain((offset,), chunk_ends)
            yield [data[first - offset : last - offset]
                   for first, last in zip(starts, chunk_ends, strict=False)]
            row, offset = end, ends[end - 1]

    def _spooled_item_array(self, start: int, stop: int) -> pa.Array:
        """The ``_item`` column of rows ``start`` to ``stop``, read back from the spool."""
        assert self._spool is not None
        ends = self._spool_ends
        first = ends[start - 1] if start else 0
        data = self._spool.read(first, ends[stop - 1] - first)
        offsets = array("q", [0])
        offsets.extend(map(first.__rsub__, ends[start:stop]))  # end - first, at C speed
        return columns.item_array(data, offsets)

    def _write_parquet(self) -> None:
        with _parquet_conversions:
            self._convert_to_parquet()
        self._close_spool()

    def _convert_to_parquet(self) -> None:
        """Pass one decodes every item once to choose the column types (they depend on all
        of them), keeping the values in a temporary file; then one row group at a time, its
        typed values and ``_item`` values are read back. What a conversion holds is one row
        group, whatever the shard's size."""
        rows = len(self._spool_ends)
        with columns.plan_columns(
            self._spooled_chunks(0, rows), self.key_attributes, self._spool_dir
        ) as plan, pq.ParquetWriter(
            _HashingFile(self._file, self._checksums),
            plan.schema,
            compression=PARQUET_COMPRESSION,
            # Page CRCs let a reader tell flipped bytes from data (see _parquet_items).
            write_page_checksum=True,
            # Every item differs: a dictionary of them saves nothing (the writer gives it up
            # at 1 MiB), and each file an import reads holds it for a whole row group.
            use_dictionary=plan.typed_schema.names,
        ) as parquet:
            for start, stop in self._row_groups():
                # Not kept in a name: the last group's items would live on during the next read.
                parquet.write_table(
                    columns.with_item_column(
                        plan.typed_table(start, stop), self._spooled_item_array(start, stop),
                        self.key_attributes,
                    ),
                    row_group_size=stop - start,
                )

    def _row_groups(self) -> Iterator[tuple[int, int]]:
        """(first row, row after the last) of each row group, bounded in rows and bytes."""
        ends, rows = self._spool_ends, len(self._spool_ends)
        start = 0
        while start < rows:
            offset = ends[start - 1] if start else 0
            by_bytes = bisect_left(ends, offset + PARQUET_ROW_GROUP_BYTES, start, rows) + 1
            stop = min(rows, start + PARQUET_ROW_GROUP_ROWS, by_bytes)
            yield start, stop
            start = stop


_LINE_OVERHEAD = len(b'{"Item":}\n')


#: Parquet shards converted at the same time (each holds its shard's items in memory).
PARQUET_CONVERSIONS_AT_ONCE = 2
_parquet_conversions = threading.BoundedSemaphore(PARQUET_CONVERSIONS_AT_ONCE)


def _compressor(
    format: Format, compression: Compression
) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """(compress chunk, flush at end) for an NDJSON shard's compression."""
    if format == "parquet" or compression == "none":
        return (lambda data: data), (lambda: b"")
    if compression == "zstd":
        # The frame carries a content checksum, so a reader detects flipped bytes by itself.
        zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
        return zstd.compress, zstd.flush
    gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return gzip.compress, gzip.flush


# --- reading --------------------------------------------------------------------------------


#: NDJSON file names ddbpipe reads: ours, AWS's, and common names for JSON lines.
NDJSON_SUFFIXES = tuple(
    f"{stem}{compression}"
    for stem in (".json", ".jsonl", ".ndjson")
    for compression in ("", ".gz", ".zst", ".zstd")
)
#: Stored bytes fed to a decompressor at a time, so the decoded data stays bounded: about
#: 150 KB of DynamoDB JSON from zstd or gzip, per file being read.
DECOMPRESS_PIECE_BYTES = 16 * 1024


def iter_shard_items(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """Each item's DynamoDB JSON (the object inside ``{"Item": ...}``) from a stored file.

    ``chunks`` are the stored bytes in order; ``name`` (a key or a full location) picks the
    decoder by its extension: ``.json.zst``, ``.json.gz`` (also AWS-native export files),
    ``.json`` or ``.parquet``, and names the file in errors. NDJSON streams in bounded
    memory; Parquet needs random access (a ``spool.StoredBytes`` gives it without holding the
    file).
    """
    if name.endswith(".parquet"):
        return _parquet_items(chunks, name)
    if name.endswith(NDJSON_SUFFIXES):
        return _line_items(lines(decompressed(chunks, name)), name)
    raise CorruptDataError(
        f"{name}: unknown shard type; expected .json.zst, .json.gz, .json or .parquet"
    )


def _line_items(numbered_lines: Iterable[tuple[int, bytes]], name: str) -> Iterator[bytes]:
    for number, line in numbered_lines:
        yield _item_of_line(line, name, number)


# --- decompression ----------------------------------------------------------------------------


def decompressed(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """The decompressed bytes of a stored file, by its extension (.gz, .zst/.zstd, or none)."""
    if name.endswith(".gz"):
        return _gzip_stream(_pieces(chunks), name)
    if name.endswith((".zst", ".zstd")):
        return _zstd_stream(_pieces(chunks), name)
    return iter(chunks)


def _pieces(chunks: Iterable[bytes]) -> Iterator[bytes | memoryview]:
    # Fed a whole chunk, a decompressor would inflate all of it in one call.
    for chunk in chunks:
        if len(chunk) <= DECOMPRESS_PIECE_BYTES:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), DECOMPRESS_PIECE_BYTES):
            yield view[start : start + DECOMPRESS_PIECE_BYTES]


def _zstd_stream(pieces: Iterable[bytes | memoryview], name: str) -> Iterator[bytes]:
    """Decompress a zstd stream of one or more frames; fail if the last frame is cut off."""
    decompressor = zstandard.ZstdDecompressor()
    return _frames(pieces, name, decompressor.decompressobj, zstandard.ZstdError, "zstd")


def _gzip_stream(pieces: Iterable[bytes | memoryview], name: str) -> Iterator[bytes]:
    """Decompress a gzip stream of one or more members; fail if the last member is cut off."""
    return _frames(pieces, name, lambda: zlib.decompressobj(_GZIP_WBITS), zlib.error, "gzip")


def _frames(
    pieces: Iterable[bytes | memoryview],
    name: str,
    new_frame: Callable[[], Any],
    error_type: type[Exception],
    format_name: str,
) -> Iterator[bytes]:
    """Decompress concatenated frames (zstd frames, gzip members), each by a fresh decoder."""
    frame = new_frame()
    started = False
    in_frame = False
    try:
        for piece in pieces:
            while piece:
                started = in_frame = True
                yield frame.decompress(piece)
                if not frame.eof:
                    break
                piece = frame.unused_data
                frame = new_frame()
                in_frame = False
    except error_type as exc:
        raise CorruptDataError(f"{name}: corrupt {format_name} data ({exc})") from None
    if not started:
        raise CorruptDataError(f"{name}: empty file, expected {format_name} data")
    if in_frame:
        raise CorruptDataError(
            f"{name}: truncated {format_name} data (the last frame does not end)"
        )


# --- lines ----------------------------------------------------------------------------------


def lines(blocks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of text arriving in blocks, blank lines left out, in bounded memory.

    The one place NDJSON is split into lines. Line numbers count from 1 and include the blank
    lines, so they are what an editor shows.
    """
    number = 0
    tail = b""
    for block in blocks:
        if not block:
            continue
        split = (tail + block).split(b"\n")
        tail = split.pop()
        for line in split:
            number += 1
            # isspace() tests in place; strip() would copy every line.
            if line and not line.isspace():
                yield number, line
    if tail and not tail.isspace():
        yield number + 1, tail


class _ItemLine(msgspec.Struct):
    Item: msgspec.Raw


_item_line_decoder = msgspec.json.Decoder(_ItemLine)


def _item_of_line(line: bytes, name: str, number: int) -> bytes:
    """The item of an ``{"Item": {...}}`` line (line ``number`` of the file ``name``)."""
    try:
        item = bytes(_item_line_decoder.decode(line).Item)
    except msgspec.ValidationError as exc:
        raise CorruptDataError(f"{name}: line {number} is not an item line ({exc})") from None
    except msgspec.DecodeError as exc:
        raise CorruptDataError(f"{name}: line {number} is not valid JSON ({exc})") from None
    if not item.lstrip().startswith(b"{"):
        raise CorruptDataError(f"{name}: line {number}: Item is not a JSON object")
    return item


# --- Parquet --------------------------------------------------------------------------------


def _parquet_items(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """The ``_item`` column of a Parquet shard, row by row (pages checked against their CRCs).
    Parquet needs random access: a ``Spool`` gives its file, other chunks are joined.

    Streamed a page at a time, not a row group at a time: an import reads several files at
    once, and what each open file holds is what its peak grows with. That is the page being
    decoded (about 1 MiB, the writer's page size), ``PARQUET_READ_BUFFER_BYTES`` of stored
    bytes and one batch of ``PARQUET_READ_ROWS`` items; and, for a file whose ``_item``
    column has a dictionary (ours have none), that dictionary. A row group (up to 4 MiB of
    raw items) is never held whole."""
    source = (chunks.seekable_file() if isinstance(chunks, Spool)
              else pa.BufferReader(b"".join(chunks)))
    try:
        parquet = pq.ParquetFile(
            source, page_checksum_verification=True,
            buffer_size=PARQUET_READ_BUFFER_BYTES, pre_buffer=False,
        )
    except (pa.ArrowException, OSError) as exc:
        raise CorruptDataError(f"{name}: not a readable Parquet file ({exc})") from None
    if codec.ITEM_COLUMN not in parquet.schema_arrow.names:
        raise CorruptDataError(f"{name}: Parquet file has no {codec.ITEM_COLUMN!r} column")
    try:
        batches = parquet.iter_batches(
            batch_size=PARQUET_READ_ROWS, columns=[codec.ITEM_COLUMN], use_threads=False
        )
        # Each batch becomes Python bytes before any is handed out, so its Arrow buffers are
        # gone while the caller works through them.
        for items in map(_batch_items, batches):
            yield from items
    except (pa.ArrowException, OSError) as exc:
        raise CorruptDataError(f"{name}: corrupt Parquet data ({exc})") from None
    except CorruptDataError as exc:
        raise CorruptDataError(f"{name}: {exc}") from None


def _batch_items(batch: pa.RecordBatch) -> list[bytes]:
    return list(columns.arrow_items(pa.Table.from_batches([batch])))
