"""What ``ddbpipe import SOURCE TABLE`` reads: the files of an export and the writes in them.

SOURCE (a local directory or an S3 prefix) is one of, checked in this order:

- a **ddbpipe export** (``ddbpipe-manifest.json``): our manifest lists the shards with their
  item counts and SHA-256, the key attributes and the table's schema;
- an **AWS-native export to S3** (``manifest-summary.json`` + ``manifest-files.json`` under
  ``AWSDynamoDB/<ExportId>/``; SOURCE may also be the prefix above it when it holds exactly
  one export): full exports hold puts, incremental exports puts and deletes;
- **loose NDJSON files** (``*.json``, ``*.jsonl``, ``*.ndjson``, optionally ``.gz``/``.zst``,
  anywhere below SOURCE) of ``{"Item": ...}`` lines (or AWS incremental lines); nothing
  records their checksums or counts.

``open_source`` finds out which and lists the files; ``read_records`` reads one file. A file's
checksum is verified before any of its records is handed out, so a damaged file never writes
a single item. ``check_item`` marks the records DynamoDB would refuse (``WriteRecord.problem``),
so the importer can dead-letter them one by one instead of losing a whole BatchWriteItem call.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from . import codec
from .errors import CorruptDataError, StorageError
from .manifest import (
    AWS_FILES_KEY,
    AWS_SUMMARY_KEY,
    DATA_PREFIX,
    MANIFEST_KEY,
    STATE_KEY,
    decode_json_object,
    decode_manifest,
    md5_base64,
)
from .records import RecordKind, WriteRecord, new_record
from .shards import decompressed, iter_shard_items
from .storage import ObjectInfo, ObjectStore

__all__ = [
    "MAX_ITEM_BYTES",
    "RECORDS_PER_BATCH",
    "ImportSource",
    "SourceFile",
    "SourceKind",
    "check_item",
    "open_source",
    "read_records",
]

SourceKind = Literal["ddbpipe", "aws-full", "aws-incremental", "ndjson"]

#: Records handed out per batch: small enough to interleave files, big enough to amortise.
RECORDS_PER_BATCH = 1000
#: Stored bytes fed to a decompressor at a time, so decoded data stays bounded per batch.
DECODE_CHUNK_BYTES = 256 * 1024
#: DynamoDB's item size limit (400 KB, counted as ``codec.item_size`` does).
MAX_ITEM_BYTES = 400 * 1024
#: DynamoDB's limits on key values, in bytes: partition key, sort key.
MAX_KEY_BYTES = (2048, 1024)

_AWS_EXPORT_DIR = "AWSDynamoDB/"
_AWS_MANIFEST_CHECKSUM_SUFFIXES = (".md5", ".checksum")  # AWS docs say .checksum; files say .md5
_AWS_INCREMENTAL = "INCREMENTAL_EXPORT"
_AWS_FULL_TYPES = (None, "FULL_EXPORT")
_AWS_SUPPORTED_FORMAT = "DYNAMODB_JSON"
_NESTED_AWS_SUMMARY = re.compile(r"(?:^|/)AWSDynamoDB/([^/]+)/manifest-summary\.json$")
_AWS_EXPORT_RELATIVE = re.compile(r"(?:^|/)AWSDynamoDB/[^/]+/(.+)$")
_NDJSON_NAME = re.compile(r"\.(?:json|jsonl|ndjson)(?:\.gz|\.zst|\.zstd)?$")


@dataclass(frozen=True)
class SourceFile:
    """One data file of a source."""

    key: str  # store-relative key
    items: int | None  # recorded item count, None if unknown
    size: int | None  # stored size in bytes: recorded, else as listed when the source was opened
    sha256: str | None  # hex, ddbpipe exports
    md5_b64: str | None  # base64 MD5 of the stored object (AWS exports; ddbpipe has it too)
    segment: int | None  # ddbpipe exports: the Scan segment (for interleaving)


@dataclass(frozen=True)
class ImportSource:
    """What SOURCE holds: its kind, its files and what is known of the table."""

    url: str
    kind: SourceKind
    files: tuple[SourceFile, ...]
    item_count: int | None
    key_attributes: tuple[tuple[str, str], ...] | None  # [(name, "S"|"N"|"B")], hash first
    table_schema: dict[str, Any] | None  # CreateTable shape from our manifest
    export_id: str | None


# --- opening a source ---------------------------------------------------------------------


async def open_source(store: ObjectStore) -> ImportSource:
    """Find out what the store holds and list its data files; reads manifests, no data.

    Raises ``FormatVersionError`` for a ddbpipe manifest of an unknown version,
    ``CorruptDataError`` for manifests that disagree or an unfinished ddbpipe export, and
    ``StorageError`` when there is nothing importable or a listed file is missing.
    """
    await store.ensure_ready(for_write=False)
    if await store.head(MANIFEST_KEY) is not None:
        return await _open_ddbpipe_export(store)
    if await store.head(STATE_KEY) is not None:
        raise CorruptDataError(
            f"{store.url} holds an unfinished ddbpipe export (no {MANIFEST_KEY}): finish it "
            "with 'ddbpipe export --resume' before importing it"
        )
    if await store.head(AWS_SUMMARY_KEY) is not None:
        return await _open_aws_export(store, "")
    listing = await store.list()
    nested = _nested_aws_export(store, listing)
    if nested is not None:
        return await _open_aws_export(store, nested)
    return _open_ndjson_files(store, listing)


def _where(store: ObjectStore, key: str) -> str:
    """A stored object as the user knows it, for messages."""
    return f"{store.url.rstrip('/')}/{key}"


async def _open_ddbpipe_export(store: ObjectStore) -> ImportSource:
    # decode_manifest raises FormatVersionError itself for versions it does not know.
    manifest = decode_manifest(await store.get_bytes(MANIFEST_KEY), _where(store, MANIFEST_KEY))
    files = tuple(
        SourceFile(
            key=shard.key,
            items=shard.items,
            size=shard.stored_bytes,
            sha256=shard.sha256,
            md5_b64=shard.md5,
            segment=shard.segment,
        )
        for shard in manifest.shards
    )
    listed = {info.key: info.size for info in await store.list(DATA_PREFIX)}
    _check_present(store, MANIFEST_KEY, [file.key for file in files], set(listed))
    _check_sizes(store, files, listed)
    plan = manifest.plan
    return ImportSource(
        url=store.url,
        kind="ddbpipe",
        files=files,
        item_count=manifest.item_count,
        key_attributes=tuple((name, kind) for name, kind in plan.key_attributes),
        table_schema=plan.table or None,
        export_id=plan.export_id,
    )


def _check_present(
    store: ObjectStore, manifest_key: str, keys: Iterable[str], stored: set[str]
) -> None:
    missing = [key for key in keys if key not in stored]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise StorageError(
            f"{_where(store, missing[0])}{more} is listed in {manifest_key} but missing: "
            "the export is incomplete"
        )


def _check_sizes(store: ObjectStore, files: Iterable[SourceFile], listed: dict[str, int]) -> None:
    """A cut-off or replaced shard is found before the import writes anything."""
    for file in files:
        if file.size is not None and listed[file.key] != file.size:
            raise CorruptDataError(
                f"{_where(store, file.key)}: {listed[file.key]:,} bytes, the manifest records "
                f"{file.size:,} (the file changed or is cut off); nothing was imported"
            )


# --- AWS-native exports ---------------------------------------------------------------------


def _nested_aws_export(store: ObjectStore, listing: Sequence[ObjectInfo]) -> str | None:
    """``AWSDynamoDB/<id>/`` when SOURCE is the prefix above exactly one AWS export."""
    found = sorted(
        info.key[: -len(AWS_SUMMARY_KEY)]
        for info in listing
        if _NESTED_AWS_SUMMARY.search(info.key)
    )
    if len(found) > 1:
        shown = ", ".join(_where(store, base) for base in found[:3])
        raise StorageError(
            f"{store.url} holds {len(found)} AWS exports ({shown}...): give one export's "
            "prefix as SOURCE"
        )
    return found[0] if found else None


async def _open_aws_export(store: ObjectStore, base: str) -> ImportSource:
    """The AWS export whose manifests are at ``base`` ("" or "…/AWSDynamoDB/<id>/")."""
    summary_key, files_key = base + AWS_SUMMARY_KEY, base + AWS_FILES_KEY
    summary = decode_json_object(
        await _checked_manifest(store, summary_key), _where(store, summary_key)
    )
    kind = _aws_kind(summary, _where(store, summary_key))
    if await store.head(files_key) is None:
        raise StorageError(f"{_where(store, files_key)} is missing: the AWS export is incomplete")
    lines = _aws_file_lines(await _checked_manifest(store, files_key), _where(store, files_key))
    listed = {info.key: info for info in await store.list(base)}
    files = tuple(_aws_source_file(store, base, files_key, line, listed) for line in lines)
    item_count = _aws_item_count(summary, files, _where(store, summary_key))
    return ImportSource(
        url=store.url,
        kind=kind,
        files=files,
        item_count=item_count,
        key_attributes=None,
        table_schema=None,
        export_id=_aws_export_id(base, summary),
    )


async def _checked_manifest(store: ObjectStore, key: str) -> bytes:
    """A manifest's bytes, checked against its ``.md5`` (or ``.checksum``) file if present."""
    document = await store.get_bytes(key)
    stem = key[: -len(".json")]
    for suffix in _AWS_MANIFEST_CHECKSUM_SUFFIXES:
        checksum_key = stem + suffix
        if await store.head(checksum_key) is None:
            continue
        recorded = (await store.get_bytes(checksum_key)).strip().decode("ascii", "replace")
        if recorded != md5_base64(document):
            raise CorruptDataError(
                f"{_where(store, key)}: MD5 does not match {checksum_key} (the manifest changed "
                "or is damaged)"
            )
    return document


