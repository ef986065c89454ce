"""Capacity raised for a job and put back: ``--provision-rcu`` (export), ``--provision-wcu``
(import).

``raised_capacity`` is the async context manager a job runs inside. It raises the table's read
capacity (export; GSIs are not scanned) or the write capacity of the table and each GSI
(import) to N, never lowering anything, and puts the originals back when the job ends, fails
or is cancelled. They are written down first (``state``: atomic, owner-only), so a job killed
at any moment can be undone: ``restore_from_state`` (the job's ``--resume``) puts them back,
idempotently, and removes the file. Auto-scaled capacity is raised through its scalable
target (its minimum), not against the scaler. On-demand tables need nothing: a note says so.
Putting back is a decrease, which DynamoDB limits per day: if it could be refused today, the
job stops before anything is raised, unless the caller allows it (``--provision-anyway``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from .autoscaling import (
    AutoScalingFactory,
    Targets,
    autoscaling_client_factory,
    autoscaling_endpoint,
    describe_targets,
)
from .autoscaling import call as autoscaling_call
from .config import AwsOptions
from .dynamo import DynamoClient
from .errors import ConfigError, DdbpipeError, ResumeError, StorageError, TableNotFoundError
from .import_state import OWNER_ONLY
from .schema import billing_mode
from .storage import remove_quietly
from .storage.local import write_file_atomically
from .tables import wait_until_active

__all__ = [
    "STATE_VERSION", "CapacityState", "RaisedCapacity", "ScalingChange", "ThroughputChange",
    "capacity_for_job", "next_decrease_at",
    "raised_capacity", "restore_from_state",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1

Dimension = Literal["read", "write"]
DIMENSIONS: tuple[Dimension, ...] = ("read", "write")
#: Hears each message, one line each (default: the log, as warnings).
Note = Callable[[str], None]

_Units = dict[Dimension, int]

_UNITS: dict[Dimension, str] = {"read": "ReadCapacityUnits", "write": "WriteCapacityUnits"}
_ON_DEMAND_MAXIMUM = {"read": "MaxReadRequestUnits", "write": "MaxWriteRequestUnits"}
_OPTIONS: dict[Dimension, str] = {"read": "--provision-rcu", "write": "--provision-wcu"}
_ANYWAY_OPTION = "--provision-anyway"

# DynamoDB's quota on decreases (DynamoDB Developer Guide, "Service, account, and table quotas
# in Amazon DynamoDB", decreasing provisioned throughput): a table, and each GSI on its own,
# may be decreased up to 4 times at any time in a UTC day, plus once more after each hour
# without a decrease (so at most 27 a day). A call decreasing a table and a GSI together is
# refused if either is over its limit, so each is put back by a call of its own.
FREE_DECREASES_PER_DAY = 4
_HOUR, _DAY = 3600.0, 86400.0


def next_decrease_at(throughput: Mapping[str, Any], now: float) -> float | None:
    """When DynamoDB next allows a decrease of ``throughput`` (a table's or GSI's
    ProvisionedThroughput description), in epoch seconds; None if it allows one now."""
    day_start = now - now % _DAY  # Unix time has no leap seconds: this is 00:00 UTC
    last = float(throughput.get("LastDecreaseDateTime") or 0)
    count = int(throughput.get("NumberOfDecreasesToday") or 0)
    if last < day_start or count < FREE_DECREASES_PER_DAY:
        return None
    allowed_at = min(last + _HOUR, day_start + _DAY)
    return allowed_at if allowed_at > now else None


class ThroughputChange(msgspec.Struct, frozen=True):
    """A table's (``index`` None) or a GSI's throughput raised by UpdateTable: ``original``
    both dimensions as they were; ``raised`` those raised (only they are put back), to what."""

    index: str | None
    original: dict[Dimension, int]
    raised: dict[Dimension, int]


class ScalingChange(msgspec.Struct, frozen=True):
    """A scalable target's range, raised by RegisterScalableTarget."""

    resource_id: str  # table/NAME or table/NAME/index/INDEX
    dimension: str  # e.g. dynamodb:table:WriteCapacityUnits
    min_capacity: int
    max_capacity: int
    raised_min: int
    raised_max: int


class CapacityState(msgspec.Struct):
    """The state file: what a job raised, with the values to put back."""

    version: int
    table: str
    region: str
    throughput: list[ThroughputChange] = []
    scaling: list[ScalingChange] = []


@dataclass(frozen=True)
class RaisedCapacity:
    """What ``raised_capacity`` yields: what it raised, to be put back (None: nothing)."""

    table: str
    changes: CapacityState | None = None
    on_demand: bool = False


