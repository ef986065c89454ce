"""The sample data used by the demo and the benchmarks: deterministic, realistic, valid."""

from __future__ import annotations

import json
import statistics
import uuid
from typing import Any

import boto3
from boto3.dynamodb.types import Binary, TypeDeserializer

from tools import services
from tools.sample_data import (
    create_table,
    fill_table,
    generate_items,
    item_size,
    to_wire,
    to_wire_json,
)

TYPES = {"S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS"}


def _types(value: dict[str, Any], seen: set[str]) -> None:
    ((kind, inner),) = value.items()
    seen.add(kind)
    if kind == "M":
        for v in inner.values():
            _types(v, seen)
    elif kind == "L":
        for v in inner:
            _types(v, seen)


def test_same_seed_same_items_other_seed_other_items() -> None:
    assert generate_items(500, seed=7) == generate_items(500, seed=7)
    assert generate_items(500, seed=7) != generate_items(500, seed=8)
    # A prefix of a longer run is not promised, but a count is exact.
    assert len(generate_items(0)) == 0
    assert len(generate_items(1234)) == 1234


def test_keys_unique_and_spread_over_many_partition_keys() -> None:
    items = generate_items(5_000)
    keys = {(item["pk"]["S"], item["sk"]["S"]) for item in items}
    assert len(keys) == len(items)
    partition_keys = {item["pk"]["S"] for item in items}
    assert len(partition_keys) > 500
    assert all(item["pk"]["S"].startswith("customer#") for item in items)


def test_average_size_about_350_bytes() -> None:
    items = generate_items(5_000)
    json_sizes = [len(to_wire_json(item).encode("utf-8")) for item in items]
    assert 300 <= statistics.mean(json_sizes) <= 420
    # DynamoDB's own size rule counts names and values only, so it is smaller than JSON.
    billed = [item_size(item) for item in items]
    assert 120 <= statistics.mean(billed) < statistics.mean(json_sizes)
    assert max(billed) < 400 * 1024


def test_items_are_valid_dynamodb_json_with_every_common_type() -> None:
    items = generate_items(3_000, seed=3)
    deserializer = TypeDeserializer()
    seen: set[str] = set()
    optional_missing = False
    for item in items:
        plain = {name: deserializer.deserialize(value) for name, value in item.items()}
        assert isinstance(plain["pk"], str) and isinstance(plain["sk"], str)
        for value in item.values():
            _types(value, seen)
        optional_missing = optional_missing or "tags" not in item
    assert seen >= {"S", "N", "B", "BOOL", "NULL", "M", "L", "SS"}
    assert seen <= TYPES
    assert optional_missing
    # Numbers include integers and decimals.
    numbers = [v["N"] for item in items for v in item.values() if "N" in v]
    assert any("." in n for n in numbers) and any("." not in n for n in numbers)


def test_wire_json_round_trips_binary_as_base64() -> None:
    items = [item for item in generate_items(3_000, seed=5) if "signature" in item]
    assert items
    item = items[0]
    text = to_wire_json(item)
    decoded = json.loads(text)
    assert decoded == to_wire(item)
    assert isinstance(decoded["signature"]["B"], str)
    value = TypeDeserializer().deserialize(item["signature"])
    assert isinstance(value, Binary) and value.value == item["signature"]["B"]


def test_fill_table_loads_every_item(dynamodb_local: services.DynamoDBLocal) -> None:
    table = f"sample-{uuid.uuid4().hex[:12]}"
    items = generate_items(2_000, seed=11)
    create_table(dynamodb_local.endpoint, table)
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint)
    try:
        fill_table(dynamodb_local.endpoint, table, items, threads=4)
        count = sum(
            page["Count"]
            for page in client.get_paginator("scan").paginate(TableName=table, Select="COUNT")
        )
        assert count == len(items)
        # Spot-check that an item comes back exactly as written (binary included).
        with_binary = next(
            item for item in items if "signature" in item or "avatar_thumbnail" in item
        )
        stored = client.get_item(
            TableName=table,
            Key={"pk": with_binary["pk"], "sk": with_binary["sk"]},
            ConsistentRead=True,
        )["Item"]
        assert stored == with_binary
    finally:
        client.delete_table(TableName=table)
