"""The hot-partition scenario, in process: ddbpipe's import writer against the capacity model.

The import's writer, built as an import builds it (``import_job.write_rate`` and
``key_limiter``), writes into a table that ``tools/capacity_model.py`` answers in process,
each BatchWriteItem after ``--latency`` seconds: 4 partitions of 100 WCU/s (a 400 WCU/s table
that starts with one second's allowance), 3,000 items of ~1 KB, 30% of them under one
partition key, ``--target-wcu 2000`` (the scenario of ``import_bench.py throttled
--partitions 4``, without DynamoDB Local behind it, so a run costs little CPU and several run
at once, each in a process of its own, on the real clock).

Per run: WCU written each second on the busiest partition and on the others; the completion
time against the busiest partition's time (its items' write units
at its capacity, after the first second's allowance: no writer can finish sooner), and the
re-sends per item (records the table throttled, over the items), and when the other
partitions' last write was done (a fraction of the job: how far the hot partition held
them back). Goal (issue: one controller, partition-aware): within 1.10x, at most 0.15
re-sends per item.

``--write-order random`` has the model decide a batch's writes in a random order (DynamoDB
writes them in parallel), not in the batch's; ``--compare`` also runs the writer without
``HotKeys`` as often, at the same time, for a ratio on the same load.

    python benchmarks/hot_partition.py --runs 3 --compare --write-order random
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import botocore.credentials  # noqa: E402

from benchmarks.import_bench import HOT_KEY, hot_partition_bound, throttled_items  # noqa: E402
from ddbpipe.batching import interleave  # noqa: E402
from ddbpipe.dynamo import DynamoClient, HttpReply, MockTransport  # noqa: E402
from ddbpipe.import_job import hot_keys, key_limiter, write_rate  # noqa: E402
from ddbpipe.records import WriteRecord, new_record  # noqa: E402
from ddbpipe.retry import Clock, RetryPolicy, SystemClock  # noqa: E402
from ddbpipe.sources.reading import RECORDS_PER_BATCH  # noqa: E402
from ddbpipe.writer import TableWriter  # noqa: E402
from tools import sample_data  # noqa: E402
from tools.capacity_model import WRITE_ORDERS, KeySchema, SimulatedTable, TableCapacity  # noqa: E402
from tools.capacity_simulator import in_process_transport  # noqa: E402

SCHEMA = KeySchema("pk", "sk")
#: The export's Scan segments (files), as import_bench exports the scenario's table.
SEGMENTS = 4


def one_run(args: dict[str, Any]) -> dict[str, Any]:
    items = throttled_items(args["items"], args["hot_share"])
    records = [new_record("put", sample_data.to_wire(item), source="s", key_names=("pk", "sk"))
               for item in items]
    capacity = TableCapacity(SimulatedTable(wcu=args["wcu"], partitions=args["partitions"],
                                            write_order=args["write_order"], seed=args["seed"]))
    per_second: defaultdict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    busiest = max(range(args["partitions"]), key=lambda p: sum(
        1 for r in records if capacity.partition_of(r.item["pk"]) == p))
    throttle_counter = ThrottledByKey(HOT_KEY, capacity.partition_of, busiest)
    others_done = 0.0

    async def write() -> float:
        started = time.monotonic()

        def written(batch: list[WriteRecord], consumed: float) -> None:
            nonlocal others_done
            now = time.monotonic() - started
            for record in batch:
                on_busiest = capacity.partition_of(record.item["pk"]) == busiest
                per_second[int(now)][0 if on_busiest else 1] += record.units
                if not on_busiest:
                    others_done = now

        transport = throttle_counter.wrap(
            in_process_transport(capacity, SCHEMA, latency=args["latency"]))
        writer = import_writer(transport, SystemClock(), target_wcu=args["target_wcu"],
                               with_hot_keys=args["hot_keys"], on_written=written)
        await writer.write(_stream(records))
        assert writer.written == len(records)
        return time.monotonic() - started

    seconds = asyncio.run(write())
    bound = hot_partition_bound(items, args["wcu"], args["partitions"])
    stats = capacity.stats()
    timeline = " ".join(f"{busy:.0f}/{other:.0f}" for _, (busy, other)
                        in sorted(per_second.items()))
    return {"hot_keys": args["hot_keys"], "seconds": seconds, "of_bound": seconds / bound,
            "others_done": others_done / seconds if args["partitions"] > 1 else None,
            "resends": stats.items_throttled / len(records), "timeline": timeline,
            "throttled": (throttle_counter.hot, throttle_counter.beside_hot,
                          throttle_counter.elsewhere)}


def import_writer(
    transport: Any, clock: Clock, *, target_wcu: float, with_hot_keys: bool,
    on_written: Callable[[list[WriteRecord], float], None],
) -> TableWriter:
    """The import's writer of table "t" (keys pk, sk), built as an import builds it (its
    rate, per-key limits and, ``with_hot_keys``, its ``HotKeys``), on ``transport``."""
    bucket, controller = write_rate(target_wcu, clock)
    client = DynamoClient(
        region="us-east-1", endpoint="https://dynamodb.us-east-1.amazonaws.com",
        credentials=botocore.credentials.Credentials("k", "s"),
        retry=RetryPolicy(max_attempts=1), transport=transport, clock=clock,
    )
    return TableWriter(client, "t", ("pk", "sk"), bucket=bucket, controller=controller,
                       key_limiter=key_limiter(clock), concurrency=16, clock=clock,
                       hot_keys=hot_keys(clock) if with_hot_keys else None,
                       on_written=on_written)


class ThrottledByKey:
    """Counts the writes the table throttled: of ``hot_key``, of the other keys on its
    partition, and on the other partitions (whether the replies name the hot key, so that a
    writer could learn it from them)."""

    def __init__(self, hot_key: str, partition_of: Callable[[Any], int], busiest: int) -> None:
        self.hot_key = hot_key
        self.partition_of = partition_of
        self.busiest = busiest
        self.hot = self.beside_hot = self.elsewhere = 0

    def wrap(self, transport: Any) -> MockTransport:
        async def answer(url: str, body: bytes, headers: Any) -> HttpReply:
            reply = await transport.post(url, body, headers)
            if reply.status == 200:
                throttled = [r["PutRequest"]["Item"] for requests in
                             json.loads(reply.body).get("UnprocessedItems", {}).values()
                             for r in requests]
            else:  # the whole call refused
                throttled = [r["PutRequest"]["Item"] for requests in
                             json.loads(body)["RequestItems"].values() for r in requests]
            for item in throttled:
                if item["pk"]["S"] == self.hot_key:
                    self.hot += 1
                elif self.partition_of(item["pk"]) == self.busiest:
                    self.beside_hot += 1
                else:
                    self.elsewhere += 1
            return reply

        return MockTransport(answer)


def _stream(records: list[WriteRecord]) -> AsyncIterator[WriteRecord]:
    """The records as an import reads an export of them: a parallel Scan returns each
    segment's items in partition-hash order, one file per segment, and the import takes
    turns between the files (``batching.interleave``)."""
    in_scan_order = sorted(records, key=lambda r: hashlib.md5(
        json.dumps(r.item["pk"]).encode()).digest())
    share = -(-len(in_scan_order) // SEGMENTS)
    files = [in_scan_order[n * share:(n + 1) * share] for n in range(SEGMENTS)]
    return interleave(_batches(file) for file in files)


async def _batches(file: list[WriteRecord]) -> AsyncIterator[list[WriteRecord]]:
    for start in range(0, len(file), RECORDS_PER_BATCH):
        yield file[start:start + RECORDS_PER_BATCH]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--hot-share", type=float, default=0.3)
    parser.add_argument("--wcu", type=float, default=400.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--target-wcu", type=float, default=2000.0)
    parser.add_argument("--latency", type=float, default=0.01,
                        help="seconds before each BatchWriteItem is answered")
    parser.add_argument("--write-order", choices=WRITE_ORDERS, default="given",
                        help="the order the model decides a batch's writes in")
    parser.add_argument("--seed", type=int, default=0, help="of the random write order")
    parser.add_argument("--compare", action="store_true",
                        help="also as many runs without HotKeys, at the same time")
    args = vars(parser.parse_args())
    settings = [{**args, "hot_keys": True, "seed": args["seed"] + n} for n in range(args["runs"])]
    if args["compare"]:
        settings += [{**one, "hot_keys": False} for one in settings]
    with ProcessPoolExecutor(max_workers=len(settings)) as pool:
        runs = list(pool.map(one_run, settings))
    for name, hot in (("with HotKeys", True), ("without HotKeys", False)):
        chosen = [run for run in runs if run["hot_keys"] == hot]
        if chosen:
            print(f"--- {name}")
            _report(chosen)


def _report(runs: list[dict[str, Any]]) -> None:
    for number, run in enumerate(runs):
        others_done = ("" if run["others_done"] is None else
                       f", the other partitions done at {run['others_done']:.0%} of it")
        print(f"run {number}: {run['seconds']:.1f} s, {run['of_bound']:.2f}x the busiest "
              f"partition's time, {run['resends']:.2f} re-sends per item{others_done}")
        hot, beside, elsewhere = run["throttled"]
        print(f"  writes throttled: of the hot key {hot}, of the other keys on its partition "
              f"{beside}, on the other partitions {elsewhere}")
        print(f"  WCU written per second, busiest partition / the others: {run['timeline']}")
    of_bound = [run["of_bound"] for run in runs]
    resends = [run["resends"] for run in runs]
    others = [run["others_done"] for run in runs if run["others_done"] is not None]
    others_done = (f", the other partitions done at {statistics.median(others):.0%} "
                   f"(latest {max(others):.0%})" if others else "")
    print(f"median {statistics.median(of_bound):.2f}x (worst {max(of_bound):.2f}x), "
          f"re-sends per item median {statistics.median(resends):.2f} "
          f"(worst {max(resends):.2f}){others_done}")


if __name__ == "__main__":
    main()
