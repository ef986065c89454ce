"""Memory of a restore drill (``verify --against-table``) as the table grows.

For each table size: a table of generated items in DynamoDB Local, exported to a local
directory, then in a fresh process each: ``verify --read-data`` (the baseline: the same
shard reading without the comparison) and the drill with a fixed partition size. Each process
reports its own peak resident memory (VmHWM, Linux). A bounded drill keeps what it adds to
the baseline flat while the table grows; what grows is the partition count (and the disk the
partition files take).

    .venv/bin/python benchmarks/drill_memory.py --items 20000 80000 --partition-mb 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import sample_data, services  # noqa: E402

#: Runs one check in this fresh process and prints its peak memory and what it found.
_CHILD = """
import asyncio, json, sys, time
from ddbpipe.config import AwsOptions
from ddbpipe.drill import DrillSettings
from ddbpipe.verify_job import run_verify

def peak_mb():
    # VmHWM is this process's own peak; getrusage's maxrss also counts the parent's peak at
    # the fork that started it.
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)

source, endpoint, table, partition_bytes = sys.argv[1:5]
drill = DrillSettings(table=table, partition_bytes=int(partition_bytes)) if table else None
started = time.perf_counter()
report = asyncio.run(run_verify(source, read_data=True, drill=drill,
                                aws=AwsOptions(endpoint_url=endpoint)))
seconds = time.perf_counter() - started
comparison = report.comparison
print(json.dumps({
    "ok": report.ok, "items": report.items_read, "seconds": round(seconds, 2),
    "partitions": comparison.partitions if comparison else 0,
    "peak_mb": peak_mb(),
}))
"""


def check(source: str, endpoint: str, table: str, partition_bytes: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, source, endpoint, table, str(partition_bytes)],
        capture_output=True, text=True, check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument("--partition-mb", type=float, default=4.0)
    args = parser.parse_args()
    partition_bytes = int(args.partition_mb * 1024 * 1024)
    services.use_local_credentials()
    server = services.start_dynamodb_local()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for count in args.items:
                table = f"bench-drill-{count}"
                sample_data.create_table(server.endpoint, table)
                sample_data.fill_table(server.endpoint, table, sample_data.generate_items(count))
                dest = str(Path(scratch) / table)
                import ddbpipe

                ddbpipe.export_table(table, dest, segments=4, endpoint_url=server.endpoint)
                baseline = check(dest, server.endpoint, "", partition_bytes)
                drill = check(dest, server.endpoint, table, partition_bytes)
                assert baseline["ok"] and drill["ok"], (baseline, drill)
                rows.append((count, baseline, drill))
    finally:
        server.stop()
    print(f"partition size {args.partition_mb:g} MiB; peak resident memory of each process")
    print("| items | verify --read-data: peak MB, s | drill: peak MB, s | drill partitions |")
    print("|---:|---:|---:|---:|")
    for count, baseline, drill in rows:
        print(f"| {count:,} | {baseline['peak_mb']}, {baseline['seconds']} | "
              f"{drill['peak_mb']}, {drill['seconds']} | {drill['partitions']} |")


if __name__ == "__main__":
    main()
