"""Capacity raised for a job and put back (``provision.py``).

The raise and put-back paths run against DynamoDB Local (which applies UpdateTable of
provisioned throughput at once, but neither counts decreases nor refuses them) and, for auto
scaling, against moto's Application Auto Scaling. What DynamoDB Local cannot show (decrease
counts, a refused decrease) runs against a small in-process DynamoDB behind ``MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest
from botocore.credentials import Credentials

from ddbpipe.autoscaling import autoscaling_client_factory
from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient, HttpReply, MockTransport
from ddbpipe.errors import AwsRequestError, ConfigError, ResumeError
from ddbpipe.provision import (
    STATE_VERSION,
    CapacityState,
    ScalingChange,
    ThroughputChange,
    next_decrease_at,
    raised_capacity,
    restore_from_state,
)
from ddbpipe.retry import ManualClock, RetryPolicy

INDEX = "by-group"
HOUR = 3600.0
#: Noon (UTC) of a day in June 2025.
NOON = 1_750_000_000.0 - 1_750_000_000.0 % 86400 + 12 * HOUR


def local_client(endpoint: str) -> DynamoClient:
    return DynamoClient.open(AwsOptions(region="us-east-1", endpoint_url=endpoint),
                             clock=ManualClock())


def provisioned_table(make_table: Callable[..., str], table_units: tuple[int, int] = (5, 5),
                      index_units: tuple[int, int] = (3, 3)) -> str:
    """A provisioned table (read, write units) with one GSI of its own units."""
    return make_table(
        BillingMode="PROVISIONED",
        ProvisionedThroughput=units(*table_units),
        GlobalSecondaryIndexes=[{
            "IndexName": INDEX,
            "KeySchema": [{"AttributeName": "group", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
            "ProvisionedThroughput": units(*index_units),
        }],
    )


def units(read: int, write: int) -> dict[str, int]:
    return {"ReadCapacityUnits": read, "WriteCapacityUnits": write}


def capacity(dynamodb_client: Any, table: str) -> dict[str, tuple[int, int]]:
    """The (read, write) units of the table and of its GSI, as DynamoDB Local reports them."""
    description = dynamodb_client.describe_table(TableName=table)["Table"]
    found = {"table": description["ProvisionedThroughput"]}
    for index in description.get("GlobalSecondaryIndexes") or []:
        found[index["IndexName"]] = index["ProvisionedThroughput"]
    return {name: (int(t["ReadCapacityUnits"]), int(t["WriteCapacityUnits"]))
            for name, t in found.items()}


# --- against DynamoDB Local --------------------------------------------------------------------


def test_an_import_raises_the_table_and_gsi_writes_and_puts_them_back(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    table = provisioned_table(make_table)
    state = tmp_path / "capacity.json"
    notes: list[str] = []
    during: dict[str, Any] = {}

    async def job() -> None:
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, write=50, state=state, note=notes.append
        ) as raised:
            during["capacity"] = capacity(dynamodb_client, table)
            during["mode"] = stat.S_IMODE(state.stat().st_mode)
            during["saved"] = json.loads(state.read_bytes())
            during["changes"] = raised.changes

    asyncio.run(job())
    # Writes raised on the table and its GSI; read units untouched.
    assert during["capacity"] == {"table": (5, 50), INDEX: (3, 50)}
    assert during["mode"] == 0o600
    assert during["saved"]["version"] == STATE_VERSION
    assert {(c["index"], c["original"]["write"], c["raised"]["write"])
            for c in during["saved"]["throughput"]} == {(None, 5, 50), (INDEX, 3, 50)}
    assert during["changes"] is not None and len(during["changes"].throughput) == 2
    # Put back, and the state file is gone.
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}
    assert not state.exists()
    assert "table write 5 -> 50" in notes[0] and f"index '{INDEX}' write 3 -> 50" in notes[0]
    assert "capacity put back" in notes[-1] and "table write 50 -> 5" in notes[-1]


def test_an_export_raises_only_the_tables_reads(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    table = provisioned_table(make_table)
    during: dict[str, Any] = {}

    async def job() -> None:
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, read=40, state=tmp_path / "capacity.json", note=lambda _: None
        ):
            during["capacity"] = capacity(dynamodb_client, table)

    asyncio.run(job())
    assert during["capacity"] == {"table": (40, 5), INDEX: (3, 3)}  # GSIs are not scanned
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}


@pytest.mark.parametrize("failure", [RuntimeError("the job failed"), KeyboardInterrupt()],
                         ids=["error", "interrupt"])
def test_a_failing_job_gets_its_capacity_back_and_keeps_its_error(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path,
    failure: BaseException,
) -> None:
    table = provisioned_table(make_table)
    state = tmp_path / "capacity.json"

    async def job() -> None:
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, write=50, state=state, note=lambda _: None
        ):
            assert capacity(dynamodb_client, table)["table"] == (5, 50)
            raise failure

    with pytest.raises(type(failure)) as raised:
        asyncio.run(job())
    assert raised.value is failure
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}
    assert not state.exists()


def test_a_cancelled_job_gets_its_capacity_back(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    table = provisioned_table(make_table)
    state = tmp_path / "capacity.json"
    raised_seen: list[tuple[int, int]] = []

    async def scenario() -> None:
        started = asyncio.Event()

        async def job(client: DynamoClient) -> None:
            async with raised_capacity(client, table, write=50, state=state,
                                       note=lambda _: None):
                raised_seen.append(capacity(dynamodb_client, table)["table"])
                started.set()
                await asyncio.Event().wait()  # runs until cancelled

        async with local_client(dynamodb_local.endpoint) as client:
            task = asyncio.create_task(job(client))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert raised_seen == [(5, 50)]
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}
    assert not state.exists()


KILLED_JOB = """
import asyncio, os, sys
from pathlib import Path
from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient
from ddbpipe.provision import raised_capacity
from ddbpipe.retry import ManualClock

