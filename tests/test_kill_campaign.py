"""The kill campaign (``benchmarks/kill_campaign.py``), small: three exports and three imports
killed with SIGKILL at random moments and resumed, each ending with exactly the source's
items. How much work a kill costs is reported, not held to a number (it is the benchmark's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.kill_campaign import run_campaign

ITEMS = 600


def test_killed_exports_and_imports_resume_to_exactly_their_source(
    dynamodb_local: Any, tmp_path: Path
) -> None:
    report = run_campaign(dynamodb_local.endpoint, tmp_path, trials=3, items=ITEMS, seed=7)
    print(report.table())
    trials = report.trials
    assert [trial.job for trial in trials] == ["export"] * 3 + ["import"] * 3
    assert all(trial.exact for trial in trials), trials
    for job in ("export", "import"):
        assert any(trial.killed for trial in trials if trial.job == job), trials
    # Nothing is done less than once, nor re-done more than once over.
    assert all(trial.redone >= 0 for trial in trials)
    assert all(trial.redone <= report.pages for trial in trials if trial.job == "export")
    assert all(trial.redone <= ITEMS for trial in trials if trial.job == "import")
