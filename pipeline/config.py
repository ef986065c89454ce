"""Frozen, keyword-only option objects passed from the CLI/library into the jobs.

They hold plain values only, so a task built from them pickles to a process pool or a
Dask worker unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
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
