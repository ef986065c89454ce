"""The integrity rules of a stored export, checked one way for ``verify`` and the import.

Each check yields typed problems (small frozen dataclasses below) instead of raising:
``verify`` collects every problem into its report, the import stops at the first one it meets
(``stop_at_first``) with the error the problem means (``Problem.error``). Two modes:

- **cheap**, from listings and manifests only: every recorded file is listed with its
  recorded size (and ETag where both sides know it), no unrecorded file is listed, and
  manifests match their checksum files (``check_listing``, ``check_unlisted``,
  ``read_checked_manifest``);
- **read-all**, from a file's stored bytes: size, recorded SHA-256 and MD5, then the decoded
  item count (``check_stored_bytes``, ``check_count``, ``read_all``).

A problem names its file as the caller wants it shown: each check takes a ``prefix`` put
before the store-relative key (verify shows keys, the import full locations).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from .errors import CorruptDataError, DdbpipeError, StorageError, TerminalError
from .manifest import md5_base64
from .shards import iter_shard_items
from .spool import Checksums, StoredBytes
from .storage import ObjectInfo, ObjectStore

__all__ = [
    "ChecksumMismatch",
    "CountMismatch",
    "ManifestChecksumMismatch",
    "ManifestsDisagree",
    "MissingFile",
    "Problem",
    "RecordedFile",
    "SizeMismatch",
    "UndecodableFile",
    "UnlistedFile",
    "UnreadableManifest",
    "check_count",
    "check_listing",
    "check_stored_bytes",
    "check_unlisted",
    "read_all",
    "read_checked_manifest",
    "stop_at_first",
]

Algorithm = Literal["SHA-256", "MD5", "ETag"]


@dataclass(frozen=True, kw_only=True)
class RecordedFile:
    """What must be true of one stored file; None where nothing records it.

    ``size`` is the recorded size, or the listed size when the source was opened (sources
    that record none); ``recorded_in`` names what records the checksums and item count
    ("" when nothing does).
    """

    key: str  # store-relative
    size: int | None = None
    items: int | None = None
    sha256: str | None = None  # hex
    md5_b64: str | None = None  # base64, as AWS's manifest-files.json records it
    etag: str | None = None
    recorded_in: str = ""


# --- problems --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One broken rule; ``str`` is the one line a user sees, ``file`` leads it."""

    file: str
    #: What an import raises when it meets this problem.
    error_type: ClassVar[type[TerminalError]] = CorruptDataError

    def error(self) -> TerminalError:
        return self.error_type(str(self))


@dataclass(frozen=True, kw_only=True)
class MissingFile(Problem):
    listed_in: str | None = None
    items: int | None = None
    error_type: ClassVar[type[TerminalError]] = StorageError

    def __str__(self) -> str:
        items = f" with {self.items:,} items" if self.items is not None else ""
        listed = f" (listed in {self.listed_in}{items})" if self.listed_in else ""
        return f"{self.file}: missing{listed}: the export is incomplete"


@dataclass(frozen=True, kw_only=True)
class UnlistedFile(Problem):
    manifest: str

    def __str__(self) -> str:
        return (f"{self.file}: not listed in {self.manifest}: remove it, or give the export "
                "it belongs to as SOURCE")


@dataclass(frozen=True, kw_only=True)
class SizeMismatch(Problem):
    expected: int
    found: int

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.found:,} bytes, expected {self.expected:,} (the file changed "
            "or is cut off)"
        )


@dataclass(frozen=True, kw_only=True)
class ChecksumMismatch(Problem):
    algorithm: Algorithm
    expected: str
    found: str
    recorded_in: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.algorithm} does not match {self.recorded_in} (stored "
            f"{self.found}, recorded {self.expected}): the file changed or is damaged"
        )


@dataclass(frozen=True, kw_only=True)
class CountMismatch(Problem):
    expected: int
    found: int
    recorded_in: str

    def __str__(self) -> str:
        return f"{self.file}: holds {self.found} items, {self.recorded_in} records {self.expected}"


@dataclass(frozen=True, kw_only=True)
class UndecodableFile(Problem):
    """Stored bytes that do not decode; ``reason`` is the decoder's message, naming the file."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, kw_only=True)
class ManifestChecksumMismatch(Problem):
    """An AWS manifest whose MD5 is not the one its ``.md5`` file holds."""

    checksum_file: str

    def __str__(self) -> str:
        return (
            f"{self.file}: MD5 does not match {self.checksum_file} (the manifest changed or "
            "is damaged)"
        )


@dataclass(frozen=True, kw_only=True)
class UnreadableManifest(Problem):
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class ManifestsDisagree(Problem):
    """Two manifests of one export say different things; ``detail`` says what."""

    other: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file} disagrees with {self.other}: {self.detail}"


def stop_at_first(problems: Iterable[Problem]) -> None:
    """Raise the error the first problem means; the import's way of checking."""
    for problem in problems:
        raise problem.error()


# --- cheap: listings and manifests ----------------------------------------------------------


