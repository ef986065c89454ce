"""A ddbpipe export as an import source: ``ddbpipe-manifest.json`` lists the shards with
their sizes, item counts and checksums, the key attributes and the table's schema."""

from __future__ import annotations

from itertools import chain

from ..integrity import check_listing, check_unlisted, stop_at_first
from ..manifest import DATA_PREFIX, MANIFEST_KEY, ShardEntry, read_finished_manifest
from ..storage import ObjectStore
from .common import ImportSource, SourceFile, location_prefix

__all__ = ["find_ddbpipe_export"]


async def find_ddbpipe_export(store: ObjectStore) -> ImportSource | None:
    """The finished ddbpipe export in ``store``, None if it holds none.

    An unfinished export is refused (``CorruptDataError``); so are missing shards
    (``StorageError``) and shards of another size (``CorruptDataError``), before anything is
    written, and a manifest of an unknown format version (``FormatVersionError``).
    """
    manifest = await read_finished_manifest(store)
    if manifest is None:
        return None
    prefix = location_prefix(store)
    files = tuple(_source_file(shard) for shard in manifest.shards)
    listing = {info.key: info for info in await store.list(DATA_PREFIX)}
    # A file under data/ that the manifest does not list is not this export's: refused, as
    # verify reports it, rather than silently left out.
    stop_at_first(chain(
        check_listing(files, listing, prefix),
        check_unlisted(files, listing, MANIFEST_KEY, prefix),
    ))
    plan = manifest.plan
    return ImportSource(
        url=store.url,
        kind="ddbpipe",
        files=files,
        item_count=manifest.item_count,
        key_attributes=plan.key_attributes,
        table_schema=plan.table or None,
        export_id=plan.export_id,
    )


def _source_file(shard: ShardEntry) -> SourceFile:
    # No ETag: a copy made with another multipart part size has another one; the SHA-256,
    # checked when the shard is read, is what tells a changed file.
    return SourceFile(
        key=shard.key,
        size=shard.stored_bytes,
        items=shard.items,
        sha256=shard.sha256,
        md5_b64=shard.md5,
        recorded_in=MANIFEST_KEY,
        segment=shard.segment,
    )
