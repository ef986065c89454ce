"""shards: writers, checksums over the stored bytes, the reading layers (decompression, the
line splitter, Parquet rows), corruption detection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from pathlib import Path

import pytest
import zstandard

from ddbpipe import shards
from ddbpipe.codec import decode_scan_page
from ddbpipe.config import Compression, Format
from ddbpipe.errors import CorruptDataError
from ddbpipe.schema import KeyAttributes
from ddbpipe.shards import (
    FinishedShard,
    ShardWriter,
    decompressed,
    iter_shard_items,
    lines,
    shard_key,
)
from ddbpipe.spool import Checksums, StoredBytes

KEYS: KeyAttributes = (("pk", "S"), ("sk", "N"))
FORMATS: list[tuple[Format, Compression]] = [
    ("ndjson", "zstd"), ("ndjson", "gzip"), ("ndjson", "none"), ("parquet", "zstd")
]


def item(index: int) -> bytes:
    return json.dumps(
        {
            "pk": {"S": f"user#{index % 13}"},
            "sk": {"N": str(index)},
            "note": {"S": f"note {index} é"},
            "m": {"M": {"n": {"N": str(index * 2)}}},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def page(start: int, count: int) -> list[bytes]:
    """Raw items of one Scan page, sliced out of a real-shaped reply body."""
    body = b'{"Count":%d,"Items":[%s],"ScannedCount":%d}' % (
        count,
        b",".join(item(i) for i in range(start, start + count)),
        count,
    )
    return [bytes(raw) for raw in decode_scan_page(body).items]


def write(
    tmp_path: Path, format: Format, compression: Compression, pages: int = 3
) -> FinishedShard:
    writer = ShardWriter(format, compression, KEYS, spool_dir=str(tmp_path))
    for number in range(pages):
        writer.add_items(page(number * 100, 100))
    return writer.close()


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_shard_keys() -> None:
    assert shard_key(3, 12, "ndjson", "zstd") == "data/00003-000012.json.zst"
    assert shard_key(0, 0, "ndjson", "gzip") == "data/00000-000000.json.gz"
    assert shard_key(99999, 999999, "ndjson", "none") == "data/99999-999999.json"
    assert shard_key(1, 2, "parquet", "gzip") == "data/00001-000002.parquet"


@pytest.mark.parametrize(("format", "compression"), FORMATS)
def test_finished_shard_stats_and_checksums_match_the_file(
    tmp_path: Path, format: Format, compression: Compression
) -> None:
    shard = write(tmp_path, format, compression)
    data = Path(shard.path).read_bytes()
    assert Path(shard.path).parent == tmp_path
    assert shard.items == 300
    assert shard.raw_bytes == sum(len(item(i)) for i in range(300))
    assert shard.stored_bytes == len(data)
    assert shard.sha256 == hashlib.sha256(data).hexdigest()
    assert shard.md5_hex == hashlib.md5(data).hexdigest()
    assert shard.md5_b64 == base64.b64encode(hashlib.md5(data).digest()).decode()
    key = shard_key(0, 0, format, compression)
    assert list(iter_shard_items([data], key)) == [item(i) for i in range(300)]
    os.unlink(shard.path)


def test_writer_counts_as_pages_arrive(tmp_path: Path) -> None:
    writer = ShardWriter("ndjson", "zstd", KEYS, spool_dir=str(tmp_path))
    assert writer.item_count == 0 and writer.raw_bytes == 0
    writer.add_items(page(0, 10))
    writer.add_items([])
    assert writer.item_count == 10
    assert writer.raw_bytes == sum(len(item(i)) for i in range(10))
    writer.discard()


def test_compressed_files_are_standard(tmp_path: Path) -> None:
    expected = b"".join(b'{"Item":%s}\n' % item(i) for i in range(300))
    zst = write(tmp_path, "ndjson", "zstd")
    with open(zst.path, "rb") as file:
        assert zstandard.ZstdDecompressor().stream_reader(file).read() == expected
    gz = write(tmp_path, "ndjson", "gzip")
    assert gzip.decompress(Path(gz.path).read_bytes()) == expected


def test_checksums_helper_is_incremental() -> None:
    checksums = Checksums()
    for piece in (b"abc", b"", b"def" * 1000):
        checksums.update(piece)
    data = b"abc" + b"def" * 1000
    assert checksums.sha256 == hashlib.sha256(data).hexdigest()
    assert checksums.md5_hex == hashlib.md5(data).hexdigest()
    assert checksums.md5_b64 == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert checksums.size == len(data)


@pytest.mark.parametrize("format", ["ndjson", "parquet"])
def test_discard_removes_the_temp_file(tmp_path: Path, format: Format) -> None:
    writer = ShardWriter(format, "zstd", KEYS, spool_dir=str(tmp_path))
    writer.add_items(page(0, 5))
    assert len(list(tmp_path.iterdir())) == 1
    writer.discard()
    writer.discard()  # idempotent
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        writer.add_items(page(0, 1))


def test_an_error_inside_with_drops_the_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter("ndjson", "gzip", KEYS, str(tmp_path)) as w:
        w.add_items(page(0, 5))
        raise RuntimeError("scan failed")
    assert list(tmp_path.iterdir()) == []


def test_parquet_close_with_bad_items_drops_the_file(tmp_path: Path) -> None:
    writer = ShardWriter("parquet", "zstd", KEYS, spool_dir=str(tmp_path))
    writer.add_items([b'{"pk":{"S":"no sort key"}}'])
    with pytest.raises(CorruptDataError):
        writer.close()
    assert list(tmp_path.iterdir()) == []


class Store:
    """A store of one object, handed out in chunks of at most ``size`` and of the size asked
    for (as ``iter_chunks`` does); it remembers the sizes asked for."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size = data, size
        self.asked: list[int] = []

    async def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        self.asked.append(chunk_size)
        for chunk in chunked(self.data, min(self.size, chunk_size)):
            yield chunk


