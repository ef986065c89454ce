"""Archived exports: which shards are frozen, the refusal of jobs that would read them, and
the thaw job that restores them.

Shards exported with ``--storage-class GLACIER`` or ``DEEP_ARCHIVE`` cannot be read until S3
restores a readable copy of each (RestoreObject), which takes minutes to two days. A job that
reads shards (import, ``verify --read-data``) would otherwise fail at the first frozen one,
after other files were already written, so it calls ``refuse_frozen`` first: one line naming
how many shards are frozen and the ``ddbpipe thaw`` command that restores them.

Finding them is cheap: the listing gives each shard's storage class, and only shards in a
frozen class need a HeadObject to tell whether a restore is under way or done.

``run_thaw`` asks for a restore of every shard that needs one (restores under way or done are
left alone, so running it again asks for nothing new) and, with ``wait``, checks again on a
growing interval (``PollSchedule``) until every shard is readable.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from .config import (
    DEFAULT_RESTORE_DAYS,
    DEFAULT_RESTORE_TIER,
    FROZEN_STORAGE_CLASSES,
    RESTORE_TIERS,
    AwsOptions,
)
from .errors import ConfigError, FrozenDataError, StorageError
from .integrity import RecordedFile, check_listing, stop_at_first
from .manifest import DATA_PREFIX, MANIFEST_KEY, read_finished_manifest
from .retry import Clock, SystemClock
from .storage import ObjectInfo, ObjectStore, open_store

__all__ = [
    "PollSchedule",
    "ShardStates",
    "ThawSummary",
    "refuse_frozen",
    "run_thaw",
    "shard_states",
    "thaw_command",
]

#: S3 offers Expedited restores for GLACIER only.
_NO_EXPEDITED = "DEEP_ARCHIVE"
#: HeadObject / RestoreObject calls in flight at once.
_CALLS_IN_FLIGHT = 32

T = TypeVar("T")


@dataclass(frozen=True)
class PollSchedule:
    """How long a waiting thaw sleeps before each round of HeadObject checks: ``first``
    seconds, ``growth`` times longer each round, at most ``longest``. Restores take minutes
    (Expedited) to two days (DEEP_ARCHIVE, Bulk): early rounds catch the quick ones, and the
    long ones cost few requests."""

    first: float = 60.0
    longest: float = 15 * 60.0
    growth: float = 2.0

    def __post_init__(self) -> None:
        if self.first <= 0 or self.longest < self.first or self.growth < 1:
            raise ConfigError(
                "a poll schedule needs first > 0, longest >= first and growth >= 1"
            )

    def delay(self, round_number: int) -> float:
        """Seconds to sleep before check ``round_number`` (0 for the first)."""
        # The exponent is bounded so a very long wait cannot overflow a float.
        return min(self.longest, self.first * self.growth ** min(round_number, 64))


# --- where the shards stand ----------------------------------------------------------------------


@dataclass
class ShardStates:
    """Where each shard stands (every key in one list): readable as stored, readable through
    a restored copy, being restored, or archived with no restore asked for."""

    not_archived: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    unrequested: list[str] = field(default_factory=list)
    #: The storage class of each archived shard (those not in ``not_archived``).
    classes: dict[str, str] = field(default_factory=dict)

    @property
    def frozen(self) -> list[str]:
        """The shards that cannot be read now."""
        return self.in_progress + self.unrequested

    @property
    def total(self) -> int:
        return len(self.not_archived) + len(self.restored) + len(self.frozen)


async def shard_states(
    store: ObjectStore, keys: Iterable[str], listing: Mapping[str, ObjectInfo]
) -> ShardStates:
    """Sort ``keys`` by where they stand; ``listing`` (key -> ObjectInfo) gives the storage
    classes, and only shards in a frozen class are asked about (HeadObject). Keys that are
    not listed are left out: missing files are the integrity checks' to report."""
    listed = [listing[key] for key in keys if key in listing]
    states = await _archived_states(
        store, [info.key for info in listed if info.storage_class in FROZEN_STORAGE_CLASSES]
    )
    states.not_archived.extend(
        info.key for info in listed if info.storage_class not in FROZEN_STORAGE_CLASSES
    )
    return states


async def _archived_states(store: ObjectStore, keys: Sequence[str]) -> ShardStates:
    """Where the archived shards ``keys`` stand, as HeadObject tells."""
    states = ShardStates()
    for key, info in zip(keys, await _bounded(store.head(key) for key in keys), strict=True):
        if info is None:  # deleted since it was listed: as above, not ours to report
            continue
        states.classes[key] = info.storage_class
        _sorted_into(states, info).append(key)
    return states


