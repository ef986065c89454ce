"""codec: Scan reply slicing, NDJSON lines, item size maths, Arrow/Parquet columns.

Items are real DynamoDB JSON; Parquet and NDJSON shards written by ShardWriter are read back
both by our reader and by DuckDB, a reader nobody here wrote.
"""

from __future__ import annotations

import base64
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ddbpipe.codec import (
    ScanPage,
    decode_item,
    decode_scan_page,
    encode_item,
    item_size,
    ndjson_lines,
    read_units,
    write_units,
)
from ddbpipe.columns import arrow_items, items_to_arrow
from ddbpipe.errors import CorruptDataError
from ddbpipe.shards import ShardWriter, iter_shard_items, shard_key

KEYS = [("pk", "S"), ("sk", "N")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw(item: dict[str, Any]) -> bytes:
    """Compact DynamoDB JSON, as DynamoDB sends it."""
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


def every_type_items() -> list[dict[str, Any]]:
    """Items covering every DynamoDB type and the edge cases the format must keep exactly."""
    return [
        {
            "pk": {"S": "all-types"},
            "sk": {"N": "1"},
            "s": {"S": "plain"},
            "n": {"N": "12345678901234567890123456789012345678"},
            "big": {"N": "1E+125"},
            "tiny": {"N": "-1E-130"},
            "b": {"B": b64(bytes(range(256)))},
            "yes": {"BOOL": True},
            "nothing": {"NULL": True},
            "m": {
                "M": {
                    "bin": {"B": b64(b"\x00\xff")},
                    "deep": {"M": {"l": {"L": [{"B": b64(b"\x01")}, {"N": "-0.5"}]}}},
                }
            },
            "l": {"L": [{"S": "x"}, {"B": b64(b"\x02\x03")}, {"NULL": True}, {"M": {}}]},
            "ss": {"SS": ["a", "b", "ü"]},
            "ns": {"NS": ["1", "2.5", "-3E+10"]},
            "bs": {"BS": [b64(b"\x00"), b64(b"\x01\x02")]},
        },
        {
            "pk": {"S": "empties"},
            "sk": {"N": "2"},
            "s": {"S": ""},
            "el": {"L": []},
            "em": {"M": {}},
            "名前": {"S": "テスト"},
            "emoji😀": {"S": 'line\nbreak "quoted" \\ back\tslash \u0001 😀'},
        },
        {
            "pk": {"S": "near-400KB"},
            "sk": {"N": "3"},
            "blob": {"S": "x" * 399_000},
        },
    ]


# --- decode_scan_page -----------------------------------------------------------------------


def test_decode_scan_page_slices_items_and_reads_the_rest() -> None:
    items = every_type_items()[:2]
    body = (
        b'{"ConsumedCapacity":{"CapacityUnits":12.5,"TableName":"t"},"Count":2,"Items":['
        + b",".join(raw(item) for item in items)
        + b'],"LastEvaluatedKey":{"pk":{"S":"empties"},"sk":{"N":"2"}},"ScannedCount":5}'
    )
    page = decode_scan_page(body)
    assert isinstance(page, ScanPage)
    assert page.count == 2
    assert page.scanned_count == 5
    assert page.consumed_capacity == 12.5
    assert page.last_evaluated_key == {"pk": {"S": "empties"}, "sk": {"N": "2"}}
    assert all(isinstance(item, msgspec.Raw) for item in page.items)
    assert [bytes(item) for item in page.items] == [raw(item) for item in items]
    assert [decode_item(item) for item in page.items] == items


def test_decode_scan_page_last_page_in_another_key_order() -> None:
    body = b'{"ScannedCount":1, "Items": [ {"pk": {"S": "\\u00e9t\\u00e9"}} ], "Count": 1}'
    page = decode_scan_page(body)
    assert page.last_evaluated_key is None
    assert page.consumed_capacity == 0.0
    assert decode_item(page.items[0]) == {"pk": {"S": "été"}}


def test_decode_scan_page_empty_page_with_a_key() -> None:
    # A filtered Scan can return no items yet more pages.
    body = b'{"Count":0,"Items":[],"LastEvaluatedKey":{"pk":{"B":"AAE="}},"ScannedCount":900}'
    page = decode_scan_page(body)
    assert page.items == [] and page.count == 0 and page.scanned_count == 900
    assert page.last_evaluated_key == {"pk": {"B": "AAE="}}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"Count":1,"Items":[{"pk":{"S":"a"}}',  # truncated
        b'{"Count":1}',  # no Items
        b'{"Count":2,"Items":[{"pk":{"S":"a"}}]}',  # Count disagrees
        b'{"Items":{"pk":{"S":"a"}}}',  # Items not a list
        b'{"__type":"com.amazonaws.dynamodb.v20120810#ValidationException","message":"x"}',
    ],
)
def test_decode_scan_page_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(CorruptDataError):
        decode_scan_page(body)