@pytest.mark.parametrize(("format", "compression"), FORMATS)
@pytest.mark.parametrize("in_memory", [True, False])
def test_a_fetched_file_is_counted_hashed_and_read_back_from_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: Format, compression: Compression,
    in_memory: bool,
) -> None:
    shard = write(tmp_path, format, compression, pages=3)
    data = Path(shard.path).read_bytes()
    spool = tmp_path / "spool"
    spool.mkdir()
    # A copy larger than IN_MEMORY_BYTES goes to the temporary folder.
    monkeypatch.setattr(StoredBytes, "IN_MEMORY_BYTES", 1 << 30 if in_memory else 100)
    monkeypatch.setattr(StoredBytes, "READ_BYTES", 333)
    stored = asyncio.run(StoredBytes.fetch(Store(data, 1000), "k", spool_dir=str(spool)))
    with stored:
        assert len(files_open_in(spool)) == (0 if in_memory else 1)
        assert (stored.checksums.size, stored.checksums.sha256) == (len(data), shard.sha256)
        assert stored.checksums.md5_b64 == shard.md5_b64
        assert b"".join(stored) == data  # as often as needed
        key = shard_key(0, 0, format, compression)
        assert list(iter_shard_items(stored, key)) == [item(i) for i in range(300)]
        if format == "parquet":
            assert list(iter_shard_items(stored, key)) == [item(i) for i in range(300)]
    assert files_open_in(spool) == [] and list(spool.iterdir()) == []  # the copy is gone


def test_a_fetch_asks_for_small_chunks() -> None:
    # An import fetches the files it opens at the same time: each holds one chunk in flight.
    store = Store(b"x" * 1000, 1 << 30)
    with asyncio.run(StoredBytes.fetch(store, "k")) as stored:
        assert b"".join(stored) == b"x" * 1000
    assert store.asked == [StoredBytes.FETCH_BYTES]