async def main(endpoint, table, state):
    options = AwsOptions(region="us-east-1", endpoint_url=endpoint)
    async with DynamoClient.open(options, clock=ManualClock()) as client:
        async with raised_capacity(client, table, write=50, state=Path(state)):
            os._exit(9)  # killed mid-job: no exit path runs

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_killed_job_is_put_back_from_its_state_file(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    table = provisioned_table(make_table)
    state = tmp_path / "capacity.json"
    killed = subprocess.run([sys.executable, "-c", KILLED_JOB, dynamodb_local.endpoint, table,
                             str(state)], env=os.environ.copy(), timeout=120, check=False)
    assert killed.returncode == 9
    assert capacity(dynamodb_client, table) == {"table": (5, 50), INDEX: (3, 50)}
    left_behind = state.read_bytes()

    async def resume() -> list[bool]:
        async with local_client(dynamodb_local.endpoint) as client:
            first = await restore_from_state(client, state, table=table, note=lambda _: None)
            # Again, with every value already back: nothing is sent (DynamoDB Local refuses
            # an UpdateTable to the current value, so a resend would fail).
            state.write_bytes(left_behind)
            again = await restore_from_state(client, state, table=table, note=lambda _: None)
            nothing = await restore_from_state(client, state, table=table)
            return [first, again, nothing]

    assert asyncio.run(resume()) == [True, True, False]
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}
    assert not state.exists()


def test_a_state_file_left_behind_is_put_back_before_raising_again(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    # As a killed run leaves it: raised to 50, the originals (5) written down.
    table = provisioned_table(make_table, table_units=(5, 50), index_units=(3, 3))
    state = tmp_path / "capacity.json"
    earlier = CapacityState(version=STATE_VERSION, table=table, region="us-east-1", throughput=[
        ThroughputChange(None, original={"read": 5, "write": 5}, raised={"write": 50})])
    state.write_bytes(msgspec.json.encode(earlier))
    during: list[dict[str, tuple[int, int]]] = []

    async def job() -> None:
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, write=20, state=state, note=lambda _: None
        ):
            during.append(capacity(dynamodb_client, table))

    asyncio.run(job())
    assert during == [{"table": (5, 20), INDEX: (3, 20)}]
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}  # not 50


def test_an_on_demand_table_is_left_alone_with_a_note(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    table = make_table(OnDemandThroughput={"MaxReadRequestUnits": 100,
                                           "MaxWriteRequestUnits": 200})
    state = tmp_path / "capacity.json"
    notes: list[str] = []

    async def job() -> Any:
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, write=50, state=state, note=notes.append
        ) as raised:
            return raised

    raised = asyncio.run(job())
    assert raised.on_demand and raised.changes is None
    assert not state.exists()
    assert len(notes) == 1
    assert "on-demand" in notes[0] and "nothing needs raising for --provision-wcu" in notes[0]
    assert "table 200 write request units/s" in notes[0]
    billing = dynamodb_client.describe_table(TableName=table)["Table"]["BillingModeSummary"]
    assert billing["BillingMode"] == "PAY_PER_REQUEST"


