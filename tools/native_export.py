"""The pure part of the native export endpoint (``native_export_endpoint.py``): a table's
point-in-time history, the S3 layout DynamoDB's ExportTableToPointInTime writes, and the
reading of requests.

History: while point-in-time recovery is on, every write that passes the endpoint is kept as
a ``Change`` (when, the old image, the new image). The table as it was at time T is its
current contents with every change after T undone, newest first: the old image put back, or
the key removed when there was none.

Layout, as AWS writes it (the DynamoDB developer guide's "DynamoDB table
export output format")::

    <S3Prefix>/AWSDynamoDB/<ExportId>/_started                (empty; when the export starts)
    <S3Prefix>/AWSDynamoDB/<ExportId>/data/<random>.json.gz   (at least one per partition)
    <S3Prefix>/AWSDynamoDB/<ExportId>/manifest-files.json     (+ .md5)
    <S3Prefix>/AWSDynamoDB/<ExportId>/manifest-summary.json   (+ .md5; written last)

Every key in a manifest is from the bucket root. "The export creates at least 1 file per
partition. For partitions that are empty, your export request will create an empty file":
items go to a partition by a hash of their partition key, and an empty partition writes an
empty gzip file listed with ``itemCount`` 0.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ddbpipe.codec import item_size
from ddbpipe.manifest import aws_time

__all__ = [
    "MANIFEST_VERSION", "RECOVERY_PERIOD_DAYS", "ApiError", "Change", "ExportPlan", "Item",
    "PitrTable", "Put", "WrittenExport", "choice_parameter", "export_base",
    "member", "new_export_id", "page_start", "page_token", "partition_files", "s3_failure",
    "string_parameter", "table_id", "time_parameter", "write_export", "written_keys",
]

Item = dict[str, Any]
#: Stores ``data`` at a bucket-root key and returns the object's ETag (unquoted).
Put = Callable[[str, bytes], str]

RECOVERY_PERIOD_DAYS = 35
MANIFEST_VERSION = "2020-06-30"
OUTPUT_FORMAT = "DYNAMODB_JSON"


def new_export_id(seconds: float) -> str:
    """``01701234567890-a1b2c3d4``: the time in milliseconds (14 digits) and 8 hex digits."""
    return f"{int(seconds * 1000):014d}-{os.urandom(4).hex()}"


def table_id(table_arn: str, created: object) -> str:
    """A stable TableId for one incarnation of a table (DynamoDB Local reports none)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table_arn}@{created}"))


def _key_token(item: Item, key_names: Sequence[str]) -> str:
    """The item's primary key, canonical, as a dictionary key."""
    return msgspec.json.encode({name: item[name] for name in key_names}).decode()


# --- history -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One write to one item: its images before and after (None: the item did not exist)."""

    time: float
    token: str
    old: Item | None
    new: Item | None


@dataclass
class PitrTable:
    """One incarnation of a table (``created``: its CreationDateTime): its point-in-time
    recovery setting and, while enabled, the writes made through the endpoint."""

    name: str
    key_names: tuple[str, ...]
    created: object
    table_id: str
    enabled_at: float | None = None
    recovery_days: int = RECOVERY_PERIOD_DAYS
    changes: list[Change] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.enabled_at is not None

    def enable(self, now: float, recovery_days: int) -> None:
        if self.enabled_at is None:
            self.enabled_at = now
            self.changes.clear()
        self.recovery_days = recovery_days

    def disable(self) -> None:
        """Turning recovery off drops the window: enabling again starts a new one."""
        self.enabled_at = None
        self.changes.clear()

    def earliest(self, now: float) -> float:
        assert self.enabled_at is not None
        return max(self.enabled_at, now - self.recovery_days * 86400.0)

    def record(self, time: float, old: Item | None, new: Item | None) -> None:
        """A write that changed the item (one that changed nothing is not kept)."""
        if old == new:
            return
        image = old if old is not None else new
        assert image is not None
        self.changes.append(Change(time, _key_token(image, self.key_names), old, new))

    def state_at(self, current: Iterable[Item], at: float) -> list[Item]:
        """The table at time ``at`` (changes at ``at`` included), from its ``current`` items."""
        state = {_key_token(item, self.key_names): item for item in current}
        for change in reversed(self.changes):
            if change.time <= at:
                continue
            if change.old is None:
                state.pop(change.token, None)
            else:
                state[change.token] = change.old
        return list(state.values())


