"""``ddbpipe plan``: the bad inputs a user meets, each one line on stderr with its exit code,
and nothing written (a plan writes nothing at all). The rows of docs/ERRORS.md that name
these tests say what each refusal reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import Result
from typer.testing import CliRunner

import ddbpipe
from ddbpipe.cli.main import app
from ddbpipe.manifest import MANIFEST_KEY, STATE_KEY
from tests.exports import plain_items


def plan(*args: str) -> Result:
    """``ddbpipe plan ARGS`` in this process: the real command and its exit code."""
    return CliRunner().invoke(app, ["plan", *args])


def refusal(result: Result) -> str:
    """The one line on stderr of a refused plan, which printed nothing on stdout."""
    assert result.stdout == "", result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    return line


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a plan writes nothing: checked as an empty folder


@pytest.fixture
def export(tmp_path: Path, endpoint: str, make_table: Any) -> Path:
    """A small finished ddbpipe export (keys: pk S), outside the current folder."""
    dest = tmp_path.parent / f"{tmp_path.name}-export"
    ddbpipe.export_table(make_table(plain_items(20)), str(dest), endpoint_url=endpoint)
    return dest


def nothing_written(tmp_path: Path) -> bool:
    return not any(tmp_path.iterdir())


def test_a_plan_of_a_missing_table_is_one_line(
    tmp_path: Path, endpoint: str, export: Path
) -> None:
    for args in (["export", "no-such-table"],
                 ["import", str(export), "--table", "no-such-table"]):
        result = plan(*args, "--endpoint-url", endpoint)
        assert result.exit_code == 1
        line = refusal(result)
        assert "table 'no-such-table' not found in region" in line and "--region" in line
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("source", ["empty", "no-data", "unfinished"])
def test_a_plan_of_what_is_not_an_export_is_one_line(
    tmp_path: Path, endpoint: str, export: Path, source: str
) -> None:
    folder = tmp_path.parent / f"{tmp_path.name}-{source}"
    if source == "unfinished":  # as a killed export leaves it
        folder = export
        (export / MANIFEST_KEY).unlink()
        (export / STATE_KEY).parent.mkdir()
        (export / STATE_KEY).write_text("{}")
    else:
        folder.mkdir()
    if source == "no-data":
        (folder / "notes.txt").write_text("hello")
    result = plan("import", str(folder), "--endpoint-url", endpoint)
    assert result.exit_code == 1
    says = {"empty": "nothing at", "no-data": "no ddbpipe export, AWS export or NDJSON files at",
            "unfinished": "holds an unfinished ddbpipe export"}[source]
    line = refusal(result)
    assert says in line and str(folder) in line
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(("document", "says"), [
    (None, "cannot read --prices"),
    ("{not json", "is not JSON"),
    ([], 'needs a "regions" object of region -> prices'),
    ({"regions": {}}, 'needs a "date": when the prices were taken'),
    ({"date": "2027-01-01", "regions": {"us-east-1": {"provisioned_rcu_hour": "cheap"}}},
     "regions.us-east-1.on_demand_read_per_million must be a price in USD"),
    ({"date": "2027-01-01", "regions": {"us-east-1": {
        **dict.fromkeys(("on_demand_read_per_million", "on_demand_write_per_million",
                         "provisioned_rcu_hour", "provisioned_wcu_hour"), 1),
        "s3_gb_month": {"COLD": 0.01}}}}, "unknown storage class COLD"),
], ids=["missing", "not-json", "not-an-object", "no-date", "not-a-price", "unknown-class"])
def test_a_bad_prices_file_is_one_line_and_bad_usage(
    tmp_path: Path, document: Any, says: str
) -> None:
    prices = tmp_path.parent / f"{tmp_path.name}-prices.json"
    if document is not None:
        prices.write_text(document if isinstance(document, str) else json.dumps(document))
    # Refused before any call: no endpoint is there to answer.
    result = plan("export", "orders", "--prices", str(prices), "--region", "us-east-1",
                  "--endpoint-url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    line = refusal(result)
    assert says in line and str(prices) in line
    assert nothing_written(tmp_path)


def test_plan_import_with_create_table_needs_a_new_table_and_a_saved_schema(
    tmp_path: Path, endpoint: str, export: Path, make_table: Any
) -> None:
    existing = make_table()
    result = plan("import", str(export), "--table", existing, "--create-table",
                  "--endpoint-url", endpoint)
    assert result.exit_code == 2
    assert f"table '{existing}' already exists and --create-table only creates new tables: " \
           "drop --create-table" in refusal(result)
    loose = tmp_path.parent / f"{tmp_path.name}-loose"
    loose.mkdir()
    (loose / "items.json").write_bytes(b"".join(
        msgspec.json.encode({"Item": item}) + b"\n" for item in plain_items(3)))
    result = plan("import", str(loose), "--create-table", "--endpoint-url", endpoint)
    assert result.exit_code == 2
    assert "--create-table needs a saved table schema, which only ddbpipe exports carry" \
        in refusal(result)
    assert nothing_written(tmp_path)


def test_plan_import_into_a_table_of_other_keys_is_one_line(
    tmp_path: Path, endpoint: str, export: Path, make_table: Any
) -> None:
    other = make_table(hash_key=("id", "N"))
    result = plan("import", str(export), "--table", other, "--endpoint-url", endpoint)
    assert result.exit_code == 1
    assert f"key schema mismatch: table '{other}' has id (N) HASH, the source has pk (S) HASH" \
        in refusal(result)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(("args", "says"), [
    (["--target-wcu", "0"], "--target-wcu must be a positive number, not 0.0"),
    (["--without-indexes"], "--without-indexes goes with --create-table"),
], ids=["target-wcu-zero", "without-indexes-alone"])
def test_bad_plan_import_choices_are_refused_before_anything_is_read(
    tmp_path: Path, export: Path, args: list[str], says: str
) -> None:
    result = plan("import", str(export), *args, "--endpoint-url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert refusal(result) == f"error: {says}"
    assert nothing_written(tmp_path)
