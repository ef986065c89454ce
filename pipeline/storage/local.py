"""The local-directory ``ObjectStore``, and ddbpipe's one atomic, durable file write.

Every file ddbpipe writes whole (objects of a local store, an import's checkpoint and
dead-letter rewrites) goes through ``write_file_atomically``: a temp file in the same folder,
fsynced, renamed over the target, and the folder fsynced, so a crash or power loss leaves
the old file or the new one, never half of one. Folders it creates are fsynced into their
parents too.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..config import ArchiveOptions
from ..errors import StorageError
from . import (
    DEFAULT_CHUNK_SIZE,
    ClosingStore,
    MiB,
    ObjectInfo,
    check_key,
    hex_md5,
    remove_quietly,
)

__all__ = ["TEMP_PREFIX", "LocalStore", "write_file_atomically"]

#: Writes go to a temp name with this prefix first; listings skip such names.
TEMP_PREFIX = ".ddbpipe-tmp-"


def write_file_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably; StorageError (one line) if not.

    Creates the missing folders above ``path``. ``mode`` (e.g. owner-only) is set on the temp
    file before the rename, so no moment exists where ``path`` holds the data with wider
    permissions. Blocking: call it in a thread from async code.
    """
    with _local_errors("write", path):
        _make_dirs(path.parent)
        temp = _temp_path(path)
        try:
            with open(temp, "xb") as file:
                if mode is not None:
                    os.fchmod(file.fileno(), mode)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            remove_quietly(temp)
            raise
        _fsync_dir(path.parent)


class LocalStore(ClosingStore):
    """Objects are files under ``root``; every write is atomic and durable (fsync)."""

    bucket: str | None = None

    def __init__(self, path: str) -> None:
        self.root = Path(path).expanduser().absolute()
        self.url = str(self.root)

    def root_key(self, key: str) -> str:
        return key

    def path_of(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def ensure_ready(self, *, for_write: bool, may_be_empty: bool = False) -> None:
        if for_write:
            await asyncio.to_thread(self._check_writable)
        else:
            await asyncio.to_thread(self._check_readable, may_be_empty)

    async def put_bytes(
        self, key: str, data: bytes, *, archive: ArchiveOptions | None = None
    ) -> ObjectInfo:
        await asyncio.to_thread(write_file_atomically, self.path_of(key), data)
        return ObjectInfo(key=key, size=len(data), etag=hex_md5(data))

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        md5_hex: str | None = None,
        archive: ArchiveOptions | None = None,
    ) -> ObjectInfo:
        try:
            target = self.path_of(key)
            with _local_errors("write", target):
                size, etag = await asyncio.to_thread(_move_into_place, path, target, md5_hex)
        finally:
            remove_quietly(path)  # it is ours now, stored or not
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

    # -- blocking helpers, run in threads ------------------------------------------------------

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

    def _check_readable(self, may_be_empty: bool) -> None:
        if not self.root.exists():
            raise StorageError(f"nothing at {self.root}: no such directory")
        if not self.root.is_dir():
            raise StorageError(f"{self.root} is a file, not a directory: give the export folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageError(f"cannot read {self.root}: permission denied")
        if not may_be_empty and next(self._walk_files(""), None) is None:
            raise StorageError(f"nothing at {self.root}: the directory holds no files")

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


def _move_into_place(source: str, target: Path, known_md5: str | None) -> tuple[int, str]:
    """Rename (or, across filesystems, copy) ``source`` to ``target`` durably: size and md5."""
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
        remove_quietly(temp)
        raise
    _fsync_dir(target.parent)
    return size, etag


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
