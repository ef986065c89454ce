"""Export hot path, in process, on one core: raw Scan reply bodies -> stored shard.

Builds realistic Scan reply bodies (pages of ~1 MB, ~350-byte items) and times, as the median
of ``--runs`` runs:

  ndjson+zstd   decode_scan_page + ShardWriter("ndjson", "zstd") add_items + close
  ndjson+gzip   the same with gzip
  parquet       decode_scan_page + ShardWriter("parquet") add_items + close
  boto3 baseline  botocore's JSON parser on the body + boto3's TypeDeserializer +
                  json.dumps of each item (what a boto3-based exporter does per item)

Usage: python benchmarks/hot_path.py [--items N] [--runs 5] [--write-results]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from ddbpipe.codec import decode_scan_page
from ddbpipe.shards import ShardWriter

PAGE_BYTES = 1024 * 1024
KEY_ATTRIBUTES = [("pk", "S"), ("sk", "N")]
RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
SECTION_TITLE = "## Export hot path (in-process, one core)"

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


def make_item(rng: random.Random, index: int) -> dict[str, Any]:
    """One ~350-byte item in DynamoDB JSON: string pk, numeric sk, a mix of types."""
    return {
        "pk": {"S": f"customer#{rng.randrange(1_000_000):07d}"},
        "sk": {"N": str(1_700_000_000_000 + index)},
        "name": {"S": " ".join(rng.choices(WORDS, k=3)).title()},
        "email": {"S": f"user{index}@example.com"},
        "status": {"S": rng.choice(["active", "pending", "closed"])},
        "balance": {"N": f"{rng.uniform(0, 100000):.2f}"},
        "visits": {"N": str(rng.randrange(10_000))},
        "verified": {"BOOL": rng.random() < 0.5},
        "address": {
            "M": {
                "street": {"S": f"{rng.randrange(1, 999)} {rng.choice(WORDS).title()} Street"},
                "city": {"S": rng.choice(["Lisbon", "Osaka", "Denver", "Nairobi"])},
            }
        },
        "recent": {"L": [{"N": str(rng.randrange(1000))} for _ in range(2)]},
        "tags": {"SS": sorted(set(rng.choices(WORDS, k=2)))},
    }


def make_bodies(total_items: int, seed: int = 7) -> list[bytes]:
    """Scan reply bodies of ~1 MB each, shaped like DynamoDB's (compact JSON)."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    page: list[bytes] = []
    page_bytes = 0

    def flush() -> None:
        items = b",".join(page)
        last_key = json.loads(page[-1])
        body = (
            b'{"ConsumedCapacity":{"CapacityUnits":128.5,"TableName":"bench"},"Count":%d,'
            b'"Items":[%s],"LastEvaluatedKey":%s,"ScannedCount":%d}'
            % (
                len(page),
                items,
                json.dumps({"pk": last_key["pk"], "sk": last_key["sk"]}).encode(),
                len(page),
            )
        )
        bodies.append(body)

    for index in range(total_items):
        item = json.dumps(make_item(rng, index), separators=(",", ":")).encode()
        if page and page_bytes + len(item) > PAGE_BYTES:
            flush()
            page, page_bytes = [], 0
        page.append(item)
        page_bytes += len(item)
    if page:
        flush()
    return bodies


def ddbpipe_path(format: str, compression: str, spool_dir: str) -> Callable[[list[bytes]], int]:
    def run(bodies: list[bytes]) -> int:
        writer = ShardWriter(format, compression, KEY_ATTRIBUTES, spool_dir=spool_dir)
        for body in bodies:
            writer.add_items(decode_scan_page(body).items)
        finished = writer.close()
        os.unlink(finished.path)
        return finished.items

    return run


