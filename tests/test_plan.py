"""``ddbpipe plan``: the estimates as maths, then against what real jobs on DynamoDB Local
consumed (within 20%), then as the command prints them."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ddbpipe
from ddbpipe.codec import item_size
from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient
from ddbpipe.errors import ConfigError
from ddbpipe.plan import (
    PITR_WINDOW_DAYS,
    SAMPLE_FILE_BYTES,
    ExportChoices,
    ImportTarget,
    IndexShape,
    ScanSample,
    SourceSample,
    capacity_warnings,
    import_plan,
    index_entry_size,
    index_shapes,
    pitr_of,
    run_plan_import,
    sample_table,
    scan_read_units,
    seconds_at,
    table_figures,
)
from ddbpipe.prices import BUILT_IN_PRICES, PriceTable, RegionPrices, load_prices, throughput_cost
from ddbpipe.sources import ImportSource
from ddbpipe.table_rate import Rate, job_rate
from tests.test_sources import full_lines, s3_put, write_aws_export

DDBPIPE = [sys.executable, "-m", "ddbpipe.cli.main"]
KB = 1024


def sized_item(key: str, size: int, **extra: Any) -> dict[str, Any]:
    """An item of exactly ``size`` bytes as DynamoDB counts them (``pk`` + ``v``)."""
    item = {"pk": {"S": key}, **extra}
    filler = size - item_size(item) - len("v")
    return {**item, "v": {"S": "x" * filler}}


def source_of(records: int) -> ImportSource:
    return ImportSource(url="memory://plan", kind="ddbpipe", files=(), item_count=records,
                        key_attributes=(("pk", "S"),), table_schema=None, export_id=None)


def sample_of(items: list[dict[str, Any]], deletes: int = 0) -> SourceSample:
    return SourceSample(items, deletes, len(items) + deletes, 0, 0)


NO_TABLE = ImportTarget(None, None, False, [], [])


def planned_import(items: list[dict[str, Any]], records: int, target: ImportTarget = NO_TABLE,
                   target_wcu: float | None = None, deletes: int = 0) -> ddbpipe.JobPlan:
    return import_plan(source_of(records), target, sample_of(items, deletes), target_wcu,
                       BUILT_IN_PRICES, "us-east-1", pitr_of(None, "unknown (test)"))


# --- the maths ---------------------------------------------------------------------------------


def test_a_scan_reads_4kb_units_per_page_halved_when_eventually_consistent() -> None:
    assert scan_read_units(0, consistent_read=False) == 0.5  # one (empty) page
    assert scan_read_units(4 * KB, consistent_read=False) == 0.5
    assert scan_read_units(4 * KB + 1, consistent_read=False) == 1.0
    assert scan_read_units(4 * KB + 1, consistent_read=True) == 2.0
    # Per page of up to 1 MB, not per item: 3 full pages and 1 byte more.
    three_pages = 3 * 1024 * KB
    assert scan_read_units(three_pages + 1, consistent_read=False) == 3 * 128 + 0.5
    assert scan_read_units(three_pages + 1, consistent_read=True) == 3 * 256 + 1


def test_writes_round_each_item_up_to_1kb_and_scale_from_the_sample() -> None:
    items = [sized_item("a", 500), sized_item("b", 3584)]  # FACTS: 1 + 4 = 5 WCU
    assert [item_size(item) for item in items] == [500, 3584]
    assert planned_import(items, records=2).capacity_units == 5
    # The sample stands for a source of 1,000 records: 2.5 WCU each.
    scaled = planned_import(items, records=1000)
    assert scaled.capacity_units == 2500
    assert scaled.bytes == 500 * (500 + 3584)
    assert "a sample of 2 of 1,000" in scaled.notes[0]


def test_deletes_count_one_write_unit_each_and_say_so() -> None:
    plan = planned_import([sized_item("a", 2000)], records=4, deletes=1)
    assert plan.capacity_units == (2 + 1) * 2
    assert any("deletes are counted at 1 WCU" in note for note in plan.notes)


def test_an_index_writes_the_items_that_carry_its_keys_again() -> None:
    keys_only = IndexShape("by-g", "global", ("g",), "KEYS_ONLY")
    everything = IndexShape("by-g-all", "global", ("g",), "ALL")
    with_g = sized_item("a", 3000, g={"S": "x"})
    without_g = sized_item("b", 3000)
    assert index_entry_size(without_g, keys_only, ["pk"]) is None
    assert index_entry_size(with_g, keys_only, ["pk"]) == item_size(
        {"pk": with_g["pk"], "g": with_g["g"]})
    assert index_entry_size(with_g, everything, ["pk"]) == 3000
    included = IndexShape("by-g-v", "global", ("g",), "INCLUDE", ("v",))
    assert index_entry_size(with_g, included, ["pk"]) == 3000

    # A table that has the indexes: their writes are part of the load (3 + 1 + 3 WCU per
    # two items); created after the load (--create-table), they are a backfill on the side.
    during = ImportTarget("t", {"KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                                "AttributeDefinitions": [{"AttributeName": "pk",
                                                          "AttributeType": "S"}]},
                          True, [keys_only, everything], [])
    plan = planned_import([with_g, without_g], records=2, target=during)
    assert plan.capacity_units == 3 + 3 + 1 + 3
    assert [(i["name"], i["items"], i["capacity_units"], i["during_load"])
            for i in plan.indexes] == [("by-g", 1, 1, True), ("by-g-all", 1, 3, True)]
    after = ImportTarget("t", None, False, [], [keys_only, everything])
    later = planned_import([with_g, without_g], records=2, target=after)
    assert later.capacity_units == 6
    assert later.cost["on_demand"] == pytest.approx((6 + 4) * 0.625 / 1e6)
    assert any("adding the GSIs after the load writes about 4 WCU" in n for n in later.notes)


def test_indexes_are_read_from_a_description_or_a_saved_schema() -> None:
    table = {
        "LocalSecondaryIndexes": [{"IndexName": "l", "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "s", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"}}],
        "GlobalSecondaryIndexes": [{"IndexName": "g", "KeySchema": [
            {"AttributeName": "g", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["a"]}}],
    }
    assert index_shapes(table) == [IndexShape("l", "local", ("pk", "s"), "KEYS_ONLY"),
                                   IndexShape("g", "global", ("g",), "INCLUDE", ("a",))]


def test_the_rate_is_the_one_asked_for_else_the_tables_and_says_where_it_came_from() -> None:
    provisioned = {"BillingModeSummary": {"BillingMode": "PROVISIONED"},
                   "ProvisionedThroughput": {"ReadCapacityUnits": 50, "WriteCapacityUnits": 10}}
    on_demand = {"BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
                 "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0}}
    assert job_rate(provisioned, 7.0, writes=True) == Rate(7.0, "--target-wcu")
    assert job_rate(provisioned, None, writes=True) == Rate(
        10.0, "the table's provisioned capacity", provisioned=True)
    assert job_rate(provisioned, None, writes=False).units_per_second == 50
    assert job_rate(on_demand, None, writes=False).units_per_second == 12_000
    assert job_rate(None, None, writes=True).units_per_second == 4_000
    capped = {**on_demand, "OnDemandThroughput": {"MaxWriteRequestUnits": 300}}
    assert job_rate(capped, None, writes=True) == Rate(300.0, "the table's on-demand maximum")
    saved_schema = {"BillingMode": "PROVISIONED",
                    "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 25}}
    assert job_rate(saved_schema, None, writes=True).units_per_second == 25
    # --provision-wcu: the capacity a provisioned table is raised to; nothing on on-demand.
    assert job_rate(provisioned, None, writes=True, provision=60) == Rate(
        60.0, "the capacity the table is raised to for the job", provisioned=True)
    assert job_rate(provisioned, 7.0, writes=True, provision=60).units_per_second == 7
    assert job_rate(capped, None, writes=True, provision=60).units_per_second == 300
    # Time is units over the rate.
    assert seconds_at(36_000, Rate(10.0, "x")) == 3600


def test_a_crawl_at_provisioned_capacity_and_a_rate_above_it_are_warned_of() -> None:
    table = {"ProvisionedThroughput": {"WriteCapacityUnits": 5}}
    slow = job_rate(table, None, writes=True)
    assert "takes 55.6 hours" in capacity_warnings(table, slow, 200_000.0, None,
                                                   "--target-wcu", "WCU")[0]
    assert capacity_warnings(None, job_rate(None, None, writes=True), 200_000.0, None,
                             "--target-wcu", "WCU") == []
    above = capacity_warnings(table, Rate(100.0, "--target-wcu"), 10.0, 100.0,
                              "--target-wcu", "WCU")
    assert above == ["--target-wcu 100 is above the table's provisioned 5 WCU/s: DynamoDB "
                     "throttles the job down to about that unless the capacity is raised"]


def test_costs_follow_the_price_table_given() -> None:
    prices = RegionPrices(on_demand_read_per_million=1.0, on_demand_write_per_million=2.0,
                          provisioned_rcu_hour=0.5, provisioned_wcu_hour=0.25,
                          s3_gb_month={"STANDARD": 0.1})
    reads = throughput_cost(3_000_000, rate=100, seconds=3601, prices=prices, writes=False)
    assert reads["on_demand"] == 3.0
    assert reads["provisioned"] == 100 * 2 * 0.5  # billed by the whole hour: 2 hours
    writes = throughput_cost(3_000_000, rate=100, seconds=10, prices=prices, writes=True)
    assert (writes["on_demand"], writes["provisioned"]) == (6.0, 100 * 1 * 0.25)
    assert writes["provisioned_basis"] == "100 WCU held 1 hour, billed by the hour"


def test_a_prices_file_replaces_the_regions_it_names(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    region = {"on_demand_read_per_million": 0.2, "on_demand_write_per_million": 1.0,
              "provisioned_rcu_hour": 0.0002, "provisioned_wcu_hour": 0.001,
              "s3_gb_month": {"STANDARD": 0.03, "DEEP_ARCHIVE": 0.002}}
    path.write_text(json.dumps({"source": "our negotiated rates", "date": "2027-01-15",
                                "regions": {"ap-south-1": region, "us-east-1": region}}))
    table = load_prices(str(path))
    assert (table.source, table.date) == ("our negotiated rates", "2027-01-15")
    assert table.for_region("ap-south-1").s3_gb_month["DEEP_ARCHIVE"] == 0.002
    assert table.for_region("us-east-1").on_demand_write_per_million == 1.0
    assert table.for_region("eu-west-1") == BUILT_IN_PRICES.regions["eu-west-1"]
    assert table.used_for("ap-south-1") == {"source": "our negotiated rates",
                                            "date": "2027-01-15", "region": "ap-south-1"}
    assert load_prices(None) is BUILT_IN_PRICES and BUILT_IN_PRICES.date


def test_an_unknown_region_or_a_bad_prices_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no prices for region ap-south-1 .*pass --prices"):
        BUILT_IN_PRICES.for_region("ap-south-1")
    bad = tmp_path / "bad.json"
    for document, problem in (
        ({"regions": {}}, 'needs a "date"'),
        ({"date": "2027-01-01", "regions": {"x": {"provisioned_rcu_hour": 1}}},
         "regions.x.on_demand_read_per_million must be a price"),
        ({"date": "2027-01-01", "regions": {"x": {**dict.fromkeys(
            ("on_demand_read_per_million", "on_demand_write_per_million",
             "provisioned_rcu_hour", "provisioned_wcu_hour"), 1),
            "s3_gb_month": {"COLD": 1}}}}, "unknown storage class COLD"),
    ):
        bad.write_text(json.dumps(document))
        with pytest.raises(ConfigError, match=problem) as raised:
            load_prices(str(bad))
        assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="cannot read --prices"):
        load_prices(str(tmp_path / "missing.json"))


def test_table_figures_come_from_a_whole_sample_else_describe_table_else_a_segment() -> None:
    whole = ScanSample([b"{}"] * 3, 300, complete=True, total_segments=1)
    partial = ScanSample([b"{}"] * 10, 1000, complete=False, total_segments=1)
    segment = ScanSample([b"{}"] * 4, 400, complete=True, total_segments=256)
    described = {"ItemCount": 5000, "TableSizeBytes": 600_000}
    counted = table_figures(described, whole, whole)
    assert (counted.items, counted.bytes) == (3, 300)
    assert "the whole table fit in its sample" in counted.source
    described_figures = table_figures(described, partial, partial)
    assert (described_figures.items, described_figures.bytes) == (5000, 600_000)
    stale = {"ItemCount": 0, "TableSizeBytes": 0}
    figures = table_figures(stale, partial, segment)
    assert (figures.items, figures.bytes) == (4 * 256, 400 * 256)
    assert "a Scan of 1/256 of the table" in figures.source


def test_point_in_time_recovery_spells_out_its_window() -> None:
    pitr = pitr_of({"PointInTimeRecoveryDescription": {
        "PointInTimeRecoveryStatus": "ENABLED", "EarliestRestorableDateTime": 1_790_000_000,
        "LatestRestorableDateTime": 1_793_000_000.5, "RecoveryPeriodInDays": 35}})
    assert pitr["status"] == "ENABLED"
    assert pitr["earliest_restorable"] == "2026-09-21T14:13:20Z"
    assert pitr["latest_restorable"] == "2026-10-26T07:33:20Z"
    assert f"point-in-time recovery keeps {PITR_WINDOW_DAYS} days" in pitr["window"]


def test_bad_choices_are_refused_before_anything_is_called() -> None:
    with pytest.raises(ConfigError, match="unknown --format 'csv': use one of ndjson, parquet"):
        ExportChoices(format="csv")
    with pytest.raises(ConfigError, match="unknown --storage-class 'COLD'"):
        ExportChoices(storage_class="COLD")
    with pytest.raises(ConfigError, match="--max-rcu must be a positive number"):
        ExportChoices(max_rcu=0)


# --- against what real jobs consumed -------------------------------------------------------------

#: Item sizes that make the 1 KB rounding matter: 1, 1, 2, 4 and 6 WCU.
SIZES = (200, 900, 1500, 3500, 6000)


def mixed_items(count: int) -> list[dict[str, Any]]:
    """Items of varied sizes, of random text (it compresses as real data does, not as
    repeated letters); every second one carries ``g``, the key of a GSI."""
    rng = random.Random(11)
    items = []
    for i in range(count):
        item = {"pk": {"S": f"item#{i:05d}"},
                "v": {"S": rng.randbytes(SIZES[i % len(SIZES)] // 2).hex()}}
        if i % 2:
            item["g"] = {"S": f"group-{i % 7}"}
        items.append(item)
    return items


GSI = {"GlobalSecondaryIndexes": [{
    "IndexName": "by-group", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
    "Projection": {"ProjectionType": "KEYS_ONLY"}}]}


@pytest.fixture
def mixed_table(make_table: Any) -> str:
    """About 2.4 MB: more than the plan's sample Scan reads (two 1 MB pages)."""
    return str(make_table(mixed_items(1000), **GSI))