# --- NDJSON lines and single items ----------------------------------------------------------


def test_ndjson_lines_are_aws_export_lines() -> None:
    items = every_type_items()
    page = decode_scan_page(b'{"Count":3,"Items":[' + b",".join(map(raw, items)) + b"]}")
    lines = ndjson_lines(page.items)
    assert lines.endswith(b"\n")
    decoded = [json.loads(line) for line in lines.decode().splitlines()]
    assert decoded == [{"Item": item} for item in items]


def test_ndjson_lines_keeps_one_line_per_item_even_for_pretty_json() -> None:
    pretty = json.dumps({"pk": {"S": "a"}}, indent=2).encode()
    lines = ndjson_lines([pretty, b'{"pk":{"S":"b"}}'])
    assert lines.splitlines() == [b'{"Item":{"pk":{"S":"a"}}}', b'{"Item":{"pk":{"S":"b"}}}']
    assert ndjson_lines([]) == b""


def test_encode_and_decode_item_round_trip() -> None:
    for item in every_type_items():
        assert decode_item(encode_item(item)) == item
    with pytest.raises(CorruptDataError):
        decode_item(b"[1,2]")


# --- item size and capacity units -----------------------------------------------------------
# Rules from the DynamoDB developer guide, "DynamoDB item sizes and formats".


@pytest.mark.parametrize(
    ("item", "size"),
    [
        ({"pk": {"S": "abc"}}, 2 + 3),  # name + UTF-8 bytes
        ({"名": {"S": "é"}}, 3 + 2),  # UTF-8, not characters
        ({"n": {"N": "123"}}, 1 + 2 + 1),  # 3 significant digits -> 2 bytes, + 1
        ({"n": {"N": "1000"}}, 1 + 1 + 1),  # trailing zeros trimmed
        ({"n": {"N": "0.0012"}}, 1 + 1 + 1),  # leading zeros trimmed
        ({"n": {"N": "-12345678901234567890123456789012345678"}}, 1 + 19 + 1),
        ({"b": {"B": b64(b"\x00\x01\x02")}}, 1 + 3),  # raw bytes, not base64 length
        ({"t": {"BOOL": False}}, 1 + 1),
        ({"z": {"NULL": True}}, 1 + 1),
        ({"l": {"L": []}}, 1 + 3),  # empty list: name + 3
        ({"m": {"M": {}}}, 1 + 3),
        ({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}, 1 + 3 + (2 + 1) + (2 + 1)),  # +1 per element
        ({"m": {"M": {"a": {"S": "xy"}}}}, 1 + 3 + (1 + 2 + 1)),  # element name counts
        ({"ss": {"SS": ["a", "bc"]}}, 2 + 3),
        ({"ns": {"NS": ["1", "22"]}}, 2 + 2 + 2),
        ({"bs": {"BS": [b64(b"\x00"), b64(b"\x00\x00")]}}, 2 + 3),
    ],
)
def test_item_size_follows_the_documented_rules(item: dict[str, Any], size: int) -> None:
    assert item_size(item) == size


def test_write_units_round_each_item_up_to_1kb() -> None:
    # The guide's example: a 500-byte and a 3.5 KB item written together cost 1 + 4 = 5 WCU.
    small = {"pk": {"S": "x" * 498}}
    large = {"pk": {"S": "x" * (3584 - 2)}}
    assert item_size(small) == 500 and item_size(large) == 3584
    assert write_units(item_size(small)) + write_units(item_size(large)) == 5
    assert [write_units(size) for size in (0, 1, 1024, 1025, 400 * 1024)] == [1, 1, 1, 2, 400]


def test_read_units_are_4kb_and_half_when_eventually_consistent() -> None:
    assert read_units(1, consistent=True) == 1.0
    assert read_units(4096, consistent=True) == 1.0
    assert read_units(4097, consistent=True) == 2.0
    assert read_units(4096, consistent=False) == 0.5
    assert read_units(8 * 1024, consistent=False) == 1.0
    assert read_units(0, consistent=False) == 0.5


# --- Arrow columns --------------------------------------------------------------------------


def to_arrow(items: list[dict[str, Any]], keys: list[tuple[str, str]] = KEYS) -> pa.Table:
    return items_to_arrow([raw(item) for item in items], keys)


