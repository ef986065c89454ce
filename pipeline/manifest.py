"""Manifests and checkpoints: what an export wrote down, in the order docs/FORMAT.md gives.

Our manifest (``ddbpipe-manifest.json``) is the commit point of an export: it is written
last, and an export without it is unfinished. Next to it, for NDJSON exports, the manifests
AWS's own export writes (``manifest-summary.json``, ``manifest-files.json`` and their ``.md5``
files), so tools that read AWS-native exports read ours. While an export runs, its state lives
under ``_ddbpipe-state/``: the export's plan and one checkpoint per segment.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import msgspec

from .config import COMPRESSIONS, FORMATS, ArchiveOptions, Compression, Format
from .errors import ConfigError, CorruptDataError, FormatVersionError
from .schema import KeyAttributes
from .storage import ObjectStore

FORMAT_NAME = "ddbpipe-export"
FORMAT_VERSION = 1

MANIFEST_KEY = "ddbpipe-manifest.json"
AWS_SUMMARY_KEY = "manifest-summary.json"
AWS_SUMMARY_MD5_KEY = "manifest-summary.md5"
AWS_FILES_KEY = "manifest-files.json"
AWS_FILES_MD5_KEY = "manifest-files.md5"
DATA_PREFIX = "data/"
STATE_PREFIX = "_ddbpipe-state/"
STATE_KEY = STATE_PREFIX + "export.json"

AWS_MANIFEST_VERSION = "2020-06-30"
SNAPSHOT_NOTE = (
    "A parallel Scan is not a point-in-time snapshot: writes made to the table while the "
    "export ran may or may not be included. Use point-in-time recovery for a consistent copy."
)

#: Keys an export owns at its destination; any of them present means the place is taken.
RESERVED_KEYS = (MANIFEST_KEY, AWS_SUMMARY_KEY, AWS_FILES_KEY, STATE_KEY)


@dataclass(frozen=True, kw_only=True)
class ShardEntry:
    """One stored shard: where it is and what must be true of it."""

    key: str
    segment: int
    seq: int
    items: int
    stored_bytes: int
    raw_bytes: int
    sha256: str
    md5: str  # base64, as AWS's manifest-files.json records it
    etag: str


@dataclass(frozen=True, kw_only=True)
class SegmentCheckpoint:
    """How far one Scan segment got: shards stored, and the key to continue after.

    ``last_key`` is the LastEvaluatedKey of the last page whose items are in a stored shard;
    ``None`` with ``done`` False means the segment has not started.
    """

    segment: int
    shards: tuple[ShardEntry, ...] = ()
    last_key: dict[str, Any] | None = None
    done: bool = False
    consumed_rcu: float = 0.0

    @property
    def items(self) -> int:
        return sum(shard.items for shard in self.shards)

    @property
    def next_seq(self) -> int:
        return len(self.shards)

    def after_shard(
        self, shard: ShardEntry, last_key: dict[str, Any] | None, consumed_rcu: float
    ) -> SegmentCheckpoint:
        return replace(
            self,
            shards=(*self.shards, shard),
            last_key=last_key,
            done=last_key is None,
            consumed_rcu=self.consumed_rcu + consumed_rcu,
        )

    def finished(self, consumed_rcu: float) -> SegmentCheckpoint:
        return replace(
            self, last_key=None, done=True, consumed_rcu=self.consumed_rcu + consumed_rcu
        )


@dataclass(frozen=True, kw_only=True)
class PointInTime:
    """A point-in-time export's snapshot: what was asked, and DynamoDB's native export of it
    (filled in as the export gets there; docs/FORMAT.md)."""

    #: "latest" or the ISO 8601 time asked for.
    requested: str
    #: Where DynamoDB writes its native export (an s3:// location).
    staging: str
    #: The native export's ARN, once requested.
    export_arn: str = ""
    #: The time the export is a snapshot of (ISO 8601 UTC, as DynamoDB reports it).
    export_time: str = ""
    #: Native exports asked for before this one that failed (each needs its own ClientToken).
    attempt: int = 0


@dataclass(frozen=True, kw_only=True)
class ExportPlan:
    """What an export is, fixed when it starts; saved first so ``--resume`` can continue it."""

    export_id: str
    table_name: str
    table_arn: str
    table_id: str
    region: str
    data_format: Format
    compression: Compression
    segments: int
    consistent_read: bool
    shard_bytes: int
    start_time: str
    key_attributes: KeyAttributes
    #: The table's schema, as ``schema.table_schema`` keeps it.
    table: dict[str, Any] = field(default_factory=dict)
    #: How S3 keeps the export's objects (``retain_for`` already turned into a date).
    archive: ArchiveOptions = field(default_factory=ArchiveOptions)
    #: A point-in-time export's snapshot; None for a Scan.
    point_in_time: PointInTime | None = None

    @property
    def snapshot_time(self) -> str:
        """The time the data is of: a snapshot's, else the Scan's start (the earliest a
        write can be missed)."""
        if self.point_in_time is not None and self.point_in_time.export_time:
            return self.point_in_time.export_time
        return self.start_time


def aws_time(seconds: float) -> str:
    """Epoch seconds as AWS's export manifests write times: ``2026-12-02T10:15:30.123Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def save_plan(store: ObjectStore, plan: ExportPlan) -> ExportPlan:
    """Write the export's plan (its state, first of all and again as it is filled in)."""
    await store.put_bytes(STATE_KEY, encode_plan(plan), archive=plan.archive.for_state())
    return plan