def within(planned: float, consumed: float, tolerance: float = 0.2) -> bool:
    return abs(planned - consumed) <= tolerance * consumed


@pytest.mark.parametrize("consistent_read", [False, True])
def test_planned_read_units_are_within_20_percent_of_a_real_export(
    tmp_path: Path, endpoint: str, mixed_table: str, consistent_read: bool
) -> None:
    plan = ddbpipe.plan_export(mixed_table, consistent_read=consistent_read,
                               endpoint_url=endpoint)
    summary = ddbpipe.export_table(mixed_table, str(tmp_path / "export"), segments=4,
                                   consistent_read=consistent_read, endpoint_url=endpoint)
    assert plan.items == summary.items == 1000
    assert plan.figures.startswith("DescribeTable")  # the sample did not read it all
    assert within(plan.capacity_units, summary.consumed_rcu), (plan.capacity_units,
                                                               summary.consumed_rcu)
    assert within(plan.stored_bytes or 0, summary.stored_bytes)


def test_planned_write_units_are_within_20_percent_of_a_real_import(
    tmp_path: Path, endpoint: str, mixed_table: str, make_table: Any, dynamodb_client: Any
) -> None:
    dest = str(tmp_path / "export")
    ddbpipe.export_table(mixed_table, dest, segments=4, endpoint_url=endpoint)
    aws = AwsOptions(endpoint_url=endpoint)
    new_table = f"{mixed_table}-copy"
    # 50 items from each of the 4 shards: the units are estimated from 200 of 1,000 items.
    plan = asyncio.run(run_plan_import(dest, table=new_table, create_table=True, aws=aws,
                                       sample_items=50))
    assert "a sample of 200 of 1,000" in plan.notes[0]
    assert [(i["name"], i["during_load"]) for i in plan.indexes] == [("by-group", False)]
    assert within(plan.indexes[0]["items"], 500)
    try:
        summary = ddbpipe.import_table(dest, new_table, create_table=True,
                                       endpoint_url=endpoint,
                                       checkpoint=str(tmp_path / "checkpoint.json"))
    finally:
        dynamodb_client.delete_table(TableName=new_table)  # make_table deletes only its own
    assert summary.items_written == plan.items == 1000
    assert within(plan.capacity_units, summary.consumed_wcu), (plan.capacity_units,
                                                               summary.consumed_wcu)

    # Into a table that has the GSI: its writes are part of the load, and of what it consumed.
    target = make_table(**GSI)
    into = asyncio.run(run_plan_import(dest, table=target, aws=aws, sample_items=50))
    assert into.indexes[0]["during_load"] is True
    written = ddbpipe.import_table(dest, target, endpoint_url=endpoint,
                                   checkpoint=str(tmp_path / "checkpoint-2.json"))
    assert into.capacity_units > plan.capacity_units
    assert within(into.capacity_units, written.consumed_wcu), (into.capacity_units,
                                                               written.consumed_wcu)