@asynccontextmanager
async def raised_capacity(
    client: DynamoClient, table: str, *, read: int | None = None, write: int | None = None,
    state: Path, autoscaling: AutoScalingFactory | None = None, note: Note | None = None,
    despite_decrease_limit: bool = False,
) -> AsyncIterator[RaisedCapacity]:
    """``async with raised_capacity(...) as raised:`` runs a job with the capacity raised.

    ``read``: the table's read units (export); ``write``: the table's and each GSI's write
    units (import). ``autoscaling`` None: not auto-scaled. A state file a killed run left is
    put back first. A put-back that fails on exit is one line naming the table and the
    commands that finish it by hand (an error after a job that succeeded, else a warning:
    the job's error stays the one raised); the state file stays.
    """
    wanted, say = _wanted(read=read, write=write), note or log.warning
    raised = await _raise(client, table, wanted, state, autoscaling, say, despite_decrease_limit)
    if raised.changes is None:  # nothing to put back
        yield raised
        return
    put_back = _PutBack(client, raised.changes, state, autoscaling, say)
    try:
        yield raised
    except BaseException:  # the job failed or was cancelled: put back, keep its error
        await put_back.quietly()
        raise
    await put_back.run()


async def _raise(
    client: DynamoClient, table: str, wanted: dict[Dimension, int], state: Path,
    autoscaling: AutoScalingFactory | None, say: Note, despite_decrease_limit: bool,
) -> RaisedCapacity:
    """Raise what ``wanted`` asks, the state written down first."""
    if not wanted:
        return RaisedCapacity(table)
    earlier = await _read_state(state, table=table, region=client.region)
    if earlier is not None:  # a killed run's: its values are the originals, not the current
        await _PutBack(client, earlier, state, autoscaling, say).run()
    description = await wait_until_active(client, table)
    if _on_demand(description):
        say(_on_demand_note(table, description, wanted))
        return RaisedCapacity(table, on_demand=True)
    targets: Targets = {}
    if autoscaling is not None:
        async with autoscaling() as scaler:
            resource_ids = [_resource_id(table, index) for index in _indexes(description)]
            targets = await describe_targets(scaler, resource_ids, client.region)
    plan = _plan(table, client.region, description, wanted, targets)
    _check_decreases(table, description, plan, client.clock.time(), say, despite_decrease_limit)
    if not plan.state.throughput and not plan.state.scaling:
        say(f"table '{table}': {plan.summary()}")
        return RaisedCapacity(table)
    # Written down before anything changes: a kill from here on can be undone.
    await asyncio.to_thread(write_file_atomically, state, msgspec.json.encode(plan.state),
                            OWNER_ONLY)
    try:
        await _apply(client, plan.state, autoscaling)
    except BaseException as error:
        await _PutBack(client, plan.state, state, autoscaling, say).quietly()
        if isinstance(error, DdbpipeError):
            options = " / ".join(_OPTIONS[dimension] for dimension in wanted)
            raise _reworded(error, f"could not raise the capacity of table '{table}' for the "
                            f"job ({error}): fix the cause, or run without {options}") from error
        raise
    say(f"table '{table}': {plan.summary()}; put back when the job ends")
    return RaisedCapacity(table, changes=plan.state)


async def _apply(
    client: DynamoClient, raising: CapacityState, autoscaling: AutoScalingFactory | None
) -> None:
    if raising.scaling:
        assert autoscaling is not None
        async with autoscaling() as scaler:
            for change in raising.scaling:
                await _register_target(scaler, change, client.region, change.raised_min,
                                       change.raised_max)
    if raising.throughput:
        # Increases are not limited: one call for the table and its GSIs, one wait.
        request = _update_request(raising.table, {c.index: {**c.original, **c.raised}
                                                  for c in raising.throughput})
        await client.call("UpdateTable", request, resource=raising.table)
        await wait_until_active(client, raising.table)


def _check_decreases(
    table: str, description: Mapping[str, Any], plan: _Plan, now: float, say: Note,
    despite_decrease_limit: bool,
) -> None:
    """Stop (or warn) before raising what DynamoDB may not let us put back today."""
    refusals = []
    for change in plan.state.throughput:
        throughput = _part(description, change.index, "ProvisionedThroughput") or {}
        allowed_at = next_decrease_at(throughput, now)
        if allowed_at is not None:
            refusals.append(f"{_name(change.index)} was decreased "
                            f"{throughput['NumberOfDecreasesToday']} times today, the last at "
                            f"{_utc(float(throughput['LastDecreaseDateTime']))}: no decrease "
                            f"before {_utc(allowed_at)}")
    if not refusals:
        return
    reason = (f"table '{table}': DynamoDB may refuse to put the capacity back if the job ends "
              f"too soon (4 decreases a day, then one an hour): {'; '.join(refusals)}")
    if not despite_decrease_limit:
        raise ConfigError(f"{reason}; nothing was raised: start the job later, or pass "
                          f"{_ANYWAY_OPTION} to raise anyway (--resume retries a refused "
                          "put-back)")
    say(f"{reason}; raising anyway ({_ANYWAY_OPTION}): --resume retries a refused put-back")


