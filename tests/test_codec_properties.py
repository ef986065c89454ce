"""Property-based tests of the codec: random DynamoDB items, within DynamoDB's rules.

Properties:

* Every shard format (NDJSON with zstd, gzip or no compression; Parquet) gives back each item
  as the very bytes that were written. Byte equality is the check, not equality of decoded or
  canonical items: FORMAT.md promises the item "exactly as DynamoDB's Scan returned it", the
  writer never re-encodes an item (it splices the raw bytes), and byte equality implies the
  weaker checks (same JSON value, same canonical numbers, same base64). Items are spelled in
  several JSON spellings (UTF-8 or ``\\u`` escapes, compact or spaced) and numbers in several
  spellings, so a writer that normalised anything would be caught.
* ``item_size`` equals an independent implementation of DynamoDB's documented size rule.
* The typed columns of a Parquet shard never disagree with ``_item``, which attributes get a
  typed column follows FORMAT.md, and so does the int64 / decimal128 / float64 choice.
* ``canonical_number`` keeps the value, is idempotent, and is one spelling per value.

Shards these properties once failed on stay as explicit examples (see "shards that once
failed"). The default profile is small
and derandomized (see ``tests/conftest.py``); run deeper with
``DDBPIPE_HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from ddbpipe.codec import (
    ITEM_COLUMN,
    canonical_number,
    decode_item,
    decode_scan_page,
    item_size,
    read_units,
    write_units,
)
from ddbpipe.shards import ShardWriter, iter_shard_items, shard_key
from tests.exports import FIDELITY_ITEMS

# --- DynamoDB's limits ----------------------------------------------------------------------

MAX_ITEM_BYTES = 400 * 1024
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
MAX_NESTING = 32
MAX_DIGITS = 38
MIN_ADJUSTED_EXPONENT = -130  # 1E-130
MAX_ADJUSTED_EXPONENT = 125  # 9.9999999999999999999999999999999999999E+125

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Wide enough that no DynamoDB number is ever rounded (the default context keeps 28 digits).
EXACT = Context(prec=200)
SCALAR_TAGS = ("S", "N", "B", "BOOL")

FORMATS = [("ndjson", "zstd"), ("ndjson", "gzip"), ("ndjson", "none"), ("parquet", "zstd")]


def fewer(divisor: int, floor: int = 5) -> int:
    """A share of the profile's examples, for properties whose examples are expensive."""
    return max(floor, settings.default.max_examples // divisor)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


# --- strategies: one per DynamoDB type, then composed ---------------------------------------

#: Any Unicode scalar value (DynamoDB strings are UTF-8, so no lone surrogates).
CHARACTERS = st.characters(exclude_categories=("Cs",))

#: Names a writer could trip over: JSON escapes, type tags, our own column, lookalikes.
ODD_NAMES = [
    "_item", "Item", "S", "N", "M", "a0", "a1", "a.b", "a[0]", "#x", ":v", " ", "\t", '"',
    "\\", "\n", "\x00", "\u2028", "名前", "emoji😀", "é", "e\u0301", "\ufeff",
]

#: A small pool of names shared between items, so attributes meet with different types.
SHARED_NAMES = ["a", "b", "c", "price", "_item", "名前", "a0"]

attribute_names = st.one_of(
    st.sampled_from(SHARED_NAMES),
    st.sampled_from(ODD_NAMES),
    st.text(CHARACTERS, min_size=1, max_size=12),
)

strings = st.text(CHARACTERS, max_size=24)


@st.composite
def number_values(draw: st.DrawFn) -> Decimal:
    """A number DynamoDB can hold: up to 38 significant digits, 1E-130 <= |x| < 1E+126, or 0.

    Digit counts and exponents are biased to their limits (1 and 38 digits, 1E-130 and
    9.99...E+125), to integers around the int64 limits, where the column types change, and
    to everyday counts and prices.
    """
    kind = draw(st.sampled_from(["general", "general", "everyday", "int64 edge", "zero"]))
    if kind == "zero":
        return Decimal(0)
    if kind == "int64 edge":
        edge = draw(st.sampled_from([INT64_MIN, INT64_MAX]))
        return Decimal(edge + draw(st.integers(-2, 2)))
    if kind == "everyday":  # counts and prices: int64 and decimal128 columns
        return Decimal(draw(st.integers(-(10**12), 10**12))).scaleb(-draw(st.integers(0, 4)))
    digits = draw(st.one_of(st.sampled_from([1, 2, 28, 29, 37, MAX_DIGITS]),
                            st.integers(1, MAX_DIGITS)))
    coefficient = draw(st.integers(10 ** (digits - 1), 10**digits - 1))
    adjusted = draw(st.one_of(
        st.sampled_from([MIN_ADJUSTED_EXPONENT, MAX_ADJUSTED_EXPONENT, 0, -1, 18, 37, 38]),
        st.integers(MIN_ADJUSTED_EXPONENT, MAX_ADJUSTED_EXPONENT),
    ))
    sign = draw(st.sampled_from([0, 1]))
    # value = coefficient * 10 ** (adjusted - digits + 1); trailing zeros of the coefficient
    # are fine: they just make fewer significant digits.
    return Decimal((sign, tuple(map(int, str(coefficient))), adjusted - digits + 1))


#: Ways to write a number. DynamoDB trims leading and trailing zeros ("trimmed" and
#: "scientific" are what a Scan returns); the "padded" ones are other valid spellings.
TRIMMED_SPELLINGS = ["plain", "scientific"]
PADDED_SPELLINGS = ["plain, trailing zeros", "scientific, lower e", "scientific, padded"]


def spell(number: Decimal, spelling: str) -> str:
    """``number`` as DynamoDB JSON number text in the given spelling."""
    sign, digit_tuple, exponent = number.normalize(EXACT).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    minus = "-" if sign and number != 0 else ""
    if number == 0:
        return {"plain": "0", "scientific": "0", "plain, trailing zeros": "0.000",
                "scientific, lower e": "0e0", "scientific, padded": "-0"}[spelling]
    if spelling.startswith("plain"):
        if exponent >= 0:
            text = digits + "0" * exponent
            if spelling.endswith("trailing zeros"):
                text += ".00"
        else:
            padded = digits.rjust(-exponent + 1, "0")
            text = padded[:exponent] + "." + padded[exponent:]
            if spelling.endswith("trailing zeros"):
                text += "000"
        return minus + text
    adjusted = exponent + len(digits) - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    if spelling.endswith("padded"):
        mantissa += ("" if len(digits) > 1 else ".") + "00"
    marker = "e" if spelling.endswith("lower e") else "E"
    return f"{minus}{mantissa}{marker}{adjusted:+d}"


number_spellings = st.sampled_from(TRIMMED_SPELLINGS + PADDED_SPELLINGS)
numbers = st.builds(spell, number_values(), number_spellings)

string_values = strings.map(lambda text: {"S": text})
number_attribute_values = numbers.map(lambda text: {"N": text})
binary_values = st.binary(max_size=24).map(lambda data: {"B": b64(data)})
bool_values = st.booleans().map(lambda flag: {"BOOL": flag})
null_values = st.just({"NULL": True})
string_sets = st.lists(strings, min_size=1, max_size=5, unique=True).map(
    lambda members: {"SS": members}
)
number_sets = st.lists(
    st.tuples(number_values(), number_spellings), min_size=1, max_size=5,
    unique_by=lambda pair: pair[0],  # DynamoDB refuses two members of equal value
).map(lambda members: {"NS": [spell(value, how) for value, how in members]})
binary_sets = st.lists(st.binary(max_size=16), min_size=1, max_size=5, unique=True).map(
    lambda members: {"BS": [b64(member) for member in members]}
)

scalar_and_set_values = st.one_of(
    string_values, number_attribute_values, binary_values, bool_values, null_values,
    string_sets, number_sets, binary_sets,
)


def list_values(elements: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.lists(elements, max_size=4).map(lambda values: {"L": values})


def map_values(elements: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.dictionaries(attribute_names, elements, max_size=4).map(lambda m: {"M": m})


def nested_values(levels: int) -> st.SearchStrategy[dict[str, Any]]:
    """Any attribute value with at most ``levels`` levels of lists and maps."""
    if levels == 0:
        return scalar_and_set_values
    inner = nested_values(levels - 1)
    return st.one_of(scalar_and_set_values, list_values(inner), map_values(inner))


@st.composite
def deep_values(draw: st.DrawFn) -> dict[str, Any]:
    """A value nested to as many as 32 levels of lists and maps, often exactly 32."""
    levels = draw(st.one_of(st.just(MAX_NESTING), st.integers(1, MAX_NESTING)))
    value = draw(scalar_and_set_values)
    for _ in range(levels):
        container = draw(st.sampled_from(["M", "L"]))
        value = {"M": {draw(attribute_names): value}} if container == "M" else {"L": [value]}
        if draw(st.integers(0, 3)) == 0:  # a sibling now and then, binary included
            sibling = draw(st.one_of(binary_values, binary_sets, scalar_and_set_values))
            if "M" in value:
                value["M"].setdefault(draw(attribute_names), sibling)
            else:
                value["L"].insert(draw(st.integers(0, 1)), sibling)
    return value


attribute_values = st.one_of(nested_values(3), deep_values())


def key_values(tag: str, max_bytes: int) -> st.SearchStrategy[dict[str, Any]]:
    """A key attribute's value: non-empty S or B (sometimes at the size limit), or any N."""
    if tag == "N":
        return number_attribute_values
    if tag == "S":
        longest = st.sampled_from(["k", "é", "€", "😀"]).map(
            lambda char: char * (max_bytes // utf8_len(char))
        )
        return st.one_of(st.text(CHARACTERS, min_size=1, max_size=16), longest).map(
            lambda text: {"S": text}
        )
    longest_binary = st.binary(min_size=1, max_size=1).map(lambda byte: byte * max_bytes)
    return st.one_of(st.binary(min_size=1, max_size=16), longest_binary).map(
        lambda data: {"B": b64(data)}
    )


@st.composite
def key_schemas(
    draw: st.DrawFn, names: st.SearchStrategy[str] = attribute_names
) -> tuple[tuple[str, str], ...]:
    """(partition key, [sort key]) as ``[name, type]`` pairs; ``_item`` is refused as a key."""
    key_names = names.filter(lambda name: name != ITEM_COLUMN)
    chosen = draw(st.lists(key_names, min_size=1, max_size=2, unique=True))
    return tuple((name, draw(st.sampled_from(["S", "N", "B"]))) for name in chosen)


def key_identity(value: dict[str, Any]) -> Any:
    """A key value as DynamoDB tells keys apart (numbers by value)."""
    ((tag, inner),) = value.items()
    return Decimal(inner) if tag == "N" else (tag, inner)


@st.composite
def items(
    draw: st.DrawFn, keys: tuple[tuple[str, str], ...],
    names: st.SearchStrategy[str] = attribute_names,
) -> dict[str, Any]:
    """One item of a table with these keys: the keys first, then any other attributes
    (top-level attributes named from ``names``)."""
    item: dict[str, Any] = {}
    for (name, tag), limit in zip(keys, (MAX_PARTITION_KEY_BYTES, MAX_SORT_KEY_BYTES),
                                  strict=False):
        item[name] = draw(key_values(tag, limit - utf8_len(name)))
    other_names = names.filter(lambda name: name not in item)
    item.update(draw(st.dictionaries(other_names, attribute_values, max_size=6)))
    assert reference_item_size(item) <= MAX_ITEM_BYTES
    return item


@st.composite
def large_items(
    draw: st.DrawFn, keys: tuple[tuple[str, str], ...],
    names: st.SearchStrategy[str] = attribute_names,
) -> dict[str, Any]:
    """An item within a few bytes of 400 KB, padded by one big S or B attribute."""
    item = draw(items(keys, names))
    name = draw(names.filter(lambda name: name not in item))
    room = MAX_ITEM_BYTES - draw(st.integers(0, 64)) - reference_item_size(item) - utf8_len(name)
    filler = draw(st.sampled_from(["x", "é", "€", "😀", "binary"]))
    if filler == "binary":
        item[name] = {"B": b64(bytes([draw(st.integers(0, 255))]) * room)}
    else:
        item[name] = {"S": filler * (room // utf8_len(filler))}
    assert MAX_ITEM_BYTES - 68 <= reference_item_size(item) <= MAX_ITEM_BYTES
    return item


#: JSON spellings of an item: as DynamoDB sends it (compact UTF-8) and other valid ones.
JSON_SPELLINGS = {
    "compact utf-8": {"separators": (",", ":"), "ensure_ascii": False},
    "compact ascii": {"separators": (",", ":"), "ensure_ascii": True},
    "spaced utf-8": {"separators": (", ", ": "), "ensure_ascii": False},
}


@dataclass
class Shard:
    """A shard's worth of items of one table, and how their JSON is spelled."""

    keys: tuple[tuple[str, str], ...]
    items: list[dict[str, Any]]
    spelling: str = "compact utf-8"

    def __repr__(self) -> str:  # failure reports: a 400 KB string is shown as its length
        return f"Shard({self.keys!r}, {_short(self.items)}, {self.spelling!r})"

    def raw_items(self) -> list[bytes]:
        options = JSON_SPELLINGS[self.spelling]
        return [json.dumps(item, **options).encode() for item in self.items]  # type: ignore[arg-type]


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:20]!r} + ... ({len(value)} characters)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_short, value)) + "]"
    return repr(value)


@st.composite
def shards(
    draw: st.DrawFn, max_items: int = 8, large: bool = False,
    names: st.SearchStrategy[str] = attribute_names,
) -> Shard:
    """Items with distinct primary keys, as one Scan segment would return them."""
    keys = draw(key_schemas(names))
    item_strategy = large_items(keys, names) if large else items(keys, names)
    shard_items = draw(st.lists(
        item_strategy, min_size=1, max_size=max_items,
        unique_by=lambda item: tuple(key_identity(item[name]) for name, _ in keys),
    ))
    return Shard(keys, shard_items, draw(st.sampled_from(sorted(JSON_SPELLINGS))))


def written_digits(text: str) -> str:
    """The digits of a number's mantissa as written, padding zeros included."""
    return re.split("[eE]", text)[0].lstrip("+-").replace(".", "")


def significant_digits(text: str) -> int:
    return len(written_digits(text).strip("0"))


# --- shards that once failed (kept as explicit examples) ---------------------------------------

#: A number column with a value written with an exponent once took its scale from a
#: 28-digit context and gave Arrow the Decimals as written: 29 significant digits, or 40
#: written digits (a partition key), failed the Parquet shard with ArrowInvalid.
DECIMAL_SCALE_SHARDS = [
    Shard((("pk", "S"),), [{"pk": {"S": "a"}, "x": {"N": "1.0000000000000000000000000001E+1"}}]),
    Shard(
        (("b", "N"),),
        [{"b": {"N": "1E+0"}}, {"b": {"N": "10000000000000000000000000000000000000.00"}}],
    ),
]

#: Top-level attribute names holding '"', '\\' or a control character (valid in DynamoDB)
#: once failed a Parquet shard: msgspec refuses them as struct field names.
ATTRIBUTE_NAME_SHARDS = [
    Shard((("pk", "S"),), [{"pk": {"S": "a"}, '"': {"NULL": True}}]),
    Shard((("\x1f", "S"),), [{"\x1f": {"S": "0"}}]),
]


scalar_values = {
    "S": string_values, "N": number_attribute_values, "B": binary_values, "BOOL": bool_values
}


@st.composite
def columnar_shards(draw: st.DrawFn) -> Shard:
    """Shards whose items share scalar attributes, each of one planned type (a typed column)
    but now and then absent or of another type (no column), among random attributes."""
    shard = draw(shards())
    key_names = {name for name, _ in shard.keys}
    plan = draw(st.dictionaries(
        st.sampled_from(SHARED_NAMES).filter(lambda name: name not in key_names),
        st.sampled_from(SCALAR_TAGS), min_size=1,
    ))
    for item in shard.items:
        for name, tag in plan.items():
            presence = draw(st.sampled_from(["planned"] * 6 + ["absent", "other type"]))
            if presence == "planned":
                item[name] = draw(scalar_values[tag])
            elif presence == "other type":
                item[name] = draw(attribute_values)
            else:
                item.pop(name, None)
    return shard


def wire(item: dict[str, Any]) -> dict[str, Any]:
    """A ``FIDELITY_ITEMS`` item (binary as bytes, boto3's form) in DynamoDB JSON."""
    return {name: _wire_value(value) for name, value in item.items()}


def _wire_value(value: dict[str, Any]) -> dict[str, Any]:
    ((tag, inner),) = value.items()
    if tag == "B":
        return {"B": b64(inner)}
    if tag == "BS":
        return {"BS": [b64(member) for member in inner]}
    if tag == "M":
        return {"M": wire(inner)}
    if tag == "L":
        return {"L": [_wire_value(element) for element in inner]}
    return {tag: inner}


FIDELITY_SHARD = Shard((("pk", "S"),), [wire(item) for item in FIDELITY_ITEMS])


def deep_chain(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"B": b64(b"\x00\xff")}
    for level in range(levels):
        value = {"M": {"m": value, "bs": {"BS": [b64(b"\x01")]}}} if level % 2 else {"L": [value]}
    return value


EDGE_SHARD = Shard(
    (("k", "N"), ("名前", "B")),
    [
        {
            "k": {"N": "-9.9999999999999999999999999999999999999E+125"},
            "名前": {"B": b64(b"\xff" * (MAX_SORT_KEY_BYTES - utf8_len("名前")))},
            "deep": deep_chain(MAX_NESTING),
            "_item": {"S": ""},
            "n": {"N": "1E-130"},
        },
        {"k": {"N": "0"}, "名前": {"B": b64(b"\x00")}, "_item": {"N": "1"}, "n": {"N": "-0"}},
    ],
    "compact ascii",
)


# --- NDJSON and Parquet round trips ---------------------------------------------------------


@pytest.fixture(scope="module")
def spool_dir() -> Iterator[str]:
    # Module-scoped: hypothesis runs many examples per test function.
    with tempfile.TemporaryDirectory(prefix="ddbpipe-properties-") as path:
        yield path


def write_shard(shard: Shard, format: str, compression: str, page_size: int, spool: str) -> bytes:
    """The stored bytes of a shard of these items, added in Scan pages of ``page_size``."""
    raw = shard.raw_items()
    writer = ShardWriter(format, compression, shard.keys, spool_dir=spool)  # type: ignore[arg-type]
    for start in range(0, len(raw), page_size):
        page = raw[start : start + page_size]
        body = b'{"Count":%d,"Items":[%s]}' % (len(page), b",".join(page))
        writer.add_items(decode_scan_page(body).items)  # msgspec.Raw views, as in an export
    finished = writer.close()
    try:
        data = Path(finished.path).read_bytes()
    finally:
        os.unlink(finished.path)
    assert (finished.items, finished.raw_bytes) == (len(raw), sum(map(len, raw)))
    assert finished.stored_bytes == len(data)
    return data


def read_shard(data: bytes, format: str, compression: str, chunk_size: int) -> list[bytes]:
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    key = shard_key(0, 0, format, compression)  # type: ignore[arg-type]
    return list(iter_shard_items(chunks, key))


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
@given(
    shard=shards(),
    page_size=st.integers(1, 8),
    chunk_size=st.one_of(st.integers(1, 64), st.just(1 << 20)),
)
@example(shard=FIDELITY_SHARD, page_size=1, chunk_size=1 << 20)
@example(shard=EDGE_SHARD, page_size=2, chunk_size=7)
@example(shard=ATTRIBUTE_NAME_SHARDS[0], page_size=1, chunk_size=1)
def test_ndjson_shards_give_back_the_exact_item_bytes(
    spool_dir: str, compression: str, shard: Shard, page_size: int, chunk_size: int
) -> None:
    data = write_shard(shard, "ndjson", compression, page_size, spool_dir)
    back = read_shard(data, "ndjson", compression, chunk_size)
    assert back == shard.raw_items()  # byte for byte: implies the checks below
    assert [decode_item(item) for item in back] == shard.items


@given(shard=shards(), page_size=st.integers(1, 8))
@example(shard=FIDELITY_SHARD, page_size=1)
@example(shard=EDGE_SHARD, page_size=2)
@example(shard=DECIMAL_SCALE_SHARDS[1], page_size=1)
@example(shard=ATTRIBUTE_NAME_SHARDS[1], page_size=1)
def test_parquet_shards_give_back_the_exact_item_bytes(
    spool_dir: str, shard: Shard, page_size: int
) -> None:
    data = write_shard(shard, "parquet", "zstd", page_size, spool_dir)
    back = read_shard(data, "parquet", "zstd", 1 << 20)
    assert back == shard.raw_items()
    assert [decode_item(item) for item in back] == shard.items


@pytest.mark.parametrize(("format", "compression"), FORMATS)
@settings(max_examples=fewer(25), suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.data_too_large])
@given(
    shard=shards(max_items=3, large=True),
    page_size=st.integers(1, 3),
)
def test_items_near_400kb_round_trip_exactly(
    spool_dir: str, format: str, compression: str, shard: Shard, page_size: int
) -> None:
    data = write_shard(shard, format, compression, page_size, spool_dir)
    assert read_shard(data, format, compression, 1 << 16) == shard.raw_items()


# --- item size ------------------------------------------------------------------------------
# An independent reading of DynamoDB's rule: string = UTF-8 bytes of name + value; number =
# name + 1 byte per 2 significant digits (rounded up) + 1; binary = name + raw bytes; BOOL and
# NULL = name + 1; list or map = name + its elements + 3, + 1 per element (a map element also
# counts its name). A set, which the rule does not spell out, is the sum of its members.


def reference_item_size(item: dict[str, Any]) -> int:
    return sum(utf8_len(name) + reference_value_size(value) for name, value in item.items())


def reference_value_size(value: dict[str, Any]) -> int:
    ((tag, inner),) = value.items()
    if tag == "S":
        return utf8_len(inner)
    if tag == "N":
        return reference_number_size(inner)
    if tag == "B":
        return base64_length(inner)
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "SS":
        return sum(map(utf8_len, inner))
    if tag == "NS":
        return sum(map(reference_number_size, inner))
    if tag == "BS":
        return sum(map(base64_length, inner))
    if tag == "L":
        return 3 + sum(reference_value_size(element) + 1 for element in inner)
    if tag == "M":
        return 3 + sum(1 + size for size in [reference_item_size({n: v}) for n, v in inner.items()])
    raise AssertionError(f"not a DynamoDB type: {tag}")


def reference_number_size(text: str) -> int:
    return math.ceil(significant_digits(text) / 2) + 1


def base64_length(text: str) -> int:
    """Decoded length of padded base64, from its length alone."""
    return len(text) // 4 * 3 - text.count("=")


any_items = key_schemas().flatmap(items)
items_near_400kb = key_schemas().flatmap(large_items)


@given(item=st.one_of(any_items, any_items, any_items, items_near_400kb))
@example(item=wire(FIDELITY_ITEMS[0]))
@example(item=EDGE_SHARD.items[0])
@example(item={"z": {"N": "0"}, "y": {"N": "-0.000"}, "x": {"NS": ["1E-130", "100", "0.0120"]}})
def test_item_size_follows_the_documented_rule(item: dict[str, Any]) -> None:
    size = reference_item_size(item)
    assert item_size(item) == size
    assert write_units(size) == max(1, math.ceil(size / 1024)) <= 400


@given(size=st.integers(0, MAX_ITEM_BYTES))
def test_capacity_units_round_each_item_up(size: int) -> None:
    assert write_units(size) == max(1, -(-size // 1024))
    assert read_units(size, consistent=True) == max(1, -(-size // 4096))
    assert read_units(size, consistent=False) == max(1, -(-size // 4096)) / 2


# --- Parquet typed columns agree with _item -------------------------------------------------


def typed_column_tags(shard: Shard) -> dict[str, str]:
    """FORMAT.md's rule: the keys, and every attribute with one scalar type in the shard."""
    tags: dict[str, set[str]] = defaultdict(set)
    for item in shard.items:
        for name, value in item.items():
            tags[name].update(value)
    return {
        name: next(iter(found))
        for name, found in tags.items()
        if len(found) == 1 and next(iter(found)) in SCALAR_TAGS and name != ITEM_COLUMN
    }


def expected_number_type(texts: list[str]) -> str:
    """int64, decimal128(38, s) or float64 (as Arrow names them), by FORMAT.md's rule."""
    values = [Decimal(text).normalize(EXACT) for text in texts]
    exponents = [int(value.as_tuple().exponent) for value in values]
    if all(e >= 0 or v.is_zero() for v, e in zip(values, exponents, strict=True)) and all(
        INT64_MIN <= value <= INT64_MAX for value in values
    ):
        return "int64"
    nonzero = [(value, e) for value, e in zip(values, exponents, strict=True) if value]
    scale = max([0] + [-e for _, e in nonzero])  # digits after the point
    whole_digits = max([0] + [value.adjusted() + 1 for value, _ in nonzero])
    if whole_digits + scale <= MAX_DIGITS:
        return f"decimal128(38, {scale})"
    return "double"  # Arrow's name for float64


def assert_cell_matches(tag: str, text: Any, cell: Any, arrow_type: pa.DataType) -> None:
    """A typed column's value against the attribute decoded from ``_item``."""
    if tag == "S":
        assert cell == text
    elif tag == "B":
        assert cell == base64.b64decode(text)
    elif tag == "BOOL":
        assert cell is text
    elif pa.types.is_int64(arrow_type):
        assert Decimal(cell) == Decimal(text)
    elif pa.types.is_decimal(arrow_type):
        assert isinstance(cell, Decimal) and cell == Decimal(text)
    else:
        assert pa.types.is_float64(arrow_type), arrow_type
        assert cell == float(Decimal(text))  # the nearest double: approximate, never wrong


def is_trimmed(text: str) -> bool:
    """Whether a number is written as a Scan returns it: no padding zeros, no "-0", no "e"."""
    mantissa = text.split("E")[0]
    return "e" not in text and text != "-0" and not ("." in mantissa and mantissa[-1] == "0")


@given(shard=columnar_shards(), page_size=st.integers(1, 8))
@example(shard=FIDELITY_SHARD, page_size=3)
@example(shard=EDGE_SHARD, page_size=1)
@example(shard=DECIMAL_SCALE_SHARDS[0], page_size=1)
@example(shard=DECIMAL_SCALE_SHARDS[1], page_size=1)
@example(shard=ATTRIBUTE_NAME_SHARDS[0], page_size=1)
@example(shard=ATTRIBUTE_NAME_SHARDS[1], page_size=1)
def test_parquet_typed_columns_agree_with_item(
    spool_dir: str, shard: Shard, page_size: int
) -> None:
    data = write_shard(shard, "parquet", "zstd", page_size, spool_dir)
    table = pq.read_table(pa.BufferReader(data))
    rows = [decode_item(text.encode()) for text in table.column(ITEM_COLUMN).to_pylist()]
    assert rows == shard.items

    key_names = [name for name, _ in shard.keys]
    assert table.column_names[: len(key_names) + 1] == [*key_names, ITEM_COLUMN]
    tags = typed_column_tags(shard)
    assert sorted(table.column_names) == sorted([*tags, ITEM_COLUMN])
    for name, tag in tags.items():
        column = table.column(name)
        for row, cell in zip(rows, column.to_pylist(), strict=True):
            if name not in row:
                assert cell is None and name not in key_names
            else:
                assert_cell_matches(tag, row[name][tag], cell, column.type)
        if tag != "N":
            assert column.type == {"S": pa.string(), "B": pa.binary(), "BOOL": pa.bool_()}[tag]
            continue
        texts = [row[name]["N"] for row in rows if name in row]
        event(f"number column: {str(column.type).split('(')[0]}")
        if all(map(is_trimmed, texts)):
            assert str(column.type) == expected_number_type(texts)
        else:  # the code types "1.0" by its text (decimal128(38, 1)), not as the integer 1
            assert str(column.type).split("(")[0] in ("int64", "decimal128", "double")


# --- canonical numbers ----------------------------------------------------------------------


@given(value=number_values(), one=number_spellings, other=number_spellings)
@example(value=Decimal(0), one="plain", other="scientific, padded")  # "0" and "-0"
@example(value=Decimal("1E+125"), one="plain", other="scientific")
@example(value=Decimal("-1.2345678901234567890123456789012345678E-93"), one="plain",
         other="scientific, lower e")
def test_canonical_number_is_one_spelling_per_value(value: Decimal, one: str, other: str) -> None:
    canonical = canonical_number(spell(value, one))
    assert canonical == canonical_number(spell(value, other))
    assert Decimal(canonical) == value
    assert canonical_number(canonical) == canonical


@given(first=number_values(), second=number_values(), spelling=number_spellings)
def test_canonical_numbers_of_different_values_differ(
    first: Decimal, second: Decimal, spelling: str
) -> None:
    assume(first != second)
    assert canonical_number(spell(first, spelling)) != canonical_number(spell(second, spelling))