def _aws_kind(summary: dict[str, Any], where: str) -> SourceKind:
    output_format = summary.get("outputFormat", _AWS_SUPPORTED_FORMAT)
    if output_format != _AWS_SUPPORTED_FORMAT:
        raise StorageError(
            f"{where}: the export is in {output_format} format, which ddbpipe does not read: "
            f"export with --export-format {_AWS_SUPPORTED_FORMAT}"
        )
    # The line format follows the export type; the version string only dates the layout.
    export_type = summary.get("exportType")
    if export_type == _AWS_INCREMENTAL:
        return "aws-incremental"
    if export_type in _AWS_FULL_TYPES:
        return "aws-full"
    raise StorageError(f"{where}: unknown exportType {export_type!r}")


class _AwsFileLine(msgspec.Struct):
    dataFileS3Key: str
    itemCount: int
    md5Checksum: str | None = None


_aws_file_line_decoder = msgspec.json.Decoder(_AwsFileLine)


def _aws_file_lines(data: bytes, where: str) -> list[_AwsFileLine]:
    lines = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(_aws_file_line_decoder.decode(line))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise CorruptDataError(
                f"{where}: line {number} is not a data file entry ({exc})"
            ) from None
    return lines


def _aws_source_file(
    store: ObjectStore,
    base: str,
    files_key: str,
    line: _AwsFileLine,
    listed: dict[str, ObjectInfo],
) -> SourceFile:
    key = _aws_data_key(store, base, line.dataFileS3Key, listed)
    if key is None:
        raise StorageError(
            f"{_where(store, files_key)} lists {line.dataFileS3Key}, which is not under "
            f"{store.url}: the export is incomplete or was moved without its data"
        )
    return SourceFile(
        key=key,
        items=line.itemCount,
        size=listed[key].size,
        sha256=None,
        md5_b64=line.md5Checksum,
        segment=None,
    )


