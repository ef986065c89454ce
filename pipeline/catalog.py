"""The ls job: a catalogue of the exports under a local directory or an S3 prefix.

One listing of the location (paged, however many objects it holds) finds the exports by their
manifests, and each is described from its manifest alone; no data is read:

- ``ddbpipe-manifest.json``: a finished ddbpipe export;
- ``_ddbpipe-state/export.json`` without it: an unfinished one, described by its plan. Its
  items are not counted (that would take one read per segment checkpoint); its stored bytes
  are those of the files under its ``data/`` so far, from the listing;
- ``manifest-summary.json`` with neither (as AWS writes it, under ``AWSDynamoDB/<ExportId>/``):
  an AWS-native export; its stored bytes and storage class come from the listing of its data.

A manifest that cannot be read or decoded (or is of a newer format version) becomes an entry
with its ``error``: a catalogue of years of archives must not stop at one bad entry.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .config import AwsOptions, refuse_s3_only
from .errors import AccessDeniedError, CorruptDataError, FormatVersionError, StorageError
from .manifest import (
    AWS_SUMMARY_KEY,
    DATA_PREFIX,
    MANIFEST_KEY,
    STATE_KEY,
    ExportPlan,
    archive_record,
    decode_json_object,
    decode_manifest,
    decode_plan,
)
from .sources.aws_export import aws_export_id
from .sources.common import location_prefix
from .storage import ObjectInfo, ObjectStore, open_store

__all__ = ["ListedExport", "run_list"]

#: Manifests read at the same time.
MANIFEST_READS = 16
#: What AWS's summary assumes when it names no output format.
_AWS_DEFAULT_FORMAT = "DYNAMODB_JSON"
#: What reading one entry may raise without stopping the catalogue.
_ENTRY_ERRORS = (CorruptDataError, FormatVersionError, StorageError, AccessDeniedError)

ExportKind = Literal["ddbpipe", "aws"]


@dataclass(frozen=True, kw_only=True)
class ListedExport:
    """One export of a catalogue, as its manifest describes it; None where it says nothing.

    ``format`` is ddbpipe's ``ndjson``/``parquet`` or AWS's ``DYNAMODB_JSON``/``ION``;
    ``storage_class`` is the shards' (STANDARD for exports that record none); ``sse`` is
    spelt as the manifest records it (AWS's summary says ``KMS`` where ours say ``aws:kms``).
    ``error`` names what made the manifest unreadable; such an entry is never ``complete``.
    """

    path: str
    kind: ExportKind
    complete: bool
    table: str | None = None
    table_arn: str | None = None
    export_id: str | None = None
    export_time: str | None = None
    items: int | None = None
    stored_bytes: int | None = None
    format: str | None = None
    storage_class: str | None = None
    sse: str | None = None
    kms_key_id: str | None = None
    object_lock_mode: str | None = None
    retain_until: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_list(location: str, aws: AwsOptions | None = None) -> list[ListedExport]:
    """The exports under ``location``, sorted by path; an empty list when there are none.

    Raises only when the location itself is unusable (a missing bucket or directory, no
    access to list it).
    """
    aws = aws or AwsOptions()
    refuse_s3_only(location, ["--expected-bucket-owner"] if aws.expected_bucket_owner else [])
    async with open_store(location, aws) as store:
        await store.ensure_ready(for_write=False, may_be_empty=True)
        listing = await store.list()
        reading = asyncio.Semaphore(MANIFEST_READS)

        async def describe(found: _Found) -> ListedExport:
            async with reading:
                return await _describe(store, listing, found)

        entries = await asyncio.gather(*(describe(found) for found in _found_exports(listing)))
    return sorted(entries, key=lambda entry: entry.path)


# --- finding the exports ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """An export's base (its key prefix in the store, "" or ending in '/') and its manifest."""

    base: str
    manifest_key: str


def _found_exports(listing: Sequence[ObjectInfo]) -> list[_Found]:
    bases: dict[str, set[str]] = {MANIFEST_KEY: set(), STATE_KEY: set(), AWS_SUMMARY_KEY: set()}
    for info in listing:
        for name, found in bases.items():
            if info.key == name or info.key.endswith("/" + name):
                found.add(info.key[: -len(name)])
    # A finished export may still hold its state (a run stopped before removing it), and our
    # NDJSON exports write an AWS summary of their own: the ddbpipe manifest decides.
    finished = bases[MANIFEST_KEY]
    unfinished = bases[STATE_KEY] - finished
    aws = bases[AWS_SUMMARY_KEY] - finished - unfinished
    return (
        [_Found(base, MANIFEST_KEY) for base in finished]
        + [_Found(base, STATE_KEY) for base in unfinished]
        + [_Found(base, AWS_SUMMARY_KEY) for base in aws]
    )


def _data_files(listing: Sequence[ObjectInfo], base: str) -> list[ObjectInfo]:
    """The listed objects under the export's ``data/`` (the listing is sorted by key)."""
    prefix = base + DATA_PREFIX
    start = bisect.bisect_left(listing, prefix, key=lambda info: info.key)
    files = []
    for info in listing[start:]:
        if not info.key.startswith(prefix):
            break
        files.append(info)
    return files


# --- describing one --------------------------------------------------------------------------


async def _describe(
    store: ObjectStore, listing: Sequence[ObjectInfo], found: _Found
) -> ListedExport:
    path = _export_path(store, found.base)
    where = location_prefix(store) + found.base + found.manifest_key
    kind: ExportKind = "aws" if found.manifest_key == AWS_SUMMARY_KEY else "ddbpipe"
    try:
        document = await store.get_bytes(found.base + found.manifest_key)
        if found.manifest_key == MANIFEST_KEY:
            return _finished(path, document, where)
        data_files = _data_files(listing, found.base)
        if found.manifest_key == STATE_KEY:
            return _unfinished(path, document, where, data_files)
        return _aws_native(path, document, where, data_files, found.base)
    except _ENTRY_ERRORS as error:
        return ListedExport(path=path, kind=kind, complete=False, error=str(error))


def _export_path(store: ObjectStore, base: str) -> str:
    return location_prefix(store) + base.rstrip("/") if base else store.url


def _finished(path: str, document: bytes, where: str) -> ListedExport:
    manifest = decode_manifest(document, where)
    return _of_plan(
        path, manifest.plan, complete=True, items=manifest.item_count,
        stored_bytes=manifest.stored_bytes,
    )


def _unfinished(
    path: str, document: bytes, where: str, data_files: list[ObjectInfo]
) -> ListedExport:
    plan = decode_plan(document, where)
    stored = sum(info.size for info in data_files)
    return _of_plan(path, plan, complete=False, items=None, stored_bytes=stored)


def _of_plan(
    path: str, plan: ExportPlan, *, complete: bool, items: int | None, stored_bytes: int
) -> ListedExport:
    archive = archive_record(plan.archive)
    return ListedExport(
        path=path,
        kind="ddbpipe",
        complete=complete,
        table=plan.table_name,
        table_arn=plan.table_arn,
        export_id=plan.export_id,
        export_time=plan.start_time,
        items=items,
        stored_bytes=stored_bytes,
        format=plan.data_format,
        storage_class=archive["storage_class"] or "STANDARD",
        sse=archive["sse"],
        kms_key_id=archive["sse_kms_key_id"],
        object_lock_mode=archive["object_lock_mode"],
        retain_until=archive["retain_until"],
    )


def _aws_native(
    path: str, document: bytes, where: str, data_files: list[ObjectInfo], base: str
) -> ListedExport:
    summary = decode_json_object(document, where)
    table_arn = _text(summary, "tableArn")
    item_count = summary.get("itemCount")
    classes = sorted({info.storage_class for info in data_files})
    return ListedExport(
        path=path,
        kind="aws",
        complete=True,  # AWS writes its summary when the export has finished
        table=table_arn.rpartition("/")[2] if table_arn else None,
        table_arn=table_arn,
        export_id=aws_export_id(base, summary),
        # Incremental exports have no export time; their changes go up to exportToTime.
        export_time=_text(summary, "exportTime") or _text(summary, "exportToTime"),
        items=item_count if isinstance(item_count, int) else None,
        stored_bytes=sum(info.size for info in data_files),
        format=_text(summary, "outputFormat") or _AWS_DEFAULT_FORMAT,
        storage_class=",".join(classes) or None,
        sse=_text(summary, "s3SseAlgorithm"),
        kms_key_id=_text(summary, "s3SseKmsKeyId"),
    )


def _text(summary: dict[str, Any], name: str) -> str | None:
    value = summary.get(name)
    return value if isinstance(value, str) and value else None
