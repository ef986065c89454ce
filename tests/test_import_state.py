"""The import's local state files: checkpoint and dead letters."""

from __future__ import annotations

import json
from pathlib import Path

from ddbpipe.import_state import DeadLetterFile


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
