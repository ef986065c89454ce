"""``--provision-rcu`` / ``--provision-wcu``: the bad inputs and refusals a user meets, as the
``ddbpipe`` command shows them (one line, its exit code) and what each leaves behind. The
rows of docs/ERRORS.md that name these tests say what each refusal reads.

The refusals of AWS come from ``tools.recording_endpoint`` in front of DynamoDB Local: an
UpdateTable refused as access denied, and a DescribeTable answered with decrease counters
DynamoDB Local never reports (four decreases today, the last ten minutes ago).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ddbpipe
from ddbpipe.errors import ResumeError
from ddbpipe.provision import STATE_VERSION, restore_from_state
from tests.exports import plain_items
from tests.test_provision import INDEX, FakeDynamo, capacity, provisioned_table
from tools.recording_endpoint import RecordingEndpoint, start_recording_endpoint

DDBPIPE = [sys.executable, "-m", "ddbpipe.cli.main"]
DENIED = ("User: arn:aws:sts::111122223333:assumed-role/restore/x is not authorized to perform: "
          "dynamodb:UpdateTable on resource: arn:aws:dynamodb:us-east-1:111122223333:table/t "
          "because no identity-based policy allows it")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DDBPIPE, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line on stderr (after the job's own log lines, which are not errors)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


@pytest.fixture
def export(tmp_path: Path, endpoint: str, make_table: Any) -> Path:
    dest = tmp_path / "export"
    ddbpipe.export_table(make_table(plain_items(20)), str(dest), endpoint_url=endpoint)
    return dest


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The current folder of the command: where its checkpoint and state files go."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(("command", "option", "value"), [
    ("import", "--provision-wcu", "0"), ("export", "--provision-rcu", "-3")],
    ids=["wcu-zero", "rcu-negative"])
def test_a_number_of_units_below_1_is_bad_usage(
    tmp_path: Path, work: Path, command: str, option: str, value: str
) -> None:
    where = [str(tmp_path / "source"), "orders"] if command == "import" else [
        "orders", str(tmp_path / "dest")]
    result = run(command, *where, option, value, "--endpoint-url", "http://127.0.0.1:9",
                 cwd=work)
    assert result.returncode == 2
    assert error_line(result).startswith(
        f"error: Invalid value for '{option}': Input should be greater than or equal to 1; "
        f"see ")
    assert list(work.iterdir()) == [] and not (tmp_path / "dest").exists()


def test_an_on_demand_table_needs_nothing_and_the_job_says_so(
    endpoint: str, export: Path, work: Path, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table()  # PAY_PER_REQUEST
    result = run("import", str(export), table, "--provision-wcu", "4000", "--endpoint-url",
                 endpoint, cwd=work)
    assert result.returncode == 0, result.stderr
    (note,) = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert note.endswith(f"WARNING table '{table}' is on-demand (PAY_PER_REQUEST): nothing "
                         "needs raising for --provision-wcu, DynamoDB adds capacity as the job "
                         "needs it")
    assert dynamodb_client.scan(TableName=table, Select="COUNT")["Count"] == 20
    assert list(work.iterdir()) == []  # no state file: nothing was raised


def decreased_today(table: str, throughput: dict[str, int]) -> dict[str, Any]:
    """DescribeTable's reply for ``table`` (keys pk S, provisioned) decreased four times
    today, the last a few minutes ago (never before today's 00:00 UTC)."""
    now = time.time()
    counters = {"NumberOfDecreasesToday": 4,
                "LastDecreaseDateTime": now - min(600.0, now % 86400 / 2)}
    return {"Table": {
        "TableName": table, "TableStatus": "ACTIVE",
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "BillingModeSummary": {"BillingMode": "PROVISIONED"},
        "ProvisionedThroughput": {**throughput, **counters}}}


def refused_raise(recorder: RecordingEndpoint, refusal: str, table: str) -> None:
    """Make the raise of ``table`` be refused, as ``refusal`` says."""
    if refusal == "update-table-denied":
        recorder.refuse_next("UpdateTable", status=400, code="AccessDeniedException",
                             message=DENIED)
    else:
        recorder.answer("DescribeTable", decreased_today(
            table, {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}))


def test_updatetable_denied_stops_the_import_before_anything_is_raised_or_written(
    endpoint: str, export: Path, work: Path, make_table: Any, dynamodb_client: Any
) -> None:
    table = provisioned_table(make_table)
    with start_recording_endpoint(endpoint) as dynamodb:
        refused_raise(dynamodb, "update-table-denied", table)
        result = run("import", str(export), table, "--provision-wcu", "50", "--endpoint-url",
                     dynamodb.endpoint, cwd=work)
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: could not raise the capacity of table '{table}' for the job (access denied for "
        f"dynamodb:UpdateTable on '{table}' (AccessDeniedException: {DENIED}): these "
        "credentials need dynamodb:UpdateTable; grant it or use another --profile): fix the "
        "cause, or run without --provision-wcu")
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}
    assert dynamodb_client.scan(TableName=table, Select="COUNT")["Count"] == 0
    assert not (work / f"ddbpipe-import-{table}.provision.json").exists()