def test_figures_of_zero_are_estimated_from_a_segment_read_whole(
    endpoint: str, mixed_table: str
) -> None:
    async def sample() -> tuple[ScanSample, ScanSample, float]:
        async with DynamoClient.open(AwsOptions(endpoint_url=endpoint)) as client:
            # As DescribeTable answers before it has refreshed a newly filled table.
            return await sample_table(client, mixed_table, {"ItemCount": 0}, ExportChoices())

    first, counted, _ = asyncio.run(sample())
    assert not first.complete and counted.complete and counted.total_segments == 16
    figures = table_figures({"ItemCount": 0}, first, counted)
    assert within(figures.items, 1000, tolerance=0.5)


def test_loose_files_without_counts_are_counted_from_a_sample(tmp_path: Path) -> None:
    folder = tmp_path / "loose"
    folder.mkdir()
    small = [sized_item(f"s{i}", 1500) for i in range(10)]
    (folder / "small.json").write_bytes(b"".join(
        msgspec.json.encode({"Item": item}) + b"\n" for item in small)
        + b'{"Keys": {"pk": {"S": "gone"}}}\n')
    big = [sized_item(f"b{i:05d}", 500) for i in range(2000)]
    (folder / "big.json").write_bytes(b"".join(
        msgspec.json.encode({"Item": item}) + b"\n" for item in big))
    assert (folder / "big.json").stat().st_size > SAMPLE_FILE_BYTES  # read in part only
    plan = asyncio.run(run_plan_import(str(folder)))
    assert within(plan.items, 2011, tolerance=0.05)
    assert "estimated from" in plan.figures
    assert any("deletes are counted at 1 WCU" in note for note in plan.notes)
    assert plan.table is None and plan.rate == 4000
    assert plan.pitr["status"] == "unknown (no table given)"


