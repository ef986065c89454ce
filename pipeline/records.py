"""What flows from an import's sources to its writer: one put or delete per record.

Sources turn shard lines into records; the writer batches them into BatchWriteItem calls.
Everything the writer needs of an item is worked out once, when the record is made: its size
and write units, its key, whether DynamoDB would refuse it. The item itself travels as the
JSON bytes it was read as and goes into the request body as they are, so a record costs no
per-item encoding and holds no nested dicts for the garbage collector to walk. A record
remembers which source file it came from and its position there, so the import knows how far
each file is written (its checkpoint) and where a dead-lettered item was read.

``check_item`` is why DynamoDB would refuse a write (``WriteRecord.problem``), so the importer
can dead-letter such records one by one instead of losing a whole BatchWriteItem call;
``RecordMaker`` makes the records of one source file with all of that worked out.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from .codec import canonical_number, decode_item, item_size, write_units
from .errors import CorruptDataError
from .schema import KeyAttributes

__all__ = [
    "MAX_ITEM_BYTES",
    "MAX_KEY_BYTES",
    "Key",
    "RecordKind",
    "RecordMaker",
    "WriteRecord",
    "check_item",
    "item_key",
    "new_record",
]

RecordKind = Literal["put", "delete"]

#: A record's key: one hashable value per key attribute (partition key first).
Key = tuple[Hashable, ...]

#: DynamoDB's item size limit (400 KB, counted as ``codec.item_size`` does).
MAX_ITEM_BYTES = 400 * 1024
#: DynamoDB's limits on key values, in bytes: partition key, sort key.
MAX_KEY_BYTES = (2048, 1024)

_PUT_START = b'{"PutRequest":{"Item":'
_DELETE_START = b'{"DeleteRequest":{"Key":'
_REQUEST_END = b"}}"


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write: ``raw`` is the whole item (put) or its key attributes (delete).

    ``raw`` is DynamoDB JSON (``{"pk":{"S":"a"}}``); ``size`` is its DynamoDB item size in
    bytes (``codec.item_size``) and ``units`` the write capacity units that follow from it;
    ``key`` is its key as ``item_key`` gives it; ``problem`` says why DynamoDB would refuse
    the write (None when it looks writable). ``position`` is its place among the records of
    ``source``, from 0 in file order (the import's checkpoint counts in positions).
    """

    kind: RecordKind
    raw: bytes
    size: int
    units: int
    source: str
    key: Key
    problem: str | None = None
    position: int = 0

    @property
    def item(self) -> dict[str, Any]:
        """The item (put) or key (delete) as a dict; decoded on each use, off the hot path."""
        decoded: dict[str, Any] = msgspec.json.decode(self.raw)
        return decoded

    def request(self) -> bytes:
        """This record's request in a BatchWriteItem call, as JSON bytes."""
        start = _PUT_START if self.kind == "put" else _DELETE_START
        return start + self.raw + _REQUEST_END


def new_record(
    kind: RecordKind,
    item: dict[str, Any],
    *,
    source: str,
    key_names: Sequence[str],
    raw: bytes | None = None,
    size: int | None = None,
    problem: str | None = None,
    position: int = 0,
) -> WriteRecord:
    """A record of ``item``; ``raw`` (its JSON as read) and ``size`` are computed if not given.

    A malformed item raises ``CorruptDataError`` (from ``codec.item_size``).
    """
    if size is None:
        size = item_size(item)
    return WriteRecord(
        kind=kind,
        raw=msgspec.json.encode(item) if raw is None else raw,
        size=size,
        units=write_units(size),
        source=source,
        key=item_key(item, key_names),
        problem=problem,
        position=position,
    )


def item_key(item: dict[str, Any], key_names: Sequence[str]) -> Key:
    """The key of an item (or of a delete's key) as a tuple of hashables, partition key first.

    Equal for any two writes DynamoDB treats as the same key, e.g. numbers by value.
    """
    return tuple(_hashable(item.get(name)) for name in key_names)


def _hashable(value: Any) -> Hashable:
    """A key attribute value (``{"S": "a"}``) as a hashable; malformed ones by their JSON."""
    if isinstance(value, dict) and len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "N" and isinstance(inner, str):
            # DynamoDB compares numbers by value: "1", "1.0" and "1E0" are one key.
            return (tag, _key_number(inner))
        if isinstance(inner, str):
            return (tag, inner)
    return ("", msgspec.json.encode(value))


def _key_number(text: str) -> str:
    try:
        return canonical_number(text)
    except CorruptDataError:
        return text  # not a number: check_item says why DynamoDB would refuse it


class RecordMaker:
    """Makes the records of one source file; what is the same for all of them is worked out
    once. ``where`` is the file's full location, for errors. Records are made in file order:
    the first gets position ``first_position`` (the records before it were skipped), each
    next one the position after."""

    def __init__(
        self, source: str, where: str, table_keys: KeyAttributes, *, first_position: int = 0
    ) -> None:
        self.source = source
        self.where = where
        self.table_keys = table_keys
        self.key_names = tuple(name for name, _ in table_keys)
        self.next_position = first_position

    def __call__(self, kind: RecordKind, raw: bytes, number: int) -> WriteRecord:
        """The record of item ``number`` of the file (its line number in NDJSON of changes),
        from its DynamoDB JSON ``raw``."""
        try:
            item = decode_item(raw)
        except CorruptDataError as exc:
            raise CorruptDataError(f"{self.where}: item {number}: {exc}") from None
        try:
            size = item_size(item)
        except CorruptDataError as exc:
            raise CorruptDataError(
                f"{self.where}: item {number}: malformed item ({exc})"
            ) from None
        position = self.next_position
        self.next_position = position + 1
        return new_record(
            kind, item, source=self.source, key_names=self.key_names, raw=raw, size=size,
            problem=check_item(kind, item, size, self.table_keys), position=position,
        )


# --- why DynamoDB would refuse a write --------------------------------------------------------


def check_item(
    kind: RecordKind,
    item: dict[str, Any],
    size: int,
    key_attributes: KeyAttributes | None,
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
    size = item_size({"": value})  # the value's bytes (binary decoded from base64)
    if size == 0:
        return f"key attribute {name!r} is empty, which DynamoDB does not allow"
    if size > max_bytes:
        return f"key attribute {name!r} is {size:,} bytes, over DynamoDB's {max_bytes:,} limit"
    return None