def _aws_data_key(
    store: ObjectStore, base: str, data_key: str, listed: dict[str, ObjectInfo]
) -> str | None:
    """The store-relative key of a data file that manifest-files.json names from the bucket
    root, trying: under the store's S3 prefix; as a copy (the part after AWSDynamoDB/<id>/);
    relative to the export (ddbpipe's manifests for local exports)."""
    candidates = []
    prefix = _store_prefix(store)
    if prefix is not None and data_key.startswith(prefix):
        candidates.append(data_key[len(prefix) :])
    copied = _AWS_EXPORT_RELATIVE.search(data_key)
    if copied:
        candidates.append(base + copied.group(1))
    candidates.append(base + data_key)
    return next((key for key in candidates if key in listed), None)


def _store_prefix(store: ObjectStore) -> str | None:
    """The S3 prefix keys from the bucket root start with; None for local stores."""
    if store.bucket is None:
        return None
    return store.root_key(AWS_SUMMARY_KEY)[: -len(AWS_SUMMARY_KEY)]


def _aws_item_count(summary: dict[str, Any], files: Sequence[SourceFile], where: str) -> int:
    listed = sum(file.items or 0 for file in files)
    recorded = summary.get("itemCount")
    if recorded is None:
        return listed
    if not isinstance(recorded, int) or recorded != listed:
        raise CorruptDataError(
            f"{where} records itemCount {recorded!r} but the files in {AWS_FILES_KEY} add up "
            f"to {listed}"
        )
    return recorded


