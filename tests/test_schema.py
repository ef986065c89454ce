"""A table's schema in both directions: DescribeTable -> the saved schema -> the requests
that recreate the table, and its key attributes."""

from __future__ import annotations

from typing import Any

from ddbpipe.schema import (
    create_table_request,
    describe_keys,
    index_create_request,
    key_attributes,
    table_schema,
    time_to_live_request,
)

SOURCE_DESCRIPTION: dict[str, Any] = {
    "TableName": "orders",
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                  {"AttributeName": "sk", "KeyType": "RANGE"}],
    "AttributeDefinitions": [{"AttributeName": n, "AttributeType": "S"}
                             for n in ("pk", "sk", "email", "lsi")],
    "BillingModeSummary": {"BillingMode": "PROVISIONED"},
    "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 6},
    "GlobalSecondaryIndexes": [{
        "IndexName": "by-email", "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"}, "IndexStatus": "ACTIVE",
        "ProvisionedThroughput": {"ReadCapacityUnits": 2, "WriteCapacityUnits": 3},
    }],
    "LocalSecondaryIndexes": [{
        "IndexName": "by-lsi", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                             {"AttributeName": "lsi", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},
    }],
}
SCHEMA = table_schema(SOURCE_DESCRIPTION, {"TimeToLiveStatus": "ENABLED",
                                           "AttributeName": "expires"}, None)



def test_create_request_leaves_gsis_and_their_attributes_for_later() -> None:
    request = create_table_request("copy", SCHEMA)
    assert request["TableName"] == "copy"
    assert "GlobalSecondaryIndexes" not in request
    assert {d["AttributeName"] for d in request["AttributeDefinitions"]} == {"pk", "sk", "lsi"}
    assert request["LocalSecondaryIndexes"][0]["IndexName"] == "by-lsi"
    assert request["ProvisionedThroughput"] == {"ReadCapacityUnits": 5, "WriteCapacityUnits": 6}


def test_key_attributes_put_the_partition_key_first() -> None:
    reordered = {**SOURCE_DESCRIPTION, "KeySchema": list(reversed(SOURCE_DESCRIPTION["KeySchema"]))}
    assert key_attributes(reordered) == (("pk", "S"), ("sk", "S"))
    assert key_attributes(SCHEMA) == key_attributes(SOURCE_DESCRIPTION)  # the saved schema too
    assert describe_keys(key_attributes(SCHEMA)) == "pk (S) HASH, sk (S) RANGE"


def test_saved_schema_keeps_indexes_capacity_and_ttl_but_not_status() -> None:
    assert SCHEMA["GlobalSecondaryIndexes"] == [{
        "IndexName": "by-email", "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
        "ProvisionedThroughput": {"ReadCapacityUnits": 2, "WriteCapacityUnits": 3},
    }]
    assert SCHEMA["TimeToLive"] == {"Enabled": True, "AttributeName": "expires"}
    on_demand = table_schema(
        {**SOURCE_DESCRIPTION, "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"}},
        None, None,
    )
    assert "ProvisionedThroughput" not in on_demand and on_demand["TimeToLive"] is None


def test_each_gsi_is_added_by_its_own_request_with_its_attributes() -> None:
    (index,) = SCHEMA["GlobalSecondaryIndexes"]
    request = index_create_request("copy", SCHEMA, index)
    assert request == {
        "TableName": "copy",
        "AttributeDefinitions": [{"AttributeName": "email", "AttributeType": "S"}],
        "GlobalSecondaryIndexUpdates": [{"Create": index}],
    }


def test_time_to_live_is_turned_on_only_when_it_was_on() -> None:
    assert time_to_live_request("copy", SCHEMA) == {
        "TableName": "copy",
        "TimeToLiveSpecification": {"Enabled": True, "AttributeName": "expires"},
    }
    unknown = table_schema(SOURCE_DESCRIPTION, None, None)
    disabled = table_schema(SOURCE_DESCRIPTION, {"TimeToLiveStatus": "DISABLED"}, None)
    assert time_to_live_request("copy", unknown) is None
    assert time_to_live_request("copy", disabled) is None