def test_an_aws_export_on_s3_is_planned_from_its_manifest_and_a_sample(
    endpoint: str, s3_server: Any, s3_client: Any, s3_bucket: str
) -> None:
    items = [sized_item(f"item#{i:04d}", 1500 if i % 3 else 5000) for i in range(300)]
    export = write_aws_export(s3_put(s3_client, s3_bucket),
                              [full_lines(items[:150]), full_lines(items[150:])])
    plan = ddbpipe.plan_import(f"s3://{s3_bucket}/{export}", endpoint_url=endpoint,
                               s3_endpoint_url=s3_server.endpoint)
    assert (plan.items, plan.figures) == (300, "the aws-full export's manifest")
    assert plan.capacity_units == 100 * 5 + 200 * 2  # every item sampled: exact


# --- the command -------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DDBPIPE, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_plan_export_json_has_the_figures_the_issue_asks_for(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(mixed_items(100))
    prices = tmp_path / "prices.json"
    region = {"on_demand_read_per_million": 1, "on_demand_write_per_million": 5,
              "provisioned_rcu_hour": 0.001, "provisioned_wcu_hour": 0.005,
              "s3_gb_month": {"DEEP_ARCHIVE": 0.002}}
    prices.write_text(json.dumps({"date": "2027-02-01", "regions": {"eu-north-1": region}}))
    result = run("plan", "export", table, "--json", "--storage-class", "DEEP_ARCHIVE",
                 "--prices", str(prices), "--region", "eu-north-1", "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert {"job", "table", "items", "bytes", "capacity_units", "rate", "seconds", "cost",
            "pitr"} <= plan.keys()
    assert (plan["job"], plan["table"], plan["items"]) == ("export", table, 100)
    assert plan["prices"] == {"source": str(prices), "date": "2027-02-01",
                              "region": "eu-north-1"}
    assert plan["cost"]["storage_class"] == "DEEP_ARCHIVE"
    assert plan["cost"]["on_demand"] == pytest.approx(plan["capacity_units"] / 1e6)
    assert plan["pitr"]["status"] == (
        "unknown (the endpoint does not support DescribeContinuousBackups)")
    assert "35 days" in plan["pitr"]["window"]


