"""Frozen, keyword-only option objects passed from the CLI/library into the jobs.

They hold plain values only, so a task built from them pickles to a process pool or a
Dask worker unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from .errors import ConfigError

Format = Literal["ndjson", "parquet"]
Compression = Literal["zstd", "gzip", "none"]

FORMATS: tuple[Format, ...] = ("ndjson", "parquet")
COMPRESSIONS: tuple[Compression, ...] = ("zstd", "gzip", "none")

#: A shard is closed once this many bytes of uncompressed DynamoDB JSON went into it.
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
#: Parquet shards hold their rows until they close (the typed columns are chosen per shard).
DEFAULT_PARQUET_SHARD_BYTES = 64 * 1024 * 1024
#: At most this many segments scan at the same time in one process.
DEFAULT_MAX_CONCURRENCY = 64


#: --cluster: local:N (N worker processes here) or a Dask scheduler's address.
LOCAL_CLUSTER = re.compile(r"local:(\d+)")
_SCHEDULER_ADDRESS = re.compile(r"(tcp|tls|ws|wss)://[^\s/]+")
CLUSTER_USAGE = ("--cluster takes local:N (N worker processes on this machine) or a Dask "
                 "scheduler's address such as tcp://scheduler:8786")


def check_cluster(text: str) -> str:
    """``text`` if it names a cluster, else a ConfigError saying what does."""
    local = LOCAL_CLUSTER.fullmatch(text)
    if local is not None and 1 <= int(local.group(1)) <= 1024:
        return text
    if local is None and _SCHEDULER_ADDRESS.fullmatch(text):
        return text
    raise ConfigError(f"{CLUSTER_USAGE}, not {text!r}")


@dataclass(frozen=True, kw_only=True)
class AwsOptions:
    """Where and as whom to call AWS, following the AWS CLI's conventions.

    ``None`` means: take it from the standard environment (AWS_PROFILE, AWS_REGION /
    AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)
    and the shared config files, as the AWS CLI does; ``aws.py`` resolves them.
    """

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    #: The AWS account that must own the S3 bucket: every S3 call says so, and S3 refuses
    #: (403) a bucket that changed hands instead of writing or reading it.
    expected_bucket_owner: str | None = None

    def __post_init__(self) -> None:
        owner = self.expected_bucket_owner
        if owner is not None and not re.fullmatch(r"\d{12}", owner):
            raise ConfigError(
                f"--expected-bucket-owner must be a 12-digit AWS account id, not {owner!r}"
            )


Sse = Literal["AES256", "aws:kms", "aws:kms:dsse"]
StorageClass = Literal[
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
    "DEEP_ARCHIVE",
]
LockMode = Literal["GOVERNANCE", "COMPLIANCE"]
ChecksumAlgorithm = Literal["CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1"]

SSE_ALGORITHMS: tuple[Sse, ...] = ("AES256", "aws:kms", "aws:kms:dsse")
STORAGE_CLASSES: tuple[StorageClass, ...] = (
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
    "DEEP_ARCHIVE",
)
#: Storage classes whose objects must be restored (thawed) before they can be read.
FROZEN_STORAGE_CLASSES: tuple[StorageClass, ...] = ("GLACIER", "DEEP_ARCHIVE")
RestoreTier = Literal["Bulk", "Standard", "Expedited"]
RESTORE_TIERS: tuple[RestoreTier, ...] = ("Bulk", "Standard", "Expedited")
#: The cheapest tier, and the slowest: GLACIER 5-12 hours, DEEP_ARCHIVE up to 48 hours.
DEFAULT_RESTORE_TIER: RestoreTier = "Bulk"
#: How long restored copies stay readable: enough for an import that starts late.
DEFAULT_RESTORE_DAYS = 7
LOCK_MODES: tuple[LockMode, ...] = ("GOVERNANCE", "COMPLIANCE")
CHECKSUM_ALGORITHMS: tuple[ChecksumAlgorithm, ...] = (
    "CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1"
)
#: S3 allows at most this many tags on one object.
MAX_OBJECT_TAGS = 10


@dataclass(frozen=True, kw_only=True)
class ArchiveOptions:
    """How S3 keeps what an export writes: encryption, storage class, Object Lock, S3's own
    checksums and tags. S3 only; every field unset means S3's (or the bucket's) defaults.

    An export applies them by what an object is to it: its shards get all of them
    (``for_shards``); its manifests all but the storage class, so they stay readable without
    a restore (``for_manifests``); its transient state only the encryption, checksum and tags,
    since locked state would linger for the whole retention (``for_state``).

    ``retain_for`` ("7y", "90d") is turned into ``retain_until`` when the export starts
    (``resolved``), so a resumed export keeps the same date.
    """

    sse: Sse | None = None
    sse_kms_key_id: str | None = None
    sse_bucket_key: bool | None = None
    storage_class: StorageClass | None = None
    object_lock_mode: LockMode | None = None
    retain_until: datetime | None = None
    retain_for: str | None = None
    legal_hold: bool = False
    checksum_algorithm: ChecksumAlgorithm | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_choice("--sse", self.sse, SSE_ALGORITHMS)
        _check_choice("--storage-class", self.storage_class, STORAGE_CLASSES)
        _check_choice("--object-lock-mode", self.object_lock_mode, LOCK_MODES)
        _check_choice("--checksum-algorithm", self.checksum_algorithm, CHECKSUM_ALGORITHMS)
        uses_kms = self.sse in ("aws:kms", "aws:kms:dsse")
        if self.sse_kms_key_id is not None and not uses_kms:
            raise ConfigError("--sse-kms-key-id goes with --sse aws:kms or --sse aws:kms:dsse")
        if self.sse_bucket_key is not None and not uses_kms:
            raise ConfigError("--sse-bucket-key goes with --sse aws:kms or --sse aws:kms:dsse")
        if self.retain_until is not None and self.retain_for is not None:
            raise ConfigError("give --retain-until or --retain-for, not both")
        retained = self.retain_until is not None or self.retain_for is not None
        if self.object_lock_mode is not None and not retained:
            raise ConfigError("--object-lock-mode needs --retain-until or --retain-for")
        if retained and self.object_lock_mode is None:
            raise ConfigError("--retain-until and --retain-for need --object-lock-mode")
        if self.retain_until is not None and self.retain_until.tzinfo is None:
            raise ConfigError("retain_until must be a timezone-aware datetime")
        if self.retain_for is not None:
            parse_duration(self.retain_for)
        _check_tags(self.tags)

    @property
    def given(self) -> list[str]:
        """The options set, as the command line names them (for messages)."""
        names = {
            "sse": "--sse", "sse_kms_key_id": "--sse-kms-key-id",
            "sse_bucket_key": "--sse-bucket-key", "storage_class": "--storage-class",
            "object_lock_mode": "--object-lock-mode", "retain_until": "--retain-until",
            "retain_for": "--retain-for", "checksum_algorithm": "--checksum-algorithm",
        }
        given = [flag for name, flag in names.items() if getattr(self, name) is not None]
        return given + (["--legal-hold"] if self.legal_hold else []) + (
            ["--tag"] if self.tags else []
        )

    @property
    def locks(self) -> bool:
        """Whether objects are locked: a retention mode or a legal hold."""
        return self.object_lock_mode is not None or self.legal_hold

    def resolved(self, now: datetime) -> ArchiveOptions:
        """These options with ``retain_for`` turned into a date counted from ``now``; a
        retain-until date that is not in the future is refused."""
        until = self.retain_until
        if self.retain_for is not None:
            until = add_duration(now, self.retain_for)
        if until is not None and until.microsecond:
            # S3 keeps whole seconds; rounding up never shortens the retention.
            until = until.replace(microsecond=0) + timedelta(seconds=1)
        if until is not None and until <= now:
            raise ConfigError(
                f"--retain-until {until:%Y-%m-%d} is not in the future: give a later date"
            )
        return replace(self, retain_until=until, retain_for=None)

    def for_shards(self) -> ArchiveOptions:
        return self

    def for_manifests(self) -> ArchiveOptions:
        return replace(self, storage_class=None)

    def for_state(self) -> ArchiveOptions:
        return replace(
            self, storage_class=None, object_lock_mode=None, retain_until=None,
            retain_for=None, legal_hold=False,
        )


_DURATION = re.compile(r"^([1-9][0-9]{0,4})([dy])$")


def parse_duration(text: str) -> tuple[int, str]:
    """("7y" -> (7, "y")), days or years; anything else is a ConfigError."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"--retain-for {text!r}: give a number of days or years, e.g. 90d, 7y")
    return int(match.group(1)), match.group(2)


