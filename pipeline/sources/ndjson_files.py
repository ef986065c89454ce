"""Loose NDJSON files as an import source: ``*.json``, ``*.jsonl``, ``*.ndjson`` (optionally
``.gz``/``.zst``) anywhere below SOURCE, of ``{"Item": ...}`` lines or AWS incremental lines.
Nothing records their checksums or counts; only their listed size is checked when read."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import StorageError
from ..manifest import AWS_SUMMARY_KEY, MANIFEST_KEY
from ..shards import NDJSON_SUFFIXES
from ..storage import ObjectInfo, ObjectStore
from .common import ImportSource, SourceFile

__all__ = ["open_ndjson_files"]


def open_ndjson_files(store: ObjectStore, listing: Sequence[ObjectInfo]) -> ImportSource:
    """The NDJSON files of ``listing`` (hidden ones left out); ``StorageError`` if none."""
    files = tuple(
        SourceFile(key=info.key, size=info.size)
        for info in listing
        if info.key.endswith(NDJSON_SUFFIXES) and not _is_hidden(info.key)
    )
    if not files:
        raise StorageError(
            f"no ddbpipe export, AWS export or NDJSON files at {store.url}: expected "
            f"{MANIFEST_KEY}, AWSDynamoDB/<ExportId>/{AWS_SUMMARY_KEY}, or *.json/*.jsonl/"
            "*.ndjson files (optionally .gz or .zst)"
        )
    return ImportSource(
        url=store.url,
        kind="ndjson",
        files=files,
        item_count=None,
        key_attributes=None,
        table_schema=None,
        export_id=None,
    )


def _is_hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))
