"""DynamoDB JSON <-> NDJSON lines; item size and capacity-unit maths; numbers as DynamoDB
compares them. The Parquet columns are ``columns.py``'s.

No I/O happens here. The export hot path never builds Python dicts for items:
``decode_scan_page`` slices each item out of a Scan reply as ``msgspec.Raw`` (a view of the
original bytes), and ``ndjson_lines`` glues those slices into AWS's export line format.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import msgspec

from .errors import CorruptDataError

__all__ = [
    "FORMAT_VERSION",
    "ITEM_COLUMN",
    "ScanPage",
    "canonical_number",
    "decode_item",
    "decode_scan_page",
    "encode_item",
    "exact_decimal",
    "item_size",
    "ndjson_lines",
    "ndjson_pieces",
    "read_units",
    "write_units",
]

#: Bytes-like: ``bytes``, ``bytearray``, ``memoryview`` or ``msgspec.Raw`` (all expose a buffer).
BytesLike = Any

#: Version of the Parquet column layout below, stored in each file's schema metadata.
FORMAT_VERSION = "1"
#: The column that holds each whole item as DynamoDB JSON text (the lossless source of truth).
ITEM_COLUMN = "_item"
METADATA_FORMAT_VERSION = b"ddbpipe.format_version"
METADATA_KEY_ATTRIBUTES = b"ddbpipe.key_attributes"

SCALAR_TAGS = ("S", "N", "B", "BOOL")
KEY_TAGS = ("S", "N", "B")


# --- Scan replies -------------------------------------------------------------------------


class _ConsumedCapacity(msgspec.Struct):
    CapacityUnits: float = 0.0


class _ScanReply(msgspec.Struct):
    # Items stay raw: slicing them out is what makes the export fast.
    Items: list[msgspec.Raw]
    Count: int | None = None
    ScannedCount: int | None = None
    LastEvaluatedKey: dict[str, Any] | None = None
    ConsumedCapacity: _ConsumedCapacity | None = None


class ScanPage(msgspec.Struct, frozen=True):
    """One decoded Scan reply.

    ``items`` are views of the reply body (one ``msgspec.Raw`` per item, DynamoDB JSON);
    ``last_evaluated_key`` is in DynamoDB wire form (``{"pk": {"S": "a"}}``), ready to send back
    as ``ExclusiveStartKey`` or to save in a checkpoint; ``None`` on the last page.
    """

    items: list[msgspec.Raw]
    count: int
    scanned_count: int
    last_evaluated_key: dict[str, Any] | None
    consumed_capacity: float


_scan_reply_decoder = msgspec.json.Decoder(_ScanReply)


def decode_scan_page(body: bytes) -> ScanPage:
    """Decode a raw DynamoDB Scan reply body without building Python objects for the items."""
    try:
        reply = _scan_reply_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise CorruptDataError(f"malformed Scan reply: {exc}") from None
    count = len(reply.Items)
    # Count is the number of items returned (after any filter); a mismatch means a broken body.
    if reply.Count is not None and reply.Count != count:
        raise CorruptDataError(
            f"malformed Scan reply: Count is {reply.Count} but {count} items were returned"
        )
    capacity = reply.ConsumedCapacity.CapacityUnits if reply.ConsumedCapacity else 0.0
    return ScanPage(
        items=reply.Items,
        count=count,
        scanned_count=reply.ScannedCount if reply.ScannedCount is not None else count,
        last_evaluated_key=reply.LastEvaluatedKey,
        consumed_capacity=capacity,
    )


# --- NDJSON lines ---------------------------------------------------------------------------

_LINE_START = b'{"Item":'
_LINE_BETWEEN = b'}\n{"Item":'
_LINE_END = b"}\n"


def ndjson_lines(items: Sequence[BytesLike]) -> bytes:
    """``{"Item":<item>}\\n`` for each raw item, joined: the line format of AWS's own exports."""
    return b"".join(ndjson_pieces(items))


def ndjson_pieces(items: Sequence[BytesLike]) -> list[bytes]:
    """The bytes of ``ndjson_lines`` in a few pieces, to feed a compressor without copying."""
    if not items:
        return []
    # One C-level join over the items: no per-item Python work on the hot path.
    middle = _LINE_BETWEEN.join(items)
    if middle.count(b"\n") != len(items) - 1:
        # An item holding a raw newline (pretty-printed JSON) would split its line; re-encode
        # those compactly. DynamoDB never sends such items, so this path is cold.
        middle = _LINE_BETWEEN.join([_compact(item) for item in items])
    return [_LINE_START, middle, _LINE_END]


def _compact(item: BytesLike) -> bytes:
    raw = bytes(item)
    if b"\n" not in raw:
        return raw
    return msgspec.json.encode(msgspec.json.decode(raw))


# --- single items ---------------------------------------------------------------------------

_item_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_item(raw: BytesLike) -> dict[str, Any]:
    """Decode one item's DynamoDB JSON into a wire-form dict (``{"pk": {"S": "a"}}``)."""
    try:
        return _item_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise CorruptDataError(f"malformed item: {exc}") from None


def encode_item(item: dict[str, Any]) -> bytes:
    """Encode a wire-form item dict as compact DynamoDB JSON."""
    return msgspec.json.encode(item)


