"""Compare two collections of DynamoDB items by primary key, in bounded memory.

Items are compared in one canonical form, as DynamoDB compares values: numbers by value
("1", "1.0" and "1E0" are one number), sets as sets (any order), binary as bytes, the
attributes of an item or a map in any order, lists in order; a string "1" is not the
number 1. Items whose raw bytes are equal are equal without being decoded; only items whose
bytes differ are decoded and put in canonical form (``canonical_item``).

Memory stays bounded whatever the number of items: each side's ``(key, item)`` records go
into ``ItemPartitions``, one file on disk per partition chosen by a hash of the canonical
key, buffered in memory up to ``spill_bytes`` and appended to the files when the buffer is
full. ``compare_partitions`` then holds one partition of the expected side in memory at a
time and streams the same partition of the found side past it. An item is kept as the raw
bytes it arrived as; only its key attributes are decoded to file it (``KeyReader``).
"""

from __future__ import annotations

import base64
import bisect
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .codec import BytesLike, binary_value, canonical_number, decode_item
from .errors import CorruptDataError
from .schema import KeyAttributes

__all__ = [
    "DEFAULT_SPILL_BYTES",
    "Differences",
    "ItemPartitions",
    "KeyReader",
    "KeyTally",
    "canonical_item",
    "compare_partitions",
]

#: Buffered records of one side held in memory before they are appended to the files.
DEFAULT_SPILL_BYTES = 16 * 1024 * 1024
#: Keys named per category of difference.
KEYS_SHOWN = 5

# A record in a partition file: key length, item length, then the key and the item.
_RECORD_HEADER = struct.Struct("<II")


# --- the canonical form ------------------------------------------------------------------------


def canonical_item(raw: BytesLike) -> dict[str, Any]:
    """An item (DynamoDB JSON) in the form in which equal items are equal Python values."""
    item = decode_item(raw)
    try:
        return {name: _canonical_value(value) for name, value in item.items()}
    except (AttributeError, TypeError, ValueError) as error:  # a value of the wrong shape
        raise CorruptDataError(f"malformed item ({error})") from None


def _canonical_value(value: dict[str, Any]) -> tuple[str, Any]:
    ((tag, inner),) = value.items()
    if tag == "N":
        return tag, canonical_number(inner)
    if tag == "B":
        return tag, binary_value(inner)
    if tag == "SS":
        return tag, frozenset(inner)
    if tag == "NS":
        return tag, frozenset(map(canonical_number, inner))
    if tag == "BS":
        return tag, frozenset(map(binary_value, inner))
    if tag == "M":
        return tag, {name: _canonical_value(member) for name, member in inner.items()}
    if tag == "L":
        return tag, tuple(map(_canonical_value, inner))
    return tag, inner  # S, BOOL, NULL


# --- keys --------------------------------------------------------------------------------------


class _KeyValue(msgspec.Struct):
    S: str | None = None
    N: str | None = None
    B: bytes | None = None  # msgspec decodes the base64 text


class KeyReader:
    """The canonical key of an item, decoding only its key attributes.

    A key is the JSON list of its canonical values, partition key first: ``["a", "1.5"]``
    (binary as canonical base64). Equal keys are equal bytes, so they hash and sort as bytes.
    """

    def __init__(self, key_attributes: KeyAttributes) -> None:
        self.key_attributes = key_attributes
        # Struct fields need identifier names; ``rename`` maps them to the attribute names.
        fields = [(f"k{index}", _KeyValue | None, None) for index in range(len(key_attributes))]
        rename = {f"k{index}": name for index, (name, _) in enumerate(key_attributes)}
        key_type = msgspec.defstruct("_Key", fields, rename=rename)
        self._decoder = msgspec.json.Decoder(key_type)

    def __call__(self, raw: BytesLike) -> bytes:
        try:
            decoded = self._decoder.decode(raw)
        except msgspec.DecodeError as error:
            raise CorruptDataError(f"malformed item ({error})") from None
        values = [
            self._canonical(getattr(decoded, f"k{index}"), name, tag)
            for index, (name, tag) in enumerate(self.key_attributes)
        ]
        return msgspec.json.encode(values)

    def wire(self, key: bytes) -> dict[str, Any]:
        """A canonical key as DynamoDB JSON: ``{"pk": {"S": "a"}}``."""
        values = msgspec.json.decode(key)
        pairs = zip(self.key_attributes, values, strict=True)
        return {name: {tag: value} for (name, tag), value in pairs}

    @staticmethod
    def _canonical(value: _KeyValue | None, name: str, tag: str) -> str:
        if tag == "S" and value is not None and value.S is not None:
            return value.S
        if tag == "N" and value is not None and value.N is not None:
            return canonical_number(value.N)
        if tag == "B" and value is not None and value.B is not None:
            return base64.b64encode(value.B).decode("ascii")
        raise CorruptDataError(f"item has no key attribute {name!r} of type {tag}")