def test_plan_prints_aligned_lines_and_bad_input_is_one_line(
    endpoint: str, make_table: Any
) -> None:
    table = make_table(mixed_items(20))
    shown = run("plan", "export", table, "--endpoint-url", endpoint)
    assert shown.returncode == 0, shown.stderr
    labels = [line.split()[0] for line in shown.stdout.splitlines()]
    assert labels[:9] == ["job", "items", "bytes", "capacity", "rate", "time", "cost", "pitr",
                          "prices"]
    assert len({line.index(line.split()[1]) for line in shown.stdout.splitlines()}) == 1

    for args, code, message in (
        (("--format", "csv"), 2, "error: unknown --format 'csv': use one of ndjson, parquet"),
        (("--region", "ap-south-1"), 2, "error: no prices for region ap-south-1"),
        (("--max-rcu", "-1"), 2, "error: --max-rcu must be a positive number"),
    ):
        result = run("plan", "export", table, *args, "--endpoint-url", endpoint)
        assert result.returncode == code and result.stdout == ""
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(message)
    missing = run("plan", "export", "no-such-table", "--endpoint-url", endpoint)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "table 'no-such-table' not found" in missing.stderr
    unknown = run("plan", "import")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1


def test_price_table_shape_is_what_a_prices_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "built-in.json"
    path.write_text(json.dumps(BUILT_IN_PRICES.to_dict()))
    assert load_prices(str(path)).regions == BUILT_IN_PRICES.regions
    assert isinstance(load_prices(str(path)), PriceTable)
