"""Fixtures that start the real services: DynamoDB Local and moto's S3 server.

Fake credentials are set before anything else imports an AWS SDK, so no test can reach a
real AWS account.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import services  # noqa: E402

services.use_local_credentials()

# Hypothesis profiles (tests/test_codec_properties.py). "ci", the default, is small and
# derandomized so every run tries the same examples; DDBPIPE_HYPOTHESIS_PROFILE=deep searches
# ten times wider (several minutes) with a fresh seed each run, and replays its failures from
# .hypothesis/ (which ignores itself in git).
with contextlib.suppress(ImportError):  # a venv from before hypothesis joined the dev extra
    from hypothesis import settings as hypothesis_settings

    hypothesis_settings.register_profile(
        "ci", max_examples=100, deadline=None, derandomize=True, database=None,
        print_blob=True,
    )
    hypothesis_settings.register_profile(
        "deep", max_examples=1000, deadline=None, print_blob=True
    )
    hypothesis_settings.load_profile(os.environ.get("DDBPIPE_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[services.DynamoDBLocal]:
    """DynamoDB Local, in memory, shared database; ``.endpoint`` is its URL."""
    server = services.start_dynamodb_local()
    yield server
    server.stop()


@pytest.fixture
def endpoint(dynamodb_local: services.DynamoDBLocal) -> str:
    """DynamoDB Local's URL (a test module may give ``endpoint`` its own meaning)."""
    return str(dynamodb_local.endpoint)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[services.S3Server]:
    """moto's S3 server on a loopback port; ``.endpoint`` is its URL."""
    server = services.start_s3_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def capacity_simulator(dynamodb_local: services.DynamoDBLocal) -> Iterator[Any]:
    """A throttling DynamoDB endpoint in front of DynamoDB Local; ``.configure(table, wcu=...)``.

    Tables that are not configured pass straight through.
    """
    from tools.capacity_simulator import start_capacity_simulator

    with start_capacity_simulator(dynamodb_local.endpoint) as simulator:
        yield simulator


@pytest.fixture
def dynamodb_client(dynamodb_local: services.DynamoDBLocal) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint, region_name="us-east-1")


@pytest.fixture
def s3_client(s3_server: services.S3Server) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A new, empty bucket on the moto server."""
    name = f"ddbpipe-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def unique_table_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_table(dynamodb_client: Any) -> Callable[..., str]:
    """Create a table in DynamoDB Local and fill it with items given in DynamoDB JSON.

    ``make_table(items, hash_key=("pk", "S"), range_key=None, **create_kwargs)`` returns the
    table name. Tables are deleted after the test.
    """
    created: list[str] = []

    def make(
        items: list[dict[str, Any]] | None = None,
        *,
        hash_key: tuple[str, str] = ("pk", "S"),
        range_key: tuple[str, str] | None = None,
        name: str | None = None,
        **create_kwargs: Any,
    ) -> str:
        table = name or unique_table_name()
        keys = [hash_key] + ([range_key] if range_key else [])
        definitions = {n: t for n, t in keys}
        for index in create_kwargs.get("GlobalSecondaryIndexes", []) + create_kwargs.get(
            "LocalSecondaryIndexes", []
        ):
            for element in index["KeySchema"]:
                definitions.setdefault(element["AttributeName"], "S")
        for name_, type_ in create_kwargs.pop("extra_attributes", {}).items():
            definitions[name_] = type_
        dynamodb_client.create_table(
            TableName=table,
            KeySchema=[
                {"AttributeName": n, "KeyType": kt}
                for (n, _), kt in zip(keys, ["HASH", "RANGE"], strict=False)
            ],
            AttributeDefinitions=[
                {"AttributeName": n, "AttributeType": t} for n, t in definitions.items()
            ],
            BillingMode=create_kwargs.pop("BillingMode", "PAY_PER_REQUEST"),
            **create_kwargs,
        )
        created.append(table)
        put_items(dynamodb_client, table, items or [])
        return table

    yield make  # type: ignore[misc]
    for table in created:
        with contextlib.suppress(Exception):
            dynamodb_client.delete_table(TableName=table)


def put_items(client: Any, table: str, items: list[dict[str, Any]]) -> None:
    """Write items (DynamoDB JSON) with BatchWriteItem, retrying unprocessed ones."""
    for start in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        pending: dict[str, Any] = {table: requests}
        while pending:
            reply = client.batch_write_item(RequestItems=pending)
            pending = reply.get("UnprocessedItems") or {}
