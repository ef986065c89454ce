"""Where exports live: one async ``ObjectStore`` protocol over S3, a local directory or memory.

Keys are '/'-separated and relative to the store root (the export's DEST), so the jobs never
care which kind of store they write to. ``open_store(url)`` picks the kind from the URL:

- ``s3://bucket/prefix`` -- S3 through aiobotocore; big files go up as multipart uploads.
- ``memory://name``      -- a process-global dict per name, for tests of other modules.
- anything else          -- a local directory, created on the first write.

Errors come out as the ddbpipe exception tree (``errors.py``) with one-line messages that
name the bucket/key/path, the action that failed and what to do. Transient S3 errors are
retried here, with full-jitter exponential backoff, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import errno
import hashlib
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import botocore.exceptions as boto_errors
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import xform_name

from . import aws
from .config import AwsOptions
from .errors import ConfigError, DdbpipeError, StorageError
from .retry import Attempts, Clock, RetryPolicy, SystemClock

__all__ = [
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "open_store",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Files up to this size go up in one PutObject; bigger ones as a multipart upload.
MULTIPART_THRESHOLD = 64 * MiB
#: Parts are at least this big (S3 allows 5 MiB; bigger parts mean fewer requests).
MIN_PART_SIZE = 16 * MiB
#: S3's limit on parts per upload.
MAX_PARTS = 10_000
#: Parts of one upload sent at the same time.
PARTS_IN_FLIGHT = 4
#: File bodies held in memory at once per S3 store (each up to MULTIPART_THRESHOLD).
UPLOADS_IN_FLIGHT = 8
#: Local writes go to a temp name with this prefix first; listings skip such names.
TEMP_PREFIX = ".ddbpipe-tmp-"
DEFAULT_CHUNK_SIZE = 1 << 20

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``etag`` has no quotes; for local/memory it is the hex MD5."""

    key: str
    size: int
    etag: str


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

    async def ensure_ready(self, *, for_write: bool) -> None:
        """Fail early and clearly: missing bucket, no access, DEST is a file, nothing to read."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically, replacing what was there."""
        ...

    async def put_file(self, key: str, path: str, *, md5_hex: str | None = None) -> ObjectInfo:
        """Store the file at ``path``, which the store takes over: it is gone afterwards,
        whether or not the put succeeded. ``md5_hex`` spares a second read of the file."""
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

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


#: Transient S3 failures: attempts and backoff.
DEFAULT_RETRY = RetryPolicy(max_attempts=8, base_delay=0.25, max_delay=10.0)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# The bucket names botocore itself accepts (including legacy us-east-1 names).
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def open_store(url: str, aws: AwsOptions | None = None) -> ObjectStore:
    """The store for DEST/SOURCE ``url``; nothing is touched until the first call."""
    if not url.strip():
        raise ConfigError("empty storage location: give a local directory or s3://bucket/prefix")
    match = _SCHEME.match(url)
    if match is None:
        return LocalStore(url)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "s3":
        bucket, prefix = parse_s3_url(url)
        return S3Store(bucket, prefix, aws or AwsOptions())
    if scheme == "memory":
        return MemoryStore(rest)
    if scheme == "file":
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


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _remove_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Closing:
    """``async with open_store(url) as store:`` closes the store at the end."""

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# ---------------------------------------------------------------------------------------------
# Memory


_MEMORY_STORES: dict[str, dict[str, tuple[bytes, str]]] = {}