@dataclass
class _Plan:
    """What to raise (the state to write down first), and what is high enough already."""

    state: CapacityState
    raised: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"capacity raised for the job: {', '.join(self.raised)}"] if self.raised else []
        if self.left:
            parts.append(f"already there, left as it is: {', '.join(self.left)}")
        return "; ".join(parts)

    def target(self, key: tuple[str, str], target: Mapping[str, Any], units: int) -> None:
        minimum, maximum = int(target["MinCapacity"]), int(target["MaxCapacity"])
        what = f"{key[1]} minimum of {key[0]}"
        if minimum >= units:
            self.left.append(f"{what} {minimum}")
            return
        self.state.scaling.append(ScalingChange(
            resource_id=key[0], dimension=key[1], min_capacity=minimum, max_capacity=maximum,
            raised_min=units, raised_max=max(maximum, units),
        ))
        self.raised.append(f"{what} {minimum} -> {units}"
                           + (f" (maximum {maximum} -> {units})" if maximum < units else ""))


def _plan(
    table: str, region: str, description: Mapping[str, Any], wanted: Mapping[Dimension, int],
    targets: Targets,
) -> _Plan:
    plan = _Plan(CapacityState(version=STATE_VERSION, table=table, region=region))
    for index in _indexes(description):
        current = _throughput_of(description, index) or {"read": 0, "write": 0}
        raises: dict[Dimension, int] = {}
        for dimension, units in wanted.items():
            if index is not None and dimension == "read":
                continue  # an export scans the table only; writes land in every GSI
            key = (_resource_id(table, index),
                   f"dynamodb:{'index' if index else 'table'}:{_UNITS[dimension]}")
            if key in targets:
                plan.target(key, targets[key], units)
            elif current[dimension] < units:
                raises[dimension] = units
                plan.raised.append(f"{_name(index)} {dimension} {current[dimension]} -> {units}")
            else:
                plan.left.append(f"{_name(index)} {dimension} {current[dimension]}")
        if raises:
            plan.state.throughput.append(ThroughputChange(index, original=current, raised=raises))
    return plan


async def restore_from_state(
    client: DynamoClient, state: Path, *, table: str | None = None,
    autoscaling: AutoScalingFactory | None = None, note: Note | None = None,
) -> bool:
    """Put back what a job raised, as its ``state`` file says, and remove the file (for
    ``--resume`` after a kill); whether there was one. Idempotent. ``table``, if given, must
    be the file's. A put-back that fails raises one line (see ``raised_capacity``)."""
    saved = await _read_state(state, table=table, region=client.region)
    if saved is None:
        return False
    await _PutBack(client, saved, state, autoscaling, note or log.warning).run()
    return True


