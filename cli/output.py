"""What the ``ddbpipe`` command prints, and how it runs a job: progress while it runs, one
line (or one JSON object) when it ends, one line per problem, exit codes from errors.

Messages go to stderr, one line each whatever the terminal's width (scripts grep them);
results asked for with ``--json`` or listed in a table go to stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ddbpipe.catalog import ListedExport
from ddbpipe.errors import ConfigError, DdbpipeError
from ddbpipe.progress import JobProgress
from ddbpipe.thaw import ThawSummary
from ddbpipe.verify_job import VerifyReport

# soft_wrap: a message stays one line however narrow the terminal (scripts grep for it).
stderr = Console(stderr=True, soft_wrap=True)
log = logging.getLogger(__name__)
T = TypeVar("T")


def say(line: str) -> None:
    """One message line on stderr, printed as it is (no markup, no highlighting)."""
    stderr.print(line, highlight=False, markup=False)


# --- running a job -----------------------------------------------------------------------------


def report(summary: dict[str, Any], json_output: bool, line: str) -> None:
    """The end of a job: one JSON object on stdout with --json, else one line on stderr."""
    if json_output:
        print(json.dumps(summary))
    else:
        say(line)


def export_detail(p: JobProgress) -> str:
    if p.waiting_for:
        return p.waiting_for
    return (
        f"{p.items:,} items  {mb(p.raw_bytes)}  {p.items_per_second:,.0f} items/s  "
        f"{p.capacity_per_second:,.1f} RCU/s{_of_budget(p)}  {_throttles(p)}  "
        f"segments {p.segments_done}/{p.segments_total}{_workers(p)}"
    )


def _of_budget(p: JobProgress) -> str:
    return f" of {p.target_rate:,.0f}" if p.target_rate else ""


def _throttles(p: JobProgress) -> str:
    return f"{p.throttles / p.elapsed:,.1f} throttles/s"


def _workers(p: JobProgress) -> str:
    return f"  workers busy {p.workers_busy}" if p.workers_busy else ""


def import_detail(p: JobProgress) -> str:
    return (
        f"{p.items:,} written  {p.dead_lettered:,} dead-lettered  "
        f"{p.capacity_per_second:,.0f} WCU/s of {p.target_rate:,.0f}  "
        f"{_throttles(p)}  files {p.files_done}/{p.files_total}"
        f"{_workers(p)}"
    )


class JobDisplay:
    """A rich progress bar on a terminal; a plain log line every few seconds otherwise."""

    def __init__(
        self, label: str, progress: JobProgress, detail: Callable[[JobProgress], str],
        every: float = 5.0,
    ) -> None:
        self.progress = progress
        self.describe = detail
        self.every = every
        self.last_line = time.monotonic()  # the first line after `every` seconds, not at once
        self.bar: Progress | None = None
        if stderr.is_terminal:
            self.bar = Progress(
                TextColumn(f"[bold]{label}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=stderr, transient=False,
            )
            self.task = self.bar.add_task(label, total=None, detail="")
            self.bar.start()

    def detail(self) -> str:
        return self.describe(self.progress)

    def update(self) -> None:
        p = self.progress
        if self.bar is not None:
            total = max(p.items_estimate, p.items) or None
            self.bar.update(self.task, completed=p.items, total=total, detail=self.detail())
        elif time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            eta = p.eta_seconds
            tail = f"  eta {eta:,.0f} s" if eta is not None else ""
            log.info("%s%s", self.detail(), tail)

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.stop()


def run_job(
    job: Callable[[], Coroutine[Any, Any, T]],
    display_factory: Callable[[], Any],
    *,
    interrupted_hint: str,
) -> T:
    """Run a job with a display; a ddbpipe error becomes one line on stderr and exit code 2
    (bad usage) or 1 (the job failed), Ctrl-C exit code 130 with ``interrupted_hint``."""
    try:
        return asyncio.run(with_display(job, display_factory))
    except ConfigError as error:  # an option, or a combination of options, that cannot work
        say(f"error: {error}")
        raise typer.Exit(2) from None
    except DdbpipeError as error:
        say(f"error: {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        say(f"interrupted{'; ' + interrupted_hint if interrupted_hint else ''}")
        raise typer.Exit(130) from None


async def with_display(
    job: Callable[[], Awaitable[T]], display_factory: Callable[[], Any]
) -> T:
    display = display_factory()
    if display is None:
        return await job()

    async def refresh() -> None:
        while True:
            display.update()
            await asyncio.sleep(0.25)

    refresher = asyncio.create_task(refresh())
    try:
        return await job()
    finally:
        refresher.cancel()
        display.close()


def mb(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


# --- verify ------------------------------------------------------------------------------------


def print_verify(report: VerifyReport, json_output: bool) -> None:
    """The report: JSON on stdout with --json; a line per problem and per kind of difference
    from the table, then the verdict, on stderr."""
    if json_output:
        print(json.dumps(report.to_dict()))
    for problem in report.problems:
        say(f"problem: {problem}")
    if report.comparison is not None:
        for line in report.comparison.describe():
            say(line)
    elif report.against_table is not None:
        say(f"table {report.against_table} not compared: the export has problems")
    if not json_output:
        checked = f", {report.items_read:,} items read back" if report.read_data else ""
        verdict = "OK" if report.ok else (
            f"{len(report.problems)} problem(s)" if report.problems else "differences"
        )
        say(f"{verdict}: export {report.export_id} of {report.table}, {report.shards} shards, "
            f"{report.items:,} items{checked}")


# --- ls ----------------------------------------------------------------------------------------


def print_catalog(exports: list[ListedExport], location: str, json_output: bool) -> None:
    """The exports: a JSON array, or aligned columns on stdout and a summary on stderr."""
    if json_output:
        print(json.dumps([entry.to_dict() for entry in exports]))
        return
    if not exports:
        say(f"no exports under {location}")
        return
    print_columns([CATALOG_COLUMNS, *(catalog_row(entry) for entry in exports)])
    for entry in exports:
        if entry.error:
            say(f"problem: {entry.error}")
    complete = sum(entry.complete for entry in exports)
    unreadable = sum(entry.error is not None for entry in exports)
    say(f"{len(exports)} exports under {location}, {complete} complete"
        + (f", {unreadable} unreadable" if unreadable else ""))


CATALOG_COLUMNS = ("PATH", "TABLE", "EXPORT TIME", "ITEMS", "STORED", "FORMAT", "STATE",
                    "CLASS", "SSE", "KMS KEY", "LOCK")


def catalog_row(entry: ListedExport) -> tuple[str, ...]:
    state = "unreadable" if entry.error else "complete" if entry.complete else "unfinished"
    lock = entry.object_lock_mode and f"{entry.object_lock_mode} until {entry.retain_until}"
    cells = (
        entry.path, entry.table, entry.export_time,
        f"{entry.items:,}" if entry.items is not None else None,
        mb(entry.stored_bytes) if entry.stored_bytes is not None else None,
        entry.format, state, entry.storage_class, entry.sse, entry.kms_key_id, lock,
    )
    return tuple(cell or "-" for cell in cells)


def print_columns(rows: list[tuple[str, ...]]) -> None:
    """Plain aligned columns on stdout: a path is never wrapped or cut (scripts grep them)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


