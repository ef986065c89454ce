"""Peak memory of export (NDJSON, Parquet) and import as the table grows.

One table in DynamoDB Local grows through the sizes asked for (``--items``, ascending): its
items come from ``tools.sample_data.iter_items`` (the first N items of the largest size,
generated lazily and written with ``fill_table`` a slice at a time, so this process never
holds the table). At each size, every job runs in a fresh process that reports its own peak
resident memory (VmHWM from /proc/self/status: getrusage's ru_maxrss would include this
process's peak at the fork) and its rate (items/s, context only: the 2 cores are shared with
the endpoint):

- ``export-ndjson``: ``export_table(format="ndjson")`` (zstd) to a local directory;
- ``export-parquet``: ``export_table(format="parquet")`` to a local directory;
- ``import``: ``import_table`` of the NDJSON export into a new table (``create_table``,
  ``target_wcu`` far above what DynamoDB Local takes), counted and dropped afterwards;
- ``import-parquet``: the same from the Parquet export.

A ``baseline`` process only imports ddbpipe (and pyarrow, aiohttp, ...): the floor under
every job. Every combination of ``--segments`` (``auto`` = ddbpipe's default: one per ~2 GB,
at least one per core) and ``--shard-mb`` (``auto`` = the default bound of each format: 256 MB
of raw DynamoDB JSON for NDJSON, 64 MB for Parquet) is measured; the import reads the export
made with the same settings, with ``--open-files`` files open at once (``auto`` = 8).

``--endpoint instant`` measures against ``tools/instant_dynamodb.py`` instead, started for
each size in a process of its own with ``iter_items(N)`` (it serves Scan pages from memory
and accepts every write at once, so a 1M-item export and import take a minute or two, not
hours); imports write into it without creating a table. ``--runs`` repeats each job and
reports the median peak.

    .venv/bin/python benchmarks/memory_bench.py --items 30000 300000 1000000 \\
        --segments auto --shard-mb auto 4
    .venv/bin/python benchmarks/memory_bench.py --endpoint instant --items 30000 1000000 \\
        --jobs import import-parquet --segments 6 --open-files 2 6 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOBS = ("export-ndjson", "export-parquet", "import", "import-parquet")
#: Items written per fill_table call: what this process holds of the table at a time.
FILL_SLICE = 20_000


# --- the measured process -------------------------------------------------------------------


def _peak_and_current_mb() -> tuple[float, float]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return (round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            round(int(fields["VmRSS"].split()[0]) / 1024, 1))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this (fresh) process; its peak memory and what it did."""
    import ddbpipe
    from ddbpipe.config import AwsOptions, ExportOptions, ImportOptions
    from ddbpipe.process_memory import use_lean_memory

    use_lean_memory()  # as the ddbpipe command does

    aws = AwsOptions(endpoint_url=spec.get("endpoint"))
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if spec["job"] == "baseline":
        pass
    elif spec["job"] == "export":
        summary = ddbpipe.export_table(ExportOptions(
            table=spec["table"], destination=spec["dest"], format=spec["format"],
            segments=spec["segments"], shard_bytes=spec["shard_bytes"], aws=aws,
        ))
        result = {"items": summary.items, "shards": summary.shards,
                  "segments": summary.segments, "raw_mb": round(summary.raw_bytes / 2**20, 1),
                  "stored_mb": round(summary.stored_bytes / 2**20, 1)}
    elif spec["job"] == "import":
        scratch = Path(spec["scratch"])
        options = ImportOptions(
            source=spec["source"], table=spec["table"], create_table=spec["create_table"],
            target_wcu=40_000, aws=aws, checkpoint=str(scratch / "import.checkpoint.json"),
            dead_letter=str(scratch / "import.dead-letter.jsonl"),
            **({"open_files": spec["open_files"]} if spec.get("open_files") else {}),
        )
        summary = ddbpipe.import_table(options)
        assert summary.items_dead_lettered == 0, summary
        result = {"items": summary.items_written, "files": summary.files}
    else:
        raise ValueError(spec["job"])
    seconds = time.perf_counter() - started
    peak_mb, end_mb = _peak_and_current_mb()
    items = result.get("items", 0)
    return {**result, "seconds": round(seconds, 2), "items_per_s": round(items / seconds),
            "peak_mb": peak_mb, "end_mb": end_mb}


