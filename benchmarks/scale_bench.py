"""Scaling out: client-bound export and import on 1 and 2 Dask workers, and the cluster budget.

DynamoDB Local would cap the client (it scans about 1,100 items/s here), so every job talks
to ``tools/instant_dynamodb.py`` in a process of its own: Scan pages built once and served
from memory, every BatchWriteItem accepted without being read. The work measured is the
client's: Scan pages -> Parquet shards on the local disk (export), Parquet shards -> batches
(import).

- **Throughput**: the same Parquet export (``--segments`` fixed) and import, on a
  ``LocalCluster`` of 1 worker process and of 2 (4 task threads each), alternated run by run;
  both clusters are started (and warmed up by one small job) before any run is timed, so
  start-up is not measured. items/s per run; the efficiency is the median on 2 workers over
  the median on 1 (the goal: at least 1.7x on this 2-core machine, where the endpoint and the
  driver share the cores with the workers).
- **Budget**: an export at ``--max-rcu`` and an import at ``--target-wcu`` on 2 workers; the
  endpoint meters the read units its pages reported and the items written, per second of its
  clock. Reported: the rate over the inner seconds (from the second after the first call to
  the one before the last) against the budget (goal: within 5%), and the busiest 5 s window.

    python benchmarks/scale_bench.py --items 400000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ddbpipe  # noqa: E402
from tools import services  # noqa: E402

TABLE = "scale-bench"
SEGMENTS = 16


def start_endpoint(items: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "instant_dynamodb.py"), "--items", str(items)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def endpoint_stats(endpoint: str) -> dict[str, list[tuple[int, float]]]:
    request = urllib.request.Request(endpoint, data=b"{}", headers={
        "X-Amz-Target": "DynamoDB_20120810.InstantStats",
        "Content-Type": "application/x-amz-json-1.0"})
    with urllib.request.urlopen(request) as reply:
        stats: dict[str, list[tuple[int, float]]] = json.loads(reply.read())
    return stats


def export_parquet(endpoint: str, dest: Path, cluster: str | None, **settings: Any) -> Any:
    settings.setdefault("segments", SEGMENTS)
    return ddbpipe.export_table(TABLE, str(dest), format="parquet", endpoint_url=endpoint,
                                cluster=cluster, **settings)


def import_parquet(endpoint: str, source: Path, work: Path, cluster: str | None,
                   target_wcu: float = 10_000_000) -> Any:
    checkpoint = work / "import.checkpoint.json"
    checkpoint.unlink(missing_ok=True)
    return ddbpipe.import_table(str(source), "scale-bench-copy", target_wcu=target_wcu,
                                endpoint_url=endpoint, cluster=cluster,
                                checkpoint=str(checkpoint),
                                dead_letter=str(work / "import.dead-letter.jsonl"))


def rate_over_inner_seconds(metered: list[tuple[int, float]]) -> tuple[float, float, int]:
    """The mean per second between the first and last metered seconds (both left out), the
    busiest 5 s window, and how many inner seconds there were."""
    per_second = dict(metered)
    first, last = min(per_second), max(per_second)
    inner = [per_second.get(second, 0.0) for second in range(first + 1, last)]
    windows = [sum(inner[start:start + 5]) / 5 for start in range(len(inner) - 4)]
    return statistics.mean(inner), max(windows, default=float("nan")), len(inner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-rcu", type=float, default=1000.0)
    parser.add_argument("--target-wcu", type=float, default=15_000.0)
    parser.add_argument("--no-throughput", dest="throughput", action="store_false",
                        help="measure the budget only")
    args = parser.parse_args()

    import distributed

    services.use_local_credentials()
    process, endpoint = start_endpoint(args.items)
    clusters = {workers: distributed.LocalCluster(
        n_workers=workers, threads_per_worker=4, processes=True, dashboard_address=None,
        silence_logs=logging.ERROR)
        for workers in (1, 2)}
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ddbpipe-scale-") as scratch:
            work = Path(scratch)
            source = work / "source"
            started = time.perf_counter()
            export_parquet(endpoint, source, None)
            print(f"{args.items:,} items exported once in one process "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
            for workers, cluster in clusters.items():  # warm-up: imports, first tasks
                export_parquet(endpoint, work / f"warm-{workers}", cluster.scheduler_address)
            for run in range(args.runs if args.throughput else 0):
                for workers, cluster in clusters.items():
                    address = cluster.scheduler_address
                    summary = export_parquet(endpoint, work / f"e-{run}-{workers}", address)
                    assert summary.items == args.items, summary
                    rates.setdefault(("export", workers), []).append(
                        summary.items / summary.seconds)
                    done = import_parquet(endpoint, source, work, address)
                    assert done.items_written == args.items, done
                    rates.setdefault(("import", workers), []).append(
                        done.items_written / done.seconds)
                    print(json.dumps({"run": run, "workers": workers,
                                      "export_items_per_s": round(rates["export", workers][-1]),
                                      "import_items_per_s": round(rates["import", workers][-1])}),
                          flush=True)
            budget = measure_budget(endpoint, work, source,
                                    clusters[2].scheduler_address, args)
    finally:
        for cluster in clusters.values():
            cluster.close()
        process.terminate()
        process.wait()
    report(rates, budget, args)


def measure_budget(endpoint: str, work: Path, source: Path, address: str,
                   args: argparse.Namespace) -> dict[str, tuple[float, float, int]]:
    before = endpoint_stats(endpoint)
    # The segments a cluster job plans by default (four per task thread): the budget, not a
    # long tail of a few last segments, should set the pace.
    export_parquet(endpoint, work / "budget-export", address, max_rcu=args.max_rcu,
                   page_size=100, segments=None)
    after_export = endpoint_stats(endpoint)
    import_parquet(endpoint, source, work, address, target_wcu=args.target_wcu)
    after_import = endpoint_stats(endpoint)

    def since(earlier: dict[str, Any], later: dict[str, Any], name: str) -> list[Any]:
        old = dict(map(tuple, earlier[name]))
        return [(second, units - old.get(second, 0.0)) for second, units in later[name]
                if units - old.get(second, 0.0) > 0]

    reads = since(before, after_export, "read_units")
    writes = since(after_export, after_import, "written")
    for job, metered in (("export", reads), ("import", writes)):
        print(f"{job} per second: " + " ".join(f"{units:,.0f}" for _, units in metered),
              flush=True)
    return {"export": rate_over_inner_seconds(reads), "import": rate_over_inner_seconds(writes)}


def report(rates: dict[tuple[str, int], list[float]],
           budget: dict[str, tuple[float, float, int]], args: argparse.Namespace) -> None:
    print()
    print(f"Throughput, items/s (median of {args.runs}; the runs in parentheses):")
    print()
    print("| job | 1 worker | 2 workers | 2 over 1 |")
    print("|---|---:|---:|---:|")
    for job in ("export", "import") if rates else ():
        one, two = rates[job, 1], rates[job, 2]
        print(f"| Parquet {job} | {statistics.median(one):,.0f} "
              f"({' / '.join(f'{r:,.0f}' for r in one)}) | {statistics.median(two):,.0f} "
              f"({' / '.join(f'{r:,.0f}' for r in two)}) | "
              f"{statistics.median(two) / statistics.median(one):.2f}x |")
    print()
    print("Budget on 2 workers (metered by the endpoint, per second):")
    print()
    print("| job | budget | mean over the inner seconds | vs budget | busiest 5 s | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for job, target in (("export", args.max_rcu), ("import", args.target_wcu)):
        mean, busiest, seconds = budget[job]
        unit = "RCU/s" if job == "export" else "WCU/s"
        print(f"| {job} | {target:,.0f} {unit} | {mean:,.1f} | {100 * (mean / target - 1):+.1f}% "
              f"| {busiest:,.1f} ({100 * (busiest / target - 1):+.1f}%) | {seconds} |")


if __name__ == "__main__":
    main()
