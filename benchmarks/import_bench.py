"""Import speed and behaviour under throttling: ddbpipe against dynamodump and boto3.

Two parts, each with its own subcommand (``all`` runs both):

``local``: restore speed on DynamoDB Local (in memory, never throttles). The same generated
table (``tools/sample_data.py``) is exported once by ddbpipe and backed up once by
dynamodump, then restored into a fresh table per run by

- ddbpipe: ``ddbpipe.import_table(export, table, target_wcu=40000, create_table=True)``,
  in-process; the target is far above what the emulator takes, so the rate limit is not what
  is measured;
- dynamodump: ``dynamodump -m restore`` from its own backup (``dynamodump -m backup`` of the
  same table), installed by this script into ``.venv-dynamodump/`` at the project root on
  first use (``python3 -m venv`` + ``pip install dynamodump``). The time is that of its
  ``main()`` (table creation and data), without the interpreter start-up, which is reported
  separately;
- boto3: one thread, ``Table.batch_writer()``, reading the ddbpipe export's shards
  (``iter_shard_items`` + ``msgspec`` + ``TypeDeserializer``); the table is created first;
- ceiling: not an importer but the upper bound any importer can reach on this machine. Every
  BatchWriteItem body of the restore (25 items each, ``"ReturnConsumedCapacity": "TOTAL"`` as
  ddbpipe sends them, items from the same ddbpipe export) is encoded before the clock starts,
  then the bodies are sent with 16 in flight (``DynamoClient.call_raw``, which only signs),
  checking that no reply holds UnprocessedItems. The client does no per-item work while timed,
  so its rate is what DynamoDB Local itself takes. Its table creation and the encoding are
  outside its time and outside its CPU-seconds (which cover the sending only).

Before the measured runs, DynamoDB Local is warmed up by one untimed restore (ddbpipe into a
throwaway table, counted and dropped): its JVM compiles the write path during the first
restore, which would otherwise slow whichever importer comes first in run 0 (``--no-warm-up``
skips it, for comparison).

Every restore is checked by counting the target table (Scan, Select=COUNT) and the table is
dropped afterwards. Medians of ``--runs`` alternating runs; ratios against dynamodump, and
ddbpipe's median as a share of the ceiling's. Also reported per run: the CPU seconds of the
client (this process, or the dynamodump process with its start-up) and of DynamoDB Local,
which shares the machine's cores with the client and so caps every importer.

``throttled``: the capacity simulator (``tools/capacity_simulator.py``) in front of DynamoDB
Local gives the target table ``--wcu`` WCU/s on ``--partitions`` partition(s), no burst
credit. ~1 KB items (1 WCU each), ``--hot-share`` of them under ONE partition key (distinct
numeric sort keys), exported by ddbpipe, then written through the simulator by

- ddbpipe: ``import_table(export, table, target_wcu=--target-wcu)`` into the empty table;
- boto3: one thread, ``Table.batch_writer()`` on a client with botocore's adaptive retry mode
  (``Config(retries={"mode": "adaptive", "max_attempts": 10})``);
- dynamodump: ``dynamodump -m restore --dataOnly`` from its backup of the source table into
  the created table (the time is its ``main()``'s: the writing, without start-up).

``--writers`` picks among them. With ``--cluster local:N`` ddbpipe imports on a Dask
LocalCluster of N worker processes, started once before the runs (as ``--cluster local:N``
starts one); its calls are then made in the workers, so only the simulator's counts are
reported for it (as for dynamodump, a process of its own). Before the runs one untimed ddbpipe
import straight into DynamoDB Local (and through the cluster, if any) warms up its JIT and the
workers: without it, the first writer of run 0 was slowed (ddbpipe 1.31-1.43x its bound there,
1.04-1.10x in the other runs).

Per run: completion time, items lost (source count minus a Scan COUNT of the table on the
backend), BatchWriteItem calls counted on the client side (throttled = refused with
ProvisionedThroughputExceededException or answered with UnprocessedItems), and accepted WCU
from the simulator, against what the table offered (capacity x (duration + 1 s): a fresh
simulated table starts with one second's allowance) and as the mean of the per-second series
over the steady part (from the 3rd second to the last full second).

    .venv/bin/python benchmarks/import_bench.py local --items 20000 --runs 3
    .venv/bin/python benchmarks/import_bench.py throttled --items 12000 --wcu 400 --runs 2
    .venv/bin/python benchmarks/import_bench.py throttled --items 3000 --partitions 4 \
        --target-wcu 2000 --runs 5 [--cluster local:2 --writers ddbpipe]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import sample_data, services  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DYNAMODUMP_VENV = PROJECT_ROOT / ".venv-dynamodump"
ACCESS_KEY = services.LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"]
SECRET_KEY = services.LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]


# --- shared helpers ----------------------------------------------------------------------------


def _client(endpoint: str, **config: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "dynamodb", endpoint_url=endpoint, region_name="us-east-1", config=Config(**config)
    )


def export_items(export_dir: Path) -> Iterator[dict[str, Any]]:
    """The items of a ddbpipe export in wire form, shard after shard."""
    import msgspec

    from ddbpipe.shards import iter_shard_items

    for shard in sorted((export_dir / "data").iterdir()):
        for raw in iter_shard_items([shard.read_bytes()], shard.name):
            yield msgspec.json.decode(raw)


def _deserializer() -> Any:
    from boto3.dynamodb.types import Binary, TypeDeserializer

    class WireDeserializer(TypeDeserializer):
        """TypeDeserializer for the JSON wire form, where binary values are base64 text."""

        def _deserialize_b(self, value: str) -> Binary:
            return Binary(base64.b64decode(value))

        def _deserialize_bs(self, value: list[str]) -> set[Binary]:
            return {Binary(base64.b64decode(v)) for v in value}

    return WireDeserializer()


def _resource_table(endpoint: str, table: str, **config: Any) -> Any:
    import boto3
    from botocore.config import Config

    resource = boto3.session.Session().resource(
        "dynamodb", endpoint_url=endpoint, region_name="us-east-1", config=Config(**config)
    )
    return resource.Table(table)


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_and_children_cpu() -> float:
    """CPU seconds of this process plus its finished children (dynamodump runs as one)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _runs(values: list[float], spec: str = ",.0f") -> str:
    return " / ".join(format(v, spec) for v in values)


