"""Jobs on a Dask cluster (``--cluster``): a LocalCluster of 2 worker processes, DynamoDB
Local, moto's S3 and the capacity simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import ddbpipe
from ddbpipe import cluster as cluster_module
from ddbpipe.config import AwsOptions, ExportOptions
from ddbpipe.errors import ConfigError, DdbpipeError
from ddbpipe.progress import JobProgress
from tests.exports import plain_items, read_local_export, scan_table, sorted_items
from tests.test_read_budget import assert_kept, export_through_the_simulator, windows_of

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """Two worker processes, one thread each, restarted by their nannies when killed."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
    ) as local, distributed.Client(local) as client:
        yield client


def test_cluster_values_are_checked_in_one_line() -> None:
    for good in ("local:2", "tcp://scheduler:8786", "tls://10.0.0.1:8786"):
        assert ExportOptions(table="t", destination="d", cluster=good).cluster == good
    for bad in ("local", "local:0", "local:x", "scheduler:8786", "http://host:8786", ""):
        with pytest.raises(ConfigError, match="--cluster takes local:N .* not "):
            ExportOptions(table="t", destination="d", cluster=bad)


def test_without_dask_a_cluster_is_one_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ConfigError, match=r"pip install 'ddbpipe\[dask\]'"):
        cluster_module._distributed()


def test_an_unreachable_scheduler_is_one_error(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = make_table(plain_items(5))
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT", 1)
    with pytest.raises(DdbpipeError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        ddbpipe.export_table(table, str(tmp_path / "e"), cluster="tcp://127.0.0.1:9",
                             endpoint_url=dynamodb_local.endpoint)
    assert not (tmp_path / "e" / "ddbpipe-manifest.json").exists()


@pytest.mark.parametrize("format", ["ndjson", "parquet"])
def test_an_export_on_the_cluster_holds_exactly_what_one_process_exports(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], dynamodb_client: Any,
    dask_cluster: Any, format: Any,
) -> None:
    table = make_table(plain_items(3000))
    single = ddbpipe.export_table(table, str(tmp_path / "one"), format=format, segments=8,
                                  endpoint_url=dynamodb_local.endpoint)
    progress = JobProgress()
    on_cluster = ddbpipe.export_table(
        table, str(tmp_path / "cluster"), format=format, segments=8, page_size=100,
        endpoint_url=dynamodb_local.endpoint, cluster=dask_cluster, progress=progress,
    )
    assert on_cluster.items == single.items == 3000
    assert on_cluster.segments == 8
    assert sorted_items(read_local_export(tmp_path / "cluster")) == sorted_items(
        read_local_export(tmp_path / "one")) == sorted_items(scan_table(dynamodb_client, table))
    # The driver's progress came from the workers, through the scheduler.
    assert (progress.items, progress.segments_done) == (3000, 8)
    assert progress.consumed_capacity == pytest.approx(on_cluster.consumed_rcu)


def test_an_export_to_s3_on_a_local_cluster_from_the_command_line(
    dynamodb_local: Any, s3_server: Any, s3_bucket: str, make_table: Callable[..., str],
    dynamodb_client: Any,
) -> None:
    table = make_table(plain_items(1500))
    destination = f"s3://{s3_bucket}/cluster-export"
    done = subprocess.run(
        [sys.executable, "-m", "ddbpipe.cli.main", "export", table, destination,
         "--format", "parquet", "--cluster", "local:2", "--json",
         "--endpoint-url", dynamodb_local.endpoint, "--s3-endpoint-url", s3_server.endpoint],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    report = ddbpipe.verify_export(destination, read_data=True, against_table=table,
                                   endpoint_url=dynamodb_local.endpoint,
                                   s3_endpoint_url=s3_server.endpoint)
    assert report.ok, report
    assert report.items == 1500


def test_max_rcu_holds_for_the_whole_cluster(
    tmp_path: Path, make_table: Callable[..., str], capacity_simulator: Any, dask_cluster: Any,
) -> None:
    # 4 tasks at once on 2 workers, ~1.5 RCU pages, 30 RCU/s for the cluster: about ten
    # seconds of budget.
    max_rcu = 30.0
    _, _, per_second = export_through_the_simulator(
        tmp_path, make_table, capacity_simulator, max_rcu, segments=8, cluster=dask_cluster)
    # From the first read to the last: the cluster's start-up is not the budget's to fill.
    busy = per_second[-1][0] + 1 - per_second[0][0]
    windows = windows_of(per_second, busy)
    assert_kept(replace(windows, largest_call=2 * 1.5 * 10), max_rcu, exact=False)
    assert windows.average >= 0.9 * max_rcu, windows


def test_a_worker_killed_mid_export_leaves_the_export_exact(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], dynamodb_client: Any,
    dask_cluster: Any,
) -> None:
    table = make_table(plain_items(4000))
    pids = dask_cluster.run(os.getpid)
    progress = JobProgress()
    killed: list[int] = []

    def kill_one_worker_once_items_flow() -> None:
        deadline = time.monotonic() + 60
        while progress.items < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    killer = threading.Thread(target=kill_one_worker_once_items_flow)
    killer.start()
    options = ExportOptions(
        table=table, destination=str(tmp_path / "export"), segments=16, page_size=25,
        max_rcu=400, aws=AwsOptions(endpoint_url=dynamodb_local.endpoint),
        cluster=dask_cluster.scheduler.address,
    )
    summary = ddbpipe.export_table(options, progress=progress)
    killer.join()
    assert killed, "the worker was not killed"
    assert summary.items == 4000
    exported = read_local_export(tmp_path / "export")
    assert len(exported) == 4000, "no item lost or written twice"
    assert sorted_items(exported) == sorted_items(scan_table(dynamodb_client, table))