def test_items_to_arrow_column_order_types_and_metadata() -> None:
    items = [
        {"pk": {"S": "a"}, "sk": {"N": "1"}, "name": {"S": "x"}, "ok": {"BOOL": True}},
        {"pk": {"S": "b"}, "sk": {"N": "2"}, "bin": {"B": b64(b"\x00\x01")}, "m": {"M": {}}},
    ]
    table = to_arrow(items)
    assert table.column_names[:3] == ["pk", "sk", "_item"]
    assert set(table.column_names[3:]) == {"name", "ok", "bin"}  # no column for the map
    assert table.schema.field("pk").type == pa.string()
    assert table.schema.field("sk").type == pa.int64()
    assert table.column("name").to_pylist() == ["x", None]
    assert table.column("ok").to_pylist() == [True, None]
    assert table.column("bin").to_pylist() == [None, b"\x00\x01"]
    assert [json.loads(item) for item in arrow_items(table)] == items
    metadata = table.schema.metadata
    assert metadata[b"ddbpipe.format_version"] == b"1"
    assert json.loads(metadata[b"ddbpipe.key_attributes"]) == [["pk", "S"], ["sk", "N"]]


def test_items_to_arrow_binary_key() -> None:
    table = to_arrow([{"id": {"B": b64(b"\xffkey")}}], [("id", "B")])
    assert table.schema.field("id").type == pa.binary()
    assert table.column("id").to_pylist() == [b"\xffkey"]


