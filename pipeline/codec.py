"""DynamoDB JSON <-> NDJSON lines and Arrow tables; item size and capacity-unit maths.

No I/O happens here. The export hot path never builds Python dicts for items:
``decode_scan_page`` slices each item out of a Scan reply as ``msgspec.Raw`` (a view of the
original bytes), ``ndjson_lines`` glues those slices into AWS's export line format, and
``items_to_arrow`` lets Arrow's C++ JSON reader parse the items column by column.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from decimal import Context, Decimal, InvalidOperation
from itertools import accumulate
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from .errors import CorruptDataError
from .schema import KeyAttributes

__all__ = [
    "FORMAT_VERSION",
    "ITEM_COLUMN",
    "ScanPage",
    "arrow_items",
    "canonical_number",
    "decode_item",
    "decode_scan_page",
    "encode_item",
    "item_size",
    "item_array",
    "items_to_arrow",
    "ndjson_lines",
    "ndjson_pieces",
    "read_units",
    "typed_columns",
    "with_item_column",
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
    try:
        number = _NUMBER_CONTEXT.create_decimal(text)
    except (InvalidOperation, TypeError):
        raise CorruptDataError(f"not a DynamoDB number: {_shape(text, 'an N')}") from None
    if not number.is_finite():
        raise CorruptDataError(f"not a DynamoDB number: {_shape(text, 'an N')}")
    if number.is_zero():
        return "0"
    return str(number.normalize(_NUMBER_CONTEXT))


def write_units(size: int) -> int:
    """WCUs to write one item of ``size`` bytes: 1 KB units, rounded up per item, at least 1."""
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool) -> float:
    """RCUs to read ``size`` bytes: 4 KB units rounded up (at least one); half if eventual."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


# --- Arrow / Parquet ------------------------------------------------------------------------
# Items are decoded a chunk (~1 MB) at a time into msgspec structs that keep only the scalar
# type tags of each top-level attribute; nested values (M, L, sets, NULL) are skipped by the
# parser and leave a struct with every tag unset. Columns are then pulled out with C-level
# map/attrgetter calls, so the per-item Python work stays at a few hundred nanoseconds.

DECIMAL_PRECISION = 38
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Raw item bytes decoded at once when building Arrow columns.
DECODE_CHUNK_BYTES = 1024 * 1024
_TAG_TYPES = {"S": pa.string(), "N": pa.string(), "B": pa.binary(), "BOOL": pa.bool_()}
_MIXED = "mixed"  # an attribute seen with more than one type, or a non-scalar type


class _AttributeValue(msgspec.Struct, gc=False):
    S: str | None = None
    N: str | None = None
    B: bytes | None = None  # msgspec decodes the base64 text
    BOOL: bool | None = None


_TAG_GETTERS = {tag: attrgetter(tag) for tag in SCALAR_TAGS}
_item_names_decoder = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])


class _ColumnParts:
    """The typed values of one attribute, one Arrow array per chunk, while its type holds."""

    def __init__(self, rows_before: int) -> None:
        self.tag: str | None = None
        self.arrays: list[pa.Array] = []
        self.rows_before = rows_before  # rows of earlier chunks, where it was not seen

    def add(self, tag: str | None, values: pa.Array | None, rows: int) -> None:
        if self.tag == _MIXED:
            return
        if tag is None:  # absent from the whole chunk
            self.arrays.append(pa.nulls(rows))
            return
        if tag == _MIXED or (self.tag is not None and tag != self.tag):
            self.tag, self.arrays = _MIXED, []
            return
        self.tag = tag
        assert values is not None
        self.arrays.append(values)

    def column(self) -> pa.ChunkedArray | None:
        if self.tag is None or self.tag == _MIXED:
            return None
        arrow_type = _TAG_TYPES[self.tag]
        arrays = [pa.nulls(self.rows_before, arrow_type)] if self.rows_before else []
        arrays += [array.cast(arrow_type) for array in self.arrays]
        return pa.chunked_array(arrays, arrow_type)