# --- dynamodump ----------------------------------------------------------------------------------


def dynamodump_python() -> Path:
    """The interpreter of the dynamodump venv, created (with dynamodump) on first use."""
    python = DYNAMODUMP_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {DYNAMODUMP_VENV.name}/ with dynamodump", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(DYNAMODUMP_VENV)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "dynamodump"], check=True)
    return python


#: Runs dynamodump's main() with the given arguments and prints how long main() took.
_TIMED_MAIN = (
    "import sys, time\n"
    "from dynamodump import dynamodump\n"
    "sys.argv = ['dynamodump'] + sys.argv[1:]\n"
    "started = time.perf_counter()\n"
    "dynamodump.main()\n"
    "print('main_seconds', time.perf_counter() - started)\n"
)


def dynamodump_args(
    mode: str, endpoint: str, source: str, dump: Path, dest: str | None
) -> list[str]:
    host, port = endpoint.removeprefix("http://").split(":")
    args = [
        "-m",
        mode,
        "-r",
        "local",
        "--host",
        host,
        "--port",
        port,
        "--accessKey",
        ACCESS_KEY,
        "--secretKey",
        SECRET_KEY,
        "-s",
        source,
        "--dumpPath",
        str(dump),
        "--log",
        "WARNING",
    ]
    if dest is not None:
        args += [
            "-d",
            dest,
            "--noConfirm",
            "--billingMode",
            "PAY_PER_REQUEST",
            "--skipThroughputUpdate",
        ]
    return args