def boto3_path() -> Callable[[list[bytes]], int]:
    import botocore.parsers
    import botocore.session
    from boto3.dynamodb.types import TypeDeserializer

    model = botocore.session.get_session().get_service_model("dynamodb")
    shape = model.operation_model("Scan").output_shape
    parser = botocore.parsers.create_parser("json")
    deserializer = TypeDeserializer()

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, bytes | bytearray):
            return base64.b64encode(value).decode()
        if isinstance(value, set | frozenset):
            return sorted(value, key=str)
        raise TypeError(type(value))

    def run(bodies: list[bytes]) -> int:
        count = 0
        for body in bodies:
            reply = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
            lines = []
            for item in reply["Items"]:
                plain = {name: deserializer.deserialize(value) for name, value in item.items()}
                lines.append(json.dumps(plain, default=default))
            "\n".join(lines)
            count += len(reply["Items"])
        return count

    return run


def median_rate(run: Callable[[list[bytes]], int], bodies: list[bytes], runs: int) -> float:
    """Median items per CPU-second of this process (all its threads): items/s per core.

    CPU time rather than wall time, so other work on a shared machine does not count.
    """
    rates = []
    for _ in range(runs):
        start = time.process_time()
        count = run(bodies)
        rates.append(count / (time.process_time() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000, help="items to export per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per path; the median counts")
    parser.add_argument(
        "--baseline-items",
        type=int,
        default=20_000,
        help="items for the (slow) boto3 baseline, taken from the same pages",
    )
    parser.add_argument("--write-results", action="store_true", help=f"update {RESULTS_FILE.name}")
    args = parser.parse_args()

    # One core: Arrow would otherwise spread Parquet encoding over its thread pool.
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    bodies = make_bodies(args.items)
    total_bytes = sum(map(len, bodies))
    avg_item = total_bytes / args.items
    baseline_pages = max(1, round(len(bodies) * min(1.0, args.baseline_items / args.items)))
    print(
        f"{args.items} items in {len(bodies)} pages of ~{total_bytes / len(bodies) / 1e6:.2f} MB,"
        f" ~{avg_item:.0f} bytes per item (with page overhead); median of {args.runs} runs"
    )

    with tempfile.TemporaryDirectory() as spool_dir:
        rows = [
            (
                "ndjson+zstd",
                median_rate(ddbpipe_path("ndjson", "zstd", spool_dir), bodies, args.runs),
            ),
            (
                "ndjson+gzip",
                median_rate(ddbpipe_path("ndjson", "gzip", spool_dir), bodies, args.runs),
            ),
            (
                "parquet (zstd)",
                median_rate(ddbpipe_path("parquet", "zstd", spool_dir), bodies, args.runs),
            ),
        ]
    baseline = median_rate(boto3_path(), bodies[:baseline_pages], args.runs)
    rows.append(("boto3 baseline", baseline))

    table = render_table(rows, baseline)
    print(table)
    if args.write_results:
        command = "python benchmarks/hot_path.py " + " ".join(sys.argv[1:])
        write_results(table, command.strip(), args, avg_item)


def render_table(rows: list[tuple[str, float]], baseline: float) -> str:
    lines = ["| path | items/s (one core) | vs boto3 |", "|---|---:|---:|"]
    for name, rate in rows:
        lines.append(f"| {name} | {rate:,.0f} | {rate / baseline:.1f}x |")
    return "\n".join(lines)


def write_results(table: str, command: str, args: argparse.Namespace, avg_item: float) -> None:
    section = "\n".join(
        [
            SECTION_TITLE,
            "",
            f"Command: `{command}`",
            "",
            f"{args.items} items in Scan reply bodies of ~1 MB (~{avg_item:.0f} bytes of body per"
            f" item), one shard per run, median of {args.runs} runs. Rates are items per"
            " CPU-second of the process (all threads; Arrow limited to one thread), so other"
            " load on a shared machine does not count against them. Each ddbpipe row is"
            " decode_scan_page + ShardWriter add_items + close, writing to a local temp file"
            " (zstd level 1 with frame checksum, gzip level 6, Parquet with zstd columns and"
            " page CRCs; SHA-256 and MD5 of the stored bytes included). The boto3 baseline runs"
            f" on the first {args.baseline_items} items of the same pages.",
            "",
            table,
            "",
        ]
    )
    text = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "# Benchmark results\n"
    start = text.find(SECTION_TITLE)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        # The section ends with one newline; keep a blank line before the next heading.
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    RESULTS_FILE.write_text(text)


if __name__ == "__main__":
    main()
