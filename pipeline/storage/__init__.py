"""Where exports live: one async ``ObjectStore`` protocol over S3, a local directory or memory.

Keys are '/'-separated and relative to the store root (the export's DEST), so the jobs never
care which kind of store they write to. ``open_store(url)`` picks the kind from the URL:

- ``s3://bucket/prefix`` -- ``s3.S3Store``, through aiobotocore (uploads in ``uploads.py``).
- ``memory://name``      -- ``memory.MemoryStore``, a process-global dict per name, for tests.
- anything else          -- ``local.LocalStore``, a local directory, created on the first write.

Errors come out as the ddbpipe exception tree (``errors.py``) with one-line messages that
name the bucket/key/path, the action that failed and what to do.

This module holds what every backend shares (the protocol, ``ObjectInfo``, key checks,
constants) and imports no backend at load time: the backends import from here, so
``open_store`` imports the one it needs when it is called. That keeps the imports acyclic,
and a local-only job never loads aiobotocore. The backend classes are still importable from
here by name (``from ddbpipe.storage import S3Store``), loaded on first access.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self

from ..config import FROZEN_STORAGE_CLASSES, ArchiveOptions, AwsOptions, refuse_s3_only
from ..errors import ConfigError, StorageError
from ..retry import Clock

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "check_key",
    "open_store",
    "parse_s3_url",
]

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 1 * MiB


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``etag`` has no quotes; for local/memory it is the hex MD5.

    ``storage_class`` is S3's (STANDARD elsewhere). ``restore`` says where a restore of an
    archived object stands, as ``head`` reads it: None when none was asked for (or it
    expired), "in-progress", or "restored" (a readable copy exists for now).
    """

    key: str
    size: int
    etag: str
    storage_class: str = "STANDARD"
    restore: RestoreState | None = None

    @property
    def frozen(self) -> bool:
        """Whether the object cannot be read until it is restored (thawed)."""
        return self.storage_class in FROZEN_STORAGE_CLASSES and self.restore != "restored"


#: Where the restore of an archived object stands.
RestoreState = Literal["in-progress", "restored"]


class ObjectStore(Protocol):
    """What the jobs need from storage; every implementation behaves the same.

    Use a store from one event loop, and ``close()`` it (or ``async with`` it) when done.
    """

    #: Where the store points, for messages: "s3://bucket/prefix" or an absolute path.
    url: str
    #: The S3 bucket; None for local and memory stores.
    bucket: str | None

    def root_key(self, key: str) -> str:
        """The key from the bucket root (prefix + key) on S3; the key itself elsewhere."""
        ...

    async def ensure_ready(self, *, for_write: bool, may_be_empty: bool = False) -> None:
        """Fail early and clearly: missing bucket, no access, DEST is a file, nothing to read
        (unless ``may_be_empty``: a catalogue of a place that holds nothing yet)."""
        ...

    async def check_archive(self, archive: ArchiveOptions) -> None:
        """Refuse, before anything is written, archive options this store cannot honour
        (a bucket without Object Lock, a KMS key these credentials may not use; any archive
        option on a store that is not S3)."""
        ...

    async def put_bytes(
        self, key: str, data: bytes, *, archive: ArchiveOptions | None = None
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically, replacing what was there, kept as ``archive``
        says (S3: encryption, storage class, lock, checksum, tags)."""
        ...

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        md5_hex: str | None = None,
        archive: ArchiveOptions | None = None,
    ) -> ObjectInfo:
        """Store the file at ``path``, which the store takes over: it is gone afterwards,
        whether or not the put succeeded. ``md5_hex`` spares a second read of the file;
        ``archive`` as for ``put_bytes``."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The whole object (for small ones: manifests, checkpoints); StorageError if missing."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The object in chunks of at most ``chunk_size`` bytes, in bounded memory.

        Stopping early? Wrap it in ``contextlib.aclosing`` so the connection is freed now.
        """
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size and etag of ``key`` (local stores leave the etag ""), None if missing."""
        ...

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a string prefix, as on S3), sorted."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine."""
        ...

    async def request_restore(self, key: str, *, days: int, tier: str) -> bool:
        """Ask for a readable copy of the archived object ``key`` for ``days`` days, restored
        at ``tier`` (Bulk, Standard, Expedited); False if a restore is already under way.
        Only S3 holds archived objects."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# The bucket names botocore itself accepts (including legacy us-east-1 names).
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def open_store(
    url: str, aws: AwsOptions | None = None, *, clock: Clock | None = None
) -> ObjectStore:
    """The store for DEST/SOURCE ``url``; nothing is touched until the first call.

    ``clock`` paces the S3 store's resumed reads (default: the system's).
    """
    if not url.strip():
        raise ConfigError("empty storage location: give a local directory or s3://bucket/prefix")
    match = _SCHEME.match(url)
    if match is None:
        from .local import LocalStore

        return LocalStore(url)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "s3":
        from .s3 import S3Store

        bucket, prefix = parse_s3_url(url)
        return S3Store(bucket, prefix, aws or AwsOptions(), clock=clock)
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore(rest)
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(rest)
    raise ConfigError(
        f"unsupported storage location {url!r}: use s3://bucket/prefix or a local directory"
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b/"); the prefix is "" or ends with '/'."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise ConfigError(f"{url!r} does not name an S3 bucket: use s3://bucket/prefix")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def check_key(key: str) -> str:
    """Reject keys that could escape the store root or mean different things per store."""
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts) or "\\" in key or "\0" in key:
        raise StorageError(f"invalid object key {key!r}: use '/'-separated relative names")
    return key


# -- shared by the backends -------------------------------------------------------------------


class ClosingStore:
    """``async with store:`` closes the store at the end; ``close`` does nothing by default.

    Archive options are S3's: ``check_archive`` refuses them by default.
    """

    url: str

    async def check_archive(self, archive: ArchiveOptions) -> None:
        refuse_s3_only(self.url, archive.given)

    async def request_restore(self, key: str, *, days: int, tier: str) -> bool:
        raise ConfigError(f"{self.url} is not on S3: nothing there is archived or needs a thaw")

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def hex_md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def remove_quietly(path: str | Path) -> None:
    """Delete a file the store took over; one that is already gone is fine."""
    with contextlib.suppress(OSError):
        os.unlink(path)


# The backend classes by name, loaded on first access (see the module docstring).
_BACKENDS = {"LocalStore": ".local", "MemoryStore": ".memory", "S3Store": ".s3"}


def __getattr__(name: str) -> Any:
    if name in _BACKENDS:
        return getattr(importlib.import_module(_BACKENDS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
