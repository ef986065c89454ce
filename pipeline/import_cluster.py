"""The import on a cluster (``--cluster``): each source file is a task (docs/SCALING.md).

The driver keeps what it keeps in one process: the checkpoint file and the dead-letter file.
A task writes one file from its watermark with the same ``ImportRun`` as one process, its
write capacity leased from the job's account and its throttles reported to the account's one
controller (``shared_capacity``). Instead of saving its file's state, it reports it: the
watermark, and the dead letters below it, which no later run of the file will produce again.
The driver, reading the account, writes the dead letters down first and the checkpoint after
(a saved watermark never passes a dead letter not on disk). A task run again after its worker
died continues from the furthest watermark any run of it reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from .cluster import open_cluster
from .config import ImportOptions
from .import_job import ImportRun, write_budget
from .import_state import FileWatermark, ImportCheckpoint
from .process_memory import use_lean_memory
from .retry import SystemClock
from .schema import KeyAttributes
from .shared_capacity import AccountLink, LeasedBucket, Message, SharedController
from .sources import ImportSource, SourceFile
from .storage import open_store

__all__ = ["import_file_on_worker", "write_all_on_cluster"]

#: A file's state as tasks report it (``FileWatermark.to_dict``).
FileState = dict[str, Any]


async def write_all_on_cluster(run: ImportRun, target_wcu: float) -> None:
    """``run.write_all`` with the files as tasks on ``run.options.cluster``."""
    checkpoint = run.checkpoint
    assert isinstance(checkpoint, ImportCheckpoint) and run.options.cluster
    todo = run.files_to_do(target_wcu)
    written_before = checkpoint.items_written
    budget = write_budget(target_wcu)
    # What a task needs of the source: its kind (how records are read), not every file.
    source = replace(run.source, files=(), table_schema=None)
    options = replace(run.options, cluster=None)
    inputs = [(options, source, file, run.table_keys, _state(checkpoint.files.get(file.key)))
              for file in todo]
    results: list[dict[str, int]] = []
    try:
        async with open_cluster(run.options.cluster) as cluster:
            results = await cluster.run(
                import_file_on_worker, inputs, budget=budget, progress=run.progress,
                on_status=lambda status: _write_down(run, checkpoint, status),
            )
    finally:
        try:
            await checkpoint.close()  # what is finished stays so, also on an error
        finally:
            run.dead_letter.close()
    run.items_written = checkpoint.items_written - written_before
    run.items_read = run.items_written + run.dead_letter.count
    run.consumed_wcu = run.progress.consumed_capacity
    run.throttled_requests = sum(result["throttled_requests"] for result in results)
    run.unprocessed_items = sum(result["unprocessed_items"] for result in results)


def _state(file: FileWatermark | None) -> FileState | None:
    return None if file is None else file.to_dict()


def _write_down(run: ImportRun, checkpoint: ImportCheckpoint, status: Message) -> None:
    """Dead letters first, then the files' states: the checkpoint saves after the lines."""
    for line in status["dead_letters"]:
        run.dead_letter.add(**line)
    for key, state in status["files"].items():
        checkpoint.files[key] = FileWatermark(**state)
    checkpoint.save_if_due()


# --- on a worker -------------------------------------------------------------------------------


def import_file_on_worker(
    options: ImportOptions, source: ImportSource, file: SourceFile, table_keys: KeyAttributes,
    start: FileState | None, job: str,
) -> dict[str, int]:
    """One file's import as a task on a Dask worker; what its writer counted."""
    use_lean_memory()
    return asyncio.run(_import_file(options, source, file, table_keys, start, job))


async def _import_file(
    options: ImportOptions, source: ImportSource, file: SourceFile, table_keys: KeyAttributes,
    start: FileState | None, job: str,
) -> dict[str, int]:
    from .capacity_plugin import worker_channel, worker_name

    link = AccountLink(worker_channel(job), worker=worker_name())
    # A run of this task before this one (its worker died) may have got further.
    states = [state for state in (start, await link.file_state(file.key)) if state]
    state = max(states, key=lambda s: s["watermark"], default=None)
    watermark = FileWatermark(size=file.size) if state is None else FileWatermark(**state)
    reported = ReportedFile(link, file.key, watermark)
    store = open_store(options.source, options.aws)
    run = ImportRun(options, source, store, reported, reported.dead_letters, link.progress,
                    table_keys, SystemClock())
    try:
        async with link.reporting():
            await run.write_files([file], LeasedBucket(link), SharedController(link))
    finally:
        await store.close()
    return {"throttled_requests": run.throttled_requests,
            "unprocessed_items": run.unprocessed_items}


class ReportedFile:
    """A task's checkpoint: its one file's state, reported to the job's account with the
    link's next message instead of saved (see the module)."""

    def __init__(self, link: AccountLink, key: str, watermark: FileWatermark) -> None:
        self.link = link
        self.key = key
        self.files = {key: watermark}
        self.dead_letters = HeldDeadLetters()

    def begin(self, key: str, size: int | None) -> FileWatermark:
        return self.files[key]

    def save_if_due(self) -> None:
        file = self.files[self.key]
        self.link.dead_letters += self.dead_letters.below(file.watermark)
        self.link.files[self.key] = file.to_dict()

    async def close(self) -> None:
        self.save_if_due()


class HeldDeadLetters:
    """A task's dead letters, held until its file's watermark passes them: above it, a run
    of the file after this one (its worker died) would dead-letter them again."""

    def __init__(self) -> None:
        self.count = 0
        self._held: list[Message] = []

    def add(self, *, reason: str, source: str, position: int, kind: str,
            item: dict[str, Any]) -> None:
        self._held.append({"reason": reason, "source": source, "position": position,
                           "kind": kind, "item": item})
        self.count += 1

    def below(self, watermark: int) -> list[Message]:
        ready = [line for line in self._held if line["position"] < watermark]
        if ready:
            self._held = [line for line in self._held if line["position"] >= watermark]
        return ready

    def close(self) -> None:
        """Nothing to close: what is held goes with the file's last report."""
