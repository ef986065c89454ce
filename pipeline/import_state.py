"""What an import writes down locally: its checkpoint and its dead-letter file.

The source may be a write-once archive and the target is a table, so an import keeps its
state in a local file (``--checkpoint``): for each source file begun, its *watermark*, the
position (from 0, in file order) below which every record is written or dead-lettered, and
how many of those were dead-lettered. Acknowledgements arrive out of order, so the watermark
is the lowest position not finished yet (``FileWatermark``). The checkpoint is saved every
``interval`` seconds of the import's clock, in a thread, and at shutdown. A killed import
continues with ``--resume``: done files are skipped, every other file begun restarts at its
watermark; what was finished above it is written again (puts and deletes are idempotent, so
nothing is duplicated) and nothing is skipped.

The checkpoint, and a dead-letter file trimmed on resume, are replaced whole through
``storage.local.write_file_atomically``: a crash leaves the old file or the new one. Both
may reveal the source or hold items, so they are readable by their owner only (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .errors import ResumeError, StorageError
from .retry import Clock
from .storage.local import write_file_atomically

__all__ = [
    "CHECKPOINT_VERSION",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "OWNER_ONLY",
    "DeadLetterFile",
    "FileWatermark",
    "ImportCheckpoint",
]

#: Version 2: per-file watermarks (version 1 listed only the files fully written).
CHECKPOINT_VERSION = 2
#: Seconds between checkpoint saves: a kill rewrites at most this long's writes, plus those
#: in flight.
DEFAULT_CHECKPOINT_INTERVAL = 0.5
#: The mode of the checkpoint and dead-letter files.
OWNER_ONLY = 0o600


# --- one file's progress ----------------------------------------------------------------------


class FileWatermark:
    """How far one source file is finished, as records are acknowledged in any order.

    ``watermark``: every record below this position is finished (written or dead-lettered).
    Finished positions above it are kept as runs of consecutive positions (start -> end and
    end -> start), so memory follows the number of gaps, which the writer's buffer bounds, not
    how far acknowledgements ran ahead; an in-order acknowledgement costs two dict misses.
    ``read_end``: the position after the last record handed out; ``fully_read`` once the file
    ended (and its item count checked). The file is ``done`` when both ends meet.
    """

    __slots__ = (
        "_dead_above",
        "_dead_below",
        "_run_end",
        "_run_start",
        "fully_read",
        "read_end",
        "size",
        "watermark",
    )

    def __init__(
        self, *, watermark: int = 0, dead_lettered: int = 0, size: int | None = None,
        done: bool = False,
    ) -> None:
        self.watermark = watermark
        self.size = size
        self.read_end = watermark
        self.fully_read = done
        self._dead_below = dead_lettered
        self._dead_above: list[int] = []  # a heap of positions
        self._run_end: dict[int, int] = {}
        self._run_start: dict[int, int] = {}

    @property
    def done(self) -> bool:
        return self.fully_read and self.watermark == self.read_end

    @property
    def dead_lettered(self) -> int:
        """Records below the watermark that were dead-lettered."""
        dead_above = self._dead_above
        while dead_above and dead_above[0] < self.watermark:
            heapq.heappop(dead_above)
            self._dead_below += 1
        return self._dead_below

    @property
    def written(self) -> int:
        """Records below the watermark that were written."""
        return self.watermark - self.dead_lettered

    def finish(self, position: int) -> None:
        """The record at ``position`` is written or given up; each position finishes once."""
        start, end = position, position + 1
        run_end = self._run_end
        run_start = self._run_start
        if end in run_end:  # a finished run starts right after: join it
            end = run_end.pop(end)
            del run_start[end]
        if start in run_start:  # one ends right before
            start = run_start.pop(start)
            del run_end[start]
        if start == self.watermark:
            self.watermark = end
        else:
            run_end[start] = end
            run_start[end] = start

    def dead_letter(self, position: int) -> None:
        """The record at ``position`` went to the dead-letter file: finished, and counted."""
        heapq.heappush(self._dead_above, position)
        self.finish(position)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "watermark": self.watermark,
                "dead_lettered": self.dead_lettered, "done": self.done}


class _SavedFile(msgspec.Struct, forbid_unknown_fields=True):
    size: int | None
    watermark: int
    dead_lettered: int
    done: bool


class _SavedCheckpoint(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    source: str
    table: str
    export_id: str | None
    files: dict[str, _SavedFile]


class _Version(msgspec.Struct):
    version: int


# --- the checkpoint ---------------------------------------------------------------------------


@dataclass
class ImportCheckpoint:
    """How far each file of ``source`` begun is written into ``table``; see the module
    docstring. ``files`` maps a file's key to its ``FileWatermark``, which the import moves;
    ``save_if_due`` and ``save`` write it down."""

    path: Path
    source: str
    table: str
    export_id: str | None
    clock: Clock
    interval: float = DEFAULT_CHECKPOINT_INTERVAL
    files: dict[str, FileWatermark] = field(default_factory=dict)
    #: Made durable before each save: dead letters below a saved watermark must be on disk.
    dead_letter: DeadLetterFile | None = None

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"the checkpoint interval must be positive, not {self.interval}")
        self._next_save = self.clock.monotonic() + self.interval
        self._saving: asyncio.Future[None] | None = None

    @classmethod
    def start(
        cls, path: Path, *, source: str, table: str, export_id: str | None, clock: Clock,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> ImportCheckpoint:
        if path.exists():
            raise ResumeError(
                f"an unfinished import has its checkpoint at {path}: continue it with --resume, "
                "or delete that file to start over"
            )
        checkpoint = cls(path=path, source=source, table=table, export_id=export_id,
                         clock=clock, interval=interval)
        checkpoint.save()
        return checkpoint

    @classmethod
    def resume(
        cls, path: Path, *, source: str, table: str, export_id: str | None, clock: Clock,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> ImportCheckpoint:
        saved = _read_checkpoint(path)
        if (saved.source, saved.table, saved.export_id) != (source, table, export_id):
            raise ResumeError(
                f"the checkpoint {path} belongs to an import of {saved.source} into "
                f"'{saved.table}', not of {source} into '{table}'"
            )
        files = {
            key: FileWatermark(watermark=file.watermark, dead_lettered=file.dead_lettered,
                               size=file.size, done=file.done)
            for key, file in saved.files.items()
        }
        return cls(path=path, source=source, table=table, export_id=export_id, clock=clock,
                   interval=interval, files=files)

    @property
    def done(self) -> set[str]:
        """The files fully written (or dead-lettered)."""
        return {key for key, file in self.files.items() if file.done}

    @property
    def items_written(self) -> int:
        return sum(file.written for file in self.files.values())

    @property
    def items_dead_lettered(self) -> int:
        return sum(file.dead_lettered for file in self.files.values())

    def watermarks(self) -> dict[str, int]:
        return {key: file.watermark for key, file in self.files.items()}

    def begin(self, key: str, size: int | None) -> FileWatermark:
        """The watermark of the file ``key`` (``size`` bytes as listed now), new or resumed.

        A file that changed since it was begun (another size) is refused: skipping the
        records below its watermark would skip others than those written.
        """
        file = self.files.get(key)
        if file is None:
            file = self.files[key] = FileWatermark(size=size)
        elif None not in (file.size, size) and file.size != size:
            raise ResumeError(
                f"{key} is {size:,} bytes, not {file.size:,} as when the checkpoint {self.path} "
                "was written: the source changed, so start the import over (delete the "
                "checkpoint and the dead-letter file)"
            )
        return file

    def save_if_due(self) -> None:
        """Save in a thread if ``interval`` passed since the last save and none is under way.

        Raises the error of a failed earlier save (e.g. a full disk): the import stops.
        """
        if self.clock.monotonic() < self._next_save:
            return
        if self._saving is not None:
            if not self._saving.done():
                return
            self._saving.result()
        self._next_save = self.clock.monotonic() + self.interval
        # The state is taken now, on the event loop, so the file holds one moment of it.
        self._saving = asyncio.ensure_future(asyncio.to_thread(self._write, self._encode()))

    async def saved(self) -> None:
        """Wait for the save under way, if any; raises its error."""
        if self._saving is not None:
            saving, self._saving = self._saving, None
            # Shielded: a cancelled import still lets its last save land.
            await asyncio.shield(saving)

    async def close(self) -> None:
        """The last save (at the end, on an error or when cancelled), after any under way."""
        # A failed one is superseded by the save below, which raises if the disk still refuses.
        with contextlib.suppress(StorageError):
            await self.saved()
        self.save()

    def save(self) -> None:
        """Save now, blocking."""
        self._write(self._encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _encode(self) -> bytes:
        document: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "source": self.source,
            "table": self.table,
            "export_id": self.export_id,
            "files": {key: file.to_dict() for key, file in sorted(self.files.items())},
        }
        return msgspec.json.encode(document)

    def _write(self, document: bytes) -> None:
        if self.dead_letter is not None:
            self.dead_letter.sync()
        write_file_atomically(self.path, document, OWNER_ONLY)


def _read_checkpoint(path: Path) -> _SavedCheckpoint:
    if not path.exists():
        raise ResumeError(f"nothing to resume: no import checkpoint at {path}")
    try:
        data = path.read_bytes()
        version = msgspec.json.decode(data, type=_Version).version
        if version < CHECKPOINT_VERSION:
            raise ResumeError(
                f"the checkpoint {path} was written by an older ddbpipe (version {version}), "
                "which this one cannot continue: delete it and the dead-letter file, then run "
                "the import again without --resume (writing the items again is harmless)"
            )
        if version > CHECKPOINT_VERSION:
            raise ResumeError(
                f"the checkpoint {path} was written by a newer ddbpipe (version {version}): "
                "resume with that version"
            )
        return msgspec.json.decode(data, type=_SavedCheckpoint)
    except (OSError, msgspec.DecodeError) as error:
        raise ResumeError(f"the import checkpoint {path} is unreadable ({error})") from None


# --- dead letters -----------------------------------------------------------------------------


class DeadLetterFile:
    """Items that could not be written, one JSON line each with the reason; created on first use.

    A line: ``{"reason": ..., "source": <source file>, "position": <record position in it>,
    "kind": "put"|"delete", "Item": {...}}``, so the file can be fixed up and imported again
    as loose NDJSON. Readable by its owner only: it holds items.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: Any = None

    def keep_below(self, watermarks: Mapping[str, int]) -> int:
        """Keep the lines of records below their file's watermark; returns how many went.

        A resumed import restarts each file at its watermark and dead-letters the bad items
        above it again: their earlier lines go first, so each bad item is in the file once.
        A line cut off by a kill has no readable position and goes too (its record is above
        the saved watermark: dead letters are made durable before each checkpoint save).
        """
        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            return 0
        except OSError as error:
            raise StorageError(
                f"cannot read the dead-letter file {self.path}: {error.strerror or error}"
            ) from None
        kept = [line for line in lines if _is_below(line, watermarks)]
        if len(kept) < len(lines):
            write_file_atomically(self.path, b"".join(kept), OWNER_ONLY)
        else:
            _owner_only(self.path)
        return len(lines) - len(kept)

    def add(
        self, *, reason: str, source: str, position: int, kind: str, item: dict[str, Any]
    ) -> None:
        if self._file is None:
            self._file = self._open()
        line = {"reason": reason, "source": source, "position": position, "kind": kind,
                "Item": item}
        self._file.write(msgspec.json.encode(line) + b"\n")
        # Flushed per item: a dead letter must survive a crash right after it.
        self._file.flush()
        self.count += 1

    def sync(self) -> None:
        """Make the lines added so far durable (called from the checkpoint's saving thread)."""
        file = self._file
        if file is None:
            return
        try:
            os.fsync(file.fileno())
        except ValueError:
            return  # closed meanwhile, which flushed it
        except OSError as error:
            raise StorageError(
                f"cannot write the dead-letter file {self.path}: {error.strerror or error}"
            ) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OWNER_ONLY)
            os.fchmod(descriptor, OWNER_ONLY)  # also a file an older ddbpipe made
            return os.fdopen(descriptor, "ab")
        except OSError as error:
            raise StorageError(
                f"cannot write the dead-letter file {self.path}: {error.strerror or error}"
            ) from None


class _DeadLetterLine(msgspec.Struct):
    source: str
    position: int


_dead_letter_line = msgspec.json.Decoder(_DeadLetterLine)


def _is_below(line: bytes, watermarks: Mapping[str, int]) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        where = _dead_letter_line.decode(line)
    except msgspec.DecodeError:
        return False
    return where.position < watermarks.get(where.source, 0)


def _owner_only(path: Path) -> None:
    try:
        os.chmod(path, OWNER_ONLY)
    except OSError as error:
        raise StorageError(f"cannot restrict {path} to its owner: {error.strerror}") from None