def measure(spec: dict[str, Any], runs: int = 1,
            before_each: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The job in ``runs`` fresh processes (``before_each`` clears what a run leaves): the
    last run's result with the median peak, and every run's peak."""
    results = []
    for _ in range(runs):
        before_each()
        results.append(_measure_once(spec))
    peaks = [result["peak_mb"] for result in results]
    return {**results[-1], "peak_mb": statistics.median(peaks), "peaks_mb": peaks}


def _measure_once(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['job']} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the driver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    segments: int | None
    shard_mb: float | None
    open_files: int | None

    def label(self) -> str:
        return (f"segments {self.segments or 'auto'}, shard bound "
                f"{f'{self.shard_mb:g} MB' if self.shard_mb else 'auto'}, open files "
                f"{self.open_files or 'auto (8)'}")

    def shard_bytes(self) -> int | None:
        return int(self.shard_mb * 2**20) if self.shard_mb else None

    def slug(self) -> str:
        return f"s{self.segments or 'a'}-b{self.shard_mb or 'a'}-o{self.open_files or 'a'}"


def _auto_int(text: str) -> int | None:
    return None if text == "auto" else int(text)


def _auto_float(text: str) -> float | None:
    return None if text == "auto" else float(text)


def grow_table(endpoint: str, table: str, items: Any, have: int, want: int) -> None:
    from tools import sample_data

    while have < want:
        batch = list(itertools.islice(items, min(FILL_SLICE, want - have)))
        sample_data.fill_table(endpoint, table, batch)
        have += len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, nargs="+", default=[30_000, 300_000])
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS[:3]))
    parser.add_argument("--segments", type=_auto_int, nargs="+", default=[None],
                        help="segment counts to measure ('auto' = the default)")
    parser.add_argument("--shard-mb", type=_auto_float, nargs="+", default=[None],
                        help="shard bounds in MB of raw DynamoDB JSON ('auto' = the default)")
    parser.add_argument("--open-files", type=_auto_int, nargs="+", default=[None],
                        help="files an import reads at once ('auto' = the default, 8)")
    parser.add_argument("--endpoint", choices=("dynamodb-local", "instant"),
                        default="dynamodb-local",
                        help="where the table is: DynamoDB Local, or the instant endpoint")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of each job; the median peak is reported")
    parser.add_argument("--json", help="also write every result to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from tools import services

    sizes = sorted(args.items)
    settings = [Setting(s, b, o) for s in args.segments for b in args.shard_mb
                for o in args.open_files]
    services.use_local_credentials()
    baseline = measure({"job": "baseline"}, args.runs)
    print(f"baseline (import ddbpipe only): peak {baseline['peak_mb']} MB", flush=True)
    tables = instant_tables if args.endpoint == "instant" else local_tables
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ddbpipe-membench-") as scratch:
        for size, endpoint, table in tables(sizes):
            for setting in settings:
                rows += run_size(Job(endpoint, table, args.endpoint == "instant", args.runs),
                                 size, setting, args.jobs, Path(scratch))
    report(rows, sizes, settings, args.jobs, baseline)
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline": baseline, "rows": rows}, indent=1))


@dataclass(frozen=True)
class Job:
    """Where the jobs of one size run, and how often each."""

    endpoint: str
    table: str
    instant: bool  # imports write into the instant endpoint's table, created by no one
    runs: int


TABLE = "bench-memory"


def local_tables(sizes: list[int]) -> Iterator[tuple[int, str, str]]:
    """(size, endpoint, table): one table in DynamoDB Local, grown through the sizes."""
    from tools import sample_data, services

    server = services.start_dynamodb_local()
    try:
        sample_data.create_table(server.endpoint, TABLE)
        items = sample_data.iter_items(sizes[-1])
        have = 0
        for size in sizes:
            started = time.perf_counter()
            grow_table(server.endpoint, TABLE, items, have, size)
            print(f"table at {size:,} items (filled in {time.perf_counter() - started:.0f} s)",
                  flush=True)
            have = size
            yield size, server.endpoint, TABLE
    finally:
        server.stop()


def instant_tables(sizes: list[int]) -> Iterator[tuple[int, str, str]]:
    """(size, endpoint, table): the instant endpoint, started anew with each size's items."""
    for size in sizes:
        with _instant_endpoint(size) as endpoint:
            print(f"instant endpoint with {size:,} items", flush=True)
            yield size, endpoint, TABLE


@contextlib.contextmanager
def _instant_endpoint(items: int) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "instant_dynamodb.py"), "--items", str(items)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait()