def check_listing(
    files: Iterable[RecordedFile], listing: Mapping[str, ObjectInfo], prefix: str = ""
) -> Iterator[Problem]:
    """Each file is listed, with its recorded size and, where both sides know it, ETag."""
    for file in files:
        info = listing.get(file.key)
        name = prefix + file.key
        if info is None:
            yield MissingFile(file=name, listed_in=file.recorded_in, items=file.items)
        elif file.size is not None and info.size != file.size:
            yield SizeMismatch(file=name, expected=file.size, found=info.size)
        elif file.etag and info.etag and info.etag != file.etag:
            yield ChecksumMismatch(
                file=name, algorithm="ETag", expected=file.etag, found=info.etag,
                recorded_in=file.recorded_in,
            )


def check_unlisted(
    files: Iterable[RecordedFile], listing: Iterable[str], manifest: str, prefix: str = ""
) -> Iterator[Problem]:
    """No stored file (of ``listing``, keys) is missing from the manifest's files."""
    recorded = {file.key for file in files}
    for key in sorted(listing):
        if key not in recorded:
            yield UnlistedFile(file=prefix + key, manifest=manifest)


async def read_checked_manifest(
    store: ObjectStore,
    key: str,
    checksum_keys: Sequence[str],
    *,
    require_checksum: bool,
    prefix: str = "",
) -> tuple[bytes | None, list[Problem]]:
    """An AWS manifest's bytes (None if it is missing) and its problems: missing, or not
    matching the base64 MD5 that a checksum file holds (each of ``checksum_keys`` present is
    compared; with ``require_checksum`` the first one must be present)."""
    if await store.head(key) is None:
        return None, [MissingFile(file=prefix + key)]
    document = await store.get_bytes(key)
    problems: list[Problem] = []
    found_any = False
    for checksum_key in checksum_keys:
        if await store.head(checksum_key) is None:
            continue
        found_any = True
        recorded = (await store.get_bytes(checksum_key)).strip().decode("ascii", "replace")
        if recorded != md5_base64(document):
            problems.append(
                ManifestChecksumMismatch(file=prefix + key, checksum_file=checksum_key)
            )
    if require_checksum and not found_any:
        problems.append(MissingFile(file=prefix + checksum_keys[0]))
    return document, problems


# --- read-all: a file's stored bytes ------------------------------------------------------------


def check_stored_bytes(
    file: RecordedFile, found: Checksums, prefix: str = ""
) -> Iterator[Problem]:
    """The stored bytes (``found``: their size and digests, e.g. ``StoredBytes.checksums``)
    have the recorded size, then the recorded SHA-256 and MD5."""
    name = prefix + file.key
    if file.size is not None and found.size != file.size:
        yield SizeMismatch(file=name, expected=file.size, found=found.size)
        return  # the digests cannot match either
    if file.sha256 is not None and found.sha256 != file.sha256:
        yield ChecksumMismatch(
            file=name, algorithm="SHA-256", expected=file.sha256, found=found.sha256,
            recorded_in=file.recorded_in,
        )
    if file.md5_b64 is not None and found.md5_b64 != file.md5_b64:
        yield ChecksumMismatch(
            file=name, algorithm="MD5", expected=file.md5_b64, found=found.md5_b64,
            recorded_in=file.recorded_in,
        )


def check_count(file: RecordedFile, counted: int, prefix: str = "") -> Iterator[Problem]:
    """The file decoded to as many items as recorded."""
    if file.items is not None and counted != file.items:
        yield CountMismatch(
            file=prefix + file.key, expected=file.items, found=counted,
            recorded_in=file.recorded_in,
        )


#: Items handed to ``read_all``'s ``take_items`` at a time (never a whole shard at once).
ITEMS_PER_BATCH = 1000

#: Takes a batch of a file's items (DynamoDB JSON) and how many came before it; may raise
#: ``CorruptDataError`` for an item it cannot use.
TakeItems = Callable[[list[bytes], int], None]


def read_all(
    file: RecordedFile,
    stored: StoredBytes,
    prefix: str = "",
    take_items: TakeItems | None = None,
) -> tuple[int, list[Problem]]:
    """The items one fetched file decodes to and every read-all problem of it: its bytes, then
    its decoding and count. ``take_items`` also gets the items, in batches (the restore drill
    files them while verify counts them).

    CPU-bound (decoding): run it in a thread.
    """
    problems = list(check_stored_bytes(file, stored.checksums, prefix))
    name = prefix + file.key
    items = iter_shard_items(stored, name)
    counted = 0
    try:
        while batch := list(itertools.islice(items, ITEMS_PER_BATCH)):
            if take_items is not None:
                take_items(batch, counted)
            counted += len(batch)
    except CorruptDataError as error:
        return counted, [*problems, UndecodableFile(file=name, reason=str(error))]
    except DdbpipeError as error:
        return counted, [*problems, UndecodableFile(file=name, reason=f"{name}: {error}")]
    return counted, [*problems, *check_count(file, counted, prefix)]