def test_a_raise_the_daily_decrease_limit_could_not_put_back_is_refused_before_it_starts(
    endpoint: str, export: Path, work: Path, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table()  # what the import would write into; DescribeTable is answered
    with start_recording_endpoint(endpoint) as dynamodb:
        refused_raise(dynamodb, "decrease-limit", table)
        result = run("import", str(export), table, "--provision-wcu", "50", "--endpoint-url",
                     dynamodb.endpoint, cwd=work)
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"error: table '{table}': DynamoDB may refuse to put the capacity "
                           "back if the job ends too soon (4 decreases a day, then one an hour):"
                           " table was decreased 4 times today, the last at ")
    assert line.endswith("; nothing was raised: start the job later, or pass "
                         "--provision-anyway to raise anyway (--resume retries a refused "
                         "put-back)")
    assert "UpdateTable" not in {call.operation for call in dynamodb.calls()}
    assert dynamodb_client.scan(TableName=table, Select="COUNT")["Count"] == 0


@pytest.mark.parametrize("refusal", ["update-table-denied", "decrease-limit"])
def test_a_refused_raise_leaves_no_checkpoint_behind(
    endpoint: str, export: Path, work: Path, make_table: Any, refusal: str
) -> None:
    table = provisioned_table(make_table) if refusal == "update-table-denied" else make_table()
    with start_recording_endpoint(endpoint) as dynamodb:
        refused_raise(dynamodb, refusal, table)
        refused = run("import", str(export), table, "--provision-wcu", "50", "--endpoint-url",
                      dynamodb.endpoint, cwd=work)
    assert refused.returncode != 0
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(("saved", "says"), [
    (b"{not json", "is damaged"),
    (json.dumps({"version": STATE_VERSION + 1, "table": "orders", "region": "us-east-1"}).encode(),
     f"was written by a newer ddbpipe (version {STATE_VERSION + 1}): resume with that version"),
    (json.dumps({"version": STATE_VERSION, "table": "orders", "region": "eu-west-1"}).encode(),
     "is for table 'orders' in eu-west-1, not 'orders' in us-east-1: resume that job first"),
], ids=["damaged", "newer", "other-region"])
def test_a_state_file_that_cannot_be_put_back_is_one_line_and_kept(
    tmp_path: Path, saved: bytes, says: str
) -> None:
    dynamo, state = FakeDynamo(), tmp_path / "ddbpipe-import-orders.provision.json"
    state.write_bytes(saved)
    with pytest.raises(ResumeError) as refused:
        asyncio.run(restore_from_state(dynamo.client(), state, table="orders"))
    message = str(refused.value)
    assert "\n" not in message and f"the capacity state file {state}" in message
    assert says in message
    assert state.read_bytes() == saved and dynamo.updates == []
