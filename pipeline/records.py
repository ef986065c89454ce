"""What flows from an import's sources to its writer: one put or delete per record.

Sources turn shard lines into records; the writer batches them into BatchWriteItem calls.
Everything the writer needs of an item is worked out once, when the record is made: its size
and write units, its key, whether DynamoDB would refuse it. The item itself travels as the
JSON bytes it was read as and goes into the request body as they are, so a record costs no
per-item encoding and holds no nested dicts for the garbage collector to walk. A record
remembers which source file it came from, so the import knows when a file is fully written
(its checkpoint) and where a dead-lettered item was read.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from .codec import item_size, write_units

__all__ = ["Key", "RecordKind", "WriteRecord", "item_key", "new_record"]

RecordKind = Literal["put", "delete"]

#: A record's key: one hashable value per key attribute (partition key first).
Key = tuple[Hashable, ...]

_PUT_START = b'{"PutRequest":{"Item":'
_DELETE_START = b'{"DeleteRequest":{"Key":'
_REQUEST_END = b"}}"


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write: ``raw`` is the whole item (put) or its key attributes (delete).

    ``raw`` is DynamoDB JSON (``{"pk":{"S":"a"}}``); ``size`` is its DynamoDB item size in
    bytes (``codec.item_size``) and ``units`` the write capacity units that follow from it;
    ``key`` is its key as ``item_key`` gives it; ``problem`` says why DynamoDB would refuse
    the write (None when it looks writable).
    """

    kind: RecordKind
    raw: bytes
    size: int
    units: int
    source: str
    key: Key
    problem: str | None = None

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
            return (tag, _normal_number(inner))
        if isinstance(inner, str):
            return (tag, inner)
    return ("", msgspec.json.encode(value))


def _normal_number(text: str) -> str:
    if text.isascii() and text.isdigit() and text[0] != "0" and text[-1] != "0":
        return text  # the common case, already what normalize() gives: no Decimal needed
    try:
        return str(Decimal(text).normalize())
    except InvalidOperation:
        return text