class MemoryStore(_Closing):
    """A dict of key -> (bytes, md5); every store opened with the same name shares it."""

    bucket: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"memory://{name}"
        self.objects = _MEMORY_STORES.setdefault(name, {})

    def root_key(self, key: str) -> str:
        return key

    async def ensure_ready(self, *, for_write: bool) -> None:
        if not for_write and not self.objects:
            raise StorageError(f"nothing at {self.url}: the store holds no objects")

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        data = bytes(data)
        self.objects[check_key(key)] = (data, _md5_hex(data))
        return self._info(key)

    async def put_file(self, key: str, path: str, *, md5_hex: str | None = None) -> ObjectInfo:
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
        except OSError as exc:
            raise StorageError(f"cannot read {path} to store it: {exc.strerror}") from exc
        finally:
            _remove_quietly(path)
        return await self.put_bytes(key, data)

    async def get_bytes(self, key: str) -> bytes:
        try:
            return self.objects[check_key(key)][0]
        except KeyError:
            raise StorageError(f"{self.url}/{key} not found: nothing was stored there") from None

    async def iter_chunks(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        data = await self.get_bytes(key)
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def head(self, key: str) -> ObjectInfo | None:
        return self._info(key) if check_key(key) in self.objects else None

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return [self._info(key) for key in sorted(self.objects) if key.startswith(prefix)]

    async def delete(self, key: str) -> None:
        self.objects.pop(check_key(key), None)

    def _info(self, key: str) -> ObjectInfo:
        data, etag = self.objects[key]
        return ObjectInfo(key=key, size=len(data), etag=etag)


# ---------------------------------------------------------------------------------------------
# Local directory


class LocalStore(_Closing):
    """Objects are files under ``root``; every write is atomic and durable (fsync)."""

    bucket: str | None = None

    def __init__(self, path: str) -> None:
        self.root = Path(path).expanduser().absolute()
        self.url = str(self.root)

    def root_key(self, key: str) -> str:
        return key

    def path_of(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def ensure_ready(self, *, for_write: bool) -> None:
        await asyncio.to_thread(self._check_writable if for_write else self._check_readable)

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        target = self.path_of(key)
        with _local_errors("write", target):
            await asyncio.to_thread(self._write_atomically, target, data)
        return ObjectInfo(key=key, size=len(data), etag=_md5_hex(data))

    async def put_file(self, key: str, path: str, *, md5_hex: str | None = None) -> ObjectInfo:
        target = self.path_of(key)
        try:
            with _local_errors("write", target):
                size, etag = await asyncio.to_thread(self._move_into_place, path, target, md5_hex)
        finally:
            _remove_quietly(path)  # it is ours now, stored or not
        return ObjectInfo(key=key, size=size, etag=etag)

    async def get_bytes(self, key: str) -> bytes:
        path = self.path_of(key)
        with _local_errors("read", path):
            return await asyncio.to_thread(path.read_bytes)

    async def iter_chunks(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        with _local_errors("read", path):
            file = await asyncio.to_thread(open, path, "rb")
        try:
            while True:
                with _local_errors("read", path):
                    chunk = await asyncio.to_thread(file.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            file.close()

    async def head(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        with _local_errors("inspect", path):
            size = await asyncio.to_thread(_file_size_or_none, path)
        # The local etag would mean reading the whole file; put_* return it instead.
        return None if size is None else ObjectInfo(key=key, size=size, etag="")

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        with _local_errors("list", self.root):
            return await asyncio.to_thread(self._list_sync, prefix)

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        with _local_errors("delete", path):
            await asyncio.to_thread(self._delete_file, path)

    def _delete_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        # Folders exist only to hold keys (as on S3): drop the ones a delete left empty.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    # -- blocking helpers, run in threads ------------------------------------------------------

    def _check_writable(self) -> None:
        if self.root.exists():
            if not self.root.is_dir():
                raise StorageError(f"{self.root} is a file, not a directory: choose another DEST")
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise StorageError(f"cannot write to {self.root}: permission denied")
            return
        ancestor = _nearest_existing(self.root)
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise StorageError(f"cannot create {self.root}: {ancestor} is not a writable directory")

    def _check_readable(self) -> None:
        if not self.root.exists():
            raise StorageError(f"nothing at {self.root}: no such directory")
        if not self.root.is_dir():
            raise StorageError(f"{self.root} is a file, not a directory: give the export folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageError(f"cannot read {self.root}: permission denied")
        if next(self._walk_files(""), None) is None:
            raise StorageError(f"nothing at {self.root}: the directory holds no files")

    def _write_atomically(self, target: Path, data: bytes) -> None:
        _make_dirs(target.parent)
        temp = _temp_path(target)
        try:
            with open(temp, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            _remove_quietly(temp)
            raise
        _fsync_dir(target.parent)

    def _move_into_place(self, source: str, target: Path, known_md5: str | None) -> tuple[int, str]:
        size = os.path.getsize(source)
        etag = known_md5 or _file_md5(source)
        _make_dirs(target.parent)
        temp = _temp_path(target)
        try:
            try:
                os.rename(source, temp)  # same filesystem: no copy
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_file(source, temp)
            _fsync_file(temp)
            os.replace(temp, target)
        except BaseException:
            _remove_quietly(temp)
            raise
        _fsync_dir(target.parent)
        return size, etag

    def _list_sync(self, prefix: str) -> builtins.list[ObjectInfo]:
        infos = []
        for key, path in self._walk_files(prefix):
            size = _file_size_or_none(path)
            if size is not None:  # deleted while we walked
                infos.append(ObjectInfo(key=key, size=size, etag=""))
        return sorted(infos, key=lambda info: info.key)

    def _walk_files(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """(key, path) of the files whose key starts with ``prefix``; temp files skipped."""
        folder = prefix.rpartition("/")[0]
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if relative == "." else relative + "/"
            # Only descend where keys can still match the prefix.
            dirnames[:] = [d for d in dirnames if _may_match(base + d + "/", prefix)]
            for name in filenames:
                key = base + name
                if not name.startswith(TEMP_PREFIX) and key.startswith(prefix):
                    yield key, Path(dirpath, name)


@contextlib.contextmanager
def _local_errors(action: str, path: Path) -> Iterator[None]:
    """Turn OSErrors into one-line StorageErrors naming the path."""
    try:
        yield
    except FileNotFoundError as exc:
        if action == "write":
            raise StorageError(f"cannot write {path}: {exc.strerror} ({exc.filename})") from exc
        raise StorageError(f"{path} not found: nothing was stored there") from exc
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise StorageError(
            f"cannot {action} {path}: {exc.strerror}; a file and a folder are in each other's way"
        ) from exc
    except OSError as exc:
        raise StorageError(
            f"cannot {action} {path}: {exc.strerror or exc}: check permissions and free space"
        ) from exc


def _may_match(directory_key: str, prefix: str) -> bool:
    return directory_key.startswith(prefix) or prefix.startswith(directory_key)


def _temp_path(target: Path) -> Path:
    # In the destination folder, so the final rename never crosses filesystems.
    return target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _make_dirs(folder: Path) -> None:
    """mkdir -p, fsyncing each parent that gained an entry so the new folders survive a crash."""
    if folder.is_dir():
        return
    _make_dirs(folder.parent)
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
        _fsync_dir(folder.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(source: str, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while chunk := reader.read(8 * MiB):
            writer.write(chunk)


def _file_md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _file_size_or_none(path: Path) -> int | None:
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_size if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# S3


_NETWORK_ERRORS = aws.NETWORK_ERRORS


@dataclass(frozen=True)
class _Part:
    number: int
    etag: str
    md5: bytes


class S3Store(_Closing):
    """Objects under ``s3://bucket/prefix``; one aiobotocore client, made on first use."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        aws: AwsOptions | None = None,
        *,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.bucket: str | None = bucket
        self.bucket_name = bucket
        self.prefix = prefix
        self.aws = aws or AwsOptions()
        self.retry = retry or DEFAULT_RETRY
        self.clock: Clock = clock or SystemClock()
        self.url = f"s3://{bucket}/{prefix.rstrip('/')}" if prefix else f"s3://{bucket}"
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()
        self._upload_slots = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    def root_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def where(self, key: str | None) -> str:
        """The object (or the store) as an s3:// URL, for messages."""
        return f"s3://{self.bucket_name}/{self.prefix}{key}" if key else self.url

    async def close(self) -> None:
        self._client = None
        await self._exit_stack.aclose()

    async def ensure_ready(self, *, for_write: bool) -> None:
        await self._request("HeadBucket", None)
        if for_write:
            return
        page = await self._request("ListObjectsV2", None, Prefix=self.prefix, MaxKeys=1)
        if not page.get("KeyCount"):
            raise StorageError(f"nothing at {self.url}: no objects under this prefix; check SOURCE")

    # -- objects -------------------------------------------------------------------------------

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return await self._put_object(key, data, hashlib.md5(data, usedforsecurity=False).digest())

    async def put_file(self, key: str, path: str, *, md5_hex: str | None = None) -> ObjectInfo:
        check_key(key)
        try:
            size = _upload_size(path)
            if size > MULTIPART_THRESHOLD:
                return await self._put_multipart(key, path, size)
            async with self._upload_slots:
                data, md5 = await asyncio.to_thread(_read_with_md5, path, 0, size, md5_hex)
                return await self._put_object(key, data, md5)
        finally:
            _remove_quietly(path)  # it is ours now, stored or not

    async def get_bytes(self, key: str) -> bytes:
        async def get_whole(client: Any) -> bytes:
            reply = await client.get_object(Bucket=self.bucket_name, Key=self.root_key(key))
            async with reply["Body"] as body:
                data: bytes = await body.read()
                return data

        return await self._call("GetObject", key, get_whole)

    async def iter_chunks(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Stream the object; a dropped connection resumes at the same byte, same version."""
        offset = 0
        attempts = Attempts(self.retry, self.clock)
        size, etag = -1, None
        while size < 0 or offset < size:
            reply = await self._open_range(key, offset, etag)
            if etag is None:
                size, etag = reply["ContentLength"], reply["ETag"]
            try:
                async with reply["Body"] as body:
                    while chunk := await body.read(chunk_size):
                        offset += len(chunk)
                        attempts.succeeded()
                        yield chunk
                return
            except _NETWORK_ERRORS as exc:
                await attempts.failed(self._translate(exc, "GetObject", key))

    async def head(self, key: str) -> ObjectInfo | None:
        async def head_or_none(client: Any) -> dict[str, Any] | None:
            try:
                reply: dict[str, Any] = await client.head_object(
                    Bucket=self.bucket_name, Key=self.root_key(key)
                )
                return reply
            except boto_errors.ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise

        reply = await self._call("HeadObject", key, head_or_none)
        if reply is None:
            return None
        return ObjectInfo(key=key, size=reply["ContentLength"], etag=_unquote(reply["ETag"]))

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        infos: builtins.list[ObjectInfo] = []
        params: dict[str, Any] = {"Prefix": self.prefix + prefix}
        while True:
            page = await self._request("ListObjectsV2", prefix or None, **params)
            infos.extend(self._listed(item) for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        # Keys ending in '/' are console "folders", not objects of ours.
        return sorted((i for i in infos if not i.key.endswith("/")), key=lambda i: i.key)

    async def delete(self, key: str) -> None:
        await self._request("DeleteObject", key, Key=self.root_key(key))

    def _listed(self, item: dict[str, Any]) -> ObjectInfo:
        key = item["Key"][len(self.prefix) :]
        return ObjectInfo(key=key, size=item["Size"], etag=_unquote(item["ETag"]))

    async def _put_object(self, key: str, data: bytes, md5: bytes) -> ObjectInfo:
        # Content-MD5 makes S3 reject a body that was damaged on the way.
        reply = await self._request(
            "PutObject", key, Key=self.root_key(key), Body=data, ContentMD5=_b64(md5)
        )
        return ObjectInfo(key=key, size=len(data), etag=_unquote(reply["ETag"]))

    async def _open_range(self, key: str, offset: int, etag: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Key": self.root_key(key)}
        if offset:
            # Resume after a dropped connection, but only if the object did not change.
            params.update(Range=f"bytes={offset}-", IfMatch=etag)
        reply: dict[str, Any] = await self._request("GetObject", key, **params)
        return reply

    # -- multipart -----------------------------------------------------------------------------

    async def _put_multipart(self, key: str, path: str, size: int) -> ObjectInfo:
        created = await self._request("CreateMultipartUpload", key, Key=self.root_key(key))
        upload_id = created["UploadId"]
        try:
            parts = await self._upload_parts(key, upload_id, path, size)
            etag = await self._complete_multipart(key, upload_id, parts)
        except BaseException:
            # Also on cancellation: parts of an unfinished upload are billed until aborted.
            await asyncio.shield(self._abort_multipart(key, upload_id))
            raise
        return ObjectInfo(key=key, size=size, etag=etag)

    async def _upload_parts(
        self, key: str, upload_id: str, path: str, size: int
    ) -> builtins.list[_Part]:
        part_size = _part_size(size)
        ranges = iter(enumerate(range(0, size, part_size), start=1))
        parts: builtins.list[_Part] = []

        async def upload_next_parts() -> None:
            for number, offset in ranges:
                length = min(part_size, size - offset)
                parts.append(await self._upload_part(key, upload_id, path, number, offset, length))

        workers = [asyncio.create_task(upload_next_parts()) for _ in range(PARTS_IN_FLIGHT)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return sorted(parts, key=lambda part: part.number)

    async def _upload_part(
        self, key: str, upload_id: str, path: str, number: int, offset: int, length: int
    ) -> _Part:
        async with self._upload_slots:
            data, md5 = await asyncio.to_thread(_read_with_md5, path, offset, length, None)
            reply = await self._request(
                "UploadPart",
                key,
                Key=self.root_key(key),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_b64(md5),
            )
        return _Part(number=number, etag=reply["ETag"], md5=md5)

    async def _complete_multipart(
        self, key: str, upload_id: str, parts: builtins.list[_Part]
    ) -> str:
        async def complete(client: Any) -> dict[str, Any] | None:
            try:
                reply: dict[str, Any] = await client.complete_multipart_upload(
                    Bucket=self.bucket_name,
                    Key=self.root_key(key),
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
                    },
                )
                return reply
            except boto_errors.ClientError as exc:
                if _code(exc) == "NoSuchUpload":
                    return None  # maybe an earlier attempt completed it; checked below
                raise

        reply = await self._call("CompleteMultipartUpload", key, complete)
        expected = _multipart_etag(parts)
        if reply is not None:
            return _unquote(reply["ETag"])
        stored = await self.head(key)
        if stored is not None and stored.etag == expected:
            return expected
        raise StorageError(
            f"multipart upload of {self.where(key)} vanished before it completed: "
            "another process may have aborted it; run again"
        )

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._request(
                "AbortMultipartUpload", key, Key=self.root_key(key), UploadId=upload_id
            )
        except DdbpipeError as exc:
            # The original error matters more; a lifecycle rule can clean up what is left.
            logger.warning(
                "could not abort multipart upload %s of %s: %s", upload_id, self.where(key), exc
            )

    # -- calls, retries, errors ----------------------------------------------------------------

    async def _request(self, action: str, key: str | None, **params: Any) -> Any:
        """One S3 API call by action name, Bucket filled in."""
        method = xform_name(action)

        async def call(client: Any) -> Any:
            return await getattr(client, method)(Bucket=self.bucket_name, **params)

        return await self._call(action, key, call)

    async def _call(
        self, action: str, key: str | None, request: Callable[[Any], Awaitable[T]]
    ) -> T:
        """Run ``request(client)``; retry transient failures; raise ddbpipe errors."""
        attempts = Attempts(self.retry, self.clock)
        while True:
            try:
                return await request(await self._get_client())
            except DdbpipeError:
                raise
            except (boto_errors.ClientError, boto_errors.BotoCoreError, *_NETWORK_ERRORS) as exc:
                # Raises the error itself when it is terminal or the attempts are used up.
                await attempts.failed(self._translate(exc, action, key))

    def _translate(self, exc: BaseException, action: str, key: str | None) -> DdbpipeError:
        call = aws.AwsCall("s3", action, resource=self.bucket_name, location=self.where(key))
        return aws.error_from_exception(call, exc, aws.s3_endpoint(self.aws) or "AWS S3")

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._open_client()
        return self._client

    async def _open_client(self) -> Any:
        try:
            return await self._exit_stack.enter_async_context(self._create_client())
        except ValueError as exc:  # botocore's word for a malformed endpoint URL
            raise ConfigError(
                f"cannot use S3 endpoint {aws.s3_endpoint(self.aws)!r} for {self.url}: "
                f"{aws.one_line(exc)}; check --endpoint-url / AWS_ENDPOINT_URL_S3"
            ) from exc

    def _create_client(self) -> Any:
        session = aws.session(self.aws, AioSession)
        region = aws.region(self.aws, session)
        endpoint = aws.s3_endpoint(self.aws)
        config = AioConfig(
            # moto, MinIO and most S3-compatible servers need bucket-in-path addressing.
            s3={"addressing_style": "path"} if endpoint else None,
            # Retries happen in _call, so the total stays bounded by RetryPolicy.attempts.
            retries={"mode": "standard", "total_max_attempts": 1},
            # We send Content-MD5 ourselves; newer default checksums upset some servers.
            request_checksum_calculation="when_required",
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
        )
        return session.create_client("s3", region_name=region, endpoint_url=endpoint, config=config)


def _part_size(size: int) -> int:
    """At least MIN_PART_SIZE, whole MiBs, and few enough parts for S3's limit."""
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART_SIZE, -(-needed // MiB) * MiB)


def _upload_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise StorageError(f"cannot read {path} to upload it: {exc.strerror}") from exc


def _read_with_md5(
    path: str, offset: int, length: int, known_md5: str | None
) -> tuple[bytes, bytes]:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(length)
    except OSError as exc:
        raise StorageError(f"cannot read {path} to upload it: {exc.strerror}") from exc
    if len(data) != length:
        raise StorageError(f"{path} shrank while it was being uploaded")
    if known_md5:  # the shard writer hashed it already; no second pass over the bytes
        return data, bytes.fromhex(known_md5)
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def _multipart_etag(parts: list[_Part]) -> str:
    """The ETag S3 gives a multipart object: md5 of the part md5s, dash, part count."""
    combined = hashlib.md5(b"".join(p.md5 for p in parts), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(parts)}"


def _code(exc: boto_errors.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: boto_errors.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