@dataclass
class _PutBack:
    """Putting back what ``saved`` says: what was done; what is left (the command, the error)."""

    client: DynamoClient
    saved: CapacityState
    state: Path
    autoscaling: AutoScalingFactory | None
    say: Note
    done: list[str] = field(default_factory=list)
    unfinished: list[tuple[str, DdbpipeError]] = field(default_factory=list)

    async def run(self) -> None:
        """Put everything back and remove the state file, or raise one line on what is left."""
        await self._scaling()
        await self._throughput()
        table = self.saved.table
        if self.unfinished:
            first = self.unfinished[0][1]
            commands = "; ".join(command for command, _ in self.unfinished)
            raise _reworded(first, f"the capacity of table '{table}' was not put back ({first}): "
                            f"run the job again with --resume to retry (state in {self.state}), "
                            f"or by hand: {commands}")
        remove_quietly(self.state)
        if self.done:
            self.say(f"table '{table}': capacity put back: {', '.join(self.done)}")

    async def quietly(self) -> None:
        """After a failure: if putting back fails too, one warning line, not another error."""
        try:
            await self.run()
        except Exception as error:  # the job's own error is the one to raise
            self.say(str(error))

    async def _throughput(self) -> None:
        client, saved = self.client, self.saved
        if not saved.throughput:
            return
        try:
            description = await wait_until_active(client, saved.table)
        except TableNotFoundError:
            self.say(f"table '{saved.table}' no longer exists: no capacity to put back")
            return
        except DdbpipeError as error:
            self.unfinished.extend((_throughput_command(saved, change), error)
                                   for change in saved.throughput)
            return
        for change in saved.throughput:
            current = _throughput_of(description, change.index)
            if current is None or _on_demand(description):  # nothing provisioned to put back
                continue
            wanted = {**current, **{d: change.original[d] for d in change.raised}}
            if wanted == current:
                continue
            request = _update_request(saved.table, {change.index: wanted})
            try:
                await client.call("UpdateTable", request, resource=saved.table)
                description = await wait_until_active(client, saved.table)
            except DdbpipeError as error:
                self.unfinished.append((_throughput_command(saved, change), error))
                continue
            self.done.extend(f"{_name(change.index)} {d} {current[d]} -> {wanted[d]}"
                             for d in change.raised if current[d] != wanted[d])

    async def _scaling(self) -> None:
        saved = self.saved
        if not saved.scaling:
            return
        try:
            if self.autoscaling is None:
                raise ConfigError("no Application Auto Scaling client to put ranges back with")
            async with self.autoscaling() as scaler:
                resource_ids = sorted({change.resource_id for change in saved.scaling})
                targets = await describe_targets(scaler, resource_ids, saved.region)
                for change in saved.scaling:
                    await self._target(scaler, change, targets)
        except DdbpipeError as error:  # no client or no description: nothing was done
            self.unfinished.extend((_scaling_command(saved, change), error)
                                   for change in saved.scaling)

    async def _target(self, scaler: Any, change: ScalingChange, targets: Targets) -> None:
        target = targets.get((change.resource_id, change.dimension))
        if target is None:
            self.say(f"{change.resource_id} is no longer registered with auto scaling for "
                     f"{change.dimension}: its range cannot be put back")
            return
        current = (int(target["MinCapacity"]), int(target["MaxCapacity"]))
        original = (change.min_capacity, change.max_capacity)
        try:
            if current != original:
                await _register_target(scaler, change, self.saved.region, *original)
                self.done.append(f"{change.dimension} range of {change.resource_id} "
                                 f"{current[0]}..{current[1]} -> {original[0]}..{original[1]}")
        except DdbpipeError as error:
            self.unfinished.append((_scaling_command(self.saved, change), error))


def _throughput_command(saved: CapacityState, change: ThroughputChange) -> str:
    """The AWS CLI command that puts ``change`` back by hand."""
    units, command = change.original, (f"aws dynamodb update-table --region {saved.region} "
                                       f"--table-name {shlex.quote(saved.table)}")
    if change.index is None:
        return (f"{command} --provisioned-throughput ReadCapacityUnits={units['read']},"
                f"WriteCapacityUnits={units['write']}")
    update = _update_request(saved.table, {change.index: units})["GlobalSecondaryIndexUpdates"]
    return (f"{command} --global-secondary-index-updates "
            f"{shlex.quote(json.dumps(update, separators=(',', ':')))}")


def _scaling_command(saved: CapacityState, change: ScalingChange) -> str:
    return (f"aws application-autoscaling register-scalable-target --region {saved.region} "
            f"--service-namespace dynamodb --resource-id {shlex.quote(change.resource_id)} "
            f"--scalable-dimension {change.dimension} --min-capacity {change.min_capacity} "
            f"--max-capacity {change.max_capacity}")


async def _register_target(
    scaler: Any, change: ScalingChange, region: str, minimum: int, maximum: int
) -> None:
    await autoscaling_call(scaler, "RegisterScalableTarget", change.resource_id, region, {
        "ServiceNamespace": "dynamodb", "ResourceId": change.resource_id,
        "ScalableDimension": change.dimension, "MinCapacity": minimum, "MaxCapacity": maximum,
    })


