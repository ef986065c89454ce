"""Helpers shared by the storage tests: run a scenario on a store, test files, S3 stores."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ddbpipe.config import AwsOptions
from ddbpipe.retry import RetryPolicy
from ddbpipe.storage import ObjectStore
from ddbpipe.storage.s3 import ClientFactory, S3Store

T = TypeVar("T")
StoreFactory = Callable[[], ObjectStore]

#: Few attempts, and resumed reads do not wait (botocore's own backoff still applies).
NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
#: Where the S3 tests' stores point inside their bucket.
S3_PREFIX = "exports/run-1/"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def run(make_store: Callable[[], Any], scenario: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store inside the event loop, run the scenario, close the store."""

    async def main() -> T:
        store = make_store()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def s3_store_factory(
    endpoint: str, bucket: str, *, client_factory: ClientFactory | None = None, **kwargs: Any
) -> Callable[[], S3Store]:
    """Stores on the S3 server at ``endpoint`` under ``S3_PREFIX``, retrying per ``NO_WAIT``."""
    options = AwsOptions(s3_endpoint_url=endpoint)
    kwargs.setdefault("retry", NO_WAIT)
    return lambda: S3Store(bucket, S3_PREFIX, options, client_factory=client_factory, **kwargs)


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the kind ("file" or "folder") of everything fsynced, in order."""
    kinds: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        kinds.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return kinds