def run_dynamodump(args: list[str]) -> tuple[float, float]:
    """(seconds of dynamodump's main(), seconds of the whole process)."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(dynamodump_python()), "-c", _TIMED_MAIN, *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0 or "main_seconds" not in done.stdout:
        raise RuntimeError(f"dynamodump failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    main_seconds = float(done.stdout.split("main_seconds")[-1].split()[0])
    return main_seconds, wall


def dynamodump_startup() -> float:
    """Seconds to start the dynamodump venv's interpreter and import dynamodump (median of 3)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [str(dynamodump_python()), "-c", "import dynamodump.dynamodump"],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - started)
    return _median(times)


# --- part 1: DynamoDB Local --------------------------------------------------------------------


def ddbpipe_restore(endpoint: str, export_dir: Path, table: str, scratch: Path) -> float:
    import ddbpipe

    started = time.perf_counter()
    summary = ddbpipe.import_table(
        str(export_dir),
        table,
        target_wcu=40_000,
        create_table=True,
        endpoint_url=endpoint,
        checkpoint=str(scratch / f"{table}.checkpoint.json"),
        dead_letter=str(scratch / f"{table}.dead-letter.jsonl"),
    )
    seconds = time.perf_counter() - started
    assert summary.items_dead_lettered == 0, summary
    return seconds


def boto3_restore(endpoint: str, export_dir: Path, table: str) -> float:
    sample_data.create_table(endpoint, table)
    deserializer = _deserializer()
    started = time.perf_counter()
    target = _resource_table(endpoint, table)
    with target.batch_writer() as writer:
        for item in export_items(export_dir):
            writer.put_item(Item={k: deserializer.deserialize(v) for k, v in item.items()})
    return time.perf_counter() - started


BATCH_ITEMS = 25  # BatchWriteItem's limit, and what ddbpipe sends
CEILING_IN_FLIGHT = 16  # ddbpipe's default import concurrency


def ceiling_bodies(export_dir: Path, table: str) -> list[bytes]:
    """Every BatchWriteItem body of the restore, encoded as ddbpipe sends them."""
    import msgspec

    items = list(export_items(export_dir))
    return [
        msgspec.json.encode(
            {
                "RequestItems": {
                    table: [{"PutRequest": {"Item": item}} for item in items[at : at + BATCH_ITEMS]]
                },
                "ReturnConsumedCapacity": "TOTAL",
            }
        )
        for at in range(0, len(items), BATCH_ITEMS)
    ]


async def send_bodies(endpoint: str, table: str, bodies: list[bytes]) -> float:
    """Seconds to send ``bodies`` as BatchWriteItem calls, CEILING_IN_FLIGHT at a time."""
    import msgspec
    from botocore.credentials import Credentials

    from ddbpipe.dynamo import DynamoClient

    client = DynamoClient(
        region="us-east-1",
        endpoint=endpoint,
        credentials=Credentials(ACCESS_KEY, SECRET_KEY),
        max_connections=CEILING_IN_FLIGHT,
    )
    # One shared iterator: each sender takes the next body as soon as its call returns.
    pending = iter(bodies)

    async def sender() -> None:
        for body in pending:
            reply = msgspec.json.decode(
                await client.call_raw("BatchWriteItem", body, resource=table)
            )
            # DynamoDB Local never throttles; a partial write would make the rate a lie.
            assert not reply.get("UnprocessedItems"), reply["UnprocessedItems"]

    async with client:
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(CEILING_IN_FLIGHT)))
        return time.perf_counter() - started


def prepare_ceiling(endpoint: str, export_dir: Path, table: str) -> Callable[[], float]:
    """Create the table and encode every body now; the returned call is the timed send."""
    sample_data.create_table(endpoint, table)
    bodies = ceiling_bodies(export_dir, table)
    return lambda: asyncio.run(send_bodies(endpoint, table, bodies))


def warm_up(endpoint: str, export_dir: Path, scratch: Path, items: int) -> None:
    """One untimed ddbpipe restore, counted and dropped, so DynamoDB Local's JIT is warm."""
    table = "bench-import-warm-up"
    seconds = ddbpipe_restore(endpoint, export_dir, table, scratch)
    assert sample_data.count_items(endpoint, table) == items
    sample_data.drop_table(endpoint, table)
    print(
        f"warm-up: one untimed ddbpipe restore into a throwaway table ({seconds:.2f} s), "
        "not reported",
        flush=True,
    )