# --- thaw --------------------------------------------------------------------------------------


def thaw_waiting(summary: ThawSummary) -> None:
    """A line on stderr before each wait of ``thaw --wait``."""
    next_check = f"next check in {duration(summary.next_check_seconds or 0.0)}"
    if summary.checks == 0:
        line = f"thawing {summary.source}: {thaw_counts(summary)}; {next_check}"
    else:
        line = f"{summary.pending:,} restores still under way; {next_check}"
    say(line)


def thaw_outcome(summary: ThawSummary) -> str:
    counts = thaw_counts(summary)
    if not summary.requested and not summary.already_in_progress:
        return f"nothing to thaw: every shard of {summary.source} is readable ({counts})"
    if not summary.pending:
        return (f"every shard of {summary.source} is readable ({counts}); restored copies "
                f"asked for now stay {summary.days} days")
    return (f"thawing {summary.source}: {counts}; {summary.tier} restores take hours: run "
            "again with --wait to wait until every shard is readable")


def thaw_counts(summary: ThawSummary) -> str:
    return (
        f"{summary.requested:,} requested ({summary.tier}, {summary.days} days), "
        f"{summary.already_in_progress:,} already in progress, "
        f"{summary.already_restored:,} already restored, {summary.not_archived:,} not archived"
    )


def duration(seconds: float) -> str:
    return f"{seconds / 60:,.0f} min" if seconds >= 60 else f"{seconds:,.0f} s"
