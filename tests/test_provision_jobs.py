"""--provision-rcu / --provision-wcu on the jobs: raised while the job runs, put back after,
and a killed job's raise put back by the next run (DynamoDB Local)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ddbpipe
from tests.exports import plain_items
from tests.test_import import export, run
from tests.test_provision import INDEX, KILLED_JOB, capacity, provisioned_table


@contextmanager
def watching(read: Callable[[], dict[str, tuple[int, int]]]) -> Iterator[list[Any]]:
    """Every capacity seen while the block runs (DescribeTable every 20 ms)."""
    seen: list[Any] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            seen.append(read())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def test_an_import_raises_the_write_capacity_for_the_job_and_puts_it_back(
    tmp_path: Path, dynamodb_local: Any, dynamodb_client: Any, make_table: Any,
) -> None:
    source = make_table(plain_items(3000))
    dest = export(source, tmp_path / "export", dynamodb_local.endpoint, segments=2)
    target = provisioned_table(make_table)
    checkpoint = tmp_path / "import.checkpoint.json"
    with watching(lambda: capacity(dynamodb_client, target)) as seen:
        summary = ddbpipe.import_table(
            str(dest), target, provision_wcu=40_000, endpoint_url=dynamodb_local.endpoint,
            checkpoint=str(checkpoint))
    assert summary.items_written == 3000
    # Written at the raised capacity, which the table and its GSI held while the job ran.
    assert summary.target_wcu == 40_000
    assert {"table": (5, 40_000), INDEX: (3, 40_000)} in seen
    assert capacity(dynamodb_client, target) == {"table": (5, 5), INDEX: (3, 3)}
    assert not (tmp_path / f"ddbpipe-import-{target}.provision.json").exists()


def test_an_export_raises_the_read_capacity_for_the_job_and_puts_it_back(
    tmp_path: Path, dynamodb_local: Any, dynamodb_client: Any, make_table: Any,
    monkeypatch: Any,
) -> None:
    monkeypatch.chdir(tmp_path)  # where the export writes its provision state down
    table = provisioned_table(make_table)
    ddbpipe.import_table(  # some items to scan
        str(export(make_table(plain_items(2000)), tmp_path / "seed", dynamodb_local.endpoint,
                   segments=1)),
        table, target_wcu=40_000, endpoint_url=dynamodb_local.endpoint,
        checkpoint=str(tmp_path / "seed.checkpoint.json"))
    with watching(lambda: capacity(dynamodb_client, table)) as seen:
        summary = ddbpipe.export_table(table, str(tmp_path / "export"), provision_rcu=500,
                                       page_size=50, endpoint_url=dynamodb_local.endpoint)
    assert summary.items == 2000
    assert {"table": (500, 5), INDEX: (3, 3)} in seen  # GSIs are not scanned: left alone
    assert capacity(dynamodb_client, table) == {"table": (5, 5), INDEX: (3, 3)}
    assert not (tmp_path / f"ddbpipe-export-{table}.provision.json").exists()


def test_a_killed_jobs_raise_is_put_back_by_the_next_run_without_the_option(
    tmp_path: Path, dynamodb_local: Any, dynamodb_client: Any, make_table: Any,
) -> None:
    source = make_table(plain_items(50))
    dest = export(source, tmp_path / "export", dynamodb_local.endpoint, segments=1)
    target = provisioned_table(make_table)
    state = tmp_path / f"ddbpipe-import-{target}.provision.json"
    killed = subprocess.run([sys.executable, "-c", KILLED_JOB, dynamodb_local.endpoint, target,
                             str(state)], env=os.environ.copy(), timeout=120, check=False)
    assert killed.returncode == 9 and state.exists()
    assert capacity(dynamodb_client, target) == {"table": (5, 50), INDEX: (3, 50)}
    summary = ddbpipe.import_table(str(dest), target, target_wcu=1000,
                                   endpoint_url=dynamodb_local.endpoint,
                                   checkpoint=str(tmp_path / "import.checkpoint.json"))
    assert summary.items_written == 50
    assert capacity(dynamodb_client, target) == {"table": (5, 5), INDEX: (3, 3)}
    assert not state.exists()


def test_provision_anyway_without_a_provision_option_is_a_usage_error(
    tmp_path: Path,
) -> None:
    result = run("import", str(tmp_path), "some-table", "--provision-anyway",
                 "--endpoint-url", "http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --provision-anyway goes with --provision-wcu"]
    assert list(tmp_path.iterdir()) == []


def test_provision_wcu_sets_the_rate_of_a_provisioned_table_only() -> None:
    from ddbpipe.config import DEFAULT_ON_DEMAND_WCU, ImportOptions
    from ddbpipe.import_job import _choose_target_wcu

    options = ImportOptions(source="/tmp/x", table="orders", provision_wcu=50)
    provisioned = {"BillingModeSummary": {"BillingMode": "PROVISIONED"},
                   "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}}
    on_demand = {"BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
                 "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0}}
    assert _choose_target_wcu(options, provisioned) == 50
    # Nothing is raised on an on-demand table: its usual rate, not the 50 asked for raising.
    assert _choose_target_wcu(options, on_demand) == DEFAULT_ON_DEMAND_WCU
    # An on-demand table capped below the usual rate is written at its cap, as plan says.
    capped = {**on_demand, "OnDemandThroughput": {"MaxWriteRequestUnits": 300}}
    assert _choose_target_wcu(options, capped) == 300