def test_mixed_and_non_scalar_attributes_get_no_typed_column() -> None:
    items = [
        {"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "1"}, "l": {"L": []}, "z": {"NULL": True}},
        {"pk": {"S": "b"}, "sk": {"N": "2"}, "v": {"N": "1"}, "ss": {"SS": ["q"]}},
        {"pk": {"S": "c"}, "sk": {"N": "3"}, "_item": {"S": "shadow"}},
    ]
    table = to_arrow(items)
    assert table.column_names == ["pk", "sk", "_item"]
    assert json.loads(table.column("_item")[2].as_py()) == items[2]


def test_attribute_types_are_decided_over_the_whole_shard() -> None:
    # 3,000 items span several decode chunks; the type changes only in the very last item.
    items = [
        {"pk": {"S": f"p{i}"}, "sk": {"N": str(i)}, "v": {"S": "s" * 400}} for i in range(3000)
    ]
    items[-1]["v"] = {"N": "5"}
    items[1500]["late"] = {"N": "7"}  # first seen halfway: earlier rows are null
    table = to_arrow(items)
    assert "v" not in table.column_names
    late = table.column("late")
    assert late.type == pa.int64() and late.null_count == 2999 and late[1500].as_py() == 7
    assert table.column("sk").to_pylist() == list(range(3000))


@pytest.mark.parametrize(
    ("numbers", "arrow_type", "values"),
    [
        (["1", "-2", "9223372036854775807"], pa.int64(), [1, -2, 2**63 - 1]),
        (["1E+2", "5"], pa.int64(), [100, 5]),
        (["1.5", "-12.25", "3"], pa.decimal128(38, 2), ["1.5", "-12.25", "3"]),
        (["9223372036854775808"], pa.decimal128(38, 0), ["9223372036854775808"]),
        (
            ["12345678901234567890123456789012345678"],
            pa.decimal128(38, 0),
            ["12345678901234567890123456789012345678"],
        ),
        (["0.5", "1E-3"], pa.decimal128(38, 3), ["0.5", "0.001"]),
        (["1E+125", "2"], pa.float64(), [1e125, 2.0]),
        (["-1E-130"], pa.float64(), [-1e-130]),
        (
            ["0.000001", "123456789012345678901234567890123"],
            pa.float64(),
            [1e-6, 1.2345678901234568e32],
        ),
    ],
)
def test_number_columns_follow_the_number_rule(
    numbers: list[str], arrow_type: pa.DataType, values: list[Any]
) -> None:
    items = [{"pk": {"S": str(i)}, "x": {"N": n}} for i, n in enumerate(numbers)]
    items.append({"pk": {"S": "absent"}})
    column = to_arrow(items, [("pk", "S")]).column("x")
    assert column.type == arrow_type
    got = column.to_pylist()[:-1]
    if pa.types.is_decimal(arrow_type):
        assert got == [Decimal(v) for v in values]
    else:
        assert got == values
    assert column.to_pylist()[-1] is None


def test_items_to_arrow_rejects_missing_keys_and_bad_json() -> None:
    with pytest.raises(CorruptDataError, match="key attribute 'sk'"):
        to_arrow([{"pk": {"S": "a"}}])
    with pytest.raises(CorruptDataError, match="key attribute 'pk'"):
        to_arrow([{"pk": {"N": "1"}, "sk": {"N": "1"}}])
    with pytest.raises(CorruptDataError):
        items_to_arrow([b'{"pk":{"S":"a"}', b"}"], [("pk", "S")])
    with pytest.raises(CorruptDataError):
        items_to_arrow([b'{"pk":{"S":"a"},"b":{"B":"not base64!"}}'], [("pk", "S")])


def test_items_to_arrow_of_nothing() -> None:
    table = items_to_arrow([], KEYS)
    assert table.num_rows == 0 and table.column_names == ["pk", "sk", "_item"]


# --- lossless round trips through every shard format ----------------------------------------

FORMATS = [("ndjson", "zstd"), ("ndjson", "gzip"), ("ndjson", "none"), ("parquet", "zstd")]


def write_shard(
    tmp_path: Path, items: list[dict[str, Any]], format: str, compression: str
) -> tuple[Path, str]:
    writer = ShardWriter(format, compression, KEYS, spool_dir=str(tmp_path))
    body = b'{"Count":%d,"Items":[%s]}' % (len(items), b",".join(map(raw, items)))
    writer.add_items(decode_scan_page(body).items)
    finished = writer.close()
    key = shard_key(0, 1, format, compression)
    path = tmp_path / key.replace("/", "_")
    os.replace(finished.path, path)
    return path, key


@pytest.mark.parametrize(("format", "compression"), FORMATS)
def test_every_type_survives_a_round_trip(tmp_path: Path, format: str, compression: str) -> None:
    items = every_type_items()
    path, key = write_shard(tmp_path, items, format, compression)
    data = path.read_bytes()
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    back = [decode_item(item) for item in iter_shard_items(chunks, key)]
    assert back == items


def test_parquet_typed_columns_of_the_every_type_items(tmp_path: Path) -> None:
    path, _ = write_shard(tmp_path, every_type_items(), "parquet", "zstd")
    table = pq.read_table(path)
    types = {field.name: field.type for field in table.schema}
    assert types["pk"] == pa.string() and types["sk"] == pa.int64()
    assert types["s"] == pa.string()
    assert types["n"] == pa.decimal128(38, 0)
    assert types["big"] == pa.float64() and types["tiny"] == pa.float64()
    assert types["b"] == pa.binary() and types["yes"] == pa.bool_()
    assert types["名前"] == pa.string() and types["emoji😀"] == pa.string()
    for no_column in ("nothing", "m", "l", "ss", "ns", "bs", "el", "em"):
        assert no_column not in types
    assert table.column("b")[0].as_py() == bytes(range(256))


# --- DuckDB reads what we write -------------------------------------------------------------


def many_items(count: int) -> list[dict[str, Any]]:
    return [
        {
            "pk": {"S": f"user#{i % 7}"},
            "sk": {"N": str(i)},
            "amount": {"N": f"{i}.25"},
            "visits": {"N": str(i * 3)},
            "tags": {"SS": ["a", "b"]},
        }
        for i in range(count)
    ]


def test_duckdb_reads_parquet_shards(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    items = many_items(1000)
    path, _ = write_shard(tmp_path, items, "parquet", "zstd")
    con = duckdb.connect()
    rows = con.execute(
        "select pk, count(*) from read_parquet(?) group by pk order by pk", [str(path)]
    ).fetchall()
    assert rows == [(f"user#{k}", len(range(k, 1000, 7))) for k in range(7)]
    totals = con.execute(
        "select sum(visits), sum(amount), any_value(typeof(sk)), any_value(typeof(amount)) "
        "from read_parquet(?)",
        [str(path)],
    ).fetchone()
    assert totals[0] == sum(i * 3 for i in range(1000))
    assert Decimal(totals[1]) == sum(Decimal(f"{i}.25") for i in range(1000))
    assert totals[2] == "BIGINT" and totals[3].startswith("DECIMAL(38,2)")
    item_json = con.execute(
        "select _item from read_parquet(?) where sk = 42", [str(path)]
    ).fetchone()[0]
    assert json.loads(item_json) == items[42]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_duckdb_reads_ndjson_shards(tmp_path: Path, compression: str) -> None:
    duckdb = pytest.importorskip("duckdb")
    items = many_items(500)
    path, _ = write_shard(tmp_path, items, "ndjson", compression)
    con = duckdb.connect()
    duck_compression = {"none": "none", "gzip": "gzip", "zstd": "zstd"}[compression]
    rows = con.execute(
        "select Item.pk.S as pk, count(*), sum(cast(Item.sk.N as bigint)) "
        "from read_ndjson(?, compression = ?, columns = {'Item': 'JSON'}) "
        "group by pk order by pk",
        [str(path), duck_compression],
    ).fetchall()
    expected = [(f"user#{k}", len(range(k, 500, 7)), sum(range(k, 500, 7))) for k in range(7)]
    assert [(pk.strip('"'), n, total) for pk, n, total in rows] == expected


@pytest.mark.parametrize(
    "item",
    [{"a": {"S": 1}}, {"a": {"M": []}}, {"a": {"N": None}}, {"a": {"B": "!!"}}],
)
def test_item_size_of_a_malformed_item_is_corrupt_data(item: dict[str, Any]) -> None:
    with pytest.raises(CorruptDataError):
        item_size(item)