def run_size(where: Job, size: int, setting: Setting, jobs: list[str],
             scratch: Path) -> list[dict[str, Any]]:
    from tools import sample_data  # here, not at the top: the measured processes skip it

    endpoint, table = where.endpoint, where.table
    rows = []
    exports: dict[str, str] = {}
    for job in jobs:
        fmt = "parquet" if job.endswith("parquet") else "ndjson"
        if job.startswith("export") or fmt not in exports:
            dest = scratch / f"{size}-{setting.slug()}-{fmt}"
            spec = {"job": "export", "endpoint": endpoint, "table": table, "dest": str(dest),
                    "format": fmt, "segments": setting.segments,
                    "shard_bytes": setting.shard_bytes()}
            runs = where.runs if job.startswith("export") else 1
            result = measure(spec, runs, _emptied(dest, keep=False))
            assert result["items"] == size, result
            exports[fmt] = str(dest)
            if job.startswith("export"):
                rows.append({"job": job, "size": size, "setting": setting.label(), **result})
                print(json.dumps(rows[-1]), flush=True)
        if job.startswith("import"):
            target = f"bench-memory-copy-{size}"
            work = scratch / f"import-{size}-{setting.slug()}"
            result = measure({"job": "import", "endpoint": endpoint, "source": exports[fmt],
                              "table": target, "scratch": str(work),
                              "open_files": setting.open_files,
                              "create_table": not where.instant}, where.runs,
                             _emptied(work, keep=True))
            assert result["items"] == size, result
            if not where.instant:
                sample_data.drop_table(endpoint, target)
            shutil.rmtree(work)
            rows.append({"job": job, "size": size, "setting": setting.label(), **result})
            print(json.dumps(rows[-1]), flush=True)
    for folder in exports.values():
        shutil.rmtree(folder)
    return rows


def _emptied(folder: Path, *, keep: bool) -> Callable[[], None]:
    """What clears ``folder`` before a run (an export refuses a used destination, an import
    would resume from a checkpoint); ``keep`` leaves it there, empty."""
    def clear() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if keep:
            folder.mkdir()
    return clear


def report(rows: list[dict[str, Any]], sizes: list[int], settings: list[Setting],
           jobs: list[str], baseline: dict[str, Any]) -> None:
    print()
    print(f"Peak resident memory (VmHWM) of each job's process, MB; a process that only imports "
          f"ddbpipe peaks at {baseline['peak_mb']} MB.")
    header = "| job | " + " | ".join(f"{size:,} items" for size in sizes)
    for setting in settings:
        cells = {(row["job"], row["size"]): row for row in rows
                 if row["setting"] == setting.label()}
        present = [job for job in jobs if any((job, size) in cells for size in sizes)]
        print()
        print(f"{setting.label()}:")
        print()
        print(header + f" | {sizes[0]:,} to {sizes[-1]:,} |")
        print("|---|" + "---:|" * (len(sizes) + 1))
        for job in present:
            peaks = [cells[job, size]["peak_mb"] if (job, size) in cells else None
                     for size in sizes]
            change = (f"{100 * (peaks[-1] / peaks[0] - 1):+.1f}%"
                      if peaks[0] and peaks[-1] else "")
            print(f"| {job} | " + " | ".join(_peak_cell(cells.get((job, size)))
                                            for size in sizes) + f" | {change} |")
        print()
        print("items/s (context only: the endpoint shares the cores); files written or read:")
        print()
        print(header + " |")
        print("|---|" + "---:|" * len(sizes))
        for job in present:
            parts = []
            for size in sizes:
                row = cells.get((job, size))
                files = None if row is None else row.get("shards", row.get("files"))
                parts.append("" if row is None else f"{row['items_per_s']:,}; {files} files")
            print(f"| {job} | " + " | ".join(parts) + " |")


def _peak_cell(row: dict[str, Any] | None) -> str:
    """The (median) peak, with every run's in parentheses when there were several."""
    if row is None:
        return ""
    runs = row.get("peaks_mb", [])
    every = f" ({' / '.join(f'{peak:.1f}' for peak in runs)})" if len(runs) > 1 else ""
    return f"{row['peak_mb']:.1f}{every}"


if __name__ == "__main__":
    main()
