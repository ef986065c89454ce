"""The import's local state files: checkpoint and dead letters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ddbpipe.errors import StorageError
from ddbpipe.import_state import DeadLetterFile, ImportCheckpoint
from tests.stores import record_fsyncs


def test_keep_only_drops_the_lines_of_unfinished_files_and_a_cut_off_line(tmp_path: Path) -> None:
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    for source, pk in (("a", "1"), ("b", "2"), ("a", "3")):
        letters.add(reason="r", source=source, kind="put", item={"pk": {"S": pk}})
    letters.close()
    with letters.path.open("ab") as out:
        out.write(b'{"reason": "r", "source": "a", "kind"')  # a kill in the middle of a line
    assert letters.keep_only({"a"}) == 2
    kept = [json.loads(line) for line in letters.path.read_text().splitlines()]
    assert [(x["source"], x["Item"]["pk"]["S"]) for x in kept] == [("a", "1"), ("a", "3")]
    assert letters.keep_only({"a"}) == 0, "nothing more to drop"


def test_keep_only_without_a_file_does_nothing(tmp_path: Path) -> None:
    letters = DeadLetterFile(tmp_path / "none.jsonl")
    assert letters.keep_only(set()) == 0
    assert not letters.path.exists()


def test_a_checkpoint_is_saved_durably_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "import.ckpt"
    fsynced = record_fsyncs(monkeypatch)
    checkpoint = ImportCheckpoint.start(path, source="s3://b/x", table="t", export_id="e1")
    # The new folder into its parent, then the file and the folder that holds it.
    assert fsynced == ["folder", "file", "folder"]
    checkpoint.mark_done("data/a", written=3, dead_lettered=1)
    resumed = ImportCheckpoint.resume(path, source="s3://b/x", table="t", export_id="e1")
    assert (resumed.done, resumed.items_written, resumed.items_dead_lettered) == ({"data/a"}, 3, 1)
    assert [p.name for p in path.parent.iterdir()] == ["import.ckpt"]


def test_a_failed_checkpoint_save_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "import.ckpt"
    checkpoint = ImportCheckpoint.start(path, source="src", table="t", export_id=None)
    saved = path.read_bytes()

    def refuse(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match=r"cannot write .*import\.ckpt.*No space left") as caught:
        checkpoint.mark_done("data/a", written=1, dead_lettered=0)
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == saved
    assert [p.name for p in tmp_path.iterdir()] == ["import.ckpt"]


def test_keep_only_rewrites_the_dead_letter_file_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = DeadLetterFile(tmp_path / "dead.jsonl")
    for source in ("a", "b"):
        letters.add(reason="r", source=source, kind="put", item={"pk": {"S": source}})
    letters.close()
    fsynced = record_fsyncs(monkeypatch)
    assert letters.keep_only({"a"}) == 1
    assert fsynced == ["file", "folder"]