# --- the layout --------------------------------------------------------------------------------


def export_base(s3_prefix: str | None, export_id: str) -> str:
    """``<S3Prefix>/AWSDynamoDB/<ExportId>/`` from the bucket root, with no empty segment."""
    head = (s3_prefix or "").rstrip("/")
    return f"{head}/AWSDynamoDB/{export_id}/" if head else f"AWSDynamoDB/{export_id}/"


def partition_files(
    items: Sequence[Item], hash_key: str, *, partitions: int, items_per_file: int
) -> list[list[Item]]:
    """The items split into data files: by partition (a hash of the partition key), then at
    most ``items_per_file`` a file; every partition has at least one file, maybe empty."""
    buckets: list[list[Item]] = [[] for _ in range(partitions)]
    for item in items:
        digest = hashlib.md5(msgspec.json.encode(item[hash_key])).digest()
        buckets[int.from_bytes(digest[:8], "big") % partitions].append(item)
    files: list[list[Item]] = []
    for bucket in buckets:
        files += [bucket[i : i + items_per_file] for i in range(0, len(bucket), items_per_file)]
        if not bucket:
            files.append([])
    return files


@dataclass(frozen=True)
class ExportPlan:
    """What one full export writes where, and the summary's fields."""

    export_arn: str
    export_id: str
    table_arn: str
    table_id: str
    bucket: str
    s3_prefix: str | None
    sse_algorithm: str | None
    sse_kms_key_id: str | None
    start_time: float
    end_time: float
    export_time: float

    @property
    def base(self) -> str:
        return export_base(self.s3_prefix, self.export_id)

    @property
    def manifest_key(self) -> str:
        return self.base + "manifest-summary.json"


@dataclass(frozen=True)
class WrittenExport:
    item_count: int
    billed_size_bytes: int


def _md5_base64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _data_file_name() -> str:
    """Like AWS's: 26 lower-case base32 characters."""
    return base64.b32encode(os.urandom(16)).decode("ascii").lower()[:26]


def write_export(put: Put, plan: ExportPlan, files: Sequence[Sequence[Item]]) -> WrittenExport:
    """Write the data files, then manifest-files.json, then manifest-summary.json."""
    entries = []
    for lines in files:
        body = b"".join(msgspec.json.encode({"Item": item}) + b"\n" for item in lines)
        stored = gzip.compress(body, mtime=0)
        key = f"{plan.base}data/{_data_file_name()}.json.gz"
        etag = put(key, stored)
        entries.append({"itemCount": len(lines), "md5Checksum": _md5_base64(stored),
                        "etag": etag, "dataFileS3Key": key})
    files_document = b"".join(msgspec.json.encode(entry) + b"\n" for entry in entries)
    files_key = plan.base + "manifest-files.json"
    put(files_key, files_document)
    put(plan.base + "manifest-files.md5", _md5_base64(files_document).encode("ascii"))
    written = WrittenExport(
        item_count=sum(len(lines) for lines in files),
        billed_size_bytes=sum(item_size(item) for lines in files for item in lines),
    )
    summary = msgspec.json.encode({
        "version": MANIFEST_VERSION,
        "exportArn": plan.export_arn,
        "startTime": aws_time(plan.start_time),
        "endTime": aws_time(plan.end_time),
        "tableArn": plan.table_arn,
        "tableId": plan.table_id,
        "exportTime": aws_time(plan.export_time),
        "s3Bucket": plan.bucket,
        "s3Prefix": plan.s3_prefix,
        "s3SseAlgorithm": plan.sse_algorithm,
        "s3SseKmsKeyId": plan.sse_kms_key_id,
        "manifestFilesS3Key": files_key,
        "billedSizeBytes": written.billed_size_bytes,
        "itemCount": written.item_count,
        "outputFormat": OUTPUT_FORMAT,
    })
    put(plan.manifest_key, summary)
    put(plan.base + "manifest-summary.md5", _md5_base64(summary).encode("ascii"))
    return written