def files_open_in(folder: Path) -> list[str]:
    """Files this process has open under ``folder`` (a temporary file is unlinked at once,
    so only its descriptor shows it)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(f"{folder}/"):
                found.append(os.readlink(fd))
    return found


@pytest.mark.parametrize(("format", "compression"), FORMATS)
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_streaming_read_with_small_chunks(
    tmp_path: Path, format: Format, compression: Compression, chunk_size: int
) -> None:
    shard = write(tmp_path, format, compression, pages=1)
    data = Path(shard.path).read_bytes()
    key = shard_key(0, 0, format, compression)
    assert list(iter_shard_items(chunked(data, chunk_size), key)) == [item(i) for i in range(100)]


def test_multi_frame_zstd_and_multi_member_gzip_are_read_whole() -> None:
    lines = [b'{"Item":%s}\n' % item(i) for i in range(4)]
    zst = b"".join(zstandard.ZstdCompressor().compress(line) for line in lines)
    gz = b"".join(gzip.compress(line) for line in lines)
    expected = [item(i) for i in range(4)]
    assert list(iter_shard_items(chunked(zst, 5), "data/x.json.zst")) == expected
    assert list(iter_shard_items(chunked(gz, 5), "data/x.json.gz")) == expected


def test_reads_aws_native_export_files() -> None:
    # What an AWS "export to S3" data file looks like: gzip, one {"Item":...} per line.
    lines = b'{"Item":{"Id":{"N":"103"},"Title":{"S":"Book"}}}\n' * 2
    key = "AWSDynamoDB/01234567890123-abcdefgh/data/abcdefghijklmnopqrstuvwxyz.json.gz"
    assert (
        list(iter_shard_items([gzip.compress(lines)], key))
        == [b'{"Id":{"N":"103"},"Title":{"S":"Book"}}'] * 2
    )


# --- the layers -----------------------------------------------------------------------------


def test_lines_are_numbered_across_blocks_and_blank_lines_left_out() -> None:
    text = b'a\n\n  \r\nbb\r\nccc\n\nlast without newline'
    expected = [(1, b"a"), (4, b"bb\r"), (5, b"ccc"), (7, b"last without newline")]
    for size in (1, 2, 5, len(text)):
        assert list(lines(chunked(text, size))) == expected
    assert list(lines([b"", b"x\n", b""])) == [(1, b"x")]
    assert list(lines([])) == []


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_decompression_is_fed_in_bounded_pieces(compression: Compression) -> None:
    """A big stored chunk comes out in many decompressed blocks, not all at once."""
    # Random text, so the stored chunk is far bigger than one piece fed to the decompressor.
    text = b"".join(b'{"Item":{"pk":{"S":"%s"}}}\n' % os.urandom(100).hex().encode()
                    for _ in range(10_000))
    compress = zstandard.ZstdCompressor().compress if compression == "zstd" else gzip.compress
    name = shard_key(0, 0, "ndjson", compression)
    blocks = list(decompressed([compress(text)], name))
    assert b"".join(blocks) == text
    assert len(blocks) > 1 and max(map(len, blocks)) < len(text)


# --- corruption -----------------------------------------------------------------------------


def read_all(data: bytes, key: str) -> list[bytes]:
    return list(iter_shard_items(chunked(data, 1000), key))


@pytest.mark.parametrize(("format", "compression"), FORMATS)
def test_truncated_files_are_detected(
    tmp_path: Path, format: Format, compression: Compression
) -> None:
    data = Path(write(tmp_path, format, compression).path).read_bytes()
    key = shard_key(4, 2, format, compression)
    cuts = [len(data) - 1, len(data) - 9, len(data) // 2, 3]
    if compression == "none" and format == "ndjson":
        # Plain JSON cut at a line end is still valid JSON: only the checksum tells. Cut
        # inside lines instead.
        cuts = [cut for cut in cuts if data[cut - 1 : cut] != b"\n" and cut != len(data) - 1]
    for cut in cuts:
        with pytest.raises(CorruptDataError, match=key) as error:
            read_all(data[:cut], key)
        assert "\n" not in str(error.value)


def middle_of_item_column(data: bytes) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    chunk = metadata.row_group(0).column(names.index("_item"))
    return chunk.data_page_offset + chunk.total_compressed_size // 2


@pytest.mark.parametrize(("format", "compression"), FORMATS)
def test_flipped_bytes_are_detected(
    tmp_path: Path, format: Format, compression: Compression
) -> None:
    data = bytearray(Path(write(tmp_path, format, compression).path).read_bytes())
    key = shard_key(1, 1, format, compression)
    # Uncompressed JSON has no checksum of its own: flip a structural byte there.
    position = data.index(b'{"Item"', 100) if compression == "none" else len(data) // 2
    if format == "parquet":
        position = middle_of_item_column(bytes(data))
    data[position] ^= 0xFF
    with pytest.raises(CorruptDataError, match=key):
        read_all(bytes(data), key)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"garbage that is not json", "not valid JSON"),
        (b'{"Keys":{"pk":{"S":"a"}}}', "not an item line"),
        (b'{"Item":"a string"}', "not a JSON object"),
    ],
)
@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_bad_lines_are_named(line: bytes, problem: str, compression: Compression) -> None:
    text = b'{"Item":%s}\n%s\n{"Item":%s}\n' % (item(0), line, item(1))
    compress = {
        "zstd": zstandard.ZstdCompressor().compress,
        "gzip": gzip.compress,
        "none": lambda data: data,
    }[compression]
    key = shard_key(0, 7, "ndjson", compression)
    with pytest.raises(CorruptDataError, match=rf"{key}: line 2\b.*{problem}"):
        read_all(compress(text), key)


def test_unusable_inputs_are_named() -> None:
    with pytest.raises(CorruptDataError, match="data/a.json.zst: empty file"):
        read_all(b"", "data/a.json.zst")
    with pytest.raises(CorruptDataError, match="data/a.json.gz: empty file"):
        read_all(b"", "data/a.json.gz")
    assert read_all(b"", "data/a.json") == []
    with pytest.raises(CorruptDataError, match="data/a.json.zst: corrupt zstd"):
        read_all(b"this is not zstd at all", "data/a.json.zst")
    with pytest.raises(CorruptDataError, match="data/a.parquet: not a readable Parquet"):
        read_all(b"PAR1 nope PAR1", "data/a.parquet")
    with pytest.raises(CorruptDataError, match="data/a.csv: unknown shard type"):
        read_all(b"", "data/a.csv")


def test_parquet_is_read_in_batches_across_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    # Row groups of 64 rows, read 10 rows at a time: batches end inside and at row groups.
    monkeypatch.setattr(shards, "PARQUET_ROW_GROUP_ROWS", 64)
    monkeypatch.setattr(shards, "PARQUET_READ_ROWS", 10)
    data = Path(write(tmp_path, "parquet", "zstd").path).read_bytes()
    assert pq.ParquetFile(BytesIO(data)).metadata.num_row_groups == 5
    key = shard_key(0, 0, "parquet", "zstd")
    assert list(iter_shard_items(chunked(data, 1000), key)) == [item(i) for i in range(300)]


def test_parquet_item_column_has_no_dictionary(tmp_path: Path) -> None:
    """Items all differ: a dictionary of them would only be held by every reader of the file.
    The typed columns keep theirs."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(write(tmp_path, "parquet", "zstd").path).metadata
    columns = metadata.row_group(0)
    by_name = {columns.column(i).path_in_schema: columns.column(i)
               for i in range(metadata.num_columns)}
    assert not by_name["_item"].has_dictionary_page
    assert by_name["pk"].has_dictionary_page


def test_parquet_without_item_column_is_rejected(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"pk": ["a"]}), path)
    with pytest.raises(CorruptDataError, match="data/x.parquet: .*no '_item' column"):
        read_all(path.read_bytes(), "data/x.parquet")