# --- partitions on disk ------------------------------------------------------------------------


class ItemPartitions:
    """``(key, item)`` records of one side, in ``count`` files chosen by a hash of the key.

    The files live in a temporary folder of their own (in ``parent``, else the system's
    temporary folder) that ``close`` removes; use it as a context manager so that happens on
    errors and cancellation too. ``add`` may be called from several threads at once.
    """

    def __init__(
        self, count: int, *, parent: str | None = None, spill_bytes: int = DEFAULT_SPILL_BYTES
    ) -> None:
        if count < 1:
            raise ValueError(f"at least one partition is needed, not {count}")
        self.count = count
        self.spill_bytes = spill_bytes
        self.directory = tempfile.mkdtemp(prefix="ddbpipe-partitions-", dir=parent)
        self._buffers: dict[int, bytearray] = {}
        self._buffered = 0
        # Held while records are filed and while they are written out: ``close`` waits for a
        # write in progress, so no thread writes into the folder after it is removed.
        self._lock = threading.Lock()
        self._closed = False

    def add(self, records: Iterable[tuple[bytes, BytesLike]]) -> None:
        """File each ``(key, item)``; writes the buffers out once they hold ``spill_bytes``."""
        with self._lock:
            self._check_open()
            for key, item in records:
                buffer = self._buffers.setdefault(zlib.crc32(key) % self.count, bytearray())
                buffer += _RECORD_HEADER.pack(len(key), len(item))
                buffer += key
                buffer += item
                self._buffered += _RECORD_HEADER.size + len(key) + len(item)
            if self._buffered >= self.spill_bytes:
                self._spill()

    def flush(self) -> None:
        """Write out what is buffered: every record added so far is on disk."""
        with self._lock:
            self._check_open()
            self._spill()

    def records(self, index: int) -> Iterator[tuple[bytes, bytes]]:
        """The ``(key, item)`` records of partition ``index`` that are on disk (see ``flush``)."""
        path = self._path(index)
        if not os.path.exists(path):
            return
        with open(path, "rb") as file:
            while header := file.read(_RECORD_HEADER.size):
                key_length, item_length = _RECORD_HEADER.unpack(header)
                yield file.read(key_length), file.read(item_length)

    def close(self) -> None:
        """Remove the files and their folder; records added afterwards are refused."""
        with self._lock:
            self._closed = True
            self._buffers, self._buffered = {}, 0
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ItemPartitions:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spill(self) -> None:
        for index, buffer in self._buffers.items():
            # Appending and closing at once keeps the open files at one, whatever the count.
            with open(self._path(index), "ab") as file:
                file.write(buffer)
        self._buffers, self._buffered = {}, 0

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, f"{index:06d}.records")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the partitions are closed")


# --- the comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyTally:
    """How many items fall in one category of difference, and the first few of their keys
    (DynamoDB JSON, lowest canonical keys first, so a rerun names the same ones)."""

    count: int = 0
    keys: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "keys": list(self.keys)}


@dataclass
class _Counting:
    """A ``KeyTally`` while it is being counted: the lowest ``KEYS_SHOWN`` keys so far."""

    count: int = 0
    lowest: list[bytes] = field(default_factory=list)

    def add(self, key: bytes) -> None:
        self.count += 1
        if len(self.lowest) < KEYS_SHOWN or key < self.lowest[-1]:
            bisect.insort(self.lowest, key)
            del self.lowest[KEYS_SHOWN:]

    def tally(self, keys: KeyReader) -> KeyTally:
        return KeyTally(self.count, tuple(map(keys.wire, self.lowest)))


@dataclass(frozen=True)
class Differences:
    """Expected items the found side lacks, found items not expected, and keys whose items
    differ."""

    missing: KeyTally
    extra: KeyTally
    different: KeyTally


def compare_partitions(
    expected: ItemPartitions, found: ItemPartitions, keys: KeyReader
) -> Differences:
    """Compare two sides partition by partition (both flushed, with the same count).

    Reads files: run it in a thread. Memory: one partition of ``expected`` at a time.
    """
    if expected.count != found.count:
        raise ValueError("both sides must have the same number of partitions")
    missing, extra, different = _Counting(), _Counting(), _Counting()
    for index in range(expected.count):
        pending = dict(expected.records(index))
        for key, item in found.records(index):
            wanted = pending.pop(key, None)
            if wanted is None:
                extra.add(key)
            elif not _same_item(wanted, item):
                different.add(key)
        for key in pending:
            missing.add(key)
    return Differences(missing.tally(keys), extra.tally(keys), different.tally(keys))


def _same_item(expected: bytes, found: bytes) -> bool:
    if expected == found:
        return True
    try:
        return canonical_item(expected) == canonical_item(found)
    except CorruptDataError:
        return False  # an item that does not decode equals no item