# --- item size and capacity units -----------------------------------------------------------
# Source: Amazon DynamoDB Developer Guide, "DynamoDB item sizes and formats"
# (CapacityUnitCalculations.html) and "Read/write capacity mode" (1 WCU = one write of up to
# 1 KB; 1 RCU = one strongly consistent read of up to 4 KB, or two eventually consistent).

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096


def item_size(item: dict[str, Any]) -> int:
    """Size of an item (wire-form dict) in bytes as DynamoDB counts it for capacity units.

    Per attribute: name (UTF-8 bytes) + value, where a string is its UTF-8 bytes, a number
    1 byte per two significant digits + 1, a binary its raw (base64-decoded) bytes, BOOL/NULL
    1 byte, a list or map 3 bytes + its elements + 1 byte per element (a map element also
    counts its name), and a set the sum of its members. A malformed item raises
    ``CorruptDataError``.
    """
    try:
        return _attributes_size(item, 0)
    # A value of the wrong JSON type ({"S": 1}, {"L": {}}) fails inside the size rules.
    except (AttributeError, TypeError, ValueError) as error:
        raise CorruptDataError(f"not a DynamoDB item ({error})") from None


# Loops rather than sum() over generators, and strings first: every imported item is sized,
# so this is on an import's hot path (about a third of its client CPU before this shape).


def _attributes_size(attributes: dict[str, Any], per_element: int) -> int:
    """Names and values of an item's (or a map's) attributes, plus ``per_element`` each."""
    total = 0
    for name, value in attributes.items():
        total += _utf8_len(name) + _value_size(value) + per_element
    return total


def _value_size(value: dict[str, Any]) -> int:
    if len(value) != 1:
        raise CorruptDataError(f"not a DynamoDB attribute value: {_shape(value)}")
    for tag, inner in value.items():
        if tag == "S":
            return len(inner) if inner.isascii() else len(inner.encode("utf-8"))
        if tag == "N":
            return _number_size(inner)
        if tag == "M":
            return 3 + _attributes_size(inner, 1)
        if tag == "L":
            total = 3
            for element in inner:
                total += _value_size(element) + 1
            return total
        if tag in ("BOOL", "NULL"):
            return 1
        if tag == "B":
            return _binary_size(inner)
        return _set_size(tag, inner)
    raise AssertionError("unreachable: a one-entry dict")


def _shape(value: object, what: str = "a") -> str:
    """A malformed value described without quoting it: messages and logs never carry item
    values (the dead-letter file is the one place items go)."""
    if isinstance(value, str | bytes | bytearray):
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{what} value of {len(value)} {unit}"
    if isinstance(value, dict):
        return f"{what} value with {len(value)} type tags (a value has exactly one)"
    return f"{what} value of type {type(value).__name__}"


def _set_size(tag: str, members: list[Any]) -> int:
    if tag == "SS":
        return sum(_utf8_len(member) for member in members)
    if tag == "NS":
        return sum(_number_size(member) for member in members)
    if tag == "BS":
        return sum(_binary_size(member) for member in members)
    raise CorruptDataError(f"unknown DynamoDB type {tag!r}")


def _utf8_len(text: str) -> int:
    # isascii() is a flag check on CPython strings: the common case needs no encoding.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _number_size(number: str) -> int:
    if isinstance(number, str):
        # Plain decimals ("-12.50", the common case) without Decimal: same digits, ~5x faster.
        whole, _, fraction = number.removeprefix("-").partition(".")
        plain = whole + fraction
        if plain.isascii() and plain.isdigit():
            return (len(plain.strip("0")) + 1) // 2 + 1
    try:
        digits = Decimal(number).as_tuple().digits
    except (InvalidOperation, TypeError):
        raise CorruptDataError(f"not a DynamoDB number: {_shape(number, 'an N')}") from None
    # Leading and trailing zeros are trimmed; what remains are the significant digits.
    significant = "".join(map(str, digits)).strip("0")
    return (len(significant) + 1) // 2 + 1


def _binary_size(value: str | bytes) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    return len(binary_value(value))


def binary_value(text: str) -> bytes:
    """The bytes of a B value as DynamoDB JSON spells it (base64)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise CorruptDataError(f"not base64: {_shape(text, 'a B')}") from None


# DynamoDB numbers have up to 38 significant digits; a wider context never rounds one.
_NUMBER_CONTEXT = Context(prec=2 * 38)


def canonical_number(text: str) -> str:
    """One spelling per value: "1.50" -> "1.5", "100" -> "1E+2", "-0" -> "0"."""
    if text.isascii() and text.isdigit() and text[0] != "0" and text[-1] != "0":
        return text  # the common case is its own canonical form: no Decimal needed
    number = exact_decimal(text)
    if not number.is_finite():
        raise CorruptDataError(f"not a DynamoDB number: {_shape(text, 'an N')}")
    if number.is_zero():
        return "0"
    return str(number.normalize(_NUMBER_CONTEXT))


def exact_decimal(text: str) -> Decimal:
    """A DynamoDB number's exact value, without rounding."""
    try:
        number = _NUMBER_CONTEXT.create_decimal(text)
    except (InvalidOperation, TypeError):
        raise CorruptDataError(f"not a DynamoDB number: {_shape(text, 'an N')}") from None
    return number


def write_units(size: int) -> int:
    """WCUs to write one item of ``size`` bytes: 1 KB units, rounded up per item, at least 1."""
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool) -> float:
    """RCUs to read ``size`` bytes: 4 KB units rounded up (at least one); half if eventual."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2
