"""Bytes kept on the local disk for a while: spools, fetched files, and their checksums.

A job often needs bytes again later: a Parquet shard's raw items until it is converted, the
values the conversion decoded once, a fetched file that is checked before it is read.
``Spool`` keeps them in a temporary file (in memory while small), so memory does not grow
with the data. ``StoredBytes`` is a spool of one fetched file, counted and hashed
(``Checksums``) as it arrives. A full or unwritable temporary folder is one
``StorageError`` naming it (``temp_folder_errors``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, Protocol, Self, cast

from .errors import StorageError

__all__ = ["Checksums", "Spool", "StoredBytes", "temp_folder_errors"]


class Checksums:
    """SHA-256 and MD5 of a byte stream, fed incrementally."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha256.update(data)
        self._md5.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def sha256_hex(self) -> str:
        """Same as ``sha256`` (hex), for callers that name the encoding."""
        return self.sha256

    @property
    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(self._md5.digest()).decode("ascii")


@contextlib.contextmanager
def temp_folder_errors(what: str, spool_dir: str | None) -> Iterator[None]:
    """A full or unwritable temporary folder is the user's to fix: one line naming it."""
    try:
        yield
    except OSError as exc:
        folder = spool_dir or tempfile.gettempdir()
        raise StorageError(
            f"cannot write {what} in the temporary folder {folder}: "
            f"{exc.strerror or exc}: free space there or point TMPDIR at a folder with room"
        ) from exc


class Spool:
    """Bytes appended to a temporary file, read back by offset, as often as needed.

    Up to ``IN_MEMORY_BYTES`` stay in memory, more go to the temporary folder (``spool_dir``,
    else TMPDIR). ``what`` names the bytes in the error of a full folder. Close it (or use
    ``with``) to drop the file.
    """

    IN_MEMORY_BYTES = 1024 * 1024
    #: Read back a piece at a time: an import reads several files at once.
    READ_BYTES = 64 * 1024

    def __init__(self, what: str, spool_dir: str | None = None) -> None:
        self.what = what
        self.spool_dir = spool_dir
        self.size = 0
        # Closed by close(): it lives as long as this object, not a block.
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=self.IN_MEMORY_BYTES, dir=spool_dir
        )

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Add ``data`` at the end; returns where it starts."""
        start = self.size
        with temp_folder_errors(self.what, self.spool_dir):
            self._file.seek(start)
            self._file.write(data)
        self.size += len(data)
        return start

    def read(self, offset: int, size: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(size)

    def __iter__(self) -> Iterator[bytes]:
        """Everything, in chunks of ``READ_BYTES``."""
        for offset in range(0, self.size, self.READ_BYTES):
            yield self.read(offset, self.READ_BYTES)

    def seekable_file(self) -> BinaryIO:
        """The spool as a file to seek in (for Parquet), from its start."""
        self._file.seek(0)
        return cast(BinaryIO, self._file)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _HasChunks(Protocol):
    def iter_chunks(self, key: str, chunk_size: int = ...) -> AsyncIterator[bytes]: ...


class StoredBytes(Spool):
    """One stored file's bytes as fetched: counted and hashed (``checksums``) as they arrive,
    then read back by iterating. A copy, not the store's file read twice: what is checked
    is what is read.

    An import fetches the files it opens at the same time, so what a fetch holds is small:
    a chunk of ``FETCH_BYTES`` in flight, and a copy that goes to the temporary folder past
    ``IN_MEMORY_BYTES``."""

    IN_MEMORY_BYTES = 256 * 1024
    FETCH_BYTES = 256 * 1024

    def __init__(self, spool_dir: str | None = None) -> None:
        super().__init__("a fetched file", spool_dir)
        self.checksums = Checksums()

    @classmethod
    async def fetch(cls, store: _HasChunks, key: str, spool_dir: str | None = None) -> StoredBytes:
        """All of ``key``'s bytes from ``store``. Hashing and writing the copy release the
        GIL: they run in a thread, beside the other files' work."""
        stored = cls(spool_dir)
        try:
            async for chunk in store.iter_chunks(key, cls.FETCH_BYTES):
                await asyncio.to_thread(stored.append, chunk)
        except BaseException:
            stored.close()
            raise
        return stored

    def append(self, data: bytes | bytearray | memoryview) -> int:
        start = super().append(data)
        self.checksums.update(data)
        return start
