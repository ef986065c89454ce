"""What a SIGKILL costs an import: the items a resumed import writes a second time.

The scenario: a table of ``--items`` sample items (``tools/sample_data.py``, ~361 bytes of
DynamoDB JSON each) exported by ddbpipe with ``--files`` Scan segments (one shard each), so
that with the default 8 open files every shard is in progress at once. Per trial, into a fresh
table behind the capacity simulator (``tools/capacity_simulator.py``, here with far more
capacity than asked: it only counts the items each run sends):

1. the import (``run_import`` with ``target_wcu=--target-wcu`` and
   ``checkpoint_interval=--checkpoint-interval``, default ddbpipe's) runs in a child process
   and is killed with SIGKILL once the simulator has accepted about ``--kill-at`` items (a
   seeded draw within 3% of it, so the kill falls at another moment of the checkpoint
   interval in each trial);
2. the items in the table are counted (Scan COUNT on DynamoDB Local);
3. the import is resumed in this process (``resume=True``, ``target_wcu=40000``), the table
   counted again (it must hold every item);
4. re-written items = what the simulator accepted from the resumed run minus the items that
   were missing after the kill.

Printed per trial: the kill point, the items written before it, the items re-written and their
share of those written before; then the median and maximum over the trials against the target
(under 10% of what was written before the kill) and against the bound the checkpoint design
gives: the target rate times the checkpoint interval, plus the writer's buffer (records read
and not finished, ``TableWriter.buffer_records``), whatever the table's size.

    .venv/bin/python benchmarks/resume_bench.py --trials 5 --target-wcu 1000

(the defaults are the scenario: ``--items 12000 --files 6 --kill-at 8250 --seed 7``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import sample_data, services  # noqa: E402

#: The child process: one import, at the given rate, until it is killed.
KILLABLE_IMPORT = """
import asyncio, sys
from ddbpipe.config import AwsOptions, ImportOptions
from ddbpipe.import_job import run_import
source, table, endpoint, rate, checkpoint, dead_letter, interval = sys.argv[1:]
options = ImportOptions(source=source, table=table, target_wcu=float(rate),
                        checkpoint=checkpoint, dead_letter=dead_letter,
                        aws=AwsOptions(endpoint_url=endpoint))
asyncio.run(run_import(options, checkpoint_interval=float(interval)))
"""
#: The kill point of a trial is drawn within this share of ``--kill-at``.
KILL_SPREAD = 0.03
#: Records the writer holds read and not finished, by default (16 calls x 25 records x 4).
WRITER_BUFFER = 16 * 25 * 4


@dataclass(frozen=True)
class Trial:
    kill_at: int
    written_before: int
    rewritten: int
    #: Seconds from the last checkpoint save to the kill (the file's modification time).
    checkpoint_age: float

    @property
    def share(self) -> float:
        return self.rewritten / self.written_before


def kill_midway(
    args: argparse.Namespace, simulator: Any, export_dir: Path, table: str, state: Path,
    kill_at: int,
) -> float:
    """Run the import in a child process and SIGKILL it once ``kill_at`` items are in;
    returns the checkpoint's age at the kill."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_IMPORT, str(export_dir), table, simulator.endpoint,
         str(args.target_wcu), str(state / "checkpoint.json"), str(state / "dead.jsonl"),
         str(args.checkpoint_interval)],
        env=os.environ.copy(),
    )
    try:
        while child.poll() is None and simulator.stats(table).items_accepted < kill_at:
            time.sleep(0.002)
        if child.poll() is not None:
            raise RuntimeError(f"the import ended (exit {child.returncode}) before the kill")
        child.send_signal(signal.SIGKILL)
        return time.time() - (state / "checkpoint.json").stat().st_mtime
    finally:
        child.wait()


