"""The restore drill (``verify --against-table``): a live table compared item by item with an
export, by primary key and as DynamoDB compares values, in bounded memory; run against
DynamoDB Local with local exports (NDJSON and Parquet) and one on moto's S3."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ddbpipe
from ddbpipe.config import AwsOptions
from ddbpipe.drill import DrillSettings, scan_table
from ddbpipe.dynamo import DynamoClient
from ddbpipe.integrity import ChecksumMismatch
from ddbpipe.item_diff import ItemPartitions, KeyReader, KeyTally, canonical_item
from ddbpipe.manifest import MANIFEST_KEY, ShardEntry, decode_manifest, final_documents
from ddbpipe.progress import JobProgress
from ddbpipe.ratelimit import TokenBucket
from ddbpipe.retry import ManualClock
from ddbpipe.shards import ShardWriter, shard_key
from ddbpipe.verify_job import VerifyReport, run_verify
from tests.exports import FIDELITY_ITEMS, flip_middle_byte, plain_items, shard_paths

ITEMS = FIDELITY_ITEMS + plain_items(300)
KEYS = (("pk", "S"),)


def export(table: str, dest: Path | str, endpoint: str, **options: Any) -> str:
    ddbpipe.export_table(table, str(dest), segments=3, endpoint_url=endpoint, **options)
    return str(dest)


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}}


def tally(*pks: str) -> KeyTally:
    return KeyTally(len(pks), tuple(map(key, pks)))


def change_delete_add(client: Any, table: str) -> None:
    """One item changed, one deleted, one added, behind the export's back."""
    client.put_item(TableName=table, Item={**ITEMS[5], "name": {"S": "changed"}})
    client.delete_item(TableName=table, Key=key("item#000007"))
    client.put_item(TableName=table, Item={"pk": {"S": "added"}, "n": {"N": "1"}})


# --- an exact restore passes -------------------------------------------------------------------


@pytest.mark.parametrize("data_format", ["ndjson", "parquet"])
def test_a_drill_on_an_exact_restore_passes(
    tmp_path: Path, endpoint: str, make_table: Any, data_format: str
) -> None:
    dest = export(make_table(ITEMS), tmp_path / "export", endpoint, format=data_format)
    restored = make_table()
    ddbpipe.import_table(dest, restored, endpoint_url=endpoint,
                         checkpoint=str(tmp_path / "checkpoint.json"))

    report = ddbpipe.verify_export(dest, against_table=restored, endpoint_url=endpoint)

    assert report.ok and not report.problems
    comparison = report.comparison
    assert comparison is not None and comparison.ok
    assert comparison.export_items == comparison.table_items == len(ITEMS)
    assert comparison.missing_from_table == comparison.extra_in_table == KeyTally()
    assert comparison.different == KeyTally()
    assert comparison.consumed_rcu > 0
    # The export's read-all checks ran on the way: every item was read back.
    assert report.read_data and report.items_read == len(ITEMS)
    assert report.to_dict()["comparison"]["ok"] is True


# --- differences -------------------------------------------------------------------------------


