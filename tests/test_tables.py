"""The import's target table: key-schema checks and creation from a saved schema."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient
from ddbpipe.errors import SchemaMismatchError
from ddbpipe.manifest import key_attributes, table_schema
from ddbpipe.retry import ManualClock
from ddbpipe.tables import (
    add_global_indexes,
    check_key_schema,
    create_table,
    create_table_request,
    provisioned_write_capacity,
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


def polling_quickly(endpoint: str) -> DynamoClient:
    """A client whose waits for ACTIVE poll at once (on a manual clock)."""
    return DynamoClient.open(AwsOptions(endpoint_url=endpoint), clock=ManualClock())


def test_create_request_leaves_gsis_and_their_attributes_for_later() -> None:
    request = create_table_request("copy", SCHEMA)
    assert request["TableName"] == "copy"
    assert "GlobalSecondaryIndexes" not in request
    assert {d["AttributeName"] for d in request["AttributeDefinitions"]} == {"pk", "sk", "lsi"}
    assert request["LocalSecondaryIndexes"][0]["IndexName"] == "by-lsi"
    assert request["ProvisionedThroughput"] == {"ReadCapacityUnits": 5, "WriteCapacityUnits": 6}


def test_key_schema_mismatch_names_both_sides() -> None:
    keys = key_attributes(SOURCE_DESCRIPTION)
    check_key_schema("t", keys, keys)
    check_key_schema("t", keys, None)  # an unknown source schema is checked item by item
    with pytest.raises(SchemaMismatchError) as caught:
        check_key_schema("t", keys, (("id", "N"),))
    message = str(caught.value)
    assert "pk (S) HASH, sk (S) RANGE" in message and "id (N) HASH" in message
    assert "nothing was written" in message


def test_create_table_then_indexes_on_dynamodb_local(dynamodb_local: Any,
                                                     dynamodb_client: Any) -> None:
    table = f"created-{uuid.uuid4().hex[:10]}"

    async def scenario() -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        async with polling_quickly(dynamodb_local.endpoint) as client:
            created = await create_table(client, table, SCHEMA)
            added = await add_global_indexes(client, table, SCHEMA)
            return created, added, await client.describe_table(table)

    try:
        created, added, final = asyncio.run(scenario())

        async def again() -> list[str]:
            async with polling_quickly(dynamodb_local.endpoint) as client:
                return await add_global_indexes(client, table, SCHEMA)

        assert asyncio.run(again()) == []  # a resumed import adds only what is missing
        assert "GlobalSecondaryIndexes" not in created
        assert added == ["by-email"]
        (gsi,) = final["GlobalSecondaryIndexes"]
        assert gsi["IndexName"] == "by-email" and gsi["IndexStatus"] == "ACTIVE"
        assert gsi["Projection"] == {"ProjectionType": "KEYS_ONLY"}
        assert final["LocalSecondaryIndexes"][0]["IndexName"] == "by-lsi"
        assert provisioned_write_capacity(final) == 6
        ttl = dynamodb_client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl["AttributeName"] == "expires"
    finally:
        dynamodb_client.delete_table(TableName=table)


def test_on_demand_table_has_no_provisioned_capacity() -> None:
    assert provisioned_write_capacity({"BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
                                       "ProvisionedThroughput": {"WriteCapacityUnits": 0}}) is None
