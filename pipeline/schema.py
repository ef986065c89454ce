"""A table's schema, in both directions, and its key attributes.

An export keeps what it takes to recreate the table (``table_schema``: DescribeTable turned
into CreateTable's request shape, plus TTL and tags); an import with ``--create-table`` turns
that back into requests (``create_table_request``, ``time_to_live_request``, then
``index_create_request`` for each GSI after the load). ``KeyAttributes`` is the one type for
a table's keys: (name, type) pairs, partition key first, type "S", "N" or "B".
"""

from __future__ import annotations

from typing import Any

from .errors import TableNotFoundError

__all__ = [
    "CREATE_FIELDS",
    "KeyAttributes",
    "billing_mode",
    "create_table_request",
    "describe_keys",
    "index_create_request",
    "key_attributes",
    "provisioned_units",
    "table_schema",
    "time_to_live_request",
]

KeyAttributes = tuple[tuple[str, str], ...]

#: CreateTable fields the saved schema carries that go to the CreateTable call itself (GSIs,
#: TTL and tags are applied after it).
CREATE_FIELDS = (
    "KeySchema", "BillingMode", "ProvisionedThroughput", "OnDemandThroughput",
    "LocalSecondaryIndexes", "StreamSpecification", "SSESpecification", "TableClass",
)


def key_attributes(description: dict[str, Any]) -> KeyAttributes:
    """The keys of a table (a DescribeTable ``Table``, or a saved schema), hash key first."""
    types = {d["AttributeName"]: d["AttributeType"] for d in description["AttributeDefinitions"]}
    ordered = sorted(description["KeySchema"], key=lambda k: k["KeyType"] != "HASH")
    return tuple((k["AttributeName"], types[k["AttributeName"]]) for k in ordered)


def refuse_a_table_being_deleted(description: dict[str, Any], fix: str) -> None:
    """A table in DELETING still answers DescribeTable, but every later call fails with
    ResourceNotFoundException: refuse it before anything is written."""
    if description.get("TableStatus") != "DELETING":
        return
    table = description.get("TableName", "")
    raise TableNotFoundError(
        f"table '{table}' is being deleted (TableStatus DELETING): {fix}",
        service="dynamodb", action="DescribeTable", resource=table,
    )


def describe_keys(keys: KeyAttributes) -> str:
    """``pk (S) HASH, sk (N) RANGE``, for messages."""
    roles = ("HASH", "RANGE")
    pairs = zip(keys, roles, strict=False)
    return ", ".join(f"{name} ({kind}) {role}" for (name, kind), role in pairs)


# --- DescribeTable -> the schema an export keeps ----------------------------------------------


def table_schema(
    description: dict[str, Any],
    time_to_live: dict[str, Any] | None,
    tags: list[dict[str, str]] | None,
) -> dict[str, Any]:
    """What it takes to recreate the table, in CreateTable's request shape (plus TTL/tags).

    Secondary indexes keep their projections and capacities; ``TimeToLive`` and ``Tags`` are
    applied after CreateTable by a restore. ``None`` means the export could not read them.
    """
    billing = billing_mode(description)
    schema: dict[str, Any] = {
        "TableName": description["TableName"],
        "KeySchema": description["KeySchema"],
        "AttributeDefinitions": description["AttributeDefinitions"],
        "BillingMode": billing,
    }
    throughput = _throughput(description.get("ProvisionedThroughput"))
    if billing == "PROVISIONED" and throughput:
        schema["ProvisionedThroughput"] = throughput
    if description.get("OnDemandThroughput"):
        schema["OnDemandThroughput"] = description["OnDemandThroughput"]
    local_indexes = description.get("LocalSecondaryIndexes") or []
    global_indexes = description.get("GlobalSecondaryIndexes") or []
    if local_indexes:
        schema["LocalSecondaryIndexes"] = [_index(i, billing) for i in local_indexes]
    if global_indexes:
        schema["GlobalSecondaryIndexes"] = [_index(i, billing) for i in global_indexes]
    if description.get("StreamSpecification"):
        schema["StreamSpecification"] = description["StreamSpecification"]
    sse = description.get("SSEDescription")
    if sse and sse.get("Status") in ("ENABLED", "ENABLING", "UPDATING"):
        schema["SSESpecification"] = {"Enabled": True, "SSEType": sse.get("SSEType", "KMS")}
        if sse.get("KMSMasterKeyArn"):
            schema["SSESpecification"]["KMSMasterKeyId"] = sse["KMSMasterKeyArn"]
    if description.get("TableClassSummary", {}).get("TableClass"):
        schema["TableClass"] = description["TableClassSummary"]["TableClass"]
    if "DeletionProtectionEnabled" in description:
        schema["DeletionProtectionEnabled"] = description["DeletionProtectionEnabled"]
    schema["TimeToLive"] = _time_to_live(time_to_live)
    schema["Tags"] = tags
    schema["ItemCountEstimate"] = int(description.get("ItemCount", 0))
    schema["SizeBytesEstimate"] = int(description.get("TableSizeBytes", 0))
    return schema