# --- requests ----------------------------------------------------------------------------------


class ApiError(Exception):
    """A DynamoDB error reply: its code (``TableNotFoundException``) and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def member(document: Any, *path: str) -> Any:
    """``document[path[0]][path[1]]...``, None where a step is missing or not an object."""
    for name in path:
        document = document.get(name) if isinstance(document, dict) else None
    return document


def string_parameter(payload: dict[str, Any], name: str, *, required: bool = False) -> Any:
    """A string parameter (None when absent and not required)."""
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ApiError("ValidationException", f"1 validation error detected: Value at "
                       f"'{name}' failed to satisfy constraint: Member must not be null")
    return value


def choice_parameter(payload: dict[str, Any], name: str, allowed: tuple[str, ...],
                     default: str) -> str:
    value = payload.get(name, default)
    if value not in allowed:
        raise ApiError("ValidationException", f"1 validation error detected: Value '{value}' at "
                       f"'{name}' failed to satisfy constraint: Member must satisfy enum value "
                       f"set: [{', '.join(allowed)}]")
    return str(value)


def time_parameter(payload: dict[str, Any], name: str) -> float | None:
    """A timestamp parameter: epoch seconds, as the JSON protocol sends them."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError("SerializationException", f"{name} is not a timestamp: {value!r}")
    return float(value)


def written_keys(action: str, payload: dict[str, Any] | None,
                 table: Callable[[str], PitrTable | None]) -> list[tuple[PitrTable, Item]]:
    """The (table, key) of each item a write request touches, in the tables ``table(name)``
    gives (those with recovery on); an entry without its whole key is left out."""
    found: dict[str, tuple[PitrTable, Item]] = {}

    def add(name: Any, item: Any) -> None:
        state = table(name) if isinstance(name, str) else None
        if state is not None and isinstance(item, dict) and all(
            key_name in item for key_name in state.key_names
        ):
            key = {key_name: item[key_name] for key_name in state.key_names}
            found.setdefault(msgspec.json.encode([name, key]).decode(), (state, key))

    if action == "PutItem":
        add(member(payload, "TableName"), member(payload, "Item"))
    elif action in ("DeleteItem", "UpdateItem"):
        add(member(payload, "TableName"), member(payload, "Key"))
    elif action == "BatchWriteItem":
        by_table = member(payload, "RequestItems")
        for name, requests in (by_table if isinstance(by_table, dict) else {}).items():
            for entry in requests if isinstance(requests, list) else []:
                add(name, member(entry, "PutRequest", "Item")
                    or member(entry, "DeleteRequest", "Key"))
    elif action == "TransactWriteItems":  # a ConditionCheck writes nothing
        entries = member(payload, "TransactItems")
        for entry in entries if isinstance(entries, list) else []:
            for kind, part in (("Put", "Item"), ("Update", "Key"), ("Delete", "Key")):
                add(member(entry, kind, "TableName"), member(entry, kind, part))
    return list(found.values())


def page_token(start: int) -> str:
    return base64.urlsafe_b64encode(str(start).encode()).decode("ascii")


def page_start(token: str | None, count: int) -> int:
    """Where a ListExports page starts; ValidationException for a token not made here."""
    if token is None:
        return 0
    try:
        start = int(base64.urlsafe_b64decode(token.encode()).decode())
    except ValueError:
        start = -1
    if not 0 <= start <= count:
        raise ApiError("ValidationException", f"Invalid NextToken: {token}")
    return start


def s3_failure(response: dict[str, Any]) -> tuple[str, str]:
    """FailureCode and FailureMessage as DynamoDB reports S3's refusal (``S3NoSuchBucket``),
    from a botocore ClientError's ``response``."""
    details = response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return f"S3{code}", (f"{details.get('Message', code)} (Service: Amazon S3; Status Code: "
                         f"{status}; Error Code: {code})")
