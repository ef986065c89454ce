"""The types every kind of import source shares: what SOURCE is, and its data files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..integrity import RecordedFile
from ..schema import KeyAttributes
from ..storage import ObjectStore

__all__ = ["ImportSource", "SourceFile", "SourceKind", "location_prefix"]

SourceKind = Literal["ddbpipe", "aws-full", "aws-incremental", "ndjson"]


@dataclass(frozen=True, kw_only=True)
class SourceFile(RecordedFile):
    """One data file of a source: what is recorded of it, and its Scan segment (ddbpipe
    exports, for interleaving; None elsewhere)."""

    segment: int | None = None


@dataclass(frozen=True)
class ImportSource:
    """What SOURCE holds: its kind, its files and what is known of the table."""

    url: str
    kind: SourceKind
    files: tuple[SourceFile, ...]
    item_count: int | None
    key_attributes: KeyAttributes | None
    table_schema: dict[str, Any] | None  # CreateTable shape from our manifest
    export_id: str | None


def location_prefix(store: ObjectStore) -> str:
    """What goes before a key to name a stored object as the user knows it, in messages."""
    return f"{store.url.rstrip('/')}/"
