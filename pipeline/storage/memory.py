"""The in-memory ``ObjectStore`` (``memory://name``), for tests of the modules that use storage."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from pathlib import Path

from ..config import ArchiveOptions
from ..errors import StorageError
from . import DEFAULT_CHUNK_SIZE, ClosingStore, ObjectInfo, check_key, hex_md5, remove_quietly

__all__ = ["MemoryStore"]

_MEMORY_STORES: dict[str, dict[str, tuple[bytes, str]]] = {}


class MemoryStore(ClosingStore):
    """A dict of key -> (bytes, md5); every store opened with the same name shares it."""

    bucket: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"memory://{name}"
        self.objects = _MEMORY_STORES.setdefault(name, {})

    def root_key(self, key: str) -> str:
        return key

    async def ensure_ready(self, *, for_write: bool, may_be_empty: bool = False) -> None:
        if not for_write and not may_be_empty and not self.objects:
            raise StorageError(f"nothing at {self.url}: the store holds no objects")

    async def put_bytes(
        self, key: str, data: bytes, *, archive: ArchiveOptions | None = None
    ) -> ObjectInfo:
        data = bytes(data)
        self.objects[check_key(key)] = (data, hex_md5(data))
        return self._info(key)

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        md5_hex: str | None = None,
        archive: ArchiveOptions | None = None,
    ) -> ObjectInfo:
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
        except OSError as exc:
            raise StorageError(f"cannot read {path} to store it: {exc.strerror}") from exc
        finally:
            remove_quietly(path)
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
