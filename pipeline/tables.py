"""The import's target table: check its key schema, or create it from a saved schema.

The requests are built by ``schema.py``; here they are sent and waited for. An existing table
is never deleted, emptied or altered (apart from adding the saved indexes and TTL to a table
this import created). Creating a table follows what loads fastest: keys, LSIs, billing and
streams at CreateTable (LSIs cannot be added later); GSIs after the data, one UpdateTable at
a time (DynamoDB allows one index change per call), each waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .dynamo import DynamoClient
from .errors import ConfigError, SchemaMismatchError, TableNotFoundError
from .schema import (
    KeyAttributes,
    create_table_request,
    describe_keys,
    index_create_request,
    time_to_live_request,
)

log = logging.getLogger(__name__)

#: Seconds between DescribeTable polls while waiting for a table or index to be ACTIVE.
POLL_SECONDS = 2.0


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


async def create_table(client: DynamoClient, table: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Create ``table`` (without GSIs) and wait until it is ACTIVE; returns its description."""
    if not schema.get("KeySchema"):
        raise ConfigError("the source carries no table schema: create the table first, then "
                          "import without --create-table")
    await client.call("CreateTable", create_table_request(table, schema), resource=table)
    description = await wait_until_active(client, table)
    time_to_live = time_to_live_request(table, schema)
    if time_to_live is not None:
        await client.call("UpdateTimeToLive", time_to_live, resource=table)
    return description


async def add_global_indexes(
    client: DynamoClient, table: str, schema: dict[str, Any],
    *, on_index: Callable[[str], None] | None = None,
) -> list[str]:
    """Add the saved GSIs the table lacks, one at a time, each waited for until ACTIVE.

    Returns the names added; indexes already there (e.g. added before an import was killed
    and resumed) are left alone.
    """
    current = await client.describe_table(table)
    present = {i["IndexName"] for i in current.get("GlobalSecondaryIndexes") or []}
    added = []
    for index in schema.get("GlobalSecondaryIndexes") or []:
        if index["IndexName"] in present:
            continue
        if on_index is not None:
            on_index(index["IndexName"])
        await client.call("UpdateTable", index_create_request(table, schema, index),
                          resource=table)
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
