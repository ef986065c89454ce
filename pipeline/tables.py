"""The import's target table: check its key schema, or create it from a saved schema.

An existing table is never deleted, emptied or altered (apart from adding the saved indexes
and TTL to a table this import created). Creating a table follows what loads fastest: keys,
LSIs, billing and streams at CreateTable (LSIs cannot be added later); GSIs after the data,
one UpdateTable at a time (DynamoDB allows one index change per call), each waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .dynamo import DynamoClient
from .errors import ConfigError, SchemaMismatchError, TableNotFoundError

log = logging.getLogger(__name__)

KeyAttributes = tuple[tuple[str, str], ...]
#: Seconds between DescribeTable polls while waiting for a table or index to be ACTIVE.
POLL_SECONDS = 2.0
#: CreateTable fields our manifest carries that go to the CreateTable call itself.
CREATE_FIELDS = (
    "KeySchema", "BillingMode", "ProvisionedThroughput", "OnDemandThroughput",
    "LocalSecondaryIndexes", "StreamSpecification", "SSESpecification", "TableClass",
)


def describe_keys(keys: KeyAttributes) -> str:
    roles = ("HASH", "RANGE")
    pairs = zip(keys, roles, strict=False)
    return ", ".join(f"{name} ({kind}) {role}" for (name, kind), role in pairs)


def check_key_schema(
    table: str, table_keys: KeyAttributes, source_keys: KeyAttributes | None
) -> None:
    """Refuse to write when the source's keys are not the table's keys."""
    if source_keys is None or tuple(map(tuple, source_keys)) == table_keys:
        return
    raise SchemaMismatchError(
        f"key schema mismatch: table '{table}' has {describe_keys(table_keys)}, the source has "
        f"{describe_keys(source_keys)}; nothing was written: import into a table with the "
        "same keys, or use --create-table with a new table name"
    )


async def find_table(client: DynamoClient, table: str) -> dict[str, Any] | None:
    try:
        return await client.describe_table(table)
    except TableNotFoundError:
        return None


def create_table_request(table: str, schema: dict[str, Any]) -> dict[str, Any]:
    """CreateTable input from a saved schema: everything but GSIs, TTL and tags-later fields."""
    request: dict[str, Any] = {"TableName": table}
    request.update({name: schema[name] for name in CREATE_FIELDS if schema.get(name)})
    if schema.get("Tags"):
        request["Tags"] = schema["Tags"]
    # DynamoDB refuses attribute definitions that no key of this call uses (the GSIs' come later).
    used = {k["AttributeName"] for k in schema["KeySchema"]}
    for index in schema.get("LocalSecondaryIndexes") or []:
        used |= {k["AttributeName"] for k in index["KeySchema"]}
    request["AttributeDefinitions"] = [
        d for d in schema["AttributeDefinitions"] if d["AttributeName"] in used
    ]
    return request


async def create_table(client: DynamoClient, table: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Create ``table`` (without GSIs) and wait until it is ACTIVE; returns its description."""
    if not schema.get("KeySchema"):
        raise ConfigError("the source carries no table schema: create the table first, then "
                          "import without --create-table")
    await client.call("CreateTable", create_table_request(table, schema), resource=table)
    description = await wait_until_active(client, table)
    time_to_live = schema.get("TimeToLive")
    if time_to_live and time_to_live.get("Enabled") and time_to_live.get("AttributeName"):
        await client.call(
            "UpdateTimeToLive",
            {"TableName": table, "TimeToLiveSpecification": {
                "Enabled": True, "AttributeName": time_to_live["AttributeName"]}},
            resource=table,
        )
    return description


async def add_global_indexes(
    client: DynamoClient, table: str, schema: dict[str, Any],
    *, on_index: Callable[[str], None] | None = None,
) -> list[str]:
    """Add the saved GSIs the table lacks, one at a time, each waited for until ACTIVE.

    Returns the names added; indexes already there (e.g. added before an import was killed
    and resumed) are left alone.
    """
    definitions = {d["AttributeName"]: d for d in schema["AttributeDefinitions"]}
    current = await client.describe_table(table)
    present = {i["IndexName"] for i in current.get("GlobalSecondaryIndexes") or []}
    added = []
    for index in schema.get("GlobalSecondaryIndexes") or []:
        if index["IndexName"] in present:
            continue
        if on_index is not None:
            on_index(index["IndexName"])
        create = {k: v for k, v in index.items() if k != "OnDemandThroughput" or v}
        names = {k["AttributeName"] for k in index["KeySchema"]}
        await client.call(
            "UpdateTable",
            {
                "TableName": table,
                "AttributeDefinitions": [definitions[name] for name in sorted(names)],
                "GlobalSecondaryIndexUpdates": [{"Create": create}],
            },
            resource=table,
        )
        await wait_until_active(client, table)
        added.append(index["IndexName"])
    return added


async def wait_until_active(client: DynamoClient, table: str) -> dict[str, Any]:
    """Poll until the table and all its GSIs are ACTIVE (no index still backfilling), on the
    client's clock."""
    while True:
        description = await client.describe_table(table)
        indexes = description.get("GlobalSecondaryIndexes") or []
        if description.get("TableStatus") == "ACTIVE" and all(
            i.get("IndexStatus") == "ACTIVE" and not i.get("Backfilling") for i in indexes
        ):
            return description
        await client.clock.sleep(POLL_SECONDS)


def provisioned_write_capacity(description: dict[str, Any]) -> int | None:
    """The table's provisioned WCU, or None for an on-demand table."""
    billing = (description.get("BillingModeSummary") or {}).get("BillingMode", "PROVISIONED")
    if billing == "PAY_PER_REQUEST":
        return None
    units = (description.get("ProvisionedThroughput") or {}).get("WriteCapacityUnits")
    return int(units) if units else None
