"""A Parquet shard's columns: typed columns chosen from all of its items, then filled.

A column's type depends on every item of the shard (an attribute gets a typed column only if
it has one scalar type in all of them; a number column is int64, decimal128 or float64 by all
of its values), so a shard is read twice: ``plan_columns`` decodes every item once and keeps
only what decides the types (``ColumnPlan``); ``ColumnPlan.typed_table`` then decodes the
rows of one row group at a time into their columns. What a shard's conversion holds is one
row group's values, whatever the shard's size (docs/FORMAT.md, "Parquet shards", has the
rules).

Items are decoded a chunk (~1 MB) at a time into msgspec structs that keep only the scalar
type tags of each top-level attribute; nested values (M, L, sets, NULL) are skipped by the
parser and leave a struct with every tag unset. Columns are then pulled out with C-level
map/attrgetter calls, so the per-item Python work stays at a few hundred nanoseconds.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal
from itertools import accumulate, chain
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from .codec import (
    FORMAT_VERSION,
    ITEM_COLUMN,
    KEY_TAGS,
    METADATA_FORMAT_VERSION,
    METADATA_KEY_ATTRIBUTES,
    SCALAR_TAGS,
    BytesLike,
    exact_decimal,
)
from .errors import CorruptDataError
from .schema import KeyAttributes
from .spool import Spool

__all__ = [
    "DECODE_CHUNK_BYTES",
    "ColumnPlan",
    "arrow_items",
    "item_array",
    "items_to_arrow",
    "plan_columns",
    "with_item_column",
]

DECIMAL_PRECISION = 38
#: Wide enough never to round a DynamoDB number (38 digits): the default context has 28.
_WIDE = Context(prec=2 * DECIMAL_PRECISION)
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


# --- what decides a column's type -----------------------------------------------------------


@dataclass
class _NumberShape:
    """What decides a number column's type, merged over the shard's values: int64 if every
    value is an integer in int64 range, else decimal128(38, ``scale``) if every value fits
    38 digits at the common scale, else float64. Plain values are judged as written ("1.50"
    needs scale 2, "1.0" is not taken for an integer); values with an exponent, and those in
    the same chunk, by their exact value."""

    int64: bool = True
    finite: bool = True
    scale: int = 0  # most digits after the point
    whole: int = 0  # most digits before it

    def merge(self, other: _NumberShape) -> None:
        self.int64 = self.int64 and other.int64
        self.finite = self.finite and other.finite
        self.scale = max(self.scale, other.scale)
        self.whole = max(self.whole, other.whole)

    def arrow_type(self) -> pa.DataType:
        if self.int64:
            return pa.int64()
        if self.finite and self.whole + self.scale <= DECIMAL_PRECISION:
            return pa.decimal128(DECIMAL_PRECISION, self.scale)
        return pa.float64()


def _number_shape(values: pa.Array) -> tuple[_NumberShape, pa.Array]:
    """The shape of one chunk's number texts (nulls where absent), and the values to keep
    for pass two: int64 where they all are (the common case: one cast, no text scanning),
    else the texts."""
    try:
        integers = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    else:
        low, high = pc.min_max(integers).values()
        digits = max(len(str(abs(bound.as_py() or 0))) for bound in (low, high))
        return _NumberShape(int64=True, whole=digits), integers
    present = values.drop_null()
    if pc.any(pc.match_substring_regex(present, "[eE]")).as_py():
        return _exact_shape(_decimals(present)), values  # cold: DynamoDB writes 1E+125 so
    scale, whole = _plain_decimal_shape(present)
    return _NumberShape(int64=False, scale=scale, whole=whole), values


def _plain_decimal_shape(values: pa.Array) -> tuple[int, int]:
    """(most digits after the point, most digits before it) of numbers without exponents."""
    lengths = pc.utf8_length(values)
    points = pc.find_substring(values, ".")
    has_point = pc.greater_equal(points, 0)
    fraction_digits = pc.if_else(has_point, pc.subtract(pc.subtract(lengths, points), 1), 0)
    signs = pc.cast(pc.starts_with(values, "-"), pa.int32())
    whole_digits = pc.subtract(pc.if_else(has_point, points, lengths), signs)
    # A lone leading zero ("0.25") is not a digit of precision.
    whole_digits = pc.if_else(pc.match_substring_regex(values, r"^-?0\."), 0, whole_digits)
    return pc.max(fraction_digits).as_py() or 0, pc.max(whole_digits).as_py() or 0


def _decimals(values: pa.Array) -> list[Decimal | None]:
    try:
        return [None if text is None else exact_decimal(text) for text in values.to_pylist()]
    except CorruptDataError:
        raise CorruptDataError("a number attribute is not a number") from None


def _exact_shape(numbers: list[Decimal | None]) -> _NumberShape:
    shape = _NumberShape()
    for number in numbers:
        if number is None:
            continue
        if not number.is_finite():
            shape.int64 = shape.finite = False
            continue
        shape.int64 = shape.int64 and _is_int64(number)
        _, digits, exponent = number.normalize(_WIDE).as_tuple()
        assert isinstance(exponent, int)
        shape.scale = max(shape.scale, -exponent)
        shape.whole = max(shape.whole, len(digits) + exponent)
    return shape


def _is_int64(number: Decimal) -> bool:
    return number == number.to_integral_value() and INT64_MIN <= number <= INT64_MAX


@dataclass
class _Attribute:
    """One top-level attribute as pass one saw it."""

    tag: str | None = None  # its one scalar tag, or _MIXED
    present: int = 0  # rows that have it
    numbers: _NumberShape = field(default_factory=_NumberShape)

    def add(self, tag: str | None, values: pa.Array | None) -> pa.Array | None:
        """One chunk's tag and values (``_chunk_values``); returns the values to keep for
        pass two, if the attribute may still get a column."""
        if tag is None or self.tag == _MIXED:
            return None
        if tag == _MIXED or (self.tag is not None and tag != self.tag):
            self.tag = _MIXED
            return None
        assert values is not None
        self.tag = tag
        self.present += len(values) - values.null_count
        if tag == "N":
            shape, values = _number_shape(values)
            self.numbers.merge(shape)
        return values

    def arrow_type(self) -> pa.DataType:
        assert self.tag is not None and self.tag != _MIXED
        return self.numbers.arrow_type() if self.tag == "N" else _TAG_TYPES[self.tag]


# --- the two passes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str
    tag: str
    arrow_type: pa.DataType


class ColumnPlan:
    """The typed columns of one shard, chosen from all of its items (``plan_columns``), and
    the values pass one decoded, kept in a temporary file (Arrow IPC, one record batch per
    chunk) until ``typed_table`` reads them back a row group at a time. Close it (or use
    ``with``) to drop that file."""

    def __init__(self, key_attributes: KeyAttributes, columns: list[_Column],
                 spill: _Spill) -> None:
        self.key_attributes = key_attributes
        self.rows = spill.rows
        self._columns = columns
        self._spill = spill
        metadata = {
            METADATA_FORMAT_VERSION: FORMAT_VERSION.encode(),
            METADATA_KEY_ATTRIBUTES: json.dumps([list(pair) for pair in key_attributes]).encode(),
        }
        self.typed_schema = pa.schema(
            [(column.name, column.arrow_type) for column in columns], metadata=metadata
        )
        #: The whole file's schema: the typed columns with ``_item`` after the keys.
        self.schema = self.typed_schema.insert(
            len(key_attributes), pa.field(ITEM_COLUMN, pa.large_string())
        )

    def typed_table(self, start: int, stop: int) -> pa.Table:
        """The typed columns of rows ``start`` to ``stop`` of the shard."""
        parts: list[list[pa.Array]] = [[] for _ in self._columns]
        for batch in self._spill.batches(start, stop):
            names = set(batch.schema.names)
            for column, arrays in zip(self._columns, parts, strict=True):
                if column.name not in names:  # absent from these rows
                    arrays.append(pa.nulls(batch.num_rows, column.arrow_type))
                elif column.tag == "N":
                    arrays.append(_number_array(batch.column(column.name), column.arrow_type))
                else:
                    arrays.append(batch.column(column.name))
        return pa.table(
            [pa.chunked_array(arrays, column.arrow_type)
             for column, arrays in zip(self._columns, parts, strict=True)],
            schema=self.typed_schema,
        )

    def close(self) -> None:
        self._spill.close()

    def __enter__(self) -> ColumnPlan:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Spill:
    """Record batches of consecutive rows, spooled (``spool.Spool``) and read back by row
    range."""

    def __init__(self, spool_dir: str | None) -> None:
        self._spool = Spool("a Parquet conversion", spool_dir)
        # Per batch: (first row, rows, offset, bytes, schema), in row order.
        self._index: list[tuple[int, int, int, int, pa.Schema]] = []
        self.rows = 0

    def append(self, batch: pa.RecordBatch) -> None:
        data = batch.serialize()
        offset = self._spool.append(memoryview(data))
        self._index.append((self.rows, batch.num_rows, offset, data.size, batch.schema))
        self.rows += batch.num_rows

    def batches(self, start: int, stop: int) -> Iterator[pa.RecordBatch]:
        for first, rows, offset, size, schema in self._index:
            if first + rows <= start or first >= stop:
                continue
            data = pa.py_buffer(self._spool.read(offset, size))
            batch = pa.ipc.read_record_batch(data, schema)
            low, high = max(start, first) - first, min(stop, first + rows) - first
            yield batch.slice(low, high - low)

    def close(self) -> None:
        self._spool.close()


def plan_columns(
    chunks: Iterable[Sequence[BytesLike]], key_attributes: KeyAttributes,
    spool_dir: str | None = None,
) -> ColumnPlan:
    """Pass one: decode every item of ``chunks`` (runs of raw items of about
    ``DECODE_CHUNK_BYTES``, in order) once, choose the typed columns, and keep each chunk's
    scalar values in a temporary file (in ``spool_dir``); holds one chunk at a time. Raises
    ``CorruptDataError`` for undecodable items or missing keys."""
    for name, tag in key_attributes:
        if tag not in KEY_TAGS:
            raise ValueError(f"key attribute {name!r} has type {tag!r}, not one of S, N, B")
        if name == ITEM_COLUMN:
            raise ValueError(f"a key attribute named {ITEM_COLUMN!r} would hide the item column")
    decoder = _ChunkDecoder()
    seen: dict[str, _Attribute] = {}
    spill = _Spill(spool_dir)
    try:
        for chunk in chunks:
            rows = decoder.decode(_json_array(chunk))
            kept: dict[str, pa.Array] = {}
            for index, name in enumerate(decoder.names):
                attribute = seen.setdefault(name, _Attribute())
                values = attribute.add(*_chunk_values(decoder.values(rows, index)))
                if values is not None:
                    kept[name] = values
            # A batch needs a column to have rows: "_item" is never a typed column.
            spill.append(pa.RecordBatch.from_pydict(kept or {ITEM_COLUMN: pa.nulls(len(rows))}))
        columns = [_key_column(seen.get(name), name, tag, spill.rows)
                   for name, tag in key_attributes]
    except BaseException:
        spill.close()
        raise
    key_names = {name for name, _ in key_attributes}
    for name in sorted(seen):
        attribute = seen[name]
        if name in key_names or name == ITEM_COLUMN or attribute.tag in (None, _MIXED):
            continue
        columns.append(_Column(name, attribute.tag or "", attribute.arrow_type()))
    return ColumnPlan(key_attributes, columns, spill)


def _json_array(items: Sequence[BytesLike]) -> bytes:
    """``[item,item,...]`` in one copy of the items."""
    if not items:
        return b"[]"
    if len(items) == 1:
        return b"[" + bytes(items[0]) + b"]"
    return b",".join(chain((b"[" + bytes(items[0]),), items[1:-1], (bytes(items[-1]) + b"]",)))


def _key_column(attribute: _Attribute | None, name: str, tag: str, rows: int) -> _Column:
    if rows == 0:
        return _Column(name, tag, _NumberShape().arrow_type() if tag == "N" else _TAG_TYPES[tag])
    if attribute is None or attribute.tag != tag or attribute.present != rows:
        raise CorruptDataError(
            f"items lack key attribute {name!r} of type {tag} (or have it with another type)"
        )
    return _Column(name, tag, attribute.arrow_type())


def _number_array(values: pa.Array, arrow_type: pa.DataType) -> pa.Array:
    """Numbers (int64, or texts) as ``arrow_type``: Arrow's cast where it can; exact
    decimals where it cannot (exponents, "1.0" in an int64 column)."""
    try:
        return pc.cast(values, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    numbers = _decimals(values)
    if pa.types.is_int64(arrow_type):
        return pa.array([None if n is None else int(n) for n in numbers], type=arrow_type)
    if pa.types.is_decimal(arrow_type):
        # Each at exactly the column's scale: Arrow refuses a Decimal written with more digits
        # than the type holds ("1E+37" as "10...0.00"), though its value fits.
        exponent = Decimal(1).scaleb(-arrow_type.scale)
        exact = [None if n is None else n.quantize(exponent, context=_WIDE) for n in numbers]
        return pa.array(exact, type=arrow_type)
    return pa.array([None if n is None else float(n) for n in numbers], type=arrow_type)


# --- whole tables (small shards, tests) -------------------------------------------------------


def items_to_arrow(items: Sequence[BytesLike], key_attributes: KeyAttributes) -> pa.Table:
    """Arrow table of raw items: typed key columns, ``_item``, then typed scalar columns.

    A non-key attribute gets a typed column only if it has one scalar type (S, N, B or BOOL)
    in every item of ``items`` that has it; everything else lives only in ``_item``. A
    writer that holds only some rows at a time uses ``plan_columns`` and
    ``ColumnPlan.typed_table`` per row group instead (see ``shards.ShardWriter``).
    """
    with plan_columns(_chunks(items), key_attributes) as plan:
        typed = plan.typed_table(0, plan.rows)
    item_column = pa.chunked_array([_item_array(chunk) for chunk in _chunks(items)],
                                   pa.large_string())
    return with_item_column(typed, item_column, key_attributes)


def with_item_column(
    typed: pa.Table, items: pa.Array | pa.ChunkedArray, key_attributes: KeyAttributes
) -> pa.Table:
    """``typed`` (rows of ``typed_table``) with their ``_item`` values after the keys."""
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


def _item_array(chunk: Sequence[BytesLike]) -> pa.Array:
    """``_item`` values of a chunk: one joined buffer and the items' offsets."""
    return item_array(b"".join(chunk), array("q", accumulate(map(len, chunk), initial=0)))


# --- decoding a chunk -------------------------------------------------------------------------


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
