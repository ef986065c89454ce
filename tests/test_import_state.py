"""The import's local state files: watermarks, the checkpoint and dead letters."""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ddbpipe.errors import ResumeError, StorageError
from ddbpipe.import_state import (
    CHECKPOINT_VERSION,
    DeadLetterFile,
    FileWatermark,
    ImportCheckpoint,
)
from ddbpipe.retry import ManualClock
from tests.stores import record_fsyncs

SOURCE = {"source": "s3://b/x", "table": "t", "export_id": "e1"}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that lets anyone read new files: the state files must be 0600 anyway."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def saved(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


# --- watermarks ---------------------------------------------------------------------------------


def test_the_watermark_is_the_lowest_position_not_finished() -> None:
    file = FileWatermark()
    for position, watermark in [(1, 0), (3, 0), (0, 2), (2, 4), (6, 4), (4, 5), (5, 7)]:
        file.finish(position)
        assert file.watermark == watermark, position


def test_out_of_order_acknowledgements_move_the_watermark_as_a_slow_count_would() -> None:
    rng = random.Random(11)
    positions = list(range(5000))
    # Nearly in order, as replies come back: shuffled within windows of a few batches.
    order = sorted(positions, key=lambda p: p + rng.uniform(0, 100))
    file = FileWatermark()
    finished: set[int] = set()
    for step, position in enumerate(order):
        file.finish(position)
        finished.add(position)
        if step % 97 == 0:
            assert file.watermark == min(set(positions) - finished), step
    assert file.watermark == 5000


def test_dead_letters_are_finished_and_counted_once_below_the_watermark() -> None:
    file = FileWatermark(watermark=10, dead_lettered=2)  # resumed: 8 written, 2 dead below 10
    file.dead_letter(12)
    file.finish(11)
    assert (file.watermark, file.written, file.dead_lettered) == (10, 8, 2)
    file.finish(10)
    assert (file.watermark, file.written, file.dead_lettered) == (13, 10, 3)
    file.dead_letter(13)
    assert (file.watermark, file.written, file.dead_lettered) == (14, 10, 4)


def test_a_file_is_done_once_read_to_its_end_and_every_record_finished() -> None:
    file = FileWatermark()
    file.read_end = 3
    for position in (2, 0, 1):
        file.finish(position)
    assert not file.done, "not read to its end yet"
    file.fully_read = True
    assert file.done


# --- the checkpoint -----------------------------------------------------------------------------


def test_a_checkpoint_is_saved_durably_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "import.ckpt"
    fsynced = record_fsyncs(monkeypatch)
    checkpoint = ImportCheckpoint.start(path, **SOURCE, clock=ManualClock())
    # The new folder into its parent, then the file and the folder that holds it.
    assert fsynced == ["folder", "file", "folder"]
    done = checkpoint.begin("data/a", size=100)
    done.read_end = 4
    for position in range(3):
        done.finish(position)
    done.dead_letter(3)
    done.fully_read = True
    begun = checkpoint.begin("data/b", size=200)
    begun.read_end = 5
    for position in (0, 1, 3):
        begun.finish(position)
    checkpoint.save()
    assert saved(path) == {
        "version": CHECKPOINT_VERSION, **SOURCE,
        "files": {"data/a": {"size": 100, "watermark": 4, "dead_lettered": 1, "done": True},
                  "data/b": {"size": 200, "watermark": 2, "dead_lettered": 0, "done": False}},
    }
    resumed = ImportCheckpoint.resume(path, **SOURCE, clock=ManualClock())
    assert resumed.done == {"data/a"}
    assert resumed.watermarks() == {"data/a": 4, "data/b": 2}
    assert (resumed.items_written, resumed.items_dead_lettered) == (3 + 2, 1)
    assert resumed.begin("data/b", size=200).watermark == 2
    assert [p.name for p in path.parent.iterdir()] == ["import.ckpt"]


def test_a_checkpoint_is_saved_every_interval_of_the_clock_and_when_closed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "import.ckpt"

    def watermark() -> int:
        return int(saved(path)["files"]["data/a"]["watermark"])

    async def main() -> None:
        clock = ManualClock()
        checkpoint = ImportCheckpoint.start(path, **SOURCE, clock=clock, interval=5.0)
        file = checkpoint.begin("data/a", size=None)
        checkpoint.save()
        for second in range(1, 13):
            clock.advance(1.0)
            file.finish(second - 1)  # one record a second
            checkpoint.save_if_due()
            await checkpoint.saved()
            # Saves at 5 s and 10 s of the clock, holding what was finished by then.
            assert watermark() == (second // 5) * 5, second
        await checkpoint.close()
        assert watermark() == 12

    asyncio.run(main())


def test_a_failed_background_save_raises_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "import.ckpt"

    async def main() -> None:
        clock = ManualClock()
        checkpoint = ImportCheckpoint.start(path, **SOURCE, clock=clock, interval=1.0)
        before = path.read_bytes()
        monkeypatch.setattr(os, "replace", refuse)
        clock.advance(1.0)
        checkpoint.save_if_due()
        with pytest.raises(StorageError, match=r"cannot write .*import\.ckpt.*No space left"):
            await checkpoint.saved()
        assert path.read_bytes() == before

    asyncio.run(main())


def refuse(*args: Any) -> None:
    raise OSError(28, "No space left on device")


def test_a_failed_checkpoint_save_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "import.ckpt"
    checkpoint = ImportCheckpoint.start(path, source="src", table="t", export_id=None,
                                        clock=ManualClock())
    before = path.read_bytes()
    checkpoint.begin("data/a", size=None).finish(0)
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match=r"cannot write .*import\.ckpt.*No space left") as caught:
        checkpoint.save()
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["import.ckpt"]