def test_a_changed_a_deleted_and_an_added_item_are_named_in_their_categories(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(ITEMS)
    dest = export(table, tmp_path / "export", endpoint)
    change_delete_add(dynamodb_client, table)

    report = ddbpipe.verify_export(dest, against_table=table, endpoint_url=endpoint)

    assert not report.ok and not report.problems
    comparison = report.comparison
    assert comparison is not None
    assert comparison.missing_from_table == tally("item#000007")
    assert comparison.extra_in_table == tally("added")
    assert comparison.different == tally(ITEMS[5]["pk"]["S"])
    assert (comparison.export_items, comparison.table_items) == (len(ITEMS), len(ITEMS))
    summary = report.to_dict()
    assert summary["ok"] is False and summary["against_table"] == table
    assert summary["comparison"]["missing_from_table"] == {
        "count": 1, "keys": [key("item#000007")]
    }
    assert summary["comparison"]["extra_in_table"]["count"] == 1
    assert summary["comparison"]["different"]["count"] == 1
    lines = comparison.describe()
    assert lines[0].startswith(f"table {table} differs from the export")
    assert '1 missing from the table: {"pk": {"S": "item#000007"}}' in lines


def test_only_the_first_five_keys_of_a_category_are_named(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(plain_items(50))
    dest = export(table, tmp_path / "export", endpoint)
    deleted = [f"item#{number:06d}" for number in range(40, 4, -3)]  # 12 keys, in no order
    for pk in deleted:
        dynamodb_client.delete_item(TableName=table, Key=key(pk))

    comparison = ddbpipe.verify_export(dest, against_table=table, endpoint_url=endpoint).comparison

    assert comparison is not None
    assert comparison.missing_from_table == KeyTally(12, tuple(map(key, sorted(deleted)[:5])))
    assert comparison.describe()[1].endswith("and 7 more")


# --- type fidelity -----------------------------------------------------------------------------


def rewrite_export(dest: Path, raw_items: list[bytes]) -> None:
    """Replace a local export's items with ``raw_items`` (DynamoDB JSON, spelled as given),
    written by ddbpipe's own shard writer and manifests, so the export stays intact."""
    manifest = decode_manifest((dest / MANIFEST_KEY).read_bytes())
    for path in shard_paths(dest):
        path.unlink()
    writer = ShardWriter("ndjson", "zstd", KEYS)
    writer.add_items(raw_items)
    finished = writer.close()
    entry = ShardEntry(
        key=shard_key(0, 0, "ndjson", "zstd"), segment=0, seq=0, items=finished.items,
        stored_bytes=finished.stored_bytes, raw_bytes=finished.raw_bytes,
        sha256=finished.sha256, md5=finished.md5_b64, etag=finished.md5_hex,
    )
    shutil.move(finished.path, dest / entry.key)
    rewritten = dataclasses.replace(manifest, shards=(entry,))
    for name, document in final_documents(rewritten, None, lambda stored_key: stored_key):
        (dest / name).write_bytes(document)


def test_values_are_compared_as_dynamodb_compares_them(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    # DynamoDB stores numbers trimmed and returns sets in an order of its own, so spellings
    # that differ from the table's can only come from the export's side.
    table = make_table([
        {"pk": {"S": "written-1.50"}, "v": {"N": "1.50"}},
        {"pk": {"S": "number"}, "v": {"N": "1.5"}, "hundred": {"N": "100"}, "zero": {"N": "0"}},
        {"pk": {"S": "sets-and-maps"}, "ss": {"SS": ["a", "b", "c"]},
         "ns": {"NS": ["1", "2.5", "10"]}, "bs": {"BS": [b"\x01", b"\x02"]},
         "m": {"M": {"a": {"N": "1"}, "b": {"B": b"\xff"}}}},
        {"pk": {"S": "string-vs-number"}, "v": {"N": "1"}},
        {"pk": {"S": "list-order"}, "l": {"L": [{"N": "1"}, {"N": "2"}]}},
    ])
    dest = tmp_path / "export"
    export(table, dest, endpoint)
    rewrite_export(dest, [
        b'{"pk":{"S":"written-1.50"},"v":{"N":"1.5"}}',
        b'{"zero":{"N":"-0"},"hundred":{"N":"1E+2"},"v":{"N":"1.50"},"pk":{"S":"number"}}',
        b'{"pk":{"S":"sets-and-maps"},"ss":{"SS":["c","a","b"]},"ns":{"NS":["10","2.50","1"]},'
        b'"bs":{"BS":["Ag==","AQ=="]},"m":{"M":{"b":{"B":"/w=="},"a":{"N":"1.0"}}}}',
        b'{"pk":{"S":"string-vs-number"},"v":{"S":"1"}}',
        b'{"pk":{"S":"list-order"},"l":{"L":[{"N":"2"},{"N":"1"}]}}',
    ])

    report = ddbpipe.verify_export(str(dest), against_table=table, endpoint_url=endpoint)

    assert not report.problems, report.problems  # the rewritten export is a whole one
    assert report.comparison is not None
    assert report.comparison.different == tally("list-order", "string-vs-number")
    assert report.comparison.missing_from_table == report.comparison.extra_in_table == KeyTally()


def test_the_canonical_form_of_one_item() -> None:
    assert canonical_item(b'{"n":{"N":"1"}}') == canonical_item(b'{"n":{"N":"1E0"}}')
    assert canonical_item(b'{"n":{"N":"1"}}') == canonical_item(b'{"n":{"N":"1.0"}}')
    assert canonical_item(b'{"n":{"N":"12345678901234567890123456789012345670"}}') != (
        canonical_item(b'{"n":{"N":"12345678901234567890123456789012345680"}}')
    )
    assert canonical_item(b'{"n":{"S":"1"}}') != canonical_item(b'{"n":{"N":"1"}}')
    assert canonical_item(b'{"b":{"B":"AAE="}}') != canonical_item(b'{"b":{"S":"AAE="}}')
    assert canonical_item(b'{"s":{"SS":["a","b"]}}') != canonical_item(b'{"s":{"SS":["a"]}}')


# --- bounded memory ----------------------------------------------------------------------------


def drill(dest: str, settings: DrillSettings, endpoint: str, **options: Any) -> VerifyReport:
    aws = AwsOptions(endpoint_url=endpoint)
    return asyncio.run(run_verify(dest, drill=settings, aws=aws, **options))


def test_many_small_partitions_find_the_same_differences_and_leave_no_files(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(ITEMS)
    dest = export(table, tmp_path / "export", endpoint)
    change_delete_add(dynamodb_client, table)
    work = tmp_path / "work"
    work.mkdir()

    one = drill(dest, DrillSettings(table=table, work_dir=str(work)), endpoint).comparison
    many = drill(dest, DrillSettings(table=table, work_dir=str(work), partition_bytes=4096),
                 endpoint).comparison

    assert one is not None and many is not None
    assert one.partitions == 1 and many.partitions > 100
    assert (many.missing_from_table, many.extra_in_table, many.different) == (
        one.missing_from_table, one.extra_in_table, one.different
    )
    assert many.different.count == many.missing_from_table.count == 1
    assert list(work.iterdir()) == []


class FailingScan(JobProgress):
    """Progress that fails the drill (or cancels it) at the Scan's first page, noting the
    partition files that existed then."""

    def __init__(self, work: Path, drill: asyncio.Task[Any] | None) -> None:
        super().__init__()
        self.work = work
        self.drill = drill
        self.files_at_failure: list[Path] = []

    def add_page(self, items: int, raw_bytes: int, consumed_capacity: float) -> None:
        self.files_at_failure = list(self.work.rglob("*"))
        if self.drill is None:
            raise RuntimeError("the scan failed")
        self.drill.cancel()


@pytest.mark.parametrize("cancel", [False, True], ids=["error", "cancelled"])
def test_partition_files_are_removed_when_the_drill_fails(
    tmp_path: Path, endpoint: str, make_table: Any, cancel: bool
) -> None:
    table = make_table(ITEMS)
    dest = export(table, tmp_path / "export", endpoint)
    work = tmp_path / "work"
    work.mkdir()
    settings = DrillSettings(table=table, work_dir=str(work), partition_bytes=4096)

    async def drill_until_the_scan_stops() -> FailingScan:
        progress = FailingScan(work, asyncio.current_task() if cancel else None)
        with pytest.raises(asyncio.CancelledError if cancel else RuntimeError):
            await run_verify(dest, drill=settings, aws=AwsOptions(endpoint_url=endpoint),
                             progress=progress)
        return progress

    progress = asyncio.run(drill_until_the_scan_stops())

    assert any(path.suffix == ".records" for path in progress.files_at_failure)
    assert list(work.iterdir()) == []


# --- the read budget ---------------------------------------------------------------------------


class RecordingBucket(TokenBucket):
    """A token bucket that adds up every amount taken from it."""

    def __init__(self, rate: float, clock: ManualClock) -> None:
        super().__init__(rate, clock=clock)
        self.taken = 0.0

    async def acquire(self, amount: float) -> None:
        self.taken += amount
        await super().acquire(amount)

    def charge(self, amount: float) -> None:
        self.taken += amount
        super().charge(amount)


#: About 3 MB: several 1 MB Scan pages per segment, so later pages wait for the bucket.
BIG_ITEMS = [{"pk": {"S": f"big-{n}"}, "blob": {"S": "x" * 100_000}} for n in range(30)]


def reported_capacity(client: Any, table: str, segments: int) -> float:
    """Read units DynamoDB reports for a Scan of every segment, asked through boto3."""
    total = 0.0
    for segment in range(segments):
        pages = client.get_paginator("scan").paginate(
            TableName=table, Segment=segment, TotalSegments=segments,
            ReturnConsumedCapacity="TOTAL",
        )
        total += sum(page["ConsumedCapacity"]["CapacityUnits"] for page in pages)
    return total


def test_the_scan_is_charged_what_dynamodb_reported(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    table = make_table(BIG_ITEMS)
    clock = ManualClock()
    bucket = RecordingBucket(rate=1.0, clock=clock)

    async def scan() -> float:
        async with DynamoClient.open(AwsOptions(endpoint_url=endpoint), clock=clock) as client:
            with ItemPartitions(1, parent=str(tmp_path)) as partitions:
                totals = await scan_table(partitions, KeyReader(KEYS), client, table,
                                          segments=2, read_budget=bucket)
        assert totals.items == 30
        return totals.consumed_rcu

    consumed = asyncio.run(scan())

    reported = reported_capacity(dynamodb_client, table, segments=2)
    assert reported > 10
    assert consumed == pytest.approx(reported)
    assert bucket.taken == pytest.approx(reported)
    assert clock.now > 0  # the scan waited for the bucket, on the simulated clock


def test_max_rcu_reaches_the_scan(tmp_path: Path, endpoint: str, make_table: Any) -> None:
    table = make_table(BIG_ITEMS)
    dest = export(table, tmp_path / "export", endpoint)
    clock = ManualClock()
    settings = DrillSettings(table=table, max_rcu=1.0, segments=1)

    report = drill(dest, settings, endpoint, clock=clock)

    assert report.ok and report.comparison is not None
    assert report.comparison.consumed_rcu > 10
    assert clock.now > 0  # more than a second's budget: it waited, on the simulated clock


# --- an export on S3 ---------------------------------------------------------------------------


def test_a_drill_of_an_export_on_s3(
    endpoint: str, make_table: Any, dynamodb_client: Any, s3_server: Any, s3_bucket: str
) -> None:
    table = make_table(ITEMS)
    dest = f"s3://{s3_bucket}/exports/{table}"
    export(table, dest, endpoint, s3_endpoint_url=s3_server.endpoint, format="parquet")
    dynamodb_client.delete_item(TableName=table, Key=key("all-types"))

    report = ddbpipe.verify_export(dest, against_table=table, endpoint_url=endpoint,
                                   s3_endpoint_url=s3_server.endpoint)

    assert not report.ok and not report.problems
    assert report.comparison is not None
    assert report.comparison.missing_from_table == tally("all-types")
    assert report.comparison.table_items == len(ITEMS) - 1


# --- what is refused ---------------------------------------------------------------------------


def test_a_damaged_export_is_reported_and_the_table_not_scanned(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(ITEMS)
    dest = export(table, tmp_path / "export", endpoint)
    flip_middle_byte(shard_paths(Path(dest))[0])

    report = ddbpipe.verify_export(dest, against_table=table, endpoint_url=endpoint)

    assert not report.ok
    assert any(isinstance(problem, ChecksumMismatch) for problem in report.problems)
    assert report.comparison is None and report.to_dict()["against_table"] == table


def test_a_missing_table_is_one_line(tmp_path: Path, endpoint: str, make_table: Any) -> None:
    dest = export(make_table(plain_items(5)), tmp_path / "export", endpoint)
    with pytest.raises(ddbpipe.TableNotFoundError) as caught:
        ddbpipe.verify_export(dest, against_table="no-such-table", endpoint_url=endpoint)
    assert "'no-such-table' not found" in str(caught.value) and "\n" not in str(caught.value)


def test_a_table_with_other_keys_is_refused(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    dest = export(make_table(plain_items(5)), tmp_path / "export", endpoint)
    other = make_table(hash_key=("id", "N"))
    with pytest.raises(ddbpipe.SchemaMismatchError, match=r"table '.*' has id \(N\) HASH, the "
                       r"export has pk \(S\) HASH") as caught:
        ddbpipe.verify_export(dest, against_table=other, endpoint_url=endpoint)
    assert "\n" not in str(caught.value)


def test_what_is_not_a_ddbpipe_export_is_refused(tmp_path: Path, endpoint: str,
                                                 make_table: Any) -> None:
    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "items.json").write_bytes(msgspec.json.encode({"Item": key("a")}) + b"\n")
    with pytest.raises(ddbpipe.CorruptDataError, match="holds no ddbpipe export") as caught:
        ddbpipe.verify_export(str(folder), against_table=make_table(), endpoint_url=endpoint)
    assert "\n" not in str(caught.value)


def test_drill_settings_without_a_table_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ddbpipe.ConfigError, match="--max-rcu: only for a drill"):
        ddbpipe.verify_export(str(tmp_path), max_rcu=100)
    with pytest.raises(ddbpipe.ConfigError, match="--max-rcu must be a positive number"):
        ddbpipe.verify_export(str(tmp_path), against_table="t-x", max_rcu=0)


def test_an_item_without_its_key_is_a_problem_of_its_shard(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(plain_items(5))
    dest = tmp_path / "export"
    export(table, dest, endpoint)
    rewrite_export(dest, [b'{"pk":{"S":"a"}}', b'{"other":{"S":"b"}}'])

    report = ddbpipe.verify_export(str(dest), against_table=table, endpoint_url=endpoint)

    (problem,) = report.problems
    assert str(problem) == (
        "data/00000-000000.json.zst: item 2: item has no key attribute 'pk' of type S"
    )
    assert report.comparison is None and not report.ok