def test_capacity_already_above_n_is_never_lowered(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, tmp_path: Path
) -> None:
    table = provisioned_table(make_table, table_units=(5, 100), index_units=(3, 3))
    notes: list[str] = []
    during: list[dict[str, tuple[int, int]]] = []

    async def job() -> None:
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, write=50, state=tmp_path / "capacity.json", note=notes.append
        ):
            during.append(capacity(dynamodb_client, table))

    asyncio.run(job())
    assert during == [{"table": (5, 100), INDEX: (3, 50)}]
    assert capacity(dynamodb_client, table) == {"table": (5, 100), INDEX: (3, 3)}
    assert "left as it is: table write 100" in notes[0]


def test_a_bad_number_of_units_names_the_option(tmp_path: Path) -> None:
    dynamo = FakeDynamo()

    async def job() -> None:
        async with raised_capacity(dynamo.client(), "orders", write=0, state=tmp_path / "s"):
            pytest.fail("the job ran")

    with pytest.raises(ConfigError, match="--provision-wcu must be a whole number"):
        asyncio.run(job())
    assert dynamo.updates == []


# --- auto scaling, against moto ----------------------------------------------------------------


@pytest.fixture
def autoscaling(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's Application Auto Scaling (the same moto server as S3), reached the way ddbpipe
    finds a custom endpoint; returns a boto3 client to look at it with."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING", s3_server.endpoint)
    return boto3.client("application-autoscaling", endpoint_url=s3_server.endpoint,
                        region_name="us-east-1")


def scalable_range(autoscaling: Any, resource_id: str, dimension: str) -> tuple[int, int]:
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace="dynamodb", ResourceIds=[resource_id], ScalableDimension=dimension
    )["ScalableTargets"]
    return targets[0]["MinCapacity"], targets[0]["MaxCapacity"]


def register(autoscaling: Any, resource_id: str, dimension: str, low: int, high: int) -> None:
    autoscaling.register_scalable_target(
        ServiceNamespace="dynamodb", ResourceId=resource_id, ScalableDimension=dimension,
        MinCapacity=low, MaxCapacity=high,
    )


def test_auto_scaled_capacity_is_raised_through_its_scalable_target(
    dynamodb_local: Any, dynamodb_client: Any, make_table: Any, autoscaling: Any,
    tmp_path: Path,
) -> None:
    table = provisioned_table(make_table)
    on_table = (f"table/{table}", "dynamodb:table:WriteCapacityUnits")
    on_index = (f"table/{table}/index/{INDEX}", "dynamodb:index:WriteCapacityUnits")
    register(autoscaling, *on_table, 5, 20)  # a maximum below N is raised too
    register(autoscaling, *on_index, 3, 100)
    during: dict[str, Any] = {}

    async def job() -> None:
        factory = autoscaling_client_factory(AwsOptions(region="us-east-1"))
        async with local_client(dynamodb_local.endpoint) as client, raised_capacity(
            client, table, write=50, state=tmp_path / "capacity.json", autoscaling=factory,
            note=lambda _: None,
        ):
            during["ranges"] = [scalable_range(autoscaling, *on_table),
                                scalable_range(autoscaling, *on_index)]
            during["capacity"] = capacity(dynamodb_client, table)

    asyncio.run(job())
    assert during["ranges"] == [(50, 50), (50, 100)]
    # No UpdateTable: the scaler moves the capacity into its new range, not ddbpipe.
    assert during["capacity"] == {"table": (5, 5), INDEX: (3, 3)}
    assert scalable_range(autoscaling, *on_table) == (5, 20)
    assert scalable_range(autoscaling, *on_index) == (3, 100)


def test_a_killed_jobs_scalable_target_is_put_back_from_its_state_file(
    dynamodb_local: Any, make_table: Any, autoscaling: Any, tmp_path: Path
) -> None:
    table = provisioned_table(make_table)
    on_table = (f"table/{table}", "dynamodb:table:ReadCapacityUnits")
    register(autoscaling, *on_table, 40, 100)  # as a killed export left it
    state = tmp_path / "capacity.json"
    state.write_bytes(msgspec.json.encode(CapacityState(
        version=STATE_VERSION, table=table, region="us-east-1",
        scaling=[ScalingChange(*on_table, min_capacity=5, max_capacity=100, raised_min=40,
                               raised_max=100)],
    )))

    async def resume() -> bool:
        factory = autoscaling_client_factory(AwsOptions(region="us-east-1"))
        async with local_client(dynamodb_local.endpoint) as client:
            return await restore_from_state(client, state, autoscaling=factory,
                                            note=lambda _: None)

    assert asyncio.run(resume())
    assert scalable_range(autoscaling, *on_table) == (5, 100)
    assert not state.exists()