def segment_state_key(segment: int) -> str:
    return f"{STATE_PREFIX}segment-{segment:07d}.json"


# --- encoding --------------------------------------------------------------------------------


def _encode(document: dict[str, Any]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def decode_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON document that must be an object; anything else is CorruptDataError naming it."""
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        raise CorruptDataError(f"{what} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise CorruptDataError(f"{what} is not a JSON object")
    return document


def _plan_fields(plan: ExportPlan) -> dict[str, Any]:
    return {**asdict(plan), "archive": archive_record(plan.archive)}


def encode_plan(plan: ExportPlan) -> bytes:
    return _encode({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **_plan_fields(plan)})


def archive_record(archive: ArchiveOptions) -> dict[str, Any]:
    """The archive options as the manifest records them (docs/FORMAT.md)."""
    until = archive.retain_until
    return {
        "sse": archive.sse,
        "sse_kms_key_id": archive.sse_kms_key_id,
        "sse_bucket_key": archive.sse_bucket_key,
        "storage_class": archive.storage_class,
        "object_lock_mode": archive.object_lock_mode,
        "retain_until": until.isoformat().replace("+00:00", "Z") if until else None,
        "legal_hold": archive.legal_hold,
        "checksum_algorithm": archive.checksum_algorithm,
        "tags": dict(archive.tags),
    }


def archive_from_record(record: dict[str, Any] | None) -> ArchiveOptions:
    """The archive options a manifest or plan records; none recorded (older exports): none."""
    if not record:
        return ArchiveOptions()
    until = record.get("retain_until")
    return ArchiveOptions(
        sse=record.get("sse"),
        sse_kms_key_id=record.get("sse_kms_key_id"),
        sse_bucket_key=record.get("sse_bucket_key"),
        storage_class=record.get("storage_class"),
        object_lock_mode=record.get("object_lock_mode"),
        retain_until=datetime.fromisoformat(until) if until else None,
        legal_hold=bool(record.get("legal_hold")),
        checksum_algorithm=record.get("checksum_algorithm"),
        tags=tuple((record.get("tags") or {}).items()),
    )


def decode_plan(data: bytes, what: str = STATE_KEY) -> ExportPlan:
    document = decode_json_object(data, what)
    check_format_version(document, what)
    try:
        plan = ExportPlan(
            **{
                name: document[name]
                for name in ExportPlan.__dataclass_fields__
                if name not in ("key_attributes", "archive", "point_in_time")
            },
            key_attributes=tuple((n, t) for n, t in document["key_attributes"]),
            archive=archive_from_record(document.get("archive")),
            point_in_time=_point_in_time(document.get("point_in_time")),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise CorruptDataError(f"{what} is missing or has a wrong field ({error})") from None
    # Checked here, once, so everything downstream may trust the plan's format and compression.
    if plan.data_format not in FORMATS or plan.compression not in COMPRESSIONS:
        raise CorruptDataError(
            f"{what} names an unknown format or compression ({plan.data_format!r}, "
            f"{plan.compression!r})"
        )
    return plan


def _point_in_time(record: dict[str, Any] | None) -> PointInTime | None:
    return None if record is None else PointInTime(**record)


def encode_checkpoint(checkpoint: SegmentCheckpoint) -> bytes:
    return _encode(asdict(checkpoint))


def decode_checkpoint(data: bytes, what: str) -> SegmentCheckpoint:
    document = decode_json_object(data, what)
    try:
        return SegmentCheckpoint(
            segment=int(document["segment"]),
            shards=tuple(_shard_from_dict(s) for s in document["shards"]),
            last_key=document["last_key"],
            done=bool(document["done"]),
            consumed_rcu=float(document["consumed_rcu"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptDataError(f"{what} is missing or has a wrong field ({error})") from None


def _shard_from_dict(document: dict[str, Any]) -> ShardEntry:
    return ShardEntry(**{name: document[name] for name in ShardEntry.__dataclass_fields__})


def check_format_version(document: dict[str, Any], what: str) -> None:
    if document.get("format") != FORMAT_NAME:
        raise CorruptDataError(f"{what} is not a ddbpipe export manifest")
    version = document.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CorruptDataError(f"{what} has no valid format_version")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{what} is format version {version}; this ddbpipe reads up to {FORMAT_VERSION}: "
            "upgrade ddbpipe"
        )


# --- the final manifests -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExportManifest:
    """The content of ``ddbpipe-manifest.json``."""

    plan: ExportPlan
    tool_version: str
    end_time: str
    consumed_rcu: float
    shards: tuple[ShardEntry, ...]

    @property
    def item_count(self) -> int:
        return sum(shard.items for shard in self.shards)

    @property
    def stored_bytes(self) -> int:
        return sum(shard.stored_bytes for shard in self.shards)

    @property
    def raw_bytes(self) -> int:
        return sum(shard.raw_bytes for shard in self.shards)

    @property
    def has_aws_manifests(self) -> bool:
        return self.plan.data_format == "ndjson"


def encode_manifest(manifest: ExportManifest) -> bytes:
    plan = _plan_fields(manifest.plan)
    table = plan.pop("table")
    return _encode(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tool": {"name": "ddbpipe", "version": manifest.tool_version},
            **plan,
            "end_time": manifest.end_time,
            "item_count": manifest.item_count,
            "stored_bytes": manifest.stored_bytes,
            "raw_bytes": manifest.raw_bytes,
            "consumed_rcu": round(manifest.consumed_rcu, 3),
            "snapshot_note": snapshot_note(manifest.plan),
            "aws_manifests": manifest.has_aws_manifests,
            "table": table,
            "shards": [asdict(shard) for shard in manifest.shards],
        }
    )


def snapshot_note(plan: ExportPlan) -> str:
    """What the export's data is a copy of, for the manifest's reader."""
    snapshot = plan.point_in_time
    if snapshot is None:
        return SNAPSHOT_NOTE
    return (f"A point-in-time snapshot: the table as it was at {snapshot.export_time}, from "
            f"DynamoDB's export {snapshot.export_arn}.")


def decode_manifest(data: bytes, what: str = MANIFEST_KEY) -> ExportManifest:
    document = decode_json_object(data, what)
    check_format_version(document, what)
    try:
        plan = decode_plan(data, what)
        shards = tuple(_shard_from_dict(s) for s in document["shards"])
        manifest = ExportManifest(
            plan=plan,
            tool_version=str(document["tool"]["version"]),
            end_time=str(document["end_time"]),
            consumed_rcu=float(document["consumed_rcu"]),
            shards=shards,
        )
        recorded_count = int(document["item_count"])
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptDataError(f"{what} is missing or has a wrong field ({error})") from None
    if recorded_count != manifest.item_count:
        raise CorruptDataError(
            f"{what} records item_count {recorded_count} but its shards add up to "
            f"{manifest.item_count}"
        )
    return manifest


async def read_finished_manifest(store: ObjectStore) -> ExportManifest | None:
    """The manifest of the finished export in ``store``; None when it holds no ddbpipe export.

    An unfinished export (its state, no manifest) is refused: it must not be read as whole.
    A manifest of an unknown format version raises ``FormatVersionError``.
    """
    where = f"{store.url.rstrip('/')}/{MANIFEST_KEY}"
    if await store.head(MANIFEST_KEY) is None:
        if await store.head(STATE_KEY) is not None:
            raise CorruptDataError(
                f"{store.url} holds an unfinished ddbpipe export (no {MANIFEST_KEY}): finish it "
                "with 'ddbpipe export --resume' first"
            )
        return None
    return decode_manifest(await store.get_bytes(MANIFEST_KEY), where)


def md5_base64(*chunks: bytes) -> str:
    """The base64 MD5 of the bytes (given whole, or in chunks), as AWS's manifests record it."""
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in chunks:
        digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


class AwsFileEntry(msgspec.Struct):
    """One line of AWS's manifest-files.json: a data file, its item count and checksums."""

    dataFileS3Key: str
    itemCount: int
    md5Checksum: str | None = None
    etag: str | None = None


_aws_file_entry = msgspec.json.Decoder(AwsFileEntry)


def decode_aws_files(data: bytes, what: str) -> list[AwsFileEntry]:
    """The entries of a manifest-files.json; a line that is not one is ``CorruptDataError``."""
    entries = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(_aws_file_entry.decode(line))
        except msgspec.DecodeError as error:  # ValidationError is a DecodeError
            raise CorruptDataError(
                f"{what}: line {number} is not a data file entry ({error})"
            ) from None
    return entries


def aws_manifest_files(manifest: ExportManifest, root_key: Any) -> bytes:
    """manifest-files.json: one JSON object per line, keys from the bucket root."""
    lines = [
        msgspec.json.encode(
            {
                "itemCount": shard.items,
                "md5Checksum": shard.md5,
                "etag": shard.etag,
                "dataFileS3Key": root_key(shard.key),
            }
        )
        for shard in manifest.shards
    ]
    return b"".join(line + b"\n" for line in lines)


#: How AWS's export summary names an SSE algorithm (it has no name for DSSE).
_AWS_SSE_NAMES = {"AES256": "AES256", "aws:kms": "KMS"}


def aws_manifest_summary(manifest: ExportManifest, bucket: str | None, root_key: Any) -> bytes:
    plan = manifest.plan
    files_key = root_key(AWS_FILES_KEY)
    prefix = files_key[: -len(AWS_FILES_KEY)]
    return msgspec.json.encode(
        {
            "version": AWS_MANIFEST_VERSION,
            "exportArn": f"{plan.table_arn}/export/{plan.export_id}",
            "startTime": plan.start_time,
            "endTime": manifest.end_time,
            "tableArn": plan.table_arn,
            "tableId": plan.table_id,
            "exportTime": plan.snapshot_time,
            "s3Bucket": bucket,
            "s3Prefix": prefix or None,
            "s3SseAlgorithm": _AWS_SSE_NAMES.get(plan.archive.sse or ""),
            "s3SseKmsKeyId": plan.archive.sse_kms_key_id,
            "manifestFilesS3Key": files_key,
            "billedSizeBytes": manifest.raw_bytes,
            "itemCount": manifest.item_count,
            "outputFormat": "DYNAMODB_JSON",
        }
    )


def final_documents(
    manifest: ExportManifest, bucket: str | None, root_key: Any
) -> list[tuple[str, bytes]]:
    """The closing documents, in the order they must be written: ours last (commit point)."""
    documents: list[tuple[str, bytes]] = []
    if manifest.has_aws_manifests:
        files = aws_manifest_files(manifest, root_key)
        summary = aws_manifest_summary(manifest, bucket, root_key)
        documents += [
            (AWS_FILES_KEY, files),
            (AWS_FILES_MD5_KEY, md5_base64(files).encode("ascii")),
            (AWS_SUMMARY_KEY, summary),
            (AWS_SUMMARY_MD5_KEY, md5_base64(summary).encode("ascii")),
        ]
    documents.append((MANIFEST_KEY, encode_manifest(manifest)))
    return documents
