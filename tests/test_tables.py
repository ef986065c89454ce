"""The import's target table: key-schema checks and creation from a saved schema."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient
from ddbpipe.errors import SchemaMismatchError
from ddbpipe.retry import ManualClock
from ddbpipe.schema import key_attributes, provisioned_units
from ddbpipe.tables import add_global_indexes, check_key_schema, create_table
from tests.test_schema import SCHEMA, SOURCE_DESCRIPTION


def polling_quickly(endpoint: str) -> DynamoClient:
    """A client whose waits for ACTIVE poll at once (on a manual clock)."""
    return DynamoClient.open(AwsOptions(endpoint_url=endpoint), clock=ManualClock())


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
        assert provisioned_units(final, "Write") == 6
        ttl = dynamodb_client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl["AttributeName"] == "expires"
    finally:
        dynamodb_client.delete_table(TableName=table)


def test_on_demand_table_has_no_provisioned_capacity() -> None:
    assert provisioned_units({"BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
                              "ProvisionedThroughput": {"WriteCapacityUnits": 0}},
                             "Write") is None
