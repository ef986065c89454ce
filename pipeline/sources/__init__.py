"""What ``ddbpipe import SOURCE TABLE`` reads: the files of an export and the writes in them.

SOURCE (a local directory or an S3 prefix) is one of, checked in this order:

- a **ddbpipe export** (``ddbpipe_export.py``): our manifest lists the shards with their item
  counts and SHA-256, the key attributes and the table's schema;
- an **AWS-native export to S3** (``aws_export.py``): ``manifest-summary.json`` +
  ``manifest-files.json`` under ``AWSDynamoDB/<ExportId>/`` (SOURCE may also be the prefix
  above it when it holds exactly one export); full exports hold puts, incremental exports
  puts and deletes;
- **loose NDJSON files** (``ndjson_files.py``): ``{"Item": ...}`` lines (or AWS incremental
  lines) anywhere below SOURCE; nothing records their checksums or counts.

``open_source`` finds out which and lists the files (``common.py`` has the types);
``read_records`` (``reading.py``) reads one file into records. The checks of listings,
manifests and stored bytes are ``integrity.py``'s, which the import stops at the first of.
"""

from __future__ import annotations

from ..manifest import AWS_SUMMARY_KEY
from ..storage import ObjectStore
from .aws_export import nested_aws_export, open_aws_export, refuse_unfinished_aws_export
from .common import ImportSource, SourceFile, SourceKind
from .ddbpipe_export import find_ddbpipe_export
from .ndjson_files import open_ndjson_files
from .reading import RECORDS_PER_BATCH, read_items, read_records

__all__ = [
    "RECORDS_PER_BATCH",
    "ImportSource",
    "SourceFile",
    "SourceKind",
    "open_source",
    "read_items",
    "read_records",
]


async def open_source(store: ObjectStore) -> ImportSource:
    """Find out what the store holds and list its data files; reads manifests, no data.

    Raises ``FormatVersionError`` for a ddbpipe manifest of an unknown version,
    ``CorruptDataError`` for damaged or disagreeing manifests, a shard of the wrong size or
    an unfinished ddbpipe export, and ``StorageError`` when there is nothing importable or a
    listed file is missing.
    """
    await store.ensure_ready(for_write=False)
    ddbpipe_export = await find_ddbpipe_export(store)
    if ddbpipe_export is not None:
        return ddbpipe_export
    if await store.head(AWS_SUMMARY_KEY) is not None:
        return await open_aws_export(store, "")
    listing = await store.list()
    nested = nested_aws_export(store, listing)
    if nested is not None:
        return await open_aws_export(store, nested)
    refuse_unfinished_aws_export(store, listing)
    return open_ndjson_files(store, listing)
