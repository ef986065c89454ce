"""records: what an import writes, made once per item (``RecordMaker``), and why DynamoDB would
refuse a write (``check_item``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ddbpipe import codec
from ddbpipe.errors import CorruptDataError
from ddbpipe.records import MAX_ITEM_BYTES, RecordKind, RecordMaker, check_item

KEYS = (("pk", "S"), ("sk", "N"))


# --- check_item -------------------------------------------------------------------------------


def check(item: dict[str, Any], keys: Any = KEYS, kind: RecordKind = "put") -> str | None:
    return check_item(kind, item, codec.item_size(item), keys)


def test_check_item_accepts_a_good_item() -> None:
    assert check({"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "x"}}) is None
    big_but_fine = {"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "x" * 409_000}}
    assert codec.item_size(big_but_fine) <= MAX_ITEM_BYTES
    assert check(big_but_fine) is None


def test_check_item_refuses_an_item_over_400_kb() -> None:
    item = {"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "x" * 512_000}}
    assert check(item) == f"item is {codec.item_size(item):,} bytes, over DynamoDB's 400 KB limit"
    assert check(item, None) is not None  # the size is checked without keys too


def test_check_item_refuses_missing_and_mistyped_keys() -> None:
    assert check({"pk": {"S": "a"}}) == "missing key attribute 'sk'"
    assert check({"pk": {"N": "1"}, "sk": {"N": "1"}}) == "key attribute 'pk' is N, table wants S"
    assert check({"pk": {"S": ""}, "sk": {"N": "1"}}) == (
        "key attribute 'pk' is empty, which DynamoDB does not allow"
    )
    assert check({"pk": {"S": "k" * 2049}, "sk": {"N": "1"}}) == (
        "key attribute 'pk' is 2,049 bytes, over DynamoDB's 2,048 limit"
    )
    assert check({"pk": {"S": "a"}}, None) is None


def test_check_item_counts_binary_keys_in_decoded_bytes() -> None:
    keys = (("pk", "B"),)
    fits = {"pk": {"B": "A" * 2728}}  # base64 of 2,046 bytes: more characters than bytes
    assert check(fits, keys) is None
    too_big = {"pk": {"B": "A" * 2732}}  # 2,049 bytes
    assert check(too_big, keys) == "key attribute 'pk' is 2,049 bytes, over DynamoDB's 2,048 limit"


def test_check_item_refuses_a_delete_with_extra_attributes() -> None:
    assert check({"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "x"}}, kind="delete") == (
        "delete key has attribute 'v', which is not a key attribute"
    )


# --- RecordMaker --------------------------------------------------------------------------------


def test_a_made_record_keeps_the_bytes_read_and_works_out_the_rest() -> None:
    make = RecordMaker("data/a.json", "s3://bucket/export/data/a.json", KEYS)
    raw = b'{"pk":{"S":"a"},"sk":{"N":"1.50"},"v":{"S":"x"}}'
    record = make("put", raw, 1)
    assert record.raw is raw
    assert (record.kind, record.source, record.problem) == ("put", "data/a.json", None)
    assert record.key == (("S", "a"), ("N", "1.5"))
    assert record.size == codec.item_size(msgspec.json.decode(raw)) and record.units == 1
    assert record.request() == b'{"PutRequest":{"Item":' + raw + b"}}"


def test_a_made_record_carries_its_problem() -> None:
    make = RecordMaker("data/a.json", "s3://bucket/export/data/a.json", KEYS)
    assert make("put", b'{"pk":{"S":"a"}}', 1).problem == "missing key attribute 'sk'"
    delete = make("delete", b'{"pk":{"S":"a"},"sk":{"N":"1"},"v":{"S":"x"}}', 2)
    assert delete.problem == "delete key has attribute 'v', which is not a key attribute"


@pytest.mark.parametrize("raw", [b'{"pk":{"S":"a"}', b'{"pk":{"Q":"a"}}', b'{"pk":{"B":"!"}}'])
def test_a_malformed_item_names_the_file_and_the_item(raw: bytes) -> None:
    make = RecordMaker("data/a.json", "s3://bucket/export/data/a.json", KEYS)
    where = r"^s3://bucket/export/data/a\.json: item 7: "
    with pytest.raises(CorruptDataError, match=where) as caught:
        make("put", raw, 7)
    assert "\n" not in str(caught.value)


def test_numeric_keys_of_38_digits_stay_apart_and_equal_values_meet() -> None:
    from ddbpipe.records import item_key

    near = ["1234567890123456789012345678901234567", "1234567890123456789012345678901234568"]
    keys = {item_key({"pk": {"N": text + "0"}}, ("pk",)) for text in near}
    assert len(keys) == 2  # 38 significant digits: not rounded to 28, as Decimal would
    spellings = ["100", "1E+2", "100.000", "1.00E2"]
    assert len({item_key({"pk": {"N": text}}, ("pk",)) for text in spellings}) == 1
    assert item_key({"pk": {"N": "-0"}}, ("pk",)) == item_key({"pk": {"N": "0"}}, ("pk",))
