"""The rate a job runs at: the one asked for, else what the table's description allows.

One choice for the import that writes and the plan that foretells it, so the plan's time is
the import's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_ON_DEMAND_WCU
from .schema import provisioned_units

__all__ = ["ON_DEMAND_READ_RATE", "ON_DEMAND_WRITE_RATE", "Rate", "job_rate"]

#: What a new on-demand table serves at once (FACTS: on-demand capacity).
ON_DEMAND_READ_RATE = 12_000.0
ON_DEMAND_WRITE_RATE = DEFAULT_ON_DEMAND_WCU


@dataclass(frozen=True)
class Rate:
    units_per_second: float
    source: str
    provisioned: bool = False  # the table's own provisioned capacity


def job_rate(
    table: dict[str, Any] | None, given: float | None, *, writes: bool,
    provision: float | None = None,
) -> Rate:
    """The rate a job runs at: ``given`` (--target-wcu/--max-rcu); else ``provision``
    (--provision-wcu/-rcu), the capacity a provisioned table is raised to for the job; else
    the table's provisioned capacity; else (on-demand) what a new on-demand table serves at
    once, or the table's on-demand maximum where that is lower. ``table``: a DescribeTable
    reply or a saved schema; None for a table not made yet."""
    kind, flag = ("Write", "--target-wcu") if writes else ("Read", "--max-rcu")
    if given:
        return Rate(given, flag)
    provisioned = provisioned_units(table or {}, kind)
    if provisioned and provision:
        return Rate(float(provision), "the capacity the table is raised to for the job",
                    provisioned=True)
    if provisioned:
        return Rate(float(provisioned), "the table's provisioned capacity", provisioned=True)
    on_demand = ON_DEMAND_WRITE_RATE if writes else ON_DEMAND_READ_RATE
    maximum = ((table or {}).get("OnDemandThroughput") or {}).get(f"Max{kind}RequestUnits") or 0
    if 0 < maximum < on_demand:
        return Rate(float(maximum), "the table's on-demand maximum")
    return Rate(on_demand, "on-demand: what a new on-demand table serves at once")
