"""End-to-end demo: a sample table in DynamoDB Local, exported and verified with ``ddbpipe``.

Steps: start DynamoDB Local (fake credentials, so nothing reaches AWS) -> create a table and
fill it with realistic orders/customers items -> ``ddbpipe export`` to a local directory
``demo-out/<table>-<UTC timestamp>`` -> ``ddbpipe verify --read-data`` -> ``ddbpipe import
--create-table`` into ``<table>-restored`` and a count comparison -> stop DynamoDB Local.
Exits non-zero if any step fails. ``make demo`` sets everything up and runs this file.

    python tools/demo.py [--items 50000] [--segments 8] [--format ndjson|parquet]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from tools import services  # noqa: E402
from tools.sample_data import create_table, fill_table, generate_items, to_wire_json  # noqa: E402


class StepFailed(Exception):
    """A demo step failed; ``code`` is the exit status to end with."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def ddbpipe_command() -> list[str]:
    """The ``ddbpipe`` console script installed next to this Python, else the module."""
    script = Path(sys.executable).parent / "ddbpipe"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ddbpipe.cli.main"]


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_ddbpipe(step: str, args: list[str]) -> float:
    """Run ``ddbpipe ARGS`` with its output shown as it comes; return the wall-clock seconds."""
    command = ddbpipe_command() + args
    print(f"\n$ ddbpipe {shlex.join(args)}", flush=True)
    started = time.perf_counter()
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, check=False)
    except OSError as error:
        raise StepFailed(f"{step}: could not start ddbpipe ({error})") from error
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise StepFailed(
            f"{step} failed (ddbpipe exit code {result.returncode})", result.returncode
        )
    return seconds


def load_sample_table(endpoint: str, table: str, count: int, seed: int) -> None:
    print(f"Generating {count:,} sample items ...", flush=True)
    started = time.perf_counter()
    items = generate_items(count, seed=seed)
    average = sum(len(to_wire_json(item).encode("utf-8")) for item in items) / max(count, 1)
    print(
        f"  {count:,} items, {average:,.0f} bytes of DynamoDB JSON on average "
        f"({time.perf_counter() - started:.1f} s)"
    )
    print(f"Creating table {table!r} and loading it with BatchWriteItem ...", flush=True)
    started = time.perf_counter()
    create_table(endpoint, table)
    fill_table(endpoint, table, items)
    seconds = time.perf_counter() - started
    print(
        f"  loaded {count:,} items in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} items/s)",
        flush=True,
    )


def export_step(
    endpoint: str,
    table: str,
    dest: Path,
    *,
    segments: int,
    fmt: str | None,
    compression: str | None,
    count: int,
) -> None:
    args = ["export", table, str(dest), "--segments", str(segments), "--endpoint-url", endpoint]
    if fmt:
        args += ["--format", fmt]
    if compression:
        args += ["--compression", compression]
    seconds = run_ddbpipe("export", args)
    print(
        f"  export command took {seconds:.1f} s wall clock, process start-up included: "
        f"{count / max(seconds, 1e-9):,.0f} items/s",
        flush=True,
    )
    _show_layout(dest)


def _show_layout(dest: Path) -> None:
    if not dest.is_dir():
        return
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    data = [p for p in files if p.relative_to(dest).parts[0] == "data"]
    others = [p for p in files if p not in data]
    print(f"  {_display(dest)}/")
    if data:
        size = sum(p.stat().st_size for p in data)
        print(f"    data/  {len(data)} shards, {size / 1e6:,.1f} MB")
    for path in others:
        print(f"    {path.relative_to(dest)}  {path.stat().st_size:,} B")


def verify_step(dest: Path) -> None:
    run_ddbpipe("verify", ["verify", str(dest), "--read-data"])


def import_step(endpoint: str, dest: Path, table: str, count: int) -> None:
    """Restore the export into a new table (created from the export's schema), compare counts."""
    restored = f"{table}-restored"
    state = dest.parent / f"{dest.name}.import"
    run_ddbpipe(
        "import",
        [
            "import", str(dest), restored, "--create-table", "--target-wcu", "40000",
            "--checkpoint", str(state / "checkpoint.json"),
            "--dead-letter", str(state / "dead-letter.jsonl"),
            "--endpoint-url", endpoint,
        ],
    )
    import boto3

    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    counts = {}
    for name in (table, restored):
        pages = client.get_paginator("scan").paginate(TableName=name, Select="COUNT")
        counts[name] = sum(page["Count"] for page in pages)
    print(f"  items: {table} {counts[table]:,}, {restored} {counts[restored]:,}")
    # A finished import removes its checkpoint; the folder stays only if it holds dead letters.
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
    if counts[restored] != counts[table] or counts[table] != count:
        raise StepFailed(f"import: {restored} holds {counts[restored]:,} items, "
                         f"{table} {counts[table]:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export, verify and import a sample table in DynamoDB Local with ddbpipe."
    )
    parser.add_argument("--items", type=int, default=50_000, help="items in the sample table")
    parser.add_argument("--segments", type=int, default=8, help="parallel Scan segments")
    parser.add_argument("--format", choices=("ndjson", "parquet"), help="export format")
    parser.add_argument(
        "--compression", choices=("zstd", "gzip", "none"), help="NDJSON compression"
    )
    parser.add_argument("--table", default="orders", help="sample table name")
    parser.add_argument("--seed", type=int, default=0, help="sample data seed")
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "demo-out",
        help="folder that receives the export",
    )
    args = parser.parse_args(argv)

    # Before any AWS client exists: fake credentials, no profile, no instance metadata.
    services.use_local_credentials()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = (args.out / f"{args.table}-{stamp}").resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)

    print("Starting DynamoDB Local ...", flush=True)
    try:
        server = services.start_dynamodb_local()
    except RuntimeError as error:
        print(f"demo failed: could not start DynamoDB Local: {error}", file=sys.stderr)
        return 1
    try:
        print(f"  listening on {server.endpoint}")
        load_sample_table(server.endpoint, args.table, args.items, args.seed)
        export_step(
            server.endpoint,
            args.table,
            dest,
            segments=args.segments,
            fmt=args.format,
            compression=args.compression,
            count=args.items,
        )
        verify_step(dest)
        import_step(server.endpoint, dest, args.table, args.items)
    except StepFailed as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    finally:
        print("Stopping DynamoDB Local ...", flush=True)
        server.stop()
    print(f"\nDemo done: export in {_display(dest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