def _aws_export_id(base: str, summary: dict[str, Any]) -> str | None:
    if base:
        return base.rstrip("/").rsplit("/", 1)[-1]
    arn = summary.get("exportArn")
    if isinstance(arn, str) and "/export/" in arn:
        return arn.rsplit("/export/", 1)[1]
    return None


# --- loose NDJSON files ---------------------------------------------------------------------


def _open_ndjson_files(store: ObjectStore, listing: Sequence[ObjectInfo]) -> ImportSource:
    files = tuple(
        SourceFile(
            key=info.key, items=None, size=info.size, sha256=None, md5_b64=None, segment=None
        )
        for info in listing
        if _NDJSON_NAME.search(info.key) and not _is_hidden(info.key)
    )
    if not files:
        raise StorageError(
            f"no ddbpipe export, AWS export or NDJSON files at {store.url}: expected "
            f"{MANIFEST_KEY}, AWSDynamoDB/<ExportId>/{AWS_SUMMARY_KEY}, or *.json/*.jsonl/"
            "*.ndjson files (optionally .gz or .zst)"
        )
    return ImportSource(
        url=store.url,
        kind="ndjson",
        files=files,
        item_count=None,
        key_attributes=None,
        table_schema=None,
        export_id=None,
    )


def _is_hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))


# --- reading a file -------------------------------------------------------------------------


async def read_records(
    store: ObjectStore,
    source: ImportSource,
    file: SourceFile,
    table_keys: Sequence[tuple[str, str]],
) -> AsyncIterator[list[WriteRecord]]:
    """The writes in ``file``, in batches of up to ``RECORDS_PER_BATCH``, in file order.

    ``table_keys`` are the target table's key attributes (name, type), partition key first:
    each record gets its key and, if DynamoDB would refuse it, its ``problem``
    (``check_item``). The whole stored file is downloaded and its checksum verified before
    the first batch; a mismatch raises ``CorruptDataError`` and nothing of the file is handed
    out. Records are then decoded lazily, a batch at a time. Undecodable data, or an item
    count other than the recorded one (found at the end), raises ``CorruptDataError`` naming
    the file *after* earlier batches were handed out: the importer must treat the whole file
    as failed.
    """
    where = _where(store, file.key)
    data = await _download(store, file.key)
    # Hashing releases the GIL, so a thread overlaps it with the writes. Decoding does not:
    # in a thread it would only contend for the GIL (measured: ~30% more CPU per item).
    await asyncio.to_thread(_verify_stored_bytes, data, file, where)
    records = _decode_records(data, source.kind, file.key, where, tuple(table_keys))
    counted = 0
    while batch := _next_batch(records):
        counted += len(batch)
        yield batch
        await asyncio.sleep(0)  # a turn for the replies between batches
    if file.items is not None and counted != file.items:
        raise CorruptDataError(f"{where}: holds {counted} items, the manifest records {file.items}")


