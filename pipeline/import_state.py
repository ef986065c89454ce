"""What an import writes down locally: its checkpoint and its dead-letter file.

The source may be a write-once archive and the target is a table, so an import keeps its
state in a local file (``--checkpoint``): which source files are fully written. A killed import
continues with ``--resume``: done files are skipped, files in progress are written again from
their start (puts and deletes are idempotent, so nothing is duplicated), nothing is skipped.
The checkpoint, and a dead-letter file trimmed on resume, are replaced whole through
``storage.local.write_file_atomically``: a crash leaves the old file or the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .errors import ResumeError, StorageError
from .storage.local import write_file_atomically

CHECKPOINT_VERSION = 1


@dataclass
class ImportCheckpoint:
    """Which files of ``source`` are fully written into ``table``."""

    path: Path
    source: str
    table: str
    export_id: str | None
    done: set[str] = field(default_factory=set)
    items_written: int = 0
    items_dead_lettered: int = 0

    @classmethod
    def start(
        cls, path: Path, *, source: str, table: str, export_id: str | None
    ) -> ImportCheckpoint:
        if path.exists():
            raise ResumeError(
                f"an unfinished import has its checkpoint at {path}: continue it with --resume, "
                "or delete that file to start over"
            )
        checkpoint = cls(path=path, source=source, table=table, export_id=export_id)
        checkpoint.save()
        return checkpoint

    @classmethod
    def resume(
        cls, path: Path, *, source: str, table: str, export_id: str | None
    ) -> ImportCheckpoint:
        if not path.exists():
            raise ResumeError(f"nothing to resume: no import checkpoint at {path}")
        try:
            document = msgspec.json.decode(path.read_bytes())
            checkpoint = cls(
                path=path,
                source=document["source"],
                table=document["table"],
                export_id=document.get("export_id"),
                done=set(document["done"]),
                items_written=int(document["items_written"]),
                items_dead_lettered=int(document["items_dead_lettered"]),
            )
        except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError) as error:
            raise ResumeError(f"the import checkpoint {path} is unreadable ({error})") from None
        if (checkpoint.source, checkpoint.table, checkpoint.export_id) != (
            source,
            table,
            export_id,
        ):
            raise ResumeError(
                f"the checkpoint {path} belongs to an import of {checkpoint.source} into "
                f"'{checkpoint.table}', not of {source} into '{table}'"
            )
        return checkpoint

    def mark_done(self, key: str, written: int, dead_lettered: int) -> None:
        self.done.add(key)
        self.items_written += written
        self.items_dead_lettered += dead_lettered
        self.save()

    def save(self) -> None:
        document: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "source": self.source,
            "table": self.table,
            "export_id": self.export_id,
            "done": sorted(self.done),
            "items_written": self.items_written,
            "items_dead_lettered": self.items_dead_lettered,
        }
        write_file_atomically(self.path, msgspec.json.encode(document))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class DeadLetterFile:
    """Items that could not be written, one JSON line each with the reason; created on first use.

    A line: ``{"reason": ..., "source": <source file>, "kind": "put"|"delete", "Item": {...}}``,
    so the file can be fixed up and imported again as loose NDJSON.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: Any = None

    def keep_only(self, sources: set[str]) -> int:
        """Drop the lines of files not in ``sources``; returns how many lines were dropped.

        A resumed import reads its unfinished files again from their start and dead-letters
        their bad items again: their earlier lines go first, so each bad item is in the file
        once. A line cut off by a kill has no readable source and goes too (its file was not
        finished: a file is checkpointed only after its dead letters are flushed).
        """
        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            return 0
        except OSError as error:
            raise StorageError(
                f"cannot read the dead-letter file {self.path}: {error.strerror or error}"
            ) from None
        kept = [line for line in lines if _line_source(line) in sources]
        if len(kept) < len(lines):
            write_file_atomically(self.path, b"".join(kept))
        return len(lines) - len(kept)

    def add(self, *, reason: str, source: str, kind: str, item: dict[str, Any]) -> None:
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
            except OSError as error:
                raise StorageError(
                    f"cannot write the dead-letter file {self.path}: {error.strerror or error}"
                ) from None
        line = {"reason": reason, "source": source, "kind": kind, "Item": item}
        self._file.write(msgspec.json.encode(line) + b"\n")
        # Flushed per item: a dead letter must survive a crash right after it.
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _line_source(line: bytes) -> str | None:
    try:
        source = msgspec.json.decode(line).get("source")
    except (msgspec.DecodeError, AttributeError):
        return None
    return source if isinstance(source, str) and line.endswith(b"\n") else None