def _sorted_into(states: ShardStates, info: ObjectInfo) -> list[str]:
    if not info.frozen:
        return states.restored if info.restore == "restored" else states.not_archived
    return states.in_progress if info.restore == "in-progress" else states.unrequested


# --- the refusal -------------------------------------------------------------------------------


async def refuse_frozen(
    store: ObjectStore, keys: Sequence[str], aws: AwsOptions | None = None, *,
    by_thaw: bool = True,
) -> None:
    """Raise a one-line ``FrozenDataError`` if any of ``keys`` (the files a job is about to
    read) is archived and not restored, naming how many and how to thaw them: the
    ``ddbpipe thaw`` command for the store's export with the S3 settings of ``aws``, or,
    when ``by_thaw`` is False (a source that is not a ddbpipe export), S3's RestoreObject.
    Cheap: one listing, and a HeadObject per shard in a frozen storage class."""
    if store.bucket is None or not keys:  # only S3 holds archived objects
        return
    listing = {info.key: info for info in await store.list(_common_folder(keys))}
    states = await shard_states(store, keys, listing)
    if not states.frozen:
        return
    raise FrozenDataError(_refusal(store.url, len(keys), states, aws, by_thaw))


def _refusal(
    url: str, total: int, states: ShardStates, aws: AwsOptions | None, by_thaw: bool
) -> str:
    frozen = states.frozen
    classes = "/".join(sorted({states.classes[key] for key in frozen}))
    under_way = f" ({len(states.in_progress)} being restored)" if states.in_progress else ""
    what = "shards" if by_thaw else "files"
    stated = (f"{len(frozen)} of {total} {what} of {url} are in {classes} and not "
              f"restored{under_way}")
    if not by_thaw:
        return (f"{stated}: restore them (S3 RestoreObject) and wait until they are readable, "
                "then run this again")
    return (f"{stated}: thaw them with `{thaw_command(url, aws)} --wait` (restores take "
            "hours), then run this again")


def thaw_command(url: str, aws: AwsOptions | None) -> str:
    """``ddbpipe thaw URL`` with the S3 settings given in ``aws`` (those from the environment
    will be there for the thaw too)."""
    words = ["ddbpipe", "thaw", url]
    if aws is not None:
        for flag, value in (
            ("--region", aws.region), ("--profile", aws.profile),
            ("--s3-endpoint-url", aws.s3_endpoint_url),
            ("--expected-bucket-owner", aws.expected_bucket_owner),
        ):
            if value:
                words += [flag, value]
    return shlex.join(words)


def _common_folder(keys: Sequence[str]) -> str:
    """The deepest folder ("" or ending in '/') holding every key: one listing covers all."""
    # The prefix the first and last keys (in sorted order) share, every key shares.
    first, last = min(keys), max(keys)
    shared = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first)
    )
    return first[: first.rfind("/", 0, shared) + 1]


# --- the thaw job ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ThawSummary:
    """Where a thaw stands; the last one is its outcome, ``to_dict`` the ``--json`` output.

    ``requested`` restores were asked for now; ``already_in_progress`` and
    ``already_restored`` shards were left alone, as were ``not_archived`` ones (readable as
    stored). ``pending`` restores had not finished when last checked (0 after a ``wait``);
    ``waited`` says whether the thaw was to wait for them, ``checks`` how many rounds of
    HeadObject it made. While waiting, ``next_check_seconds`` says when the next round is
    (else None).
    """

    source: str
    shards: int
    days: int
    tier: str
    requested: int
    already_in_progress: int
    already_restored: int
    not_archived: int
    pending: int
    waited: bool
    checks: int = 0
    seconds: float = 0.0
    next_check_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_thaw(
    source: str,
    *,
    days: int = DEFAULT_RESTORE_DAYS,
    tier: str = DEFAULT_RESTORE_TIER,
    wait: bool = False,
    aws: AwsOptions | None = None,
    poll: PollSchedule | None = None,
    on_progress: Callable[[ThawSummary], None] | None = None,
    clock: Clock | None = None,
) -> ThawSummary:
    """Restore every frozen shard of the ddbpipe export at ``source`` (on S3) for ``days``
    days at ``tier``; see ``ddbpipe.thaw_export``. While waiting, ``on_progress`` hears
    where the thaw stands before each sleep; ``poll`` paces the checks, ``clock`` the sleeps
    between them (default: the system's)."""
    _check_restore(days, tier)
    clock = clock or SystemClock()
    started = clock.monotonic()
    store = open_store(source, aws, clock=clock)
    if store.bucket is None:
        raise ConfigError(
            f"{source} is not on S3: only S3 archives shards (GLACIER, DEEP_ARCHIVE), so there "
            "is nothing to thaw; give the export's s3://bucket/prefix"
        )
    tell = on_progress or (lambda summary: None)
    try:
        states = await _export_shard_states(store)
        _check_tier_fits(tier, states)
        requested = await _request_restores(store, states.unrequested, days, tier)
        summary = ThawSummary(
            source=store.url, shards=states.total, days=days, tier=tier,
            requested=len(requested),
            # A restore asked for between our HeadObject and RestoreObject is under way too.
            already_in_progress=len(states.in_progress) + len(states.unrequested)
            - len(requested),
            already_restored=len(states.restored), not_archived=len(states.not_archived),
            pending=len(states.frozen), waited=wait,
        )
        if wait and summary.pending:
            summary = await _wait_until_readable(
                store, states.frozen, summary, poll or PollSchedule(), clock, tell
            )
    finally:
        await store.close()
    return replace(summary, seconds=round(clock.monotonic() - started, 3))