def local_part(args: argparse.Namespace) -> None:
    dynamodump_python()
    services.use_local_credentials()
    server = services.start_dynamodb_local()
    rates: dict[str, list[float]] = {"dynamodump": [], "boto3": [], "ddbpipe": [], "ceiling": []}
    client_cpu: dict[str, list[float]] = {name: [] for name in rates}
    server_cpu: dict[str, list[float]] = {name: [] for name in rates}
    walls: list[float] = []
    try:
        endpoint = server.endpoint
        source = "bench-import-src"
        sample_data.create_table(endpoint, source)
        sample_data.fill_table(endpoint, source, sample_data.generate_items(args.items))
        with tempfile.TemporaryDirectory() as scratch_name:
            scratch = Path(scratch_name)
            export_dir = scratch / "export"
            import ddbpipe

            exported = ddbpipe.export_table(
                source, str(export_dir), segments=args.segments, endpoint_url=endpoint
            )
            assert exported.items == args.items, exported
            dump = scratch / "dump"
            run_dynamodump(dynamodump_args("backup", endpoint, source, dump, None))
            startup = dynamodump_startup()
            pages = sorted((dump / source / "data").iterdir())
            print(
                f"items={args.items} ddbpipe export: {len(list((export_dir / 'data').iterdir()))}"
                f" shards; dynamodump backup: {len(pages)} pages; "
                f"dynamodump start-up {startup:.2f} s",
                flush=True,
            )
            restorers: dict[str, Callable[[str], float]] = {
                "ddbpipe": lambda t: ddbpipe_restore(endpoint, export_dir, t, scratch),
                "boto3": lambda t: boto3_restore(endpoint, export_dir, t),
            }

            def dynamodump_restore(table: str) -> float:
                main_seconds, wall = run_dynamodump(
                    dynamodump_args("restore", endpoint, source, dump, table)
                )
                walls.append(wall)
                return main_seconds

            restorers["dynamodump"] = dynamodump_restore
            if args.warm_up:
                warm_up(endpoint, export_dir, scratch, args.items)
            order = list(rates)
            for run in range(args.runs):
                for name in order if run % 2 == 0 else order[::-1]:
                    table = f"bench-import-{name}-{run}"
                    # The ceiling's table and bodies are made before its clock and CPU counters.
                    restore = (
                        prepare_ceiling(endpoint, export_dir, table)
                        if name == "ceiling"
                        else partial(restorers[name], table)
                    )
                    cpu_before = _own_and_children_cpu()
                    server_before = _process_cpu(server.process.pid)
                    seconds = restore()
                    client_cpu[name].append(_own_and_children_cpu() - cpu_before)
                    server_cpu[name].append(_process_cpu(server.process.pid) - server_before)
                    counted = sample_data.count_items(endpoint, table)
                    assert counted == args.items, (name, counted)
                    sample_data.drop_table(endpoint, table)
                    rates[name].append(args.items / seconds)
                    print(
                        f"  run {run} {name:10s} {seconds:6.2f} s "
                        f"{args.items / seconds:>8,.0f} items/s; CPU s: client "
                        f"{client_cpu[name][-1]:.2f}, DynamoDB Local {server_cpu[name][-1]:.2f}",
                        flush=True,
                    )
    finally:
        server.stop()
    base = _median(rates["dynamodump"])
    print(f"\nitems={args.items} segments={args.segments} runs={args.runs}")
    base_cpu = args.items / _median(client_cpu["dynamodump"])
    print(
        "| importer | median items/s | runs | vs dynamodump | items per client CPU-s "
        "| vs dynamodump | DynamoDB Local CPU-s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in rates:
        per_cpu = args.items / _median(client_cpu[name])
        print(
            f"| {name} | {_median(rates[name]):,.0f} | {_runs(rates[name])} | "
            f"{_median(rates[name]) / base:.2f}x | {per_cpu:,.0f} | {per_cpu / base_cpu:.2f}x "
            f"| {_median(server_cpu[name]):.1f} |"
        )
    wall_rate = args.items / _median(walls)
    ratio = _median(rates["ddbpipe"]) / wall_rate
    print(
        f"dynamodump whole process (start-up included): median {_median(walls):.2f} s, "
        f"{wall_rate:,.0f} items/s; ddbpipe vs that: {ratio:.2f}x"
    )
    share = _median(rates["ddbpipe"]) / _median(rates["ceiling"])
    print(f"ddbpipe median: {share:.0%} of the ceiling's median (the bound on this machine)")


# --- part 2: throttled -------------------------------------------------------------------------

HOT_KEY = "tenant#hot"
PAYLOAD_BYTES = 940  # with the key attributes and names, ~1,000 bytes billed: 1 WCU per item


def throttled_items(count: int, hot_share: float, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` ~1 KB items; ``hot_share`` of them under one partition key, the rest spread."""
    rng = random.Random(seed)
    hot = round(count * hot_share)
    cold_keys = max(1, (count - hot) // 4)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    items = []
    for seq in range(count):
        pk = HOT_KEY if seq < hot else f"tenant#{rng.randrange(cold_keys):05d}"
        payload = "".join(rng.choices(alphabet, k=PAYLOAD_BYTES))
        items.append({"pk": {"S": pk}, "sk": {"N": str(seq)}, "payload": {"S": payload}})
    rng.shuffle(items)
    return items


@dataclass
class CallLog:
    """BatchWriteItem attempts as the client saw them: (time, outcome)."""

    started: float = field(default_factory=time.perf_counter)
    calls: list[tuple[float, str]] = field(default_factory=list)
    #: (time, write rate ddbpipe's controller aimed at), sampled; empty for boto3.
    rates: list[tuple[float, float]] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        self.calls.append((time.perf_counter() - self.started, outcome))

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.calls if o == outcome)


def ddbpipe_throttled(
    endpoint: str, export_dir: Path, table: str, target_wcu: float, scratch: Path, log: CallLog,
    cluster: str | None = None,
) -> dict[str, Any]:
    import ddbpipe
    from ddbpipe import dynamo
    from ddbpipe.errors import ThrottledError

    original = dynamo.DynamoClient.batch_write_raw

    async def counted(self: Any, table_name: str, requests: list[bytes]) -> Any:
        try:
            reply = await original(self, table_name, requests)
        except ThrottledError:
            log.add("throttled")
            raise
        except Exception:
            log.add("error")
            raise
        log.add("unprocessed" if (reply.get("UnprocessedItems") or {}).get(table_name) else "ok")
        return reply

    progress = ddbpipe.JobProgress()
    finished = threading.Event()

    def sample_rate() -> None:
        while not finished.wait(0.1):
            if progress.current_rate:
                log.rates.append((time.perf_counter() - log.started, progress.current_rate))

    sampler = threading.Thread(target=sample_rate, daemon=True)
    dynamo.DynamoClient.batch_write_raw = counted
    sampler.start()
    try:
        summary = ddbpipe.import_table(
            str(export_dir),
            table,
            target_wcu=target_wcu,
            endpoint_url=endpoint,
            checkpoint=str(scratch / f"{table}.checkpoint.json"),
            dead_letter=str(scratch / f"{table}.dead-letter.jsonl"),
            progress=progress,
            cluster=cluster,
        )
    finally:
        dynamo.DynamoClient.batch_write_raw = original
        finished.set()
        sampler.join()
    return {
        "error": None,
        "dead_lettered": summary.items_dead_lettered,
        "summary_throttled": summary.throttled_requests,
        "summary_unprocessed_items": summary.unprocessed_items,
    }


def boto3_throttled(
    endpoint: str, items: list[dict[str, Any]], table: str, log: CallLog
) -> dict[str, Any]:
    target = _resource_table(endpoint, table, retries={"mode": "adaptive", "max_attempts": 10})
    events = target.meta.client.meta.events

    def on_attempt(response: Any = None, caught_exception: Any = None, **_: Any) -> None:
        if response is None:
            log.add("error")
            return
        http, parsed = response
        if http.status_code == 200:
            log.add("unprocessed" if parsed.get("UnprocessedItems") else "ok")
        elif parsed.get("Error", {}).get("Code") == "ProvisionedThroughputExceededException":
            log.add("throttled")
        else:
            log.add("error")

    # needs-retry fires once per attempt, before botocore decides on a retry.
    events.register_first("needs-retry.dynamodb.BatchWriteItem", on_attempt)
    deserializer = _deserializer()
    plain = [{k: deserializer.deserialize(v) for k, v in item.items()} for item in items]
    error = None
    log.started = time.perf_counter()
    try:
        with target.batch_writer() as writer:
            for item in plain:
                writer.put_item(Item=item)
    except Exception as failure:  # noqa: BLE001 - reported as the run's outcome
        error = f"{type(failure).__name__}: {failure}"
    return {"error": error, "dead_lettered": 0}


def dynamodump_throttled(endpoint: str, source: str, dump: Path, table: str) -> dict[str, Any]:
    """``dynamodump -m restore --dataOnly`` of its backup of ``source`` into the (created,
    throttled) ``table``; the time is its main()'s, which is then the writing alone."""
    args = dynamodump_args("restore", endpoint, source, dump, table) + ["--dataOnly"]
    started = time.perf_counter()
    try:
        seconds, _ = run_dynamodump(args)
    except RuntimeError as failure:
        return {"error": str(failure).splitlines()[0], "dead_lettered": 0,
                "seconds": time.perf_counter() - started}
    return {"error": None, "dead_lettered": 0, "seconds": seconds}


def _steady_mean(series: tuple[tuple[int, float], ...]) -> float:
    """Mean accepted WCU/s from the 3rd second to the last full second."""
    if not series:
        return 0.0
    last = series[-1][0]
    per_second = dict(series)
    window = range(2, last)  # the last second is partial
    if not window:
        return 0.0
    return sum(per_second.get(s, 0.0) for s in window) / len(window)


def _timeline(series: tuple[tuple[int, float], ...], log: CallLog) -> str:
    per_second = dict(series)
    throttles: dict[int, int] = {}
    calls: dict[int, int] = {}
    for moment, outcome in log.calls:
        second = int(moment)
        calls[second] = calls.get(second, 0) + 1
        if outcome in ("throttled", "unprocessed"):
            throttles[second] = throttles.get(second, 0) + 1
    lowest_rate: dict[int, float] = {}
    for moment, rate in log.rates:
        second = int(moment)
        lowest_rate[second] = min(rate, lowest_rate.get(second, rate))
    last = max([*per_second, *calls, 0])
    return " ".join(
        f"{s}:{per_second.get(s, 0.0):.0f}/{throttles.get(s, 0)}t/{calls.get(s, 0)}c"
        + (f"/r{lowest_rate[s]:.0f}" if s in lowest_rate else "")
        for s in range(last + 1)
    )


def hot_partition_bound(items: list[dict[str, Any]], wcu: float, partitions: int) -> float:
    """Seconds the busiest partition needs for its items' write units, at its share of the
    capacity, after the one second's allowance a fresh simulated table starts with."""
    from ddbpipe import codec
    from tools.capacity_model import partition_of

    load = [0.0] * partitions
    for item in items:
        wire = sample_data.to_wire(item)
        load[partition_of(wire["pk"], partitions)] += codec.write_units(codec.item_size(wire))
    per_partition = wcu / partitions
    return max(load) / per_partition - 1.0


def start_local_cluster(spec: str) -> Any:
    """A Dask LocalCluster as ``--cluster local:N`` starts one, kept for all the runs (its
    start is not part of any import's time)."""
    import logging

    from distributed import LocalCluster

    from ddbpipe.cluster import LOCAL_THREADS_PER_WORKER

    workers = int(spec.removeprefix("local:"))
    return LocalCluster(n_workers=workers, threads_per_worker=LOCAL_THREADS_PER_WORKER,
                        processes=True, dashboard_address=None, silence_logs=logging.ERROR)


def throttled_warm_up(
    backend: str, export_dir: Path, scratch: Path, items: int, cluster: str | None
) -> None:
    """One untimed ddbpipe import straight into DynamoDB Local (its JIT compiles the write
    path; a cluster's workers load ddbpipe), counted and dropped: else the first run is slowed
    by it, whichever writer goes first."""
    import ddbpipe

    table = "bench-throttle-warm-up"
    ddbpipe.import_table(str(export_dir), table, create_table=True, target_wcu=40_000,
                         endpoint_url=backend, cluster=cluster,
                         checkpoint=str(scratch / "warm-up.checkpoint.json"),
                         dead_letter=str(scratch / "warm-up.dead-letter.jsonl"))
    assert sample_data.count_items(backend, table) == items
    sample_data.drop_table(backend, table)


def throttled_part(args: argparse.Namespace) -> None:
    from tools.capacity_simulator import start_capacity_simulator

    services.use_local_credentials()
    server = services.start_dynamodb_local()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.writers}
    cluster = start_local_cluster(args.cluster) if args.cluster else None
    try:
        backend = server.endpoint
        simulator = start_capacity_simulator(backend)
        try:
            source = "bench-throttle-src"
            sample_data.create_table(backend, source, sort_key_type="N")
            sample_data.fill_table(backend, source, throttled_items(args.items, args.hot_share))
            with tempfile.TemporaryDirectory() as scratch_name:
                scratch = Path(scratch_name)
                export_dir = scratch / "export"
                import ddbpipe

                ddbpipe.export_table(source, str(export_dir), segments=4, endpoint_url=backend)
                items = list(export_items(export_dir))
                assert len(items) == args.items
                sizes = [sample_data.item_size(i) for i in items]
                bound = hot_partition_bound(items, args.wcu, args.partitions)
                print(
                    f"items={args.items} hot share={args.hot_share:.0%} item size "
                    f"{min(sizes)}-{max(sizes)} B; capacity {args.wcu:g} WCU/s on "
                    f"{args.partitions} partition(s); ddbpipe target {args.target_wcu:g}; "
                    f"the busiest partition needs {bound:.2f} s"
                    + (f"; ddbpipe on a cluster of {args.cluster}" if cluster else ""),
                    flush=True,
                )
                dump = scratch / "dump"
                if "dynamodump" in results:
                    run_dynamodump(dynamodump_args("backup", backend, source, dump, None))
                address = cluster.scheduler_address if cluster else None
                throttled_warm_up(backend, export_dir, scratch, args.items, address)
                order = list(results)
                for run in range(args.runs):
                    for name in order if run % 2 == 0 else order[::-1]:
                        table = f"bench-throttle-{name}-{run}"
                        sample_data.create_table(backend, table, sort_key_type="N")
                        simulator.configure(table, wcu=args.wcu, partitions=args.partitions,
                                            write_order=args.write_order)
                        log = CallLog()
                        started = time.perf_counter()
                        if name == "ddbpipe":
                            outcome = ddbpipe_throttled(
                                simulator.endpoint, export_dir, table, args.target_wcu, scratch,
                                log, address,
                            )
                        elif name == "boto3":
                            outcome = boto3_throttled(simulator.endpoint, items, table, log)
                        else:
                            outcome = dynamodump_throttled(simulator.endpoint, source, dump, table)
                        seconds = outcome.pop("seconds", time.perf_counter() - started)
                        stats = simulator.stats(table)
                        stored = sample_data.count_items(backend, table)
                        simulator.unconfigure(table)
                        sample_data.drop_table(backend, table)
                        total_calls = len(log.calls)
                        throttled = log.count("throttled") + log.count("unprocessed")
                        row = {
                            "seconds": seconds,
                            "lost": args.items - stored,
                            "calls": total_calls,
                            "throttled_calls": throttled,
                            "throttled_ratio": throttled / max(total_calls, 1),
                            "of_bound": seconds / bound,
                            "resends": stats.items_throttled / args.items,
                            "sim_throttled": stats.throttled_requests,
                            "sim_unprocessed_calls": stats.calls_with_unprocessed,
                            "accepted_wcu": stats.accepted_wcu,
                            # A fresh simulated table holds one second's allowance.
                            "use": stats.accepted_wcu / (args.wcu * (seconds + 1.0)),
                            "steady_use": _steady_mean(stats.wcu_per_second) / args.wcu,
                            "timeline": _timeline(stats.wcu_per_second, log),
                            **outcome,
                        }
                        results[name].append(row)
                        print(
                            f"  run {run} {name:8s} {seconds:6.1f} s lost {row['lost']} "
                            f"calls {total_calls} throttled {throttled} "
                            f"({row['throttled_ratio']:.1%}; simulator "
                            f"{stats.throttled_requests}+{stats.calls_with_unprocessed}) "
                            f"accepted {stats.accepted_wcu:,.0f} WCU use {row['use']:.1%} "
                            f"steady {row['steady_use']:.1%}; {row['of_bound']:.2f}x the "
                            f"busiest partition's time, {row['resends']:.2f} re-sends per item"
                            + (f" error: {outcome['error']}" if outcome["error"] else ""),
                            flush=True,
                        )
                        print(
                            "    per second (accepted WCU/throttled calls/calls"
                            f"[/lowest ddbpipe rate]): {row['timeline']}",
                            flush=True,
                        )
        finally:
            simulator.stop()
    finally:
        if cluster is not None:
            cluster.close()
        server.stop()
    print(
        f"\nitems={args.items} capacity={args.wcu:g} WCU/s partitions={args.partitions} "
        f"hot share={args.hot_share:.0%} runs={args.runs}"
    )
    print(
        "| writer | completion s | x the busiest partition's time | re-sends per item | "
        "items lost | throttled calls / calls | WCU used / available | steady-state use |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return _median([r[key] for r in rows])

        print(
            f"| {name} | {med('seconds'):.1f} ({_runs([r['seconds'] for r in rows], '.1f')}) | "
            f"{med('of_bound'):.2f}x ({_runs([r['of_bound'] for r in rows], '.2f')}) | "
            f"{med('resends'):.2f} ({_runs([r['resends'] for r in rows], '.2f')}) | "
            f"{_runs([r['lost'] for r in rows], '.0f')} | "
            f"{med('throttled_ratio'):.1%} ({_runs([r['throttled_ratio'] for r in rows], '.1%')};"
            f" calls {_runs([r['calls'] for r in rows], '.0f')}) | "
            f"{med('use'):.1%} ({_runs([r['use'] for r in rows], '.1%')}) | "
            f"{med('steady_use'):.1%} ({_runs([r['steady_use'] for r in rows], '.1%')}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("local", "throttled", "all"))
    parser.add_argument(
        "--items",
        type=int,
        default=None,
        help="items (default 20000 for local, 12000 for throttled)",
    )
    parser.add_argument("--segments", type=int, default=4, help="export segments (local)")
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="skip the untimed restore that warms DynamoDB Local up (local)",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs (default 3 / 2)")
    parser.add_argument("--wcu", type=float, default=400.0, help="simulated table capacity")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--target-wcu", type=float, default=2000.0, help="ddbpipe's target")
    parser.add_argument("--hot-share", type=float, default=0.3)
    parser.add_argument("--write-order", choices=("given", "random"), default="given",
                        help="the order the simulator decides a batch's writes in (DynamoDB "
                             "writes them in parallel)")
    parser.add_argument("--writers", nargs="+", choices=("ddbpipe", "boto3", "dynamodump"),
                        default=["ddbpipe", "boto3", "dynamodump"], help="(throttled)")
    parser.add_argument("--cluster", metavar="local:N",
                        help="(throttled) ddbpipe on a Dask LocalCluster of N workers")
    args = parser.parse_args()
    if args.part in ("local", "all"):
        local_args = argparse.Namespace(**vars(args))
        local_args.items = args.items or 20_000
        local_args.runs = args.runs or 3
        local_part(local_args)
    if args.part in ("throttled", "all"):
        throttled_args = argparse.Namespace(**vars(args))
        throttled_args.items = args.items or 12_000
        throttled_args.runs = args.runs or 2
        throttled_part(throttled_args)


if __name__ == "__main__":
    main()