class _ChunkDecoder:
    """Decodes chunks of items into structs with one field per attribute name seen so far.

    msgspec cannot name a struct field after an attribute holding '"', '\\' or a control
    character (valid DynamoDB names): once such a name is seen, items decode as dicts, slower
    but the same values.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._as_dicts = False
        self._decoder = self._build()

    def decode(self, document: bytes) -> list[Any]:
        if not self.names:
            self._learn_names(document)
        if self._as_dicts:
            return self._decode_dicts(document)
        try:
            return self._decoder.decode(document)
        except msgspec.ValidationError as exc:
            # Usually an attribute name not seen before: learn the names and decode again.
            if not self._learn_names(document):
                raise CorruptDataError(f"malformed item: {exc}") from None
        except msgspec.DecodeError as exc:
            raise CorruptDataError(f"malformed item: {exc}") from None
        if self._as_dicts:
            return self._decode_dicts(document)
        try:
            return self._decoder.decode(document)
        except msgspec.DecodeError as exc:
            raise CorruptDataError(f"malformed item: {exc}") from None

    def values(self, rows: list[Any], index: int) -> list[Any]:
        """The values (None where absent) of attribute ``self.names[index]`` in ``rows``, as
        the last ``decode`` returned them."""
        if self._as_dicts:
            name = self.names[index]
            return [row.get(name) for row in rows]
        return list(map(attrgetter(f"a{index}"), rows))

    def _decode_dicts(self, document: bytes) -> list[Any]:
        try:
            rows: list[dict[str, Any]] = _item_dicts_decoder.decode(document)
        except msgspec.DecodeError as exc:
            raise CorruptDataError(f"malformed item: {exc}") from None
        self._add_names(set().union(*rows))
        return rows

    def _learn_names(self, document: bytes) -> bool:
        try:
            rows = _item_names_decoder.decode(document)
        except msgspec.DecodeError as exc:
            raise CorruptDataError(f"malformed item: {exc}") from None
        if not self._add_names(set().union(*rows)):
            return False
        if not self._as_dicts:
            self._decoder = self._build()
        return True

    def _add_names(self, names: set[str]) -> bool:
        new_names = names - set(self.names)
        self.names += sorted(new_names)
        if any(map(_UNSTRUCTABLE_NAME.search, new_names)):
            self._as_dicts = True
        return bool(new_names)

    def _build(self) -> msgspec.json.Decoder[list[Any]]:
        # Struct fields need identifier names; ``rename`` maps them to the attribute names.
        fields = [(f"a{index}", _AttributeValue | None, None) for index in range(len(self.names))]
        rename = {f"a{index}": name for index, name in enumerate(self.names)}
        item_type = msgspec.defstruct(
            "_Item", fields, rename=rename, forbid_unknown_fields=True, gc=False
        )
        return msgspec.json.Decoder(list[item_type])  # type: ignore[valid-type]


#: Characters msgspec refuses in a renamed struct field.
_UNSTRUCTABLE_NAME = re.compile(r'["\\\x00-\x1f]')
_item_dicts_decoder = msgspec.json.Decoder(list[dict[str, _AttributeValue]])


def items_to_arrow(items: Sequence[BytesLike], key_attributes: KeyAttributes) -> pa.Table:
    """Arrow table of raw items: typed key columns, ``_item``, then typed scalar columns.

    A non-key attribute gets a typed column only if it has one scalar type (S, N, B or BOOL)
    in every item of ``items`` that has it; everything else lives only in ``_item``. The
    same table as ``typed_columns`` with ``with_item_column``, which a writer that holds
    only some rows' ``_item`` at a time uses instead (see ``shards.ShardWriter``).
    """
    typed = typed_columns(_chunks(items), key_attributes)
    item_column = pa.chunked_array([_item_array(chunk) for chunk in _chunks(items)],
                                   pa.large_string())
    return with_item_column(typed, item_column, key_attributes)


def typed_columns(
    chunks: Iterable[Sequence[BytesLike]], key_attributes: KeyAttributes
) -> pa.Table:
    """The columns of ``items_to_arrow`` but ``_item``, of the items of every chunk in order.

    Each chunk is a run of raw items of about ``DECODE_CHUNK_BYTES``, decoded at once; only
    the chunk being decoded and the typed values (about half the items' bytes) are held.
    """
    for name, tag in key_attributes:
        if tag not in KEY_TAGS:
            raise ValueError(f"key attribute {name!r} has type {tag!r}, not one of S, N, B")
        if name == ITEM_COLUMN:
            raise ValueError(f"a key attribute named {ITEM_COLUMN!r} would hide the item column")
    decoder = _ChunkDecoder()
    parts: dict[str, _ColumnParts] = {}
    rows_done = 0
    for chunk in chunks:
        rows = decoder.decode(b"[" + b",".join(chunk) + b"]")
        for index, name in enumerate(decoder.names):
            if name not in parts:
                parts[name] = _ColumnParts(rows_before=rows_done)
            values = decoder.values(rows, index)
            parts[name].add(*_chunk_values(values), len(rows))
        rows_done += len(rows)

    columns: dict[str, pa.ChunkedArray] = {}
    for name, tag in key_attributes:
        columns[name] = _key_column(parts.get(name), name, tag, rows_done)
    key_names = {name for name, _ in key_attributes}
    for name in sorted(parts):
        if name in key_names or name == ITEM_COLUMN:
            continue
        column = parts[name].column()
        if column is not None:
            columns[name] = _convert(column, parts[name].tag or "")
    metadata = {
        METADATA_FORMAT_VERSION: FORMAT_VERSION.encode(),
        METADATA_KEY_ATTRIBUTES: json.dumps([list(pair) for pair in key_attributes]).encode(),
    }
    schema = pa.schema([(name, column.type) for name, column in columns.items()], metadata=metadata)
    return pa.table(list(columns.values()), schema=schema)


def with_item_column(
    typed: pa.Table, items: pa.Array | pa.ChunkedArray, key_attributes: KeyAttributes
) -> pa.Table:
    """``typed`` (rows of ``typed_columns``) with their ``_item`` values after the keys."""
    return typed.add_column(len(key_attributes), pa.field(ITEM_COLUMN, pa.large_string()), items)


def item_array(data: BytesLike, offsets: array[int]) -> pa.Array:
    """``_item`` values of items stored back to back in ``data``, item i at
    ``data[offsets[i]:offsets[i + 1]]`` (``offsets`` starts at 0): no copy of the bytes."""
    column = pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data)
    )
    try:
        column.validate(full=True)  # checks the UTF-8
    except pa.ArrowInvalid as exc:
        raise CorruptDataError(f"malformed item: {exc}") from None
    return column


def _chunks(items: Sequence[BytesLike]) -> Iterator[Sequence[BytesLike]]:
    """Slices of ``items`` of about ``DECODE_CHUNK_BYTES`` each (big joins are slow to
    allocate)."""
    start = 0
    size = 0
    for index, length in enumerate(map(len, items)):
        size += length
        if size >= DECODE_CHUNK_BYTES:
            yield items[start : index + 1]
            start, size = index + 1, 0
    if start < len(items):
        yield items[start:]


def _chunk_values(values: list[Any]) -> tuple[str | None, pa.Array | None]:
    """(tag, Arrow values with nulls where absent) of one attribute in one chunk.

    The tag is None if the attribute is absent from the whole chunk, ``_MIXED`` if it has
    more than one type or a non-scalar one.
    """
    present = len(values) - values.count(None)
    if present == 0:
        return None, None
    dense = present == len(values)
    present_values = values if dense else [value for value in values if value is not None]
    tag = _scalar_tag(present_values[0])
    if tag is None:
        return _MIXED, None
    getter = _TAG_GETTERS[tag]
    scalars = list(map(getter, present_values))
    # Every present value must carry this tag; a missing one means another type.
    if scalars.count(None):
        return _MIXED, None
    if not dense:
        scalars = [None if value is None else getter(value) for value in values]
    return tag, pa.array(scalars, type=_TAG_TYPES[tag])


def _scalar_tag(value: _AttributeValue) -> str | None:
    for tag in SCALAR_TAGS:
        if getattr(value, tag) is not None:
            return tag
    return None


def _item_array(chunk: Sequence[BytesLike]) -> pa.Array:
    """``_item`` values of a chunk: one joined buffer and the items' offsets."""
    return item_array(b"".join(chunk), array("q", accumulate(map(len, chunk), initial=0)))


def _key_column(parts: _ColumnParts | None, name: str, tag: str, rows: int) -> pa.ChunkedArray:
    if rows == 0:
        empty = pa.chunked_array([], _TAG_TYPES[tag])
        return _convert(empty, tag)
    column = parts.column() if parts is not None and parts.tag == tag else None
    if column is None or column.null_count:
        raise CorruptDataError(
            f"items lack key attribute {name!r} of type {tag} (or have it with another type)"
        )
    return _convert(column, tag)


def _convert(column: pa.ChunkedArray, tag: str) -> pa.ChunkedArray | pa.Array:
    return _number_column(column) if tag == "N" else column


def _number_column(values: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """int64 if every value is an int64 integer, else decimal128(38, s) if all fit, else
    float64 (approximate; ``_item`` keeps the exact text)."""
    try:
        return pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # not all plain integers in range
    if pc.any(pc.match_substring_regex(values, "[eE]")).as_py():
        return _exponent_number_column(values)
    scale, integer_digits = _plain_decimal_shape(values)
    if integer_digits + scale <= DECIMAL_PRECISION:
        return pc.cast(values, pa.decimal128(DECIMAL_PRECISION, scale))
    return pc.cast(values, pa.float64())


def _plain_decimal_shape(values: pa.ChunkedArray) -> tuple[int, int]:
    """(most digits after the point, most digits before it) of numbers without exponents."""
    lengths = pc.utf8_length(values)
    points = pc.find_substring(values, ".")
    has_point = pc.greater_equal(points, 0)
    fraction_digits = pc.if_else(has_point, pc.subtract(pc.subtract(lengths, points), 1), 0)
    signs = pc.cast(pc.starts_with(values, "-"), pa.int32())
    whole_digits = pc.subtract(pc.if_else(has_point, points, lengths), signs)
    # A lone leading zero ("0.25") is not a digit of precision.
    whole_digits = pc.if_else(pc.match_substring_regex(values, r"^-?0\."), 0, whole_digits)
    scale = pc.max(fraction_digits).as_py() or 0
    return scale, pc.max(whole_digits).as_py() or 0


def _exponent_number_column(values: pa.ChunkedArray) -> pa.Array:
    # Cold path: DynamoDB writes numbers like 1E+125 with an exponent; sort them out exactly.
    try:
        numbers = [None if text is None else _NUMBER_CONTEXT.create_decimal(text)
                   for text in values.to_pylist()]
    except InvalidOperation:
        raise CorruptDataError("a number attribute is not a number") from None
    present = [number for number in numbers if number is not None]
    if all(_is_int64(number) for number in present):
        return pa.array([None if n is None else int(n) for n in numbers], type=pa.int64())
    scale = _common_scale(present)
    if scale is not None:
        # Each at exactly that scale: Arrow refuses a Decimal written with more digits than
        # the type holds ("1E+37" as "10...0.00"), though its value fits.
        exponent = Decimal(1).scaleb(-scale)
        exact = [None if n is None else n.quantize(exponent, context=_NUMBER_CONTEXT)
                 for n in numbers]
        return pa.array(exact, type=pa.decimal128(DECIMAL_PRECISION, scale))
    return pa.array([None if n is None else float(n) for n in numbers], type=pa.float64())


def _is_int64(number: Decimal) -> bool:
    return (
        number.is_finite()
        and number == number.to_integral_value()
        and (INT64_MIN <= number <= INT64_MAX)
    )


def _common_scale(numbers: list[Decimal]) -> int | None:
    """The scale s at which decimal128(38, s) holds every number exactly, or None."""
    scale = 0
    integer_digits = 0
    for number in numbers:
        if not number.is_finite():
            return None
        # The wide context: the default one (28 digits) would round 29-38-digit numbers.
        _, digits, exponent = number.normalize(_NUMBER_CONTEXT).as_tuple()
        assert isinstance(exponent, int)
        scale = max(scale, -exponent)
        integer_digits = max(integer_digits, len(digits) + exponent)
    if integer_digits + scale > DECIMAL_PRECISION:
        return None
    return scale


def arrow_items(table: pa.Table) -> Iterator[bytes]:
    """Each row's ``_item`` (DynamoDB JSON) as bytes."""
    if ITEM_COLUMN not in table.column_names:
        raise CorruptDataError(f"table has no {ITEM_COLUMN!r} column")
    column = table.column(ITEM_COLUMN)
    if column.null_count:
        raise CorruptDataError(f"{column.null_count} rows have no {ITEM_COLUMN!r} value")
    for chunk in column.chunks:
        # Casting string to binary is zero-copy; to_pylist then yields bytes, not str.
        yield from chunk.cast(pa.large_binary()).to_pylist()