# --- what DynamoDB Local does not do: count decreases, refuse them ---------------------------


class FakeDynamo:
    """One provisioned table with a GSI, served in process: DescribeTable with the decrease
    counters given, UpdateTable applied at once (or a decrease refused, as DynamoDB does
    past its daily limit). ``updates`` holds every UpdateTable request."""

    def __init__(self, *, decreases_today: int = 0, last_decrease: float = 0.0) -> None:
        self.refuse_decreases = False
        self.updates: list[dict[str, Any]] = []
        counters = {"NumberOfDecreasesToday": decreases_today,
                    "LastDecreaseDateTime": last_decrease}
        self.table: dict[str, Any] = {
            "TableName": "orders", "TableStatus": "ACTIVE",
            "ProvisionedThroughput": {**units(5, 5), **counters},
            "GlobalSecondaryIndexes": [{"IndexName": INDEX, "IndexStatus": "ACTIVE",
                                        "ProvisionedThroughput": {**units(3, 3), **counters}}],
        }

    def client(self, clock: ManualClock | None = None) -> DynamoClient:
        return DynamoClient(
            region="us-east-1", endpoint="https://dynamodb.us-east-1.amazonaws.com",
            credentials=Credentials("ddbpipelocal", "ddbpipelocal"),
            retry=RetryPolicy(max_attempts=1), transport=MockTransport(self.handle),
            clock=clock or ManualClock(),
        )

    def handle(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        action = headers["X-Amz-Target"].rsplit(".", 1)[-1]
        request = json.loads(body)
        if action == "DescribeTable":
            return reply(200, {"Table": self.table})
        assert action == "UpdateTable", action
        self.updates.append(request)
        changes = [(self.table, request.get("ProvisionedThroughput"))] + [
            (self.table["GlobalSecondaryIndexes"][0], u["Update"]["ProvisionedThroughput"])
            for u in request.get("GlobalSecondaryIndexUpdates") or []
        ]
        for part, wanted in changes:
            current = part["ProvisionedThroughput"]
            if wanted and self.refuse_decreases and any(wanted[k] < current[k] for k in wanted):
                return reply(400, {
                    "__type": "com.amazonaws.dynamodb.v20120810#LimitExceededException",
                    "message": "Subscriber limit exceeded: Provisioned throughput decreases "
                               "are limited within a given UTC day",
                })
            if wanted:
                current.update(wanted)
        return reply(200, {"TableDescription": self.table})

    def capacity(self) -> dict[str, tuple[int, int]]:
        parts = {"table": self.table, INDEX: self.table["GlobalSecondaryIndexes"][0]}
        return {name: (part["ProvisionedThroughput"]["ReadCapacityUnits"],
                       part["ProvisionedThroughput"]["WriteCapacityUnits"])
                for name, part in parts.items()}


def reply(status: int, document: dict[str, Any]) -> HttpReply:
    return HttpReply(status, {}, json.dumps(document).encode())


def test_a_put_back_refused_after_a_good_job_is_one_error_and_resume_finishes_it(
    tmp_path: Path,
) -> None:
    dynamo, state = FakeDynamo(), tmp_path / "capacity.json"

    async def job() -> None:
        async with raised_capacity(dynamo.client(), "orders", write=50, state=state,
                                   note=lambda _: None):
            dynamo.refuse_decreases = True  # e.g. someone else used today's decreases

    with pytest.raises(AwsRequestError) as refused:
        asyncio.run(job())
    message = str(refused.value)
    assert "\n" not in message
    assert "the capacity of table 'orders' was not put back" in message
    assert "LimitExceededException" in message and "--resume" in message
    assert ("aws dynamodb update-table --region us-east-1 --table-name orders "
            "--provisioned-throughput ReadCapacityUnits=5,WriteCapacityUnits=5") in message
    assert "--global-secondary-index-updates" in message
    assert state.exists() and dynamo.capacity() == {"table": (5, 50), INDEX: (3, 50)}

    dynamo.refuse_decreases = False  # a later --resume
    assert asyncio.run(restore_from_state(dynamo.client(), state, note=lambda _: None))
    assert dynamo.capacity() == {"table": (5, 5), INDEX: (3, 3)}
    assert not state.exists()


def test_a_put_back_refused_after_a_failed_job_is_a_warning_and_the_jobs_error_stays(
    tmp_path: Path,
) -> None:
    dynamo, state = FakeDynamo(), tmp_path / "capacity.json"
    notes: list[str] = []

    async def job() -> None:
        async with raised_capacity(dynamo.client(), "orders", write=50, state=state,
                                   note=notes.append):
            dynamo.refuse_decreases = True
            raise RuntimeError("the job failed")

    with pytest.raises(RuntimeError, match="the job failed"):
        asyncio.run(job())
    assert "the capacity of table 'orders' was not put back" in notes[-1]
    assert state.exists()


def test_the_originals_are_written_down_before_the_first_update(tmp_path: Path) -> None:
    dynamo, state = FakeDynamo(), tmp_path / "capacity.json"
    written_before_update: list[Any] = []
    handle = dynamo.handle

    def watching(url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        if headers["X-Amz-Target"].endswith(".UpdateTable") and not written_before_update:
            written_before_update.append(json.loads(state.read_bytes()) if state.exists()
                                         else None)
        return handle(url, body, headers)

    dynamo.handle = watching  # type: ignore[method-assign]

    async def job() -> None:
        async with raised_capacity(dynamo.client(), "orders", write=50, state=state,
                                   note=lambda _: None):
            pass

    asyncio.run(job())
    saved = written_before_update[0]
    assert saved is not None and saved["table"] == "orders"
    assert [(c["index"], c["original"]) for c in saved["throughput"]] == [
        (None, {"read": 5, "write": 5}), (INDEX, {"read": 3, "write": 3})]


def test_restore_from_state_refuses_another_tables_state_file(tmp_path: Path) -> None:
    dynamo, state = FakeDynamo(), tmp_path / "capacity.json"
    state.write_bytes(msgspec.json.encode(CapacityState(
        version=STATE_VERSION, table="orders", region="us-east-1")))
    with pytest.raises(ResumeError, match="is for table 'orders' in us-east-1, not 'invoices'"):
        asyncio.run(restore_from_state(dynamo.client(), state, table="invoices"))
    assert state.exists() and dynamo.updates == []


def test_a_raise_whose_put_back_could_be_refused_today_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    clock = ManualClock(wall_start=NOON)
    dynamo = FakeDynamo(decreases_today=4, last_decrease=clock.time() - 600)
    state = tmp_path / "capacity.json"

    async def job() -> None:
        async with raised_capacity(dynamo.client(clock), "orders", write=50, state=state):
            pytest.fail("the job ran")

    with pytest.raises(ConfigError) as refused:
        asyncio.run(job())
    message = str(refused.value)
    assert "table 'orders'" in message and "--provision-anyway" in message
    assert "decreased 4 times today" in message and "nothing was raised" in message
    assert dynamo.updates == [] and not state.exists()


def test_the_decrease_limit_can_be_overridden_with_a_warning(tmp_path: Path) -> None:
    clock = ManualClock(wall_start=NOON)
    dynamo = FakeDynamo(decreases_today=4, last_decrease=clock.time() - 600)
    notes: list[str] = []
    during: list[dict[str, tuple[int, int]]] = []

    async def job() -> None:
        async with raised_capacity(dynamo.client(clock), "orders", write=50,
                                   state=tmp_path / "capacity.json", note=notes.append,
                                   despite_decrease_limit=True):
            during.append(dynamo.capacity())

    asyncio.run(job())
    assert during == [{"table": (5, 50), INDEX: (3, 50)}]
    assert "raising anyway (--provision-anyway)" in notes[0]
    assert dynamo.capacity() == {"table": (5, 5), INDEX: (3, 3)}


# The rule: 4 decreases at any time in a UTC day, then one after each hour without one.
@pytest.mark.parametrize(("count", "last", "expected"), [
    (3, NOON - 60, None),  # a free decrease left today
    (4, NOON - 600, NOON - 600 + HOUR),  # the last one ten minutes ago: in 50 minutes
    (4, NOON - 2 * HOUR, None),  # an hour without a decrease gives one more
    (26, NOON - 60, NOON - 60 + HOUR),
    (9, NOON - 13 * HOUR, None),  # counted yesterday: a new UTC day starts again
    (0, 0.0, None),  # never decreased (DynamoDB Local reports 1970)
])
def test_next_decrease_at_follows_dynamodbs_daily_rule(
    count: int, last: float, expected: float | None
) -> None:
    throughput = {"NumberOfDecreasesToday": count, "LastDecreaseDateTime": last}
    assert next_decrease_at(throughput, NOON) == expected


def test_next_decrease_at_never_waits_past_midnight() -> None:
    late = NOON + 11.5 * HOUR  # 23:30 UTC
    throughput = {"NumberOfDecreasesToday": 5, "LastDecreaseDateTime": late - 60}
    assert next_decrease_at(throughput, late) == NOON + 12 * HOUR
