"""The capacity simulator: a real boto3 client talking to it, in front of a real DynamoDB
Local (the capacity model itself is tested in test_capacity_model.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ddbpipe import codec
from tests.test_capacity_model import key_in_other_partition
from tools.capacity_simulator import CapacitySimulator


def padded_item(key: str, pad_bytes: int = 2000, sort_key: str | None = None) -> dict[str, Any]:
    item = {"pk": {"S": key}, "pad": {"S": "x" * pad_bytes}}
    if sort_key is not None:
        item["sk"] = {"S": sort_key}
    return item


@pytest.fixture
def simulator(capacity_simulator: CapacitySimulator) -> CapacitySimulator:
    return capacity_simulator


def client_for(endpoint: str) -> Any:
    # No retries: each call's own reply is what the test checks.
    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", config=config)


@pytest.fixture
def simulated_client(simulator: CapacitySimulator) -> Any:
    return client_for(simulator.endpoint)


def scan_keys(client: Any, table: str) -> set[str]:
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {item["pk"]["S"] for item in items}


def test_unconfigured_tables_pass_through(simulated_client: Any, dynamodb_client: Any) -> None:
    table = f"through-{time.time_ns()}"
    simulated_client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        simulated_client.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "1"}})
        got = simulated_client.get_item(TableName=table, Key={"pk": {"S": "a"}})
        assert got["Item"] == {"pk": {"S": "a"}, "n": {"N": "1"}}
        assert scan_keys(simulated_client, table) == {"a"}
        description = simulated_client.describe_table(TableName=table)["Table"]
        assert description["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
        assert scan_keys(dynamodb_client, table) == {"a"}
        with pytest.raises(ClientError) as raised:
            simulated_client.describe_table(TableName="no-such-table")
        assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    finally:
        simulated_client.delete_table(TableName=table)


def test_configured_table_with_room_behaves_like_dynamodb(
    simulator: CapacitySimulator, simulated_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table()
    simulator.configure(table, wcu=1000, rcu=1000)
    reply = simulated_client.put_item(
        TableName=table, Item=padded_item("a"), ReturnConsumedCapacity="TOTAL"
    )
    assert reply["ConsumedCapacity"]["CapacityUnits"] == 2
    simulated_client.update_item(
        TableName=table,
        Key={"pk": {"S": "a"}},
        UpdateExpression="SET n = :n",
        ExpressionAttributeValues={":n": {"N": "5"}},
    )
    simulated_client.delete_item(TableName=table, Key={"pk": {"S": "a"}})
    reply = simulated_client.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": padded_item(k)}} for k in "bcde"]}
    )
    assert reply["UnprocessedItems"] == {}
    reply = simulated_client.batch_write_item(
        RequestItems={table: [{"DeleteRequest": {"Key": {"pk": {"S": "e"}}}}]},
        ReturnConsumedCapacity="TOTAL",
    )
    assert reply["ConsumedCapacity"] == [{"TableName": table, "CapacityUnits": 1.0}]
    assert scan_keys(simulated_client, table) == {"b", "c", "d"}
    stats = simulator.stats(table)
    assert (stats.items_accepted, stats.items_throttled) == (8, 0)
    assert stats.accepted_wcu == 2 + 1 + 1 + 4 * 2 + 1  # put, update, delete, the batches
    assert stats.consumed_rcu > 0


def test_partly_throttled_batch_returns_unprocessed_items(
    simulator: CapacitySimulator,
    simulated_client: Any,
    dynamodb_client: Any,
    make_table: Callable[..., str],
) -> None:
    table = make_table()
    simulator.configure(table, wcu=25, partitions=1)
    items = [padded_item(f"k{index:02}") for index in range(25)]
    assert {codec.write_units(codec.item_size(item)) for item in items} == {2}

    reply = simulated_client.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": item}} for item in items]},
        ReturnConsumedCapacity="TOTAL",
    )

    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    unprocessed = [r["PutRequest"]["Item"] for r in reply["UnprocessedItems"][table]]
    unprocessed_keys = {item["pk"]["S"] for item in unprocessed}
    assert len(unprocessed) == 13  # 25 WCU in the bucket: 12 items of 2 WCU fit
    assert unprocessed == [item for item in items if item["pk"]["S"] in unprocessed_keys]
    written = scan_keys(dynamodb_client, table)
    assert written == {item["pk"]["S"] for item in items} - unprocessed_keys
    assert reply["ConsumedCapacity"] == [{"TableName": table, "CapacityUnits": 24.0}]
    stats = simulator.stats(table)
    assert (stats.items_accepted, stats.items_throttled, stats.accepted_wcu) == (12, 13, 24)
    assert stats.calls_with_unprocessed == 1


def test_fully_throttled_calls_raise_the_throughput_exception(
    simulator: CapacitySimulator, simulated_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table()
    simulator.configure(table, wcu=4)
    big = padded_item("big", pad_bytes=4500)  # 5 WCU: more than the bucket holds right now
    simulated_client.put_item(TableName=table, Item=padded_item("first", pad_bytes=3000))

    with pytest.raises(ClientError) as raised:
        simulated_client.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": big}}]})
    error = raised.value.response["Error"]
    assert error["Code"] == "ProvisionedThroughputExceededException"
    assert "provisioned throughput for the table was exceeded" in error["Message"]
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    with pytest.raises(ClientError) as raised:
        simulated_client.put_item(TableName=table, Item=big)
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    stats = simulator.stats(table)
    assert (stats.throttled_requests, stats.items_throttled, stats.items_accepted) == (2, 2, 1)


def test_invalid_batches_reach_the_backend_unchanged(
    simulator: CapacitySimulator, simulated_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table()
    simulator.configure(table, wcu=1)
    too_many = [{"PutRequest": {"Item": padded_item(f"k{index}")}} for index in range(26)]
    duplicates = [{"PutRequest": {"Item": padded_item("same")}}] * 2
    wrong_key_type = [{"DeleteRequest": {"Key": {"pk": {"N": "1"}}}}]
    no_key = [{"PutRequest": {"Item": {"other": {"S": "x"}}}}]
    for requests in (too_many, duplicates, wrong_key_type, no_key):
        with pytest.raises(ClientError) as raised:
            simulated_client.batch_write_item(RequestItems={table: requests})
        assert raised.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as raised:
        simulated_client.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "x"}})
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert simulator.stats(table).items_sent == 0


def test_hot_key_is_held_to_its_partition_in_real_time(
    simulator: CapacitySimulator,
    simulated_client: Any,
    dynamodb_client: Any,
    make_table: Callable[..., str],
) -> None:
    table = make_table(range_key=("sk", "S"))
    simulator.configure(table, wcu=400, partitions=4)
    duration = 1.5
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < duration:
        batch = [padded_item("hot", 500, f"{sent + index:06}") for index in range(25)]
        try:
            simulated_client.batch_write_item(
                RequestItems={table: [{"PutRequest": {"Item": item}} for item in batch]}
            )
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
        sent += len(batch)
    elapsed = time.monotonic() - started
    cold = padded_item(key_in_other_partition("hot", 4), 500, "0")
    simulated_client.put_item(TableName=table, Item=cold)

    stats = simulator.stats(table)
    # 100 WCU/s per partition (1 WCU items), plus the one-second allowance it started with.
    assert 100 <= stats.items_accepted - 1 <= 100 * (1 + elapsed) + 1
    assert stats.items_sent == sent + 1
    assert sum(1 for wcu in stats.partition_wcu if wcu) == 2
    assert sum(wcu for _, wcu in stats.wcu_per_second) == stats.accepted_wcu
    stored = dynamodb_client.scan(TableName=table, Select="COUNT", ConsistentRead=True)
    assert stored["Count"] == stats.items_accepted


def test_reads_are_throttled_when_the_read_bucket_runs_dry(
    simulator: CapacitySimulator, simulated_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table([padded_item(f"k{index}", 4000) for index in range(10)])
    simulator.configure(table, wcu=100, rcu=2)
    page = simulated_client.scan(TableName=table, ReturnConsumedCapacity="TOTAL")
    assert page["Count"] == 10
    with pytest.raises(ClientError) as raised:
        simulated_client.get_item(TableName=table, Key={"pk": {"S": "k1"}})
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    stats = simulator.stats(table)
    assert stats.consumed_rcu == page["ConsumedCapacity"]["CapacityUnits"]
    assert stats.throttled_reads == 1


def test_reads_of_a_configured_table_are_metered_even_when_not_throttled(
    simulator: CapacitySimulator, simulated_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table([padded_item(f"k{index}", 4000) for index in range(10)])
    simulator.configure(table, wcu=100)  # no rcu: reads are never throttled
    pages = [
        simulated_client.scan(TableName=table, Limit=limit, ReturnConsumedCapacity="TOTAL")
        for limit in (3, 10, 10)
    ]
    reported = sum(page["ConsumedCapacity"]["CapacityUnits"] for page in pages)
    stats = simulator.stats(table)
    assert stats.consumed_rcu == reported > 0
    assert sum(units for _, units in stats.rcu_per_second) == reported
    assert stats.throttled_reads == 0


def test_stats_add_up_over_many_batches(
    simulator: CapacitySimulator,
    simulated_client: Any,
    dynamodb_client: Any,
    make_table: Callable[..., str],
) -> None:
    table = make_table()
    simulator.configure(table, wcu=60, partitions=3)
    sent = 0
    for batch_number in range(8):
        items = [padded_item(f"b{batch_number}-{index}", 1500) for index in range(25)]
        try:
            simulated_client.batch_write_item(
                RequestItems={table: [{"PutRequest": {"Item": item}} for item in items]}
            )
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
        sent += len(items)
    stats = simulator.stats(table)
    assert stats.items_accepted + stats.items_throttled == sent
    assert stats.items_throttled > 0
    assert stats.accepted_wcu == 2 * stats.items_accepted == sum(stats.partition_wcu)
    assert len(scan_keys(dynamodb_client, table)) == stats.items_accepted