def test_a_version_1_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "import.ckpt"
    path.write_bytes(msgspec.json.encode({
        "version": 1, **SOURCE, "done": ["data/a"], "items_written": 3, "items_dead_lettered": 0,
    }))
    with pytest.raises(ResumeError, match="older ddbpipe.*without --resume") as caught:
        ImportCheckpoint.resume(path, **SOURCE, clock=ManualClock())
    assert "\n" not in str(caught.value)


def test_a_file_that_changed_since_it_was_begun_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "import.ckpt"
    checkpoint = ImportCheckpoint.start(path, **SOURCE, clock=ManualClock())
    checkpoint.begin("a.json", size=1000).finish(0)
    checkpoint.save()
    resumed = ImportCheckpoint.resume(path, **SOURCE, clock=ManualClock())
    with pytest.raises(ResumeError, match=r"a\.json is 1,200 bytes, not 1,000"):
        resumed.begin("a.json", size=1200)


def test_the_state_files_are_readable_by_their_owner_only(
    tmp_path: Path, permissive_umask: None
) -> None:
    path = tmp_path / "import.ckpt"
    checkpoint = ImportCheckpoint.start(path, **SOURCE, clock=ManualClock())
    assert mode_of(path) == 0o600
    checkpoint.begin("a", size=None).finish(0)
    checkpoint.save()
    assert mode_of(path) == 0o600
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    for position in (0, 1):
        letters.add(reason="r", source="a", position=position, kind="put",
                    item={"pk": {"S": "x"}})
    letters.close()
    assert mode_of(letters.path) == 0o600
    assert letters.keep_below({"a": 1}) == 1  # rewritten whole
    assert mode_of(letters.path) == 0o600


def test_a_dead_letter_file_an_older_version_made_is_narrowed_when_added_to(
    tmp_path: Path,
) -> None:
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    letters.path.write_bytes(b"")
    letters.path.chmod(0o644)
    letters.add(reason="r", source="a", position=0, kind="put", item={"pk": {"S": "x"}})
    letters.close()
    assert mode_of(letters.path) == 0o600


# --- dead letters -------------------------------------------------------------------------------


def test_keep_below_keeps_the_lines_under_their_files_watermarks(tmp_path: Path) -> None:
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    for source, position in (("a", 3), ("b", 2), ("a", 9), ("b", 7), ("c", 0)):
        letters.add(reason="r", source=source, position=position, kind="put",
                    item={"pk": {"S": f"{source}{position}"}})
    letters.close()
    with letters.path.open("ab") as out:
        out.write(b'{"reason": "r", "source": "a", "position": 1, "kind"')  # killed mid-line
    # a: done at 10; b: watermark 5; c: never begun.
    assert letters.keep_below({"a": 10, "b": 5}) == 3
    kept = [json.loads(line) for line in letters.path.read_text().splitlines()]
    assert [x["Item"]["pk"]["S"] for x in kept] == ["a3", "b2", "a9"]
    assert letters.keep_below({"a": 10, "b": 5}) == 0, "nothing more to drop"


def test_keep_below_without_a_file_does_nothing(tmp_path: Path) -> None:
    letters = DeadLetterFile(tmp_path / "none.jsonl")
    assert letters.keep_below({}) == 0
    assert not letters.path.exists()


def test_keep_below_rewrites_the_dead_letter_file_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    for source in ("a", "b"):
        letters.add(reason="r", source=source, position=0, kind="put",
                    item={"pk": {"S": source}})
    letters.close()
    fsynced = record_fsyncs(monkeypatch)
    assert letters.keep_below({"a": 1}) == 1
    assert fsynced == ["file", "folder"]


def test_a_save_makes_the_dead_letters_before_it_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = ImportCheckpoint.start(tmp_path / "import.ckpt", **SOURCE, clock=ManualClock())
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    checkpoint.dead_letter = letters
    letters.add(reason="r", source="a", position=0, kind="put", item={"pk": {"S": "x"}})
    fsynced = record_fsyncs(monkeypatch)
    checkpoint.save()
    assert fsynced == ["file", "file", "folder"]  # the dead letters, then the checkpoint
    letters.close()