def run_trial(
    args: argparse.Namespace, backend: str, simulator: Any, export_dir: Path, trial: int,
    kill_at: int,
) -> Trial:
    import ddbpipe

    table = f"bench-resume-{trial}"
    sample_data.create_table(backend, table)
    # Far more capacity than asked, on many partitions: the simulator only counts.
    simulator.configure(table, wcu=1_000_000, partitions=1000)
    try:
        with tempfile.TemporaryDirectory() as state_name:
            state = Path(state_name)
            age = kill_midway(args, simulator, export_dir, table, state, kill_at)
            written_before = sample_data.count_items(backend, table)
            simulator.reset_stats(table)
            summary = ddbpipe.import_table(
                str(export_dir), table, resume=True, target_wcu=40_000,
                endpoint_url=simulator.endpoint, checkpoint=str(state / "checkpoint.json"),
                dead_letter=str(state / "dead.jsonl"),
            )
        assert summary.items_read == summary.items_written == args.items, summary
        assert sample_data.count_items(backend, table) == args.items
        sent_again = simulator.stats(table).items_accepted
        rewritten = sent_again - (args.items - written_before)
        return Trial(kill_at, written_before, rewritten, age)
    finally:
        simulator.unconfigure(table)
        sample_data.drop_table(backend, table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--files", type=int, default=6, help="Scan segments = shard files")
    parser.add_argument("--kill-at", type=int, default=8_250, help="items in before the kill")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--target-wcu", type=float, default=1000.0)
    parser.add_argument("--checkpoint-interval", type=float, default=None,
                        help="seconds between checkpoint saves (default: ddbpipe's)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    services.use_local_credentials()
    from ddbpipe.import_state import DEFAULT_CHECKPOINT_INTERVAL
    from tools.capacity_simulator import start_capacity_simulator

    if args.checkpoint_interval is None:
        args.checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL

    rng = random.Random(args.seed)
    server = services.start_dynamodb_local()
    try:
        backend = server.endpoint
        source = "bench-resume-src"
        sample_data.create_table(backend, source)
        sample_data.fill_table(backend, source, sample_data.generate_items(args.items, seed=1))
        with tempfile.TemporaryDirectory() as scratch, start_capacity_simulator(
            backend
        ) as simulator:
            import ddbpipe

            export_dir = Path(scratch) / "export"
            ddbpipe.export_table(source, str(export_dir), segments=args.files,
                                 endpoint_url=backend)
            shards = len(list((export_dir / "data").iterdir()))
            print(f"items={args.items} shards={shards} kill at ~{args.kill_at} "
                  f"target_wcu={args.target_wcu:g} checkpoint interval "
                  f"{args.checkpoint_interval:g} s", flush=True)
            trials = []
            for number in range(args.trials):
                spread = round(args.kill_at * KILL_SPREAD)
                kill_at = args.kill_at + rng.randint(-spread, spread)
                trial = run_trial(args, backend, simulator, export_dir, number, kill_at)
                trials.append(trial)
                print(f"  trial {number}: killed at {trial.kill_at:,} accepted, "
                      f"{trial.written_before:,} in the table; re-written {trial.rewritten:,} "
                      f"({trial.share:.1%}); checkpoint saved {trial.checkpoint_age:.2f} s "
                      "before the kill", flush=True)
    finally:
        server.stop()
    report(args, trials)


def report(args: argparse.Namespace, trials: list[Trial]) -> None:
    rewritten = [trial.rewritten for trial in trials]
    shares = [trial.share for trial in trials]
    bound = args.target_wcu * args.checkpoint_interval + WRITER_BUFFER
    print(f"re-written items: median {statistics.median(rewritten):,.0f} "
          f"({statistics.median(shares):.1%} of those written before the kill), "
          f"max {max(rewritten):,} ({max(shares):.1%}); target under 10%: "
          f"{'met' if statistics.median(shares) < 0.10 else 'NOT met'} by the median, "
          f"{'met' if max(shares) < 0.10 else 'NOT met'} by the max")
    print(f"bound (target rate x interval + writer buffer): {bound:,.0f} items; "
          f"max re-written is {max(rewritten) / bound:.0%} of it")


if __name__ == "__main__":
    main()
