"""The public library API: what ``__all__`` lists, the version, the options objects and the
async entry points, run against DynamoDB Local."""

from __future__ import annotations

import asyncio
import types
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import ddbpipe
from tests.exports import plain_items, scan_table, sorted_items


def test_public_api_is_what_all_lists() -> None:
    exported = set(ddbpipe.__all__)
    for name in exported:
        assert getattr(ddbpipe, name) is not None
    public_names = {
        name for name, value in vars(ddbpipe).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public_names - {"annotations"} == exported
    jobs = {"export_table", "import_table", "verify_export"}
    assert jobs | {f"{job}_async" for job in jobs} <= exported
    assert {"ExportOptions", "ImportOptions", "AwsOptions"} <= exported
    assert "iam_policy_for" in exported  # ddbpipe iam-policy's policies, as a dict
    plans = {"plan_export", "plan_import"}  # ddbpipe plan, as JobPlan objects
    assert plans | {f"{plan}_async" for plan in plans} | {"JobPlan"} <= exported


def test_version_is_the_installed_package_version() -> None:
    assert ddbpipe.__version__ == version("ddbpipe")
    assert ddbpipe.__version__ and ddbpipe.__version__ != "0+unknown"


def test_async_entry_points_take_the_options_objects(
    tmp_path: Path, dynamodb_local: Any, make_table: Any, dynamodb_client: Any
) -> None:
    source = make_table(plain_items(120))
    target = make_table()
    aws = ddbpipe.AwsOptions(endpoint_url=dynamodb_local.endpoint)
    dest = str(tmp_path / "export")

    async def both_ways() -> tuple[Any, Any, Any]:
        progress = ddbpipe.JobProgress()
        exported = await ddbpipe.export_table_async(
            ddbpipe.ExportOptions(table=source, destination=dest, segments=2, aws=aws),
            progress=progress,
        )
        assert progress.items == 120
        report = await ddbpipe.verify_export_async(dest, read_data=True)
        imported = await ddbpipe.import_table_async(ddbpipe.ImportOptions(
            source=dest, table=target, aws=aws, checkpoint=str(tmp_path / "checkpoint.json"),
        ))
        return exported, report, imported

    exported, report, imported = asyncio.run(both_ways())
    assert exported.items == 120 and report.ok and imported.items_written == 120
    assert sorted_items(scan_table(dynamodb_client, target)) == sorted_items(
        scan_table(dynamodb_client, source)
    )


def test_sync_jobs_take_an_options_object_or_aws_options(
    tmp_path: Path, dynamodb_local: Any, make_table: Any
) -> None:
    table = make_table(plain_items(30))
    aws = ddbpipe.AwsOptions(endpoint_url=dynamodb_local.endpoint)
    options = ddbpipe.ExportOptions(table=table, destination=str(tmp_path / "a"), aws=aws)
    assert ddbpipe.export_table(options).items == 30
    assert ddbpipe.export_table(table, str(tmp_path / "b"), aws=aws).items == 30


def test_settings_beside_an_options_object_are_refused(tmp_path: Path) -> None:
    options = ddbpipe.ExportOptions(table="orders", destination=str(tmp_path / "a"))
    with pytest.raises(ddbpipe.ConfigError, match="segments given beside an ExportOptions"):
        ddbpipe.export_table(options, segments=4)
    imports = ddbpipe.ImportOptions(source=str(tmp_path), table="orders")
    with pytest.raises(ddbpipe.ConfigError, match="create_table, table given beside an Imp"):
        ddbpipe.import_table(imports, "other", create_table=True)
    with pytest.raises(ddbpipe.ConfigError, match="either as aws=AwsOptions"):
        ddbpipe.export_table("orders", str(tmp_path / "b"), region="eu-west-1",
                             aws=ddbpipe.AwsOptions())
    with pytest.raises(ddbpipe.ConfigError, match="destination is missing"):
        ddbpipe.export_table("orders")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