async def _download(store: ObjectStore, key: str) -> bytes:
    # Shards are bounded (tens of MB), so the whole file is held to checksum it first.
    chunks = [chunk async for chunk in store.iter_chunks(key)]
    return b"".join(chunks)


def _verify_stored_bytes(data: bytes, file: SourceFile, where: str) -> None:
    if file.size is not None and len(data) != file.size:
        raise CorruptDataError(
            f"{where}: {len(data):,} bytes, expected {file.size:,} (the file changed or is cut off)"
        )
    if file.sha256 is not None:
        if hashlib.sha256(data).hexdigest() != file.sha256:
            raise CorruptDataError(
                f"{where}: SHA-256 does not match the manifest (the file changed or is damaged)"
            )
    elif file.md5_b64 is not None and md5_base64(data) != file.md5_b64:
        raise CorruptDataError(
            f"{where}: MD5 does not match the manifest (the file changed or is damaged)"
        )


def _next_batch(records: Iterator[WriteRecord]) -> list[WriteRecord]:
    return list(itertools.islice(records, RECORDS_PER_BATCH))


def _decode_records(
    data: bytes, kind: SourceKind, key: str, where: str, table_keys: tuple[tuple[str, str], ...]
) -> Iterator[WriteRecord]:
    """Records of one file: puts of ``{"Item"}`` lines; for incremental exports and loose
    files also AWS change lines (put NewImage, or delete Keys)."""
    record = _RecordMaker(key, where, table_keys)
    if kind in ("ddbpipe", "aws-full"):
        # iter_shard_items picks the decoder from the key's extension (zst, gz, Parquet, plain).
        items = iter_shard_items(_slices(data), key)
        for number, raw in enumerate(_named(items, where), start=1):
            yield record("put", bytes(raw), number)
    else:
        for number, line in _lines(_decompressed(data, key, where), where):
            kind_, raw = _change(line, where, number)
            yield record(kind_, raw, number)


def _slices(data: bytes) -> Iterator[bytes]:
    # Fed whole, a decompressor would inflate the entire file in one call.
    for start in range(0, len(data), DECODE_CHUNK_BYTES):
        yield data[start : start + DECODE_CHUNK_BYTES]


def _named(items: Iterator[bytes], where: str) -> Iterator[bytes]:
    """Errors from shards.py name the store-relative key; name the full location instead."""
    try:
        yield from items
    except CorruptDataError as exc:
        raise CorruptDataError(f"{where}: {_after_first_colon(str(exc))}") from None


def _after_first_colon(message: str) -> str:
    return message.split(": ", 1)[1] if ": " in message else message


def _decode_item(raw: bytes, where: str, number: int) -> dict[str, Any]:
    try:
        return codec.decode_item(raw)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{where}: item {number}: {exc}") from None


class _RecordMaker:
    """Makes the records of one file: what is the same for all of them is worked out once."""

    def __init__(self, key: str, where: str, table_keys: tuple[tuple[str, str], ...]) -> None:
        self.key = key
        self.where = where
        self.table_keys = table_keys
        self.key_names = tuple(name for name, _ in table_keys)

    def __call__(self, kind: RecordKind, raw: bytes, number: int) -> WriteRecord:
        item = _decode_item(raw, self.where, number)
        try:
            size = codec.item_size(item)
        except CorruptDataError as exc:
            raise CorruptDataError(
                f"{self.where}: item {number}: malformed item ({exc})"
            ) from None
        return new_record(
            kind, item, source=self.key, key_names=self.key_names, raw=raw, size=size,
            problem=check_item(kind, item, size, self.table_keys),
        )


