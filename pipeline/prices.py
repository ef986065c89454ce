"""What capacity and storage cost: a small dated price table per region, and the sums.

``ddbpipe plan`` turns capacity units and stored bytes into dollars with these. The built-in
table holds a few regions as AWS's pricing pages listed them on ``BUILT_IN_DATE`` (DynamoDB
Standard table class; S3's first 50 TB tier). Prices change: a ``--prices FILE`` of the same
shape (``PriceTable.to_dict``) replaces the built-in regions it names, and every plan says
which prices it used and their date.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .config import STORAGE_CLASSES
from .errors import ConfigError

__all__ = [
    "BUILT_IN_PRICES",
    "PriceTable",
    "RegionPrices",
    "load_prices",
    "on_demand_cost",
    "provisioned_cost",
    "storage_cost_per_month",
    "throughput_cost",
]

#: When the built-in prices were taken from AWS's pricing pages.
BUILT_IN_DATE = "2026-03-01"
BUILT_IN_SOURCE = "built-in"
GIB = 1024**3
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True, kw_only=True)
class RegionPrices:
    """One region's prices in USD: DynamoDB throughput (Standard table class) and S3
    storage per GB-month for each storage class."""

    on_demand_read_per_million: float
    on_demand_write_per_million: float
    provisioned_rcu_hour: float
    provisioned_wcu_hour: float
    s3_gb_month: dict[str, float] = field(default_factory=dict)

    def storage_gb_month(self, storage_class: str, region: str) -> float:
        try:
            return self.s3_gb_month[storage_class]
        except KeyError:
            raise ConfigError(
                f"the prices for {region} have no S3 price for {storage_class}: add it under "
                f"regions.{region}.s3_gb_month in a --prices FILE"
            ) from None


@dataclass(frozen=True, kw_only=True)
class PriceTable:
    """Prices per region, with where they came from and the date they were taken."""

    source: str
    date: str
    regions: dict[str, RegionPrices]

    def for_region(self, region: str) -> RegionPrices:
        prices = self.regions.get(region)
        if prices is None:
            known = ", ".join(sorted(self.regions))
            raise ConfigError(
                f"no prices for region {region} (known: {known}): pass --prices FILE with "
                "that region's prices (docs/OPERATIONS.md shows the shape)"
            )
        return prices

    def used_for(self, region: str) -> dict[str, str]:
        """What a plan says of the prices it used."""
        return {"source": self.source, "date": self.date, "region": region}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _s3(standard: float, standard_ia: float, one_zone_ia: float, glacier_ir: float,
        glacier: float, deep_archive: float) -> dict[str, float]:
    # Intelligent-Tiering starts in its frequent tier, priced as STANDARD (plus a monitoring
    # fee per object, which a plan leaves out).
    return {"STANDARD": standard, "STANDARD_IA": standard_ia, "ONEZONE_IA": one_zone_ia,
            "INTELLIGENT_TIERING": standard, "GLACIER_IR": glacier_ir, "GLACIER": glacier,
            "DEEP_ARCHIVE": deep_archive}


_US = RegionPrices(
    on_demand_read_per_million=0.125, on_demand_write_per_million=0.625,
    provisioned_rcu_hour=0.00013, provisioned_wcu_hour=0.00065,
    s3_gb_month=_s3(0.023, 0.0125, 0.01, 0.004, 0.0036, 0.00099),
)

BUILT_IN_PRICES = PriceTable(
    source=BUILT_IN_SOURCE,
    date=BUILT_IN_DATE,
    regions={
        "us-east-1": _US,
        "us-west-2": _US,
        "eu-west-1": RegionPrices(
            on_demand_read_per_million=0.1415, on_demand_write_per_million=0.7068,
            provisioned_rcu_hour=0.000147, provisioned_wcu_hour=0.000735,
            s3_gb_month=_s3(0.023, 0.0125, 0.01, 0.004, 0.0036, 0.00099),
        ),
    },
)


# --- the sums ------------------------------------------------------------------------------


def on_demand_cost(units: float, per_million: float) -> float:
    """On-demand: every request unit is billed."""
    return units / 1e6 * per_million


def provisioned_cost(rate: float, seconds: float, per_unit_hour: float) -> float:
    """Provisioned: ``rate`` units a second held for the job, billed by the whole hour."""
    hours = max(1, math.ceil(seconds / SECONDS_PER_HOUR))
    return rate * hours * per_unit_hour


def storage_cost_per_month(stored_bytes: int, per_gb_month: float) -> float:
    return stored_bytes / GIB * per_gb_month


def throughput_cost(units: float, rate: float, seconds: float, prices: RegionPrices, *,
                    writes: bool) -> dict[str, Any]:
    """A job's ``units`` on an on-demand table, and on a provisioned one holding ``rate``
    units a second for the job's ``seconds``."""
    per_million, per_hour = (
        (prices.on_demand_write_per_million, prices.provisioned_wcu_hour) if writes
        else (prices.on_demand_read_per_million, prices.provisioned_rcu_hour))
    hours = max(1, math.ceil(seconds / SECONDS_PER_HOUR))
    return {
        "currency": "USD",
        "on_demand": on_demand_cost(units, per_million),
        "provisioned": provisioned_cost(rate, seconds, per_hour),
        "provisioned_basis": f"{rate:,.0f} {'WCU' if writes else 'RCU'} held {hours:,} "
                             f"hour{'s' if hours > 1 else ''}, billed by the hour",
    }


