"""Uploads to S3: bytes and small files in one PutObject, big files as multipart uploads.

Every body goes up with its Content-MD5, so S3 refuses one damaged on the way. A file over
``MULTIPART_THRESHOLD`` goes up in parts of at least ``MIN_PART_SIZE`` (whole MiBs, at most
``MAX_PARTS`` of them), ``PARTS_IN_FLIGHT`` at a time; any failure or cancellation aborts the
upload, since the parts of an unfinished upload are billed until then.

The calls go through the store (``S3Calls``, which ``S3Store`` is): object-creating calls
through its ``create_object``, which applies the archive options, the others through its
``request``, so they are retried and their errors translated like every other S3 call.

With an additional checksum algorithm (``ArchiveOptions.checksum_algorithm``) botocore computes
each body's checksum as it is sent and S3 checks it on arrival; a multipart upload sends each
part's, and its completion lists them, for a whole-object checksum where S3 offers one (CRCs).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import ArchiveOptions
from ..errors import DdbpipeError, StorageError
from . import MiB, ObjectInfo

__all__ = [
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "MULTIPART_THRESHOLD",
    "PARTS_IN_FLIGHT",
    "S3Calls",
    "put_object",
    "unquote_etag",
    "upload_file",
]

log = logging.getLogger(__name__)

#: Files up to this size go up in one PutObject; bigger ones as a multipart upload.
MULTIPART_THRESHOLD = 64 * MiB
#: Parts are at least this big (S3 allows 5 MiB; bigger parts mean fewer requests).
MIN_PART_SIZE = 16 * MiB
#: S3's limit on parts per upload.
MAX_PARTS = 10_000
#: Parts of one upload sent at the same time.
PARTS_IN_FLIGHT = 4


class S3Calls(Protocol):
    """What an upload needs from its S3 store."""

    def root_key(self, key: str) -> str: ...

    def where(self, key: str | None) -> str: ...

    async def request(
        self, action: str, key: str | None, *, none_if: tuple[str, ...] = (), **params: Any
    ) -> Any: ...

    async def create_object(
        self, action: str, key: str, archive: ArchiveOptions | None, **params: Any
    ) -> Any: ...

    async def head(self, key: str) -> ObjectInfo | None: ...


async def put_object(
    store: S3Calls, key: str, data: bytes, md5: bytes, archive: ArchiveOptions | None
) -> ObjectInfo:
    """One PutObject of ``data``, whose MD5 digest is ``md5``."""
    reply = await store.create_object(
        "PutObject", key, archive, Body=data, ContentMD5=_base64(md5)
    )
    return ObjectInfo(key=key, size=len(data), etag=unquote_etag(reply["ETag"]))


async def upload_file(
    store: S3Calls,
    key: str,
    path: str,
    md5_hex: str | None,
    slots: asyncio.Semaphore,
    archive: ArchiveOptions | None,
) -> ObjectInfo:
    """Upload the file at ``path``; each body read into memory holds one of ``slots``."""
    size = _upload_size(path)
    if size > MULTIPART_THRESHOLD:
        return await _MultipartUpload(store, key, path, size, slots, archive).run()
    async with slots:
        data, md5 = await asyncio.to_thread(_read_part, path, 0, size, md5_hex)
        return await put_object(store, key, data, md5, archive)


def unquote_etag(etag: str) -> str:
    return etag.strip('"')


@dataclass(frozen=True)
class _Part:
    number: int
    etag: str
    md5: bytes
    #: S3's additional checksum of the part (``{"ChecksumCRC32": ...}``), if one was asked.
    checksum: dict[str, str] = field(default_factory=dict)

    def completed(self) -> dict[str, Any]:
        """The part as CompleteMultipartUpload lists it."""
        return {"PartNumber": self.number, "ETag": self.etag, **self.checksum}


@dataclass
class _MultipartUpload:
    store: S3Calls
    key: str
    path: str
    size: int
    slots: asyncio.Semaphore
    archive: ArchiveOptions | None
    upload_id: str = field(default="", init=False)

    @property
    def checksum_algorithm(self) -> str | None:
        return self.archive.checksum_algorithm if self.archive is not None else None

    async def run(self) -> ObjectInfo:
        algorithm = self.checksum_algorithm
        created = await self.store.create_object(
            "CreateMultipartUpload", self.key, self.archive,
            **({"ChecksumType": checksum_type(algorithm)} if algorithm else {}),
        )
        self.upload_id = created["UploadId"]
        try:
            etag = await self._complete(await self._upload_parts())
        except BaseException:
            # Also on cancellation: parts of an unfinished upload are billed until aborted.
            await asyncio.shield(self._abort())
            raise
        return ObjectInfo(key=self.key, size=self.size, etag=etag)

    async def _upload_parts(self) -> list[_Part]:
        part_size = _part_size(self.size)
        ranges = iter(enumerate(range(0, self.size, part_size), start=1))
        parts: list[_Part] = []

        async def upload_next_parts() -> None:
            for number, offset in ranges:
                length = min(part_size, self.size - offset)
                parts.append(await self._upload_part(number, offset, length))

        workers = [asyncio.create_task(upload_next_parts()) for _ in range(PARTS_IN_FLIGHT)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return sorted(parts, key=lambda part: part.number)

    async def _upload_part(self, number: int, offset: int, length: int) -> _Part:
        # Write options S3 wants on every part too (the checksum algorithm) go here.
        algorithm = self.checksum_algorithm
        part_options: dict[str, Any] = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        async with self.slots:
            data, md5 = await asyncio.to_thread(_read_part, self.path, offset, length, None)
            reply = await self.store.request(
                "UploadPart",
                self.key,
                Key=self.store.root_key(self.key),
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_base64(md5),
                **part_options,
            )
        checksum = {} if algorithm is None else {
            f"Checksum{algorithm}": reply[f"Checksum{algorithm}"]
        }
        return _Part(number=number, etag=reply["ETag"], md5=md5, checksum=checksum)

    async def _complete(self, parts: list[_Part]) -> str:
        reply = await self.store.request(
            "CompleteMultipartUpload",
            self.key,
            # A retry of a completion that succeeded finds no upload; checked below.
            none_if=("NoSuchUpload",),
            Key=self.store.root_key(self.key),
            UploadId=self.upload_id,
            MultipartUpload={"Parts": [part.completed() for part in parts]},
        )
        if reply is not None:
            return unquote_etag(reply["ETag"])
        expected = _multipart_etag(parts)
        stored = await self.store.head(self.key)
        if stored is not None and stored.etag == expected:
            return expected
        raise StorageError(
            f"multipart upload of {self.store.where(self.key)} vanished before it completed: "
            "another process may have aborted it; run again"
        )

    async def _abort(self) -> None:
        try:
            await self.store.request(
                "AbortMultipartUpload",
                self.key,
                Key=self.store.root_key(self.key),
                UploadId=self.upload_id,
            )
        except DdbpipeError as exc:
            # The original error matters more; a lifecycle rule can clean up what is left.
            log.warning(
                "could not abort multipart upload %s of %s: %s",
                self.upload_id,
                self.store.where(self.key),
                exc,
            )


#: S3's additional checksums that can be whole-object checksums of a multipart upload.
_FULL_OBJECT_CHECKSUMS = ("CRC64NVME", "CRC32C", "CRC32")


def checksum_type(algorithm: str) -> str:
    """How S3 checks a multipart upload's additional checksum: the whole object's where the
    algorithm allows it (CRCs), else the checksum of the part checksums."""
    return "FULL_OBJECT" if algorithm in _FULL_OBJECT_CHECKSUMS else "COMPOSITE"


def _part_size(size: int) -> int:
    """At least MIN_PART_SIZE, whole MiBs, and few enough parts for S3's limit."""
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART_SIZE, -(-needed // MiB) * MiB)


def _upload_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise StorageError(f"cannot read {path} to upload it: {exc.strerror}") from exc


def _read_part(path: str, offset: int, length: int, known_md5: str | None) -> tuple[bytes, bytes]:
    """``length`` bytes of the file from ``offset``, and their MD5 digest."""
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


def _base64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
