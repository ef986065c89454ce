"""Test data, readers and ways of damaging an export, shared by the tests.

``FIDELITY_ITEMS`` covers every DynamoDB type and the awkward corners (38-digit and extreme
numbers, binary inside maps and lists, empty strings/lists/maps, unicode names, an item near
400 KB). Items are in DynamoDB JSON as boto3's low-level client takes them (binary as bytes).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import msgspec

from ddbpipe.manifest import MANIFEST_KEY, decode_manifest
from ddbpipe.shards import iter_shard_items

FIDELITY_ITEMS: list[dict[str, Any]] = [
    {
        "pk": {"S": "all-types"},
        "s": {"S": 'héllo "quoted" \\ back\nslash\ttab \u2028 \x01'},
        "empty_s": {"S": ""},
        "n38": {"N": "12345678901234567890123456789012345678"},
        "n_neg_frac": {"N": "-0.000000000000000000000000000000000001"},
        "n_big": {"N": "9.9999999999999999999999999999999999999E+125"},
        "n_tiny": {"N": "-1E-130"},
        "n_int": {"N": "42"},
        "b": {"B": b"\x00\x01\xfe\xff"},
        "empty_b": {"B": b""},
        "t": {"BOOL": True},
        "f": {"BOOL": False},
        "nothing": {"NULL": True},
        "m": {
            "M": {
                "inner_b": {"B": b"\xde\xad\xbe\xef"},
                "l": {"L": [{"N": "1"}, {"S": "x"}, {"B": b"\x01\x02"}, {"M": {}}, {"L": []}]},
                "deep": {"M": {"deeper": {"M": {"n": {"N": "3.14"}}}}},
            }
        },
        "empty_m": {"M": {}},
        "empty_l": {"L": []},
        "ss": {"SS": ["a", "b", "ü"]},
        "ns": {"NS": ["1", "2.5", "-3E+10"]},
        "bs": {"BS": [b"\x01", b"\x02\x03"]},
        "名前": {"S": "値"},
        "emoji😀": {"S": "🎉"},
    },
    {"pk": {"S": "near-400kb"}, "blob": {"S": "x" * 399_000}},
    {"pk": {"S": "unicode-ключ-🔑"}, "v": {"N": "-0"}},
]


def plain_items(count: int, prefix: str = "item") -> list[dict[str, Any]]:
    """Simple items spread over many partition keys."""
    return [
        {
            "pk": {"S": f"{prefix}#{i:06d}"},
            "n": {"N": str(i)},
            "price": {"N": f"{i}.{i % 100:02d}"},
            "name": {"S": f"name {i} " + "z" * (i % 50)},
            "flag": {"BOOL": i % 2 == 0},
        }
        for i in range(count)
    ]


def normalized(item: dict[str, Any]) -> dict[str, Any]:
    """An item with binary as bytes and sets sorted, so two sources compare equal."""
    return {name: _normalized_value(value) for name, value in item.items()}


def _normalized_value(value: dict[str, Any]) -> Any:
    (tag, inner), = value.items()
    if tag == "B":
        return ("B", _as_bytes(inner))
    if tag == "BS":
        return ("BS", tuple(sorted(_as_bytes(b) for b in inner)))
    if tag in ("SS", "NS"):
        return (tag, tuple(sorted(inner)))
    if tag == "M":
        return ("M", normalized(inner))
    if tag == "L":
        return ("L", tuple(_normalized_value(v) for v in inner))
    return (tag, inner)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(value)


def scan_table(client: Any, table: str) -> list[dict[str, Any]]:
    """Every item of a table through boto3, normalized."""
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table):
        items += [normalized(item) for item in page["Items"]]
    return items


def read_local_export(dest: Path) -> list[dict[str, Any]]:
    """Every item of a local export, read back through the manifest, normalized."""
    manifest = decode_manifest((dest / MANIFEST_KEY).read_bytes())
    items = []
    for shard in manifest.shards:
        data = (dest / shard.key).read_bytes()
        for raw in iter_shard_items([data], shard.key):
            items.append(normalized(msgspec.json.decode(raw)))
    return items


def key_of(item: dict[str, Any]) -> Any:
    return item["pk"]


def sorted_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: repr(key_of(item)))


# --- damaging an export ---------------------------------------------------------------------


def shard_paths(dest: Path) -> list[Path]:
    """The shards of a local export, in the order its manifest lists them."""
    manifest = decode_manifest((dest / MANIFEST_KEY).read_bytes())
    return [dest / shard.key for shard in manifest.shards]


def flip_middle_byte(path: Path) -> None:
    """Damage a stored file without changing its size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def cut_off(path: Path, length: int = 10) -> None:
    """Drop the last ``length`` bytes of a stored file."""
    path.write_bytes(path.read_bytes()[:-length])
