"""Kill campaign: exports and imports killed (SIGKILL) at random moments, resumed, checked.

Every trial runs the job as a user's script would (the ddbpipe library, in a subprocess of
its own) against DynamoDB Local, through a fault endpoint (``tools/fault_endpoint.py``) at
fault rate 0 that only counts the requests reaching DynamoDB. The campaign kills the process
once the endpoint has seen a random number (seeded) of Scan pages (export) or of items
written (import), in the first 90% of the job, as an operator's ``kill -9`` or a lost machine
would; then it resumes the job (``resume=True``, in the campaign's process) and checks the result:

- export (table -> local directory, 4 segments, small shards): the restore drill against the
  table (``verify_export(read_data=True, against_table=...)``) finds no difference, and the
  export holds as many items as the table: each item once;
- import (the campaign's first export -> a new table per trial, ``create_table``): the drill
  against the new table finds no difference.

What a kill costs, per trial:

- export, pages re-scanned: the Scan requests of the killed and the resumed run together,
  beyond those of one uninterrupted export (measured first): pages scanned twice, those whose
  items the killed run had not yet stored in a checkpointed shard;
- import, items re-written: the put requests of both runs' BatchWriteItem calls, beyond the
  items of the table.

A job that ends before the kill comes is counted as not killed (and still checked).

    .venv/bin/python benchmarks/kill_campaign.py --trials 20 --items 4000 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402

import ddbpipe  # noqa: E402
from tools import sample_data, services  # noqa: E402
from tools.fault_endpoint import FaultCounts, FaultEndpoint  # noqa: E402

SEGMENTS = 4
PAGE_SIZE = 25
SHARD_BYTES = 32 * 1024
#: Kill points fall in the first share of the job, so that the job is still running.
KILL_WITHIN = 0.9
#: Only against a job that hangs: no trial comes near it.
JOB_TIMEOUT = 300.0

#: Runs ``ddbpipe.<job>(**settings)`` as a user's script would: the job's name, then its
#: settings as JSON.
_JOB = """
import json, sys, ddbpipe
getattr(ddbpipe, sys.argv[1])(**json.loads(sys.argv[2]))
"""


@dataclass(frozen=True)
class Trial:
    """One killed and resumed job."""

    job: str
    #: Killed before it ended on its own.
    killed: bool
    #: The result holds exactly the source's items, each once.
    exact: bool
    #: Pages re-scanned (export) or items re-written (import).
    redone: int


@dataclass(frozen=True)
class CampaignReport:
    """Every trial, and the whole of each job: Scan pages of an uninterrupted export, items."""

    trials: list[Trial]
    pages: int
    items: int

    @property
    def exact(self) -> bool:
        return all(trial.exact for trial in self.trials)

    def table(self) -> str:
        """A Markdown table: per job, trials, killed, exact, work re-done per killed trial."""
        rows = [
            "| job | trials | killed | exact | re-done per trial | median | max | of |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for job, redone, whole in (("export", "pages re-scanned", self.pages),
                                   ("import", "items re-written", self.items)):
            of_job = [trial for trial in self.trials if trial.job == job]
            amounts = [trial.redone for trial in of_job if trial.killed] or [0]
            rows.append(
                f"| {job} | {len(of_job)} | {sum(t.killed for t in of_job)} | "
                f"{sum(t.exact for t in of_job)} | {redone} | "
                f"{statistics.median(amounts):g} | {max(amounts)} | {whole} |"
            )
        return "\n".join(rows)


@dataclass(frozen=True)
class _Run:
    """One job (``ddbpipe.export_table`` or ``import_table``), and what to watch while it
    runs."""

    job: str
    settings: dict[str, object]
    #: The endpoint's count that says how far the job got.
    progress: Callable[[FaultCounts], int]

    def resume(self) -> None:
        getattr(ddbpipe, self.job)(**self.settings, resume=True)


def _scans(counts: FaultCounts) -> int:
    return counts.forwarded.get("Scan", 0)


def _writes(counts: FaultCounts) -> int:
    return counts.write_requests


class Campaign:
    """Kills and resumes jobs against the DynamoDB Local at ``dynamodb_endpoint``, with its
    files in ``workdir``; ``rng`` draws the kill points."""

    def __init__(self, dynamodb_endpoint: str, workdir: Path, *, items: int, seed: int) -> None:
        self.direct = dynamodb_endpoint
        self.workdir = workdir
        self.items = items
        self.rng = random.Random(seed)
        self.source = f"kill-campaign-{seed}-{time.time_ns()}"
        #: Tables made (the source, and the imports' copies), dropped at the end.
        self.tables = [self.source]
        self.counter = FaultEndpoint(dynamodb_endpoint, service="dynamodb")
        # A killed process leaves its temporary shard files behind: keep them in here.
        self.env = {**os.environ, "TMPDIR": str(workdir / "tmp")}
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)

    def run(self, trials: int) -> CampaignReport:
        sample_data.create_table(self.direct, self.source)
        sample_data.fill_table(self.direct, self.source, sample_data.generate_items(self.items))
        try:
            return self._trials(trials)
        finally:
            self.drop_tables()

    def _trials(self, trials: int) -> CampaignReport:
        with self.counter.start():
            baseline = self.workdir / "baseline"
            ddbpipe.export_table(**self._export_settings(str(baseline)))
            pages = _scans(self.counter.counts())
            exports = [self._export_trial(n, pages) for n in range(trials)]
            imports = [self._import_trial(n, baseline) for n in range(trials)]
        return CampaignReport(exports + imports, pages, self.items)

    def _export_trial(self, number: int, pages: int) -> Trial:
        destination = str(self.workdir / f"export-{number}")
        run = _Run("export_table", self._export_settings(destination), _scans)
        killed, scanned = self._kill_and_resume(run, self._kill_point(pages))
        report = ddbpipe.verify_export(destination, read_data=True, against_table=self.source,
                                       endpoint_url=self.direct)
        exact = report.ok and report.items_read == self.items
        return Trial("export", killed, exact, scanned - pages)

    def _import_trial(self, number: int, source: Path) -> Trial:
        table = f"{self.source}-copy-{number}"
        self.tables.append(table)
        checkpoint = str(self.workdir / f"import-{number}.checkpoint.json")
        settings = {
            "source": str(source), "table": table, "create_table": True,
            "checkpoint": checkpoint, "dead_letter": f"{checkpoint}.dead-letter",
            "endpoint_url": self.counter.endpoint,
        }
        run = _Run("import_table", settings, _writes)
        killed, written = self._kill_and_resume(run, self._kill_point(self.items))
        report = ddbpipe.verify_export(str(source), read_data=True, against_table=table,
                                       endpoint_url=self.direct)
        comparison = report.comparison
        exact = report.ok and comparison is not None and comparison.table_items == self.items
        return Trial("import", killed, exact, written - self.items)

    def _export_settings(self, destination: str) -> dict[str, object]:
        return {
            "table": self.source, "destination": destination, "segments": SEGMENTS,
            "page_size": PAGE_SIZE, "shard_bytes": SHARD_BYTES,
            "endpoint_url": self.counter.endpoint,
        }

    def _kill_point(self, total: int) -> int:
        return self.rng.randint(1, max(1, int(total * KILL_WITHIN)))

    def _kill_and_resume(self, run: _Run, kill_at: int) -> tuple[bool, int]:
        """Start the job, SIGKILL it once ``run.progress`` reaches ``kill_at``, resume it to
        its end (here, as a new run); whether it was killed, and how far both runs went."""
        before = run.progress(self.counter.counts())
        process = self._start(run)
        deadline = time.monotonic() + JOB_TIMEOUT
        while process.poll() is None:
            if run.progress(self.counter.counts()) - before >= kill_at:
                process.send_signal(signal.SIGKILL)  # nothing if it has just ended
                process.wait()
            elif time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"a job did not reach its kill point in {JOB_TIMEOUT:g} s")
            time.sleep(0.002)
        killed = process.returncode == -signal.SIGKILL
        if killed:
            run.resume()
        elif process.returncode != 0:
            log = (self.workdir / "job.log").read_text(errors="replace").strip()
            raise RuntimeError(f"a job failed (exit code {process.returncode}): {log}")
        return killed, run.progress(self.counter.counts()) - before

    def _start(self, run: _Run) -> subprocess.Popen[bytes]:
        # Its errors go to a file: a pipe nobody reads while it runs could fill and block it.
        with open(self.workdir / "job.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-c", _JOB, run.job, json.dumps(run.settings)], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )

    def drop_tables(self) -> None:
        client = boto3.client("dynamodb", endpoint_url=self.direct)
        for table in self.tables:
            with contextlib.suppress(client.exceptions.ResourceNotFoundException):
                client.delete_table(TableName=table)


def run_campaign(
    dynamodb_endpoint: str, workdir: Path, *, trials: int = 20, items: int = 4000, seed: int = 1
) -> CampaignReport:
    """``trials`` killed exports, then ``trials`` killed imports; see the module docstring."""
    return Campaign(dynamodb_endpoint, workdir, items=items, seed=seed).run(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per job")
    parser.add_argument("--items", type=int, default=4000, help="items in the table")
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill points")
    args = parser.parse_args()
    services.use_local_credentials()
    started = time.monotonic()
    with services.dynamodb_local() as server, tempfile.TemporaryDirectory() as scratch:
        report = run_campaign(server.endpoint, Path(scratch), trials=args.trials,
                              items=args.items, seed=args.seed)
    print(f"Kill campaign: {args.trials} trials per job, {args.items} items, seed {args.seed}, "
          f"{time.monotonic() - started:.0f} s")
    print(report.table())
    if not report.exact:
        sys.exit(1)


if __name__ == "__main__":
    main()