def add_duration(moment: datetime, text: str) -> datetime:
    """``moment`` plus "90d" or "7y"; years are calendar years (never shorter than 365 days:
    29 February moves to 1 March)."""
    count, unit = parse_duration(text)
    if unit == "d":
        return moment + timedelta(days=count)
    try:
        return moment.replace(year=moment.year + count)
    except ValueError:  # 29 February in a year that has none
        return moment.replace(year=moment.year + count, month=3, day=1)


def parse_retain_until(text: str) -> datetime:
    """A date ("2033-12-31", midnight UTC) or an ISO 8601 time ("2033-12-31T12:00:00Z")."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--retain-until {text!r}: give a date like 2033-12-31 or a time like "
            "2033-12-31T12:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


#: ``--point-in-time latest``: the newest time DynamoDB can export (about five minutes ago).
LATEST = "latest"


def parse_point_in_time(text: str) -> datetime | None:
    """``--point-in-time``: ``latest`` (None) or an ISO 8601 time, UTC unless it says."""
    if text == LATEST:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--point-in-time {text!r}: give 'latest' or a time like 2026-12-01T09:30:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (the value may be empty)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise ConfigError(f"--tag {text!r}: give KEY=VALUE")
    return key, value


def _check_tags(tags: tuple[tuple[str, str], ...]) -> None:
    if len(tags) > MAX_OBJECT_TAGS:
        raise ConfigError(f"{len(tags)} tags given: S3 allows at most {MAX_OBJECT_TAGS} per object")
    keys = [key for key, _ in tags]
    if len(set(keys)) != len(keys):
        raise ConfigError("a --tag key is given twice: give each key once")
    for key, value in tags:
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise ConfigError(f"--tag {key}={value}: keys are 1-128 characters, values 0-256")


def _check_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"unknown {flag} {value!r}: use one of {', '.join(choices)}")


def refuse_s3_only(location: str, given: list[str]) -> None:
    """S3-only options with a local ``location`` are a mistake, said in one line."""
    if given and not location.startswith("s3://"):
        raise ConfigError(
            f"{', '.join(given)} apply to S3 only, and {location} is a local directory: drop "
            f"{'it' if len(given) == 1 else 'them'} or give an s3:// location"
        )


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """Everything ``export_table`` needs to know; validated on construction."""

    table: str
    destination: str
    segments: int | None = None
    #: None: "ndjson" for a new export, whatever the saved export used for --resume.
    format: Format | None = None
    #: None: "zstd" for a new export, whatever the saved export used for --resume.
    compression: Compression | None = None
    max_rcu: float | None = None
    consistent_read: bool = False
    resume: bool = False
    shard_bytes: int | None = None
    #: Items per Scan request (Scan's Limit); None lets DynamoDB fill 1 MB pages.
    page_size: int | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    aws: AwsOptions = field(default_factory=AwsOptions)
    #: None: none for a new export, whatever the saved export used for --resume.
    archive: ArchiveOptions | None = None
    #: Segments as tasks on a Dask cluster: "local:N" or a scheduler address (cluster.py).
    cluster: str | None = None
    #: The table's read capacity raised to this for the job and put back after (provision.py).
    provision_rcu: int | None = None
    provision_anyway: bool = False
    #: A point-in-time export (point_in_time.py): "latest" or an ISO 8601 time. None: a Scan
    #: for a new export, whatever the saved export did for --resume.
    point_in_time: str | None = None
    #: Where DynamoDB writes its native export first (s3://...; default: under DEST's state).
    staging: str | None = None

    def __post_init__(self) -> None:
        check_provision(self.provision_rcu, self.provision_anyway, "--provision-rcu")
        self._check_point_in_time()
        owner = ["--expected-bucket-owner"] if self.aws.expected_bucket_owner else []
        refuse_s3_only(self.destination, (self.archive.given if self.archive else []) + owner)
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"unknown compression {self.compression!r}: use one of {', '.join(COMPRESSIONS)}"
            )
        if self.segments is not None and not 1 <= self.segments <= 1_000_000:
            raise ConfigError(f"--segments must be between 1 and 1000000, not {self.segments}")
        if self.max_rcu is not None and self.max_rcu <= 0:
            raise ConfigError(f"--max-rcu must be a positive number, not {self.max_rcu}")
        if self.shard_bytes is not None and self.shard_bytes < 1:
            raise ConfigError(f"shard size must be positive, not {self.shard_bytes}")
        if self.page_size is not None and self.page_size < 1:
            raise ConfigError(f"--page-size must be at least 1, not {self.page_size}")
        if self.max_concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.max_concurrency}")
        if self.cluster is not None:
            check_cluster(self.cluster)


    @property
    def provision_state(self) -> str:
        """Where a raised capacity's originals are written down (a local file)."""
        return f"ddbpipe-export-{self.table}.provision.json"

    def _check_point_in_time(self) -> None:
        if self.point_in_time is None:
            if self.staging is not None:
                raise ConfigError("--staging is only for --point-in-time: drop it")
            return
        parse_point_in_time(self.point_in_time)
        scan_only = [flag for flag, value in (
            ("--segments", self.segments), ("--max-rcu", self.max_rcu),
            ("--page-size", self.page_size), ("--consistent-read", self.consistent_read or None),
            ("--cluster", self.cluster), ("--provision-rcu", self.provision_rcu),
        ) if value is not None]
        if scan_only:
            them = "it" if len(scan_only) == 1 else "them"
            raise ConfigError(
                f"{', '.join(scan_only)}: a point-in-time export reads no table capacity "
                f"(DynamoDB exports the data itself): drop {them}, or export without "
                "--point-in-time"
            )
        if self.staging is not None and not self.staging.startswith("s3://"):
            raise ConfigError(
                f"--staging {self.staging}: DynamoDB exports only to S3: give an s3:// location"
            )
        if self.staging is None and not self.destination.startswith("s3://"):
            raise ConfigError(
                f"--point-in-time with the local directory {self.destination}: DynamoDB exports "
                "only to S3, so give --staging s3://bucket/prefix for its native export (or an "
                "s3:// DEST)"
            )