async def _read_state(path: Path, *, table: str | None, region: str) -> CapacityState | None:
    """The state file, or None if there is none; refused if it is another table's."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"cannot read the capacity state file {path} "
                           f"({error.strerror or error}): check its permissions") from error
    try:
        saved = msgspec.json.decode(data, type=CapacityState)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ResumeError(f"the capacity state file {path} is damaged ({error}): put the "
                          "capacity back by hand from the values it holds, then delete it"
                          ) from error
    if saved.version > STATE_VERSION:
        raise ResumeError(f"the capacity state file {path} was written by a newer ddbpipe "
                          f"(version {saved.version}): resume with that version")
    if saved.table != (table or saved.table) or saved.region != region:
        raise ResumeError(f"the capacity state file {path} is for table '{saved.table}' in "
                          f"{saved.region}, not '{table or saved.table}' in {region}: resume "
                          "that job first (with its --region), or use another state file")
    return saved


def _on_demand(description: Mapping[str, Any]) -> bool:
    return billing_mode(dict(description)) == "PAY_PER_REQUEST"


def _indexes(description: Mapping[str, Any]) -> Iterator[str | None]:
    """The table (None), then each of its GSIs by name."""
    yield None
    for index in description.get("GlobalSecondaryIndexes") or []:
        yield index["IndexName"]


def _part(description: Mapping[str, Any], index: str | None, key: str) -> Any:
    """``key`` of the table's description (``index`` None) or its GSI's (None if no such GSI)."""
    if index is None:
        return description.get(key)
    for gsi in description.get("GlobalSecondaryIndexes") or []:
        if gsi["IndexName"] == index:
            return gsi.get(key)
    return None


def _throughput_of(description: Mapping[str, Any], index: str | None) -> _Units | None:
    """The table's or GSI's provisioned units; None if the GSI is not there."""
    found = _part(description, index, "ProvisionedThroughput")
    return None if found is None else {d: int(found.get(_UNITS[d]) or 0) for d in DIMENSIONS}


def _update_request(
    table: str, updates: Mapping[str | None, Mapping[Dimension, int]]
) -> dict[str, Any]:
    """UpdateTable setting each resource's throughput (``updates`` hold both dimensions)."""
    request: dict[str, Any] = {"TableName": table}
    for index, units in updates.items():
        throughput = {_UNITS[d]: units[d] for d in DIMENSIONS}
        if index is None:
            request["ProvisionedThroughput"] = throughput
        else:
            request.setdefault("GlobalSecondaryIndexUpdates", []).append(
                {"Update": {"IndexName": index, "ProvisionedThroughput": throughput}})
    return request


def _on_demand_note(
    table: str, description: Mapping[str, Any], wanted: Mapping[Dimension, int]
) -> str:
    limits = []
    for index in _indexes(description):
        maxima = _part(description, index, "OnDemandThroughput") or {}
        for dimension in wanted:
            maximum = int(maxima.get(_ON_DEMAND_MAXIMUM[dimension]) or 0)
            if maximum > 0 and (index is None or dimension == "write"):  # -1: no maximum
                limits.append(f"{_name(index)} {maximum} {dimension} request units/s")
    options = " / ".join(_OPTIONS[dimension] for dimension in wanted)
    tail = f"; its on-demand throughput limits: {', '.join(limits)}" if limits else ""
    return (f"table '{table}' is on-demand (PAY_PER_REQUEST): nothing needs raising for "
            f"{options}, DynamoDB adds capacity as the job needs it{tail}")


def _wanted(*, read: int | None, write: int | None) -> _Units:
    asked: tuple[tuple[Dimension, int | None], ...] = (("read", read), ("write", write))
    wanted = {dimension: units for dimension, units in asked if units is not None}
    for dimension, units in wanted.items():
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ConfigError(f"{_OPTIONS[dimension]} must be a whole number of capacity "
                              f"units, at least 1, not {units!r}")
    return wanted


def _resource_id(table: str, index: str | None) -> str:
    return f"table/{table}" + (f"/index/{index}" if index else "")


def _name(index: str | None) -> str:
    """The table or one of its GSIs, in a line that names the table."""
    return f"index '{index}'" if index else "table"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%H:%M UTC")


def _reworded(error: DdbpipeError, message: str) -> DdbpipeError:
    """``error``'s type and details with another message (the one line the user sees)."""
    reworded = type(error)(message)
    reworded.__dict__.update(error.__dict__)
    return reworded


@asynccontextmanager
async def capacity_for_job(
    client: DynamoClient, table: str, *, read: int | None = None, write: int | None = None,
    state: Path, aws_options: AwsOptions, despite_decrease_limit: bool = False,
) -> AsyncIterator[None]:
    """What a job runs inside: with ``--provision-rcu``/``--provision-wcu`` the capacity is
    raised and put back (``raised_capacity``); without, what a killed run raised and wrote
    down in ``state`` is put back first."""
    # A local endpoint (DynamoDB Local) has no auto scaling, unless one is given for it.
    local = aws_options.endpoint_url is not None and autoscaling_endpoint() is None
    scaler = None if local else autoscaling_client_factory(aws_options)
    if read is None and write is None:
        await restore_from_state(client, state, table=table, autoscaling=scaler)
        yield
        return
    async with raised_capacity(client, table, read=read, write=write, state=state,
                               autoscaling=scaler, despite_decrease_limit=despite_decrease_limit):
        yield