# --- --prices FILE ---------------------------------------------------------------------------


def load_prices(path: str | None) -> PriceTable:
    """The built-in prices, with the regions of the JSON file at ``path`` replacing them."""
    if path is None:
        return BUILT_IN_PRICES
    try:
        document = msgspec.json.decode(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(f"cannot read --prices {path}: {error.strerror or error}: check the "
                          "path") from None
    except msgspec.DecodeError as error:
        raise ConfigError(f"--prices {path} is not JSON ({error}): docs/OPERATIONS.md shows "
                          "its shape") from None
    if not isinstance(document, dict) or not isinstance(document.get("regions"), dict):
        raise ConfigError(f"--prices {path} needs a \"regions\" object of region -> prices")
    date = document.get("date")
    if not isinstance(date, str) or not date:
        raise ConfigError(f"--prices {path} needs a \"date\": when the prices were taken")
    regions = {name: _region(path, name, prices) for name, prices in document["regions"].items()}
    return PriceTable(
        source=str(document.get("source") or path), date=date,
        regions={**BUILT_IN_PRICES.regions, **regions},
    )


_THROUGHPUT_FIELDS = ("on_demand_read_per_million", "on_demand_write_per_million",
                      "provisioned_rcu_hour", "provisioned_wcu_hour")


def _region(path: str, name: str, prices: Any) -> RegionPrices:
    where = f"--prices {path}: regions.{name}"
    if not isinstance(prices, dict):
        raise ConfigError(f"{where} must be an object")
    values = {key: _price(f"{where}.{key}", prices.get(key)) for key in _THROUGHPUT_FIELDS}
    storage = prices.get("s3_gb_month") or {}
    if not isinstance(storage, dict):
        raise ConfigError(f"{where}.s3_gb_month must be an object of storage class -> price")
    unknown = sorted(set(storage) - set(STORAGE_CLASSES))
    if unknown:
        raise ConfigError(f"{where}.s3_gb_month: unknown storage class {unknown[0]}: use "
                          f"{', '.join(STORAGE_CLASSES)}")
    s3 = {key: _price(f"{where}.s3_gb_month.{key}", value) for key, value in storage.items()}
    return RegionPrices(**values, s3_gb_month=s3)


def _price(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where} must be a price in USD (a number, 0 or more), not {value!r}")
    return float(value)