def _check_restore(days: int, tier: str) -> None:
    if tier not in RESTORE_TIERS:
        raise ConfigError(f"unknown --tier {tier!r}: use one of {', '.join(RESTORE_TIERS)}")
    if days < 1:
        raise ConfigError(f"--days must be at least 1, not {days}")


def _check_tier_fits(tier: str, states: ShardStates) -> None:
    if tier == "Expedited" and any(
        states.classes[key] == _NO_EXPEDITED for key in states.unrequested
    ):
        raise ConfigError(
            f"S3 has no Expedited restores for {_NO_EXPEDITED} shards: use --tier Standard "
            "(up to 12 hours) or Bulk (up to 48 hours)"
        )


async def _export_shard_states(store: ObjectStore) -> ShardStates:
    """Where the shards of the export in ``store`` stand; a store without a finished export,
    or with shards missing, is refused in one line."""
    await store.ensure_ready(for_write=False)
    manifest = await read_finished_manifest(store)
    if manifest is None:
        raise StorageError(
            f"{store.url} holds no ddbpipe export ({MANIFEST_KEY} is missing): thaw restores "
            "the shards its manifest lists; check SOURCE"
        )
    listing = {info.key: info for info in await store.list(DATA_PREFIX)}
    recorded = [RecordedFile(key=shard.key, size=shard.stored_bytes, recorded_in=MANIFEST_KEY)
                for shard in manifest.shards]
    stop_at_first(check_listing(recorded, listing, f"{store.url}/"))
    return await shard_states(store, (shard.key for shard in manifest.shards), listing)


async def _request_restores(
    store: ObjectStore, keys: Sequence[str], days: int, tier: str
) -> list[str]:
    """Ask for a restore of each of ``keys``; the keys S3 took a new request for (it
    refuses one for a restore already under way)."""
    accepted = await _bounded(store.request_restore(key, days=days, tier=tier) for key in keys)
    return [key for key, new in zip(keys, accepted, strict=True) if new]


async def _wait_until_readable(
    store: ObjectStore,
    keys: Sequence[str],
    summary: ThawSummary,
    poll: PollSchedule,
    clock: Clock,
    tell: Callable[[ThawSummary], None],
) -> ThawSummary:
    """Check ``keys`` on ``poll``'s schedule until every one is readable."""
    pending = list(keys)
    while pending:
        delay = poll.delay(summary.checks)
        tell(replace(summary, next_check_seconds=delay))
        await clock.sleep(delay)
        states = await _archived_states(store, pending)
        # A restored copy that expired during a long wait (or a lost request) is asked again.
        asked_again = await _request_restores(store, states.unrequested, summary.days,
                                              summary.tier)
        pending = states.frozen
        summary = replace(summary, pending=len(pending), checks=summary.checks + 1,
                          requested=summary.requested + len(asked_again))
    return summary


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of ``calls``, in order, with at most ``_CALLS_IN_FLIGHT`` running."""
    slots = asyncio.Semaphore(_CALLS_IN_FLIGHT)

    async def one(call: Awaitable[T]) -> T:
        async with slots:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