def _decompressed(data: bytes, key: str, where: str) -> Iterator[bytes]:
    return _named(decompressed(_slices(data), key), where)


def _lines(stream: Iterator[bytes], where: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a byte stream, skipping blank lines, in bounded memory."""
    number = 0
    tail = b""
    for block in stream:
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        for line in lines:
            number += 1
            if line.strip():
                yield number, line
    if tail.strip():
        yield number + 1, tail


class _ChangeLine(msgspec.Struct):
    """A line of either shape: ``{"Item"}`` or AWS incremental ``{"Keys", "NewImage", ...}``."""

    # Raw: the item's bytes go to DynamoDB as read (msgspec has no Raw | None; absent is empty).
    Item: msgspec.Raw = msgspec.Raw()
    Keys: msgspec.Raw = msgspec.Raw()
    NewImage: msgspec.Raw = msgspec.Raw()


_change_decoder = msgspec.json.Decoder(_ChangeLine)


def _change(line: bytes, where: str, number: int) -> tuple[RecordKind, bytes]:
    try:
        change = _change_decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise CorruptDataError(f"{where}: line {number} is not an item line ({exc})") from None
    except msgspec.DecodeError as exc:
        raise CorruptDataError(f"{where}: line {number} is not valid JSON ({exc})") from None
    # Copied out of the line, so a record does not keep its whole line alive.
    if item := _present(change.Item):
        return "put", item
    if image := _present(change.NewImage):
        return "put", image
    if keys := _present(change.Keys):
        return "delete", keys
    raise CorruptDataError(f"{where}: line {number} has no Item, NewImage or Keys")


def _present(raw: msgspec.Raw) -> bytes | None:
    """The bytes of a field that is there and not null."""
    data = bytes(raw)
    return data if data and data != b"null" else None


# --- checking a record before it is written -------------------------------------------------


def check_item(
    kind: RecordKind,
    item: dict[str, Any],
    size: int,
    key_attributes: Sequence[tuple[str, str]] | None,
) -> str | None:
    """Why DynamoDB would refuse this write of ``item`` (``size`` bytes), or None.

    One refused request fails its whole BatchWriteItem call, so the importer dead-letters
    records with a reason instead of sending them. Without key attributes only the size is
    checked.
    """
    if size > MAX_ITEM_BYTES:
        return f"item is {size:,} bytes, over DynamoDB's 400 KB limit"
    if key_attributes is None:
        return None
    for position, (name, wanted) in enumerate(key_attributes):
        reason = _key_problem(item.get(name), name, wanted, MAX_KEY_BYTES[position])
        if reason is not None:
            return reason
    if kind == "delete":
        key_names = {name for name, _ in key_attributes}
        extra = sorted(set(item) - key_names)
        if extra:
            return f"delete key has attribute {extra[0]!r}, which is not a key attribute"
    return None


def _key_problem(value: Any, name: str, wanted: str, max_bytes: int) -> str | None:
    if value is None:
        return f"missing key attribute {name!r}"
    if not isinstance(value, dict) or len(value) != 1:
        return f"key attribute {name!r} is not a DynamoDB value"
    ((actual, inner),) = value.items()
    if actual != wanted:
        return f"key attribute {name!r} is {actual}, table wants {wanted}"
    if wanted == "N":
        return None
    # Cheap bound first (every record passes here): a character is at most 4 UTF-8 bytes,
    # 4 base64 characters are 3 bytes.
    if isinstance(inner, str) and inner and len(inner) * 4 <= max_bytes:
        return None
    size = codec.item_size({"": value})  # the value's bytes (binary decoded from base64)
    if size == 0:
        return f"key attribute {name!r} is empty, which DynamoDB does not allow"
    if size > max_bytes:
        return f"key attribute {name!r} is {size:,} bytes, over DynamoDB's {max_bytes:,} limit"
    return None
