"""Check a finished export: structure cheaply, or every byte with ``read_data``.

The cheap check reads only manifests and object listings: the manifests are present and
agree with each other, every listed shard exists with its recorded size (and ETag), and the
per-shard item counts add up. ``read_data`` also downloads every shard, recomputes its SHA-256
and MD5, decodes it and recounts its items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .config import AwsOptions
from .errors import CorruptDataError, DdbpipeError
from .manifest import (
    AWS_FILES_KEY,
    AWS_FILES_MD5_KEY,
    AWS_SUMMARY_KEY,
    AWS_SUMMARY_MD5_KEY,
    DATA_PREFIX,
    MANIFEST_KEY,
    STATE_KEY,
    ExportManifest,
    ShardEntry,
    decode_manifest,
    md5_base64,
)
from .shards import Checksums, iter_shard_items
from .storage import ObjectInfo, ObjectStore, open_store

#: Shards downloaded and decoded at the same time by ``read_data``.
READ_CONCURRENCY = 4


@dataclass
class VerifyReport:
    """The outcome; ``ok`` only when no problem was found."""

    source: str
    read_data: bool
    export_id: str = ""
    table: str = ""
    shards: int = 0
    items: int = 0
    items_read: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "read_data": self.read_data,
            "export_id": self.export_id,
            "table": self.table,
            "shards": self.shards,
            "items": self.items,
            "items_read": self.items_read if self.read_data else None,
            "bytes_read": self.bytes_read,
            "problems": self.problems,
        }


async def run_verify(
    source: str,
    *,
    read_data: bool = False,
    aws: AwsOptions | None = None,
    on_shard: Callable[[ShardEntry], None] | None = None,
) -> VerifyReport:
    """Verify the export at ``source``; problems are collected, not raised.

    Raises only when there is nothing to verify (no export, unreadable manifest, unknown
    format version) or storage itself fails.
    """
    store = open_store(source, aws)
    report = VerifyReport(source=store.url, read_data=read_data)
    try:
        await store.ensure_ready(for_write=False)
        manifest = await _read_manifest(store)
        report.export_id, report.table = manifest.plan.export_id, manifest.plan.table_name
        report.shards, report.items = len(manifest.shards), manifest.item_count
        stored = {info.key: info for info in await store.list(DATA_PREFIX)}
        report.problems += _check_listing(manifest, stored)
        if manifest.has_aws_manifests:
            report.problems += await _check_aws_manifests(store, manifest)
        if read_data:
            await _read_all_shards(store, manifest, stored, report, on_shard)
    finally:
        await store.close()
    return report


async def _read_manifest(store: ObjectStore) -> ExportManifest:
    if await store.head(MANIFEST_KEY) is None:
        if await store.head(STATE_KEY) is not None:
            raise CorruptDataError(
                f"{store.url} holds an unfinished export (no {MANIFEST_KEY}): finish it with "
                "'ddbpipe export --resume'"
            )
        raise CorruptDataError(f"{store.url} holds no ddbpipe export ({MANIFEST_KEY} is missing)")
    # A malformed manifest or an unknown format version is raised as it is: nothing to verify.
    return decode_manifest(await store.get_bytes(MANIFEST_KEY), f"{store.url}/{MANIFEST_KEY}")


def _check_listing(manifest: ExportManifest, stored: dict[str, ObjectInfo]) -> list[str]:
    problems = []
    for shard in manifest.shards:
        info = stored.get(shard.key)
        if info is None:
            problems.append(f"{shard.key}: missing (listed with {shard.items} items)")
        elif info.size != shard.stored_bytes:
            problems.append(
                f"{shard.key}: size {info.size} bytes, manifest records {shard.stored_bytes}"
            )
        elif info.etag and shard.etag and info.etag != shard.etag:
            problems.append(f"{shard.key}: ETag {info.etag}, manifest records {shard.etag}")
    listed = {shard.key for shard in manifest.shards}
    problems += [
        f"{key}: not listed in {MANIFEST_KEY}" for key in sorted(stored) if key not in listed
    ]
    return problems


async def _check_aws_manifests(store: ObjectStore, manifest: ExportManifest) -> list[str]:
    problems: list[str] = []
    files = await _checked_document(store, AWS_FILES_KEY, AWS_FILES_MD5_KEY, problems)
    summary = await _checked_document(store, AWS_SUMMARY_KEY, AWS_SUMMARY_MD5_KEY, problems)
    if summary is not None:
        problems += _check_aws_summary(summary, manifest)
    if files is not None:
        problems += _check_aws_files(files, manifest, store)
    return problems


async def _checked_document(
    store: ObjectStore, key: str, md5_key: str, problems: list[str]
) -> bytes | None:
    if await store.head(key) is None:
        problems.append(f"{key}: missing")
        return None
    document = await store.get_bytes(key)
    if await store.head(md5_key) is None:
        problems.append(f"{md5_key}: missing")
    elif (await store.get_bytes(md5_key)).strip().decode("ascii", "replace") != md5_base64(
        document
    ):
        problems.append(f"{key}: MD5 does not match {md5_key}")
    return document


def _check_aws_summary(data: bytes, manifest: ExportManifest) -> list[str]:
    try:
        summary = msgspec.json.decode(data)
        count = int(summary["itemCount"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return [f"{AWS_SUMMARY_KEY}: not a valid export summary"]
    if count != manifest.item_count:
        return [
            f"{AWS_SUMMARY_KEY}: itemCount {count}, {MANIFEST_KEY} records {manifest.item_count}"
        ]
    return []


def _check_aws_files(data: bytes, manifest: ExportManifest, store: ObjectStore) -> list[str]:
    try:
        lines = [msgspec.json.decode(line) for line in data.splitlines() if line.strip()]
        listed = {line["dataFileS3Key"]: line for line in lines}
    except (msgspec.DecodeError, KeyError, TypeError):
        return [f"{AWS_FILES_KEY}: not valid JSON lines of data files"]
    problems = []
    for shard in manifest.shards:
        line = listed.pop(store.root_key(shard.key), None)
        if line is None:
            problems.append(f"{AWS_FILES_KEY}: does not list {shard.key}")
        elif line.get("itemCount") != shard.items or line.get("md5Checksum") != shard.md5:
            problems.append(f"{AWS_FILES_KEY}: item count or MD5 of {shard.key} disagrees")
    problems += [f"{AWS_FILES_KEY}: lists {key}, which is not in the export" for key in listed]
    return problems


async def _read_all_shards(
    store: ObjectStore,
    manifest: ExportManifest,
    stored: dict[str, ObjectInfo],
    report: VerifyReport,
    on_shard: Callable[[ShardEntry], None] | None,
) -> None:
    running = asyncio.Semaphore(READ_CONCURRENCY)

    async def check(shard: ShardEntry) -> list[str]:
        async with running:
            problems = await _read_shard(store, shard, report)
        if on_shard is not None:
            on_shard(shard)
        return problems

    present = [shard for shard in manifest.shards if shard.key in stored]
    for problems in await asyncio.gather(*(check(shard) for shard in present)):
        report.problems += problems


async def _read_shard(store: ObjectStore, shard: ShardEntry, report: VerifyReport) -> list[str]:
    """Hash the stored bytes and count the items they decode to."""
    data = bytearray()
    checksums = Checksums()
    async for chunk in store.iter_chunks(shard.key):
        checksums.update(chunk)
        data += chunk
    report.bytes_read += len(data)
    problems = []
    if checksums.sha256_hex != shard.sha256:
        problems.append(f"{shard.key}: SHA-256 does not match the manifest (the file changed)")
    if checksums.md5_b64 != shard.md5:
        problems.append(f"{shard.key}: MD5 does not match the manifest")
    try:
        count = await asyncio.to_thread(_count_items, bytes(data), shard.key)
    except CorruptDataError as error:
        return [*problems, str(error)]
    except DdbpipeError as error:
        return [*problems, f"{shard.key}: {error}"]
    report.items_read += count
    if count != shard.items:
        problems.append(f"{shard.key}: holds {count} items, manifest records {shard.items}")
    return problems


def _count_items(data: bytes, key: str) -> int:
    return sum(1 for _ in iter_shard_items([data], key))