def _throughput(description: dict[str, Any] | None) -> dict[str, int] | None:
    if not description:
        return None
    read, write = description.get("ReadCapacityUnits"), description.get("WriteCapacityUnits")
    if not read and not write:
        return None
    return {"ReadCapacityUnits": int(read or 0), "WriteCapacityUnits": int(write or 0)}


def _index(description: dict[str, Any], billing: str) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": description["IndexName"],
        "KeySchema": description["KeySchema"],
        "Projection": description["Projection"],
    }
    throughput = _throughput(description.get("ProvisionedThroughput"))
    if billing == "PROVISIONED" and throughput:
        index["ProvisionedThroughput"] = throughput
    if description.get("OnDemandThroughput"):
        index["OnDemandThroughput"] = description["OnDemandThroughput"]
    return index


def _time_to_live(description: dict[str, Any] | None) -> dict[str, Any] | None:
    if description is None:
        return None
    status = description.get("TimeToLiveStatus", "DISABLED")
    return {
        "Enabled": status in ("ENABLED", "ENABLING"),
        "AttributeName": description.get("AttributeName"),
    }


# --- the kept schema -> the requests an import sends ------------------------------------------


def create_table_request(table: str, schema: dict[str, Any]) -> dict[str, Any]:
    """CreateTable input from a saved schema: everything but GSIs and TTL (which come later)."""
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


def index_create_request(
    table: str, schema: dict[str, Any], index: dict[str, Any]
) -> dict[str, Any]:
    """UpdateTable input that adds one saved GSI (DynamoDB takes one index change per call)."""
    definitions = {d["AttributeName"]: d for d in schema["AttributeDefinitions"]}
    names = sorted({k["AttributeName"] for k in index["KeySchema"]})
    create = {k: v for k, v in index.items() if k != "OnDemandThroughput" or v}
    return {
        "TableName": table,
        "AttributeDefinitions": [definitions[name] for name in names],
        "GlobalSecondaryIndexUpdates": [{"Create": create}],
    }


def time_to_live_request(table: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """UpdateTimeToLive input that turns the saved TTL on; None when it was off or unknown."""
    saved = schema.get("TimeToLive")
    if not (saved and saved.get("Enabled") and saved.get("AttributeName")):
        return None
    return {
        "TableName": table,
        "TimeToLiveSpecification": {"Enabled": True, "AttributeName": saved["AttributeName"]},
    }


def billing_mode(table: dict[str, Any]) -> str:
    """PROVISIONED or PAY_PER_REQUEST, of a DescribeTable reply or a saved schema (which
    carries CreateTable's ``BillingMode``); a table described without one is provisioned."""
    return str(table.get("BillingMode")
               or (table.get("BillingModeSummary") or {}).get("BillingMode", "PROVISIONED"))


def provisioned_units(table: dict[str, Any], kind: str) -> int | None:
    """A provisioned table's ``kind`` ("Read"/"Write") capacity units, of a DescribeTable
    reply or a saved schema; None for an on-demand table."""
    units = (table.get("ProvisionedThroughput") or {}).get(f"{kind}CapacityUnits")
    return int(units) if billing_mode(table) == "PROVISIONED" and units else None

