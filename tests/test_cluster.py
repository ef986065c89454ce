"""Jobs on a Dask cluster (``--cluster``): a LocalCluster of 2 worker processes, DynamoDB
Local, moto's S3 and the capacity simulator."""

from __future__ import annotations

import json
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
from tests.conftest import unique_table_name
from tests.exports import plain_items, read_local_export, scan_table, sorted_items
from tests.test_import import export, table_items, write_loose
from tests.test_read_budget import (
    assert_kept,
    export_through_the_simulator,
    kilobyte_items,
    windows_of,
)

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """Two worker processes of two task threads each, restarted by their nannies when killed."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
    ) as local, distributed.Client(local) as client:
        yield client


class WorkerKiller(threading.Thread):
    """SIGKILLs one of the cluster's worker processes once the job wrote ``after_items``
    (its nanny starts a new one; Dask runs the lost tasks again)."""

    def __init__(self, client: Any, progress: JobProgress, *, after_items: int) -> None:
        super().__init__()
        self.victim = next(iter(client.run(os.getpid).values()))
        self.progress, self.after_items = progress, after_items
        self.killed = False
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while self.progress.items < self.after_items and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(self.victim, signal.SIGKILL)
        self.killed = True

    def assert_killed(self) -> None:
        self.join()
        assert self.killed, "the worker was not killed"


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


@pytest.mark.parametrize("on_cluster", [False, True], ids=["one process", "cluster"])
def test_an_exports_progress_counts_each_throttled_read(
    tmp_path: Path, make_table: Callable[..., str], capacity_simulator: Any, dask_cluster: Any,
    on_cluster: bool,
) -> None:
    # No --max-rcu on a table that takes 30 RCU/s: the Scan is throttled and retried.
    table = make_table(kilobyte_items(400))
    capacity_simulator.configure(table, wcu=10_000, rcu=30)
    progress = JobProgress()
    summary = ddbpipe.export_table(
        table, str(tmp_path / "export"), page_size=10, segments=4,
        endpoint_url=capacity_simulator.endpoint, progress=progress,
        cluster=dask_cluster if on_cluster else None,
    )
    throttled = capacity_simulator.stats(table).throttled_reads
    assert summary.items == 400 and throttled > 0
    assert progress.throttles == throttled


def test_a_worker_killed_mid_export_leaves_the_export_exact(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], dynamodb_client: Any,
    dask_cluster: Any,
) -> None:
    table = make_table(plain_items(4000))
    progress = JobProgress()
    killer = WorkerKiller(dask_cluster, progress, after_items=500)
    options = ExportOptions(
        table=table, destination=str(tmp_path / "export"), segments=16, page_size=25,
        max_rcu=400, aws=AwsOptions(endpoint_url=dynamodb_local.endpoint),
        cluster=dask_cluster.scheduler.address,
    )
    summary = ddbpipe.export_table(options, progress=progress)
    killer.assert_killed()
    assert summary.items == 4000
    exported = read_local_export(tmp_path / "export")
    assert len(exported) == 4000, "no item lost or written twice"
    assert sorted_items(exported) == sorted_items(scan_table(dynamodb_client, table))


# --- import -------------------------------------------------------------------------------------


def test_an_import_on_the_cluster_writes_exactly_the_source(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], dynamodb_client: Any,
    dask_cluster: Any,
) -> None:
    source_table = make_table(plain_items(3000))
    dest = export(source_table, tmp_path / "export", dynamodb_local.endpoint, segments=6,
                  format="parquet")
    target = unique_table_name()
    progress = JobProgress()
    summary = ddbpipe.import_table(
        str(dest), target, create_table=True, endpoint_url=dynamodb_local.endpoint,
        checkpoint=str(tmp_path / "import.checkpoint.json"), cluster=dask_cluster,
        progress=progress,
    )
    try:
        assert (summary.items_read, summary.items_written, summary.items_dead_lettered) == (
            3000, 3000, 0)
        assert summary.files == 6 and summary.created_table
        assert table_items(dynamodb_client, target) == table_items(dynamodb_client,
                                                                   source_table)
        assert (progress.items, progress.files_done) == (3000, 6)
        assert summary.consumed_wcu == pytest.approx(3000, rel=0.01)
        assert not (tmp_path / "import.checkpoint.json").exists()
    finally:
        dynamodb_client.delete_table(TableName=target)


def test_target_wcu_holds_for_the_whole_cluster(
    tmp_path: Path, dynamodb_local: Any, capacity_simulator: Any, make_table: Any,
    dynamodb_client: Any, dask_cluster: Any,
) -> None:
    # ~1 KB items: one WCU each; far more capacity than asked, so the simulator only meters.
    items = [{"pk": {"S": f"k{i:05d}"}, "pad": {"S": "p" * 990}} for i in range(2400)]
    dest = export(make_table(items), tmp_path / "export", dynamodb_local.endpoint, segments=8)
    target = make_table()
    capacity_simulator.configure(target, wcu=100_000, partitions=100)
    target_wcu = 300.0
    summary = ddbpipe.import_table(
        str(dest), target, target_wcu=target_wcu, endpoint_url=capacity_simulator.endpoint,
        checkpoint=str(tmp_path / "import.checkpoint.json"), cluster=dask_cluster,
    )
    assert summary.items_written == 2400 and summary.throttled_requests == 0
    per_second = sorted((float(s), units) for s, units in
                        capacity_simulator.stats(target).wcu_per_second)
    # Whole seconds from the second after the first write to the one before the last.
    inner = [(second, units) for second, units in per_second
             if per_second[0][0] < second < per_second[-1][0]]
    windows = windows_of(inner, len(inner))
    assert len(inner) >= 4, per_second
    assert 0.9 * target_wcu <= windows.average <= 1.1 * target_wcu, per_second
    assert windows.worst_five_seconds <= 1.1 * 5 * target_wcu, per_second


def test_a_hot_partition_on_the_cluster_loses_nothing_and_its_rate_does_not_collapse(
    tmp_path: Path, dynamodb_local: Any, capacity_simulator: Any, make_table: Any,
    dynamodb_client: Any, dask_cluster: Any,
) -> None:
    # The hot-partition scenario, smaller: 30% of ~1 KB items under one partition key, a
    # 400 WCU/s table of 4 partitions, a target five times that. The benchmark measures how
    # close to the busiest partition's time it ends (benchmarks/import_bench.py --cluster).
    items = [{"pk": {"S": "hot" if i % 10 < 3 else f"cold{i:05d}"}, "sk": {"N": str(i)},
              "pad": {"S": "p" * 980}} for i in range(1200)]
    source_table = make_table(items, range_key=("sk", "N"))
    dest = export(source_table, tmp_path / "export", dynamodb_local.endpoint, segments=4)
    target = make_table(range_key=("sk", "N"))
    capacity_simulator.configure(target, wcu=400, partitions=4)
    summary = ddbpipe.import_table(
        str(dest), target, target_wcu=2000, endpoint_url=capacity_simulator.endpoint,
        checkpoint=str(tmp_path / "import.checkpoint.json"), cluster=dask_cluster,
    )
    stats = capacity_simulator.stats(target)
    assert (summary.items_written, summary.items_dead_lettered) == (1200, 0)
    assert table_items(dynamodb_client, target) == table_items(dynamodb_client, source_table)
    # A collapse is the one rate cut to its floor (20 WCU/s here) and held there; the hot
    # partition alone takes 100 WCU/s, so the table takes at least that while it has work.
    per_second = [units for _, units in stats.wcu_per_second][1:-1]
    assert len(per_second) >= 3, stats.wcu_per_second
    assert sum(per_second) / len(per_second) >= 100, stats.wcu_per_second
    assert stats.items_throttled <= 0.5 * stats.items_accepted, stats


def test_a_worker_killed_mid_import_leaves_the_table_exact_and_each_dead_letter_once(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], dynamodb_client: Any,
    dask_cluster: Any,
) -> None:
    folder = tmp_path / "loose"
    items = plain_items(4000)
    big = [{"pk": {"S": f"too-big-{n}"}, "blob": {"S": "x" * 420_000}} for n in range(4)]
    for number in range(4):  # four files, each with a bad item in its middle
        part = items[number * 1000:(number + 1) * 1000]
        write_loose(folder / f"part-{number}.json", [*part[:500], big[number], *part[500:]])
    target = make_table()
    progress = JobProgress()
    killer = WorkerKiller(dask_cluster, progress, after_items=600)
    dead_letter = tmp_path / "dead.jsonl"
    summary = ddbpipe.import_table(
        str(folder), target, target_wcu=1500, endpoint_url=dynamodb_local.endpoint,
        checkpoint=str(tmp_path / "import.checkpoint.json"), dead_letter=str(dead_letter),
        cluster=dask_cluster.scheduler.address, progress=progress,
    )
    killer.assert_killed()
    # The same items put by boto3: DynamoDB's own form of each (numbers, for one).
    assert table_items(dynamodb_client, target) == table_items(dynamodb_client,
                                                               make_table(items))
    letters = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    assert sorted(letter["Item"]["pk"]["S"] for letter in letters) == [
        f"too-big-{n}" for n in range(4)]
    assert summary.items_dead_lettered == 4


def test_a_driver_killed_mid_export_resumes_exactly_and_leaves_no_task_writing(
    tmp_path: Path, dynamodb_local: Any, make_table: Callable[..., str], dynamodb_client: Any,
) -> None:
    table = make_table(plain_items(3000))
    dest = tmp_path / "export"
    driver = subprocess.Popen(
        [sys.executable, "-m", "ddbpipe.cli.main", "export", table, str(dest), "--cluster",
         "local:2", "--segments", "16", "--page-size", "25", "--max-rcu", "60",
         "--endpoint-url", dynamodb_local.endpoint],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state = dest / "_ddbpipe-state"
    deadline = time.monotonic() + 120
    while len(list(state.glob("segment-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)  # the driver, and the scheduler it ran, die at once
    driver.wait()
    assert not (dest / "ddbpipe-manifest.json").exists(), "killed before it finished"
    # The orphaned workers' tasks stop at their next report: nothing changes after that.
    time.sleep(3)
    before = {path: path.stat().st_mtime_ns for path in dest.rglob("*") if path.is_file()}
    time.sleep(2)
    after = {path: path.stat().st_mtime_ns for path in dest.rglob("*") if path.is_file()}
    assert after == before, "a task of the killed job went on writing"
    summary = ddbpipe.export_table(table, str(dest), resume=True,
                                   endpoint_url=dynamodb_local.endpoint)
    assert summary.items == 3000 and summary.resumed
    assert sorted_items(read_local_export(dest)) == sorted_items(
        scan_table(dynamodb_client, table))


def test_a_jobs_account_goes_with_its_driver(dask_cluster: Any) -> None:
    from ddbpipe.capacity_plugin import CapacityPlugin

    address = dask_cluster.scheduler.address
    dask_cluster.register_plugin(CapacityPlugin())
    with distributed.Client(address) as driver:
        driver.sync(driver.scheduler.ddbpipe_capacity, action="open", job="j1",
                    driver=driver.id)
        status = dask_cluster.sync(dask_cluster.scheduler.ddbpipe_capacity, action="status",
                                   job="j1")
        assert status["totals"]["items"] == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the scheduler hears of the client leaving
        try:
            dask_cluster.sync(dask_cluster.scheduler.ddbpipe_capacity, action="status",
                              job="j1")
        except LookupError as error:
            assert "its driver has ended" in str(error)
            return
        time.sleep(0.1)
    raise AssertionError("the account outlived its driver")


def test_an_import_from_s3_on_the_cluster_writes_exactly_the_source(
    tmp_path: Path, dynamodb_local: Any, s3_server: Any, s3_bucket: str,
    make_table: Callable[..., str], dynamodb_client: Any, dask_cluster: Any,
) -> None:
    source_table = make_table(plain_items(2000))
    source = f"s3://{s3_bucket}/for-the-cluster"
    ddbpipe.export_table(source_table, source, segments=4, endpoint_url=dynamodb_local.endpoint,
                         s3_endpoint_url=s3_server.endpoint)
    target = make_table()
    summary = ddbpipe.import_table(
        source, target, endpoint_url=dynamodb_local.endpoint, s3_endpoint_url=s3_server.endpoint,
        checkpoint=str(tmp_path / "import.checkpoint.json"), cluster=dask_cluster,
    )
    assert (summary.items_written, summary.files) == (2000, 4)
    assert table_items(dynamodb_client, target) == table_items(dynamodb_client, source_table)
