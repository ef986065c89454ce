"""An export's plan as saved and read back: what a resumed export and an import may trust."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import pytest

from ddbpipe.errors import CorruptDataError
from ddbpipe.manifest import ExportPlan, decode_plan, encode_plan

PLAN = ExportPlan(
    export_id="0001-abcd", table_name="orders", table_arn="arn:aws:dynamodb:x:1:table/orders",
    table_id="id", region="eu-west-1", data_format="parquet", compression="zstd", segments=4,
    consistent_read=False, shard_bytes=1 << 20, start_time="2026-12-02T00:00:00.000Z",
    key_attributes=(("pk", "S"), ("sk", "N")), table={"TableName": "orders"},
)


def test_a_plan_reads_back_as_it_was_written() -> None:
    assert decode_plan(encode_plan(PLAN)) == PLAN


@pytest.mark.parametrize(("field", "value"), [("data_format", "csv"), ("compression", "lz4")])
def test_a_plan_with_an_unknown_format_or_compression_is_refused(field: str, value: str) -> None:
    document = msgspec.json.decode(encode_plan(PLAN))
    document[field] = value
    with pytest.raises(CorruptDataError, match=f"unknown format or compression.*{value}"):
        decode_plan(msgspec.json.encode(document), "export.json")


def test_a_plan_missing_a_field_names_the_file() -> None:
    document = msgspec.json.decode(encode_plan(replace(PLAN, segments=2)))
    del document["segments"]
    with pytest.raises(CorruptDataError, match="export.json is missing or has a wrong field"):
        decode_plan(msgspec.json.encode(document), "export.json")
