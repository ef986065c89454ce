"""End-to-end export speed on DynamoDB Local: ddbpipe against the boto3 path.

Both read the same generated table with the same number of parallel Scan segments and write
NDJSON (one line per item) to a local directory:

- baseline: boto3 ``client.scan`` per segment in a thread, TypeDeserializer, ``json.dumps``,
  gzip (how a hand-written exporter or dynamodump-style tool does it);
- ddbpipe: ``ddbpipe.export_table`` (raw Scan pages, zstd), in-process.

DynamoDB Local itself is the bottleneck for both, so this measures how much of the emulator's
speed each client turns into an export. Ratios of medians in the same run; never a bound.

    .venv/bin/python benchmarks/export_bench.py --items 50000 --segments 8 --runs 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import sample_data, services  # noqa: E402


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(_json_default(v) if isinstance(v, Decimal) else v for v in value)
    if hasattr(value, "value"):  # boto3 Binary
        return value.value.hex()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value))


def boto3_export(endpoint: str, table: str, segments: int, dest: Path) -> int:
    import boto3
    from boto3.dynamodb.types import TypeDeserializer

    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    deserializer = TypeDeserializer()
    dest.mkdir(parents=True)

    def one_segment(segment: int) -> int:
        count = 0
        with gzip.open(dest / f"{segment:05d}.json.gz", "wt", compresslevel=6) as out:
            kwargs: dict[str, Any] = {"TableName": table, "Segment": segment,
                                      "TotalSegments": segments}
            while True:
                page = client.scan(**kwargs)
                for item in page["Items"]:
                    plain = {k: deserializer.deserialize(v) for k, v in item.items()}
                    out.write(json.dumps(plain, default=_json_default))
                    out.write("\n")
                count += len(page["Items"])
                if "LastEvaluatedKey" not in page:
                    return count
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    with ThreadPoolExecutor(segments) as pool:
        return sum(pool.map(one_segment, range(segments)))


def ddbpipe_export(endpoint: str, table: str, segments: int, dest: Path) -> int:
    import ddbpipe

    return ddbpipe.export_table(table, str(dest), segments=segments, endpoint_url=endpoint).items


def timed(function: Any, *args: Any) -> tuple[float, int]:
    started = time.perf_counter()
    items = function(*args)
    return time.perf_counter() - started, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    services.use_local_credentials()
    server = services.start_dynamodb_local()
    try:
        table = "bench-export"
        sample_data.create_table(server.endpoint, table)
        sample_data.fill_table(server.endpoint, table, sample_data.generate_items(args.items))
        results: dict[str, list[float]] = {"boto3": [], "ddbpipe": []}
        with tempfile.TemporaryDirectory() as scratch:
            for run in range(args.runs):
                for name, function in (("boto3", boto3_export), ("ddbpipe", ddbpipe_export)):
                    seconds, items = timed(
                        function, server.endpoint, table, args.segments,
                        Path(scratch) / f"{name}-{run}",
                    )
                    assert items == args.items, (name, items)
                    results[name].append(args.items / seconds)
    finally:
        server.stop()
    boto3_rate = statistics.median(results["boto3"])
    ddbpipe_rate = statistics.median(results["ddbpipe"])
    print(f"items={args.items} segments={args.segments} runs={args.runs}")
    for name, rates in results.items():
        print(f"{name:8s} median {statistics.median(rates):>10,.0f} items/s  "
              f"runs: {', '.join(f'{r:,.0f}' for r in rates)}")
    print(f"ratio ddbpipe/boto3: {ddbpipe_rate / boto3_rate:.2f}x")


if __name__ == "__main__":
    main()