def check_provision(units: int | None, anyway: bool, option: str) -> None:
    if units is not None and (isinstance(units, bool) or not isinstance(units, int)
                              or units < 1):
        raise ConfigError(f"{option} must be a positive whole number of units, not {units}")
    if anyway and units is None:
        raise ConfigError(f"--provision-anyway goes with {option}")


def default_shard_bytes(format: str) -> int:
    return DEFAULT_PARQUET_SHARD_BYTES if format == "parquet" else DEFAULT_SHARD_BYTES


#: --target-wcu for an on-demand table when none is given: what AWS says a new on-demand
#: table serves at once. The adaptive controller lowers it if the table throttles.
DEFAULT_ON_DEMAND_WCU = 4000.0


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """Everything ``import_table`` needs to know; validated on construction.

    ``checkpoint`` and ``dead_letter`` are local files; by default
    ``ddbpipe-import-<table>.checkpoint.json`` and ``ddbpipe-import-<table>.dead-letter.jsonl``
    in the current directory (the dead-letter file only appears if an item is dead-lettered).
    """

    source: str
    table: str
    target_wcu: float | None = None
    create_table: bool = False
    without_indexes: bool = False
    resume: bool = False
    dead_letter: str | None = None
    checkpoint: str | None = None
    concurrency: int = 16
    open_files: int = 8
    retry_deadline: float = 15 * 60.0
    aws: AwsOptions = field(default_factory=AwsOptions)
    #: Files as tasks on a Dask cluster: "local:N" or a scheduler address (cluster.py).
    cluster: str | None = None
    #: The table's and its GSIs' write capacity raised to this for the job (provision.py).
    provision_wcu: int | None = None
    provision_anyway: bool = False

    def __post_init__(self) -> None:
        check_provision(self.provision_wcu, self.provision_anyway, "--provision-wcu")
        if self.cluster is not None:
            check_cluster(self.cluster)
        if self.aws.expected_bucket_owner:
            refuse_s3_only(self.source, ["--expected-bucket-owner"])
        if self.target_wcu is not None and self.target_wcu <= 0:
            raise ConfigError(f"--target-wcu must be a positive number, not {self.target_wcu}")
        if self.without_indexes and not self.create_table:
            raise ConfigError("--without-indexes goes with --create-table")
        if self.concurrency < 1 or self.open_files < 1:
            raise ConfigError("concurrency and open files must be at least 1")
        if self.retry_deadline <= 0:
            raise ConfigError(f"the retry deadline must be positive, not {self.retry_deadline}")

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint or f"ddbpipe-import-{self.table}.checkpoint.json"

    @property
    def dead_letter_path(self) -> str:
        return self.dead_letter or f"ddbpipe-import-{self.table}.dead-letter.jsonl"

    @property
    def provision_state(self) -> str:
        """Where a raised capacity's originals are written down: beside the checkpoint."""
        return str(Path(self.checkpoint_path).with_name(
            f"ddbpipe-import-{self.table}.provision.json"))
