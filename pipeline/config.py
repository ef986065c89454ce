"""Frozen, keyword-only option objects passed from the CLI/library into the jobs.

They hold plain values only, so a task built from them pickles to a process pool or a
Dask worker unchanged.
"""

from __future__ import annotations

import os
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
    and the shared config files, as the AWS CLI does.
    """

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None

    def dynamodb_endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    def s3_endpoint(self) -> str | None:
        return (
            self.s3_endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
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
