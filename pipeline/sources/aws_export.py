"""An AWS-native export to S3 as an import source, full or incremental.

Its manifests (``manifest-summary.json``, ``manifest-files.json``, each checked against its
``.md5`` file when there is one) sit under ``AWSDynamoDB/<ExportId>/``; SOURCE may also be the
prefix above it when it holds exactly one export. Full exports hold ``{"Item"}`` lines (puts);
incremental exports hold change lines (``change_of_line``): a put of the new image, or a
delete of the keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from ..errors import CorruptDataError, StorageError
from ..integrity import (
    ManifestsDisagree,
    MissingFile,
    Problem,
    read_checked_manifest,
    stop_at_first,
)
from ..manifest import (
    AWS_FILES_KEY,
    AWS_SUMMARY_KEY,
    AwsFileEntry,
    decode_aws_files,
    decode_json_object,
)
from ..records import RecordKind
from ..storage import ObjectInfo, ObjectStore
from .common import ImportSource, SourceFile, SourceKind, location_prefix

__all__ = [
    "aws_export_id", "change_of_line", "nested_aws_export", "open_aws_export",
    "refuse_unfinished_aws_export",
]

_CHECKSUM_SUFFIXES = (".md5", ".checksum")  # AWS docs say .checksum; files say .md5
_INCREMENTAL = "INCREMENTAL_EXPORT"
_FULL_TYPES = (None, "FULL_EXPORT")
_SUPPORTED_FORMAT = "DYNAMODB_JSON"
_NESTED_SUMMARY = re.compile(r"(?:^|/)AWSDynamoDB/([^/]+)/manifest-summary\.json$")
_STARTED = re.compile(r"(?:^|/)AWSDynamoDB/[^/]+/_started$")
_EXPORT_RELATIVE = re.compile(r"(?:^|/)AWSDynamoDB/[^/]+/(.+)$")


def nested_aws_export(store: ObjectStore, listing: Sequence[ObjectInfo]) -> str | None:
    """``AWSDynamoDB/<id>/`` when SOURCE is the prefix above exactly one AWS export."""
    found = sorted(
        info.key[: -len(AWS_SUMMARY_KEY)]
        for info in listing
        if _NESTED_SUMMARY.search(info.key)
    )
    if len(found) > 1:
        prefix = location_prefix(store)
        shown = ", ".join(prefix + base for base in found[:3])
        raise StorageError(
            f"{store.url} holds {len(found)} AWS exports ({shown}...): give one export's "
            "prefix as SOURCE"
        )
    return found[0] if found else None


def refuse_unfinished_aws_export(store: ObjectStore, listing: Sequence[ObjectInfo]) -> None:
    """An AWS export DynamoDB has not finished (``_started``, no summary yet) holds some of
    its data files: read as loose NDJSON they would import part of a table."""
    keys = {info.key for info in listing}
    for key in keys:
        if _STARTED.search(key) and key[: -len("_started")] + AWS_SUMMARY_KEY not in keys:
            where = location_prefix(store) + key[: -len("_started")]
            raise StorageError(
                f"{where} is an AWS export DynamoDB has not finished (no {AWS_SUMMARY_KEY}): "
                "wait until 'aws dynamodb describe-export' says COMPLETED, then import it"
            )


async def open_aws_export(store: ObjectStore, base: str) -> ImportSource:
    """The AWS export whose manifests are at ``base`` ("" or "…/AWSDynamoDB/<id>/")."""
    prefix = location_prefix(store)
    summary_key, files_key = base + AWS_SUMMARY_KEY, base + AWS_FILES_KEY
    summary = decode_json_object(
        await _checked_manifest(store, summary_key, prefix), prefix + summary_key
    )
    kind = _export_kind(summary, prefix + summary_key)
    entries = decode_aws_files(
        await _checked_manifest(store, files_key, prefix), prefix + files_key
    )
    listed = {info.key: info for info in await store.list(base)}
    files = tuple(_source_file(store, base, files_key, entry, listed) for entry in entries)
    item_count = sum(file.items or 0 for file in files)
    stop_at_first(_summary_count_problems(summary, item_count, prefix + summary_key, files_key))
    return ImportSource(
        url=store.url,
        kind=kind,
        files=files,
        item_count=item_count,
        key_attributes=None,
        table_schema=None,
        export_id=aws_export_id(base, summary),
    )


async def _checked_manifest(store: ObjectStore, key: str, prefix: str) -> bytes:
    stem = key[: -len(".json")]
    document, problems = await read_checked_manifest(
        store, key, [stem + suffix for suffix in _CHECKSUM_SUFFIXES], require_checksum=False,
        prefix=prefix,
    )
    stop_at_first(problems)
    assert document is not None  # a missing manifest is one of the problems
    return document


def _export_kind(summary: dict[str, Any], where: str) -> SourceKind:
    output_format = summary.get("outputFormat", _SUPPORTED_FORMAT)
    if output_format != _SUPPORTED_FORMAT:
        raise StorageError(
            f"{where}: the export is in {output_format} format, which ddbpipe does not read: "
            f"export with --export-format {_SUPPORTED_FORMAT}"
        )
    # The line format follows the export type; the version string only dates the layout.
    export_type = summary.get("exportType")
    if export_type == _INCREMENTAL:
        return "aws-incremental"
    if export_type in _FULL_TYPES:
        return "aws-full"
    raise StorageError(f"{where}: unknown exportType {export_type!r}")


def _source_file(
    store: ObjectStore,
    base: str,
    files_key: str,
    entry: AwsFileEntry,
    listed: dict[str, ObjectInfo],
) -> SourceFile:
    key = _data_key(store, base, entry.dataFileS3Key, listed)
    if key is None:
        listed_in = location_prefix(store) + files_key
        raise MissingFile(file=entry.dataFileS3Key, listed_in=listed_in).error()
    # AWS records no size: the listed one guards against a change before the file is read.
    return SourceFile(
        key=key,
        size=listed[key].size,
        items=entry.itemCount,
        md5_b64=entry.md5Checksum,
        recorded_in=files_key,
    )


def _data_key(
    store: ObjectStore, base: str, data_key: str, listed: dict[str, ObjectInfo]
) -> str | None:
    """The store-relative key of a data file that manifest-files.json names from the bucket
    root, trying: under the store's S3 prefix; as a copy (the part after AWSDynamoDB/<id>/);
    relative to the export (ddbpipe's manifests for local exports)."""
    candidates = []
    prefix = _store_prefix(store)
    if prefix is not None and data_key.startswith(prefix):
        candidates.append(data_key[len(prefix) :])
    copied = _EXPORT_RELATIVE.search(data_key)
    if copied:
        candidates.append(base + copied.group(1))
    candidates.append(base + data_key)
    return next((key for key in candidates if key in listed), None)


def _store_prefix(store: ObjectStore) -> str | None:
    """The S3 prefix keys from the bucket root start with; None for local stores."""
    if store.bucket is None:
        return None
    return store.root_key(AWS_SUMMARY_KEY)[: -len(AWS_SUMMARY_KEY)]


def _summary_count_problems(
    summary: dict[str, Any], files_count: int, where: str, files_key: str
) -> Iterator[Problem]:
    recorded = summary.get("itemCount")
    if recorded is not None and (not isinstance(recorded, int) or recorded != files_count):
        detail = f"itemCount {recorded!r}, but the files it lists add up to {files_count}"
        yield ManifestsDisagree(file=where, other=files_key, detail=detail)


def aws_export_id(base: str, summary: dict[str, Any]) -> str | None:
    """The id of the AWS export at ``base`` (``.../AWSDynamoDB/<id>/``), else from its ARN."""
    if base:
        return base.rstrip("/").rsplit("/", 1)[-1]
    arn = summary.get("exportArn")
    if isinstance(arn, str) and "/export/" in arn:
        return arn.rsplit("/export/", 1)[1]
    return None


# --- change lines ---------------------------------------------------------------------------


class _ChangeLine(msgspec.Struct):
    """A line of either shape: ``{"Item"}`` or AWS incremental ``{"Keys", "NewImage", ...}``."""

    # Raw: the item's bytes go to DynamoDB as read (msgspec has no Raw | None; absent is empty).
    Item: msgspec.Raw = msgspec.Raw()
    Keys: msgspec.Raw = msgspec.Raw()
    NewImage: msgspec.Raw = msgspec.Raw()


_change_decoder = msgspec.json.Decoder(_ChangeLine)


def change_of_line(line: bytes, where: str, number: int) -> tuple[RecordKind, bytes]:
    """The write of an incremental export's line ``number`` (``{"Item"}`` lines are puts too)."""
    try:
        change = _change_decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise CorruptDataError(f"{where}: line {number} is not an item line ({exc})") from None
    except msgspec.DecodeError as exc:
        raise CorruptDataError(f"{where}: line {number} is not valid JSON ({exc})") from None
    # Copied out of the line, so a record does not keep its whole line alive.
    if item := _present(change.Item):
        return "put", item
    if image := _present(change.NewImage):
        return "put", image
    if keys := _present(change.Keys):
        return "delete", keys
    raise CorruptDataError(f"{where}: line {number} has no Item, NewImage or Keys")


def _present(raw: msgspec.Raw) -> bytes | None:
    """The bytes of a field that is there and not null."""
    data = bytes(raw)
    return data if data and data != b"null" else None
