"""Realistic sample items for the demo, tests and benchmarks, and a fast way to load them.

Items model an orders/customers table (``pk`` = ``customer#NNNNN``, ``sk`` = ``profile`` or
``order#<date>#<seq>``) and use every common DynamoDB type: strings, integer and decimal numbers,
booleans, NULL, a map (address), a list of maps (order lines), a string set (tags), sometimes
binary, and optional attributes that are sometimes missing.

Items are in DynamoDB's low-level JSON form, as boto3's *client* takes them
(``{"total": {"N": "129.95"}}``), with one difference from the text on the wire: binary values
are ``bytes``, which the client base64-encodes itself. ``to_wire_json`` gives the exact wire
text (binary as base64), which is also what a line of an NDJSON export holds.

Command line (creates the table and fills it)::

    python -m tools.sample_data --endpoint http://127.0.0.1:8000 --table orders --items 50000
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any

from ddbpipe import codec

Item = dict[str, Any]

BATCH_SIZE = 25  # BatchWriteItem's limit on requests per call

_FIRST_NAMES = (
    "Ada",
    "Bruno",
    "Chen",
    "Dalia",
    "Emeka",
    "Fatima",
    "Giulia",
    "Hiro",
    "Ines",
    "Jonas",
    "Kavya",
    "Liam",
    "Mei",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tomás",
    "Uma",
    "Viktor",
    "Wen",
    "Yusuf",
    "Zoë",
)
_LAST_NAMES = (
    "Andersen",
    "Baptiste",
    "Castro",
    "Dubois",
    "Eriksson",
    "Fischer",
    "García",
    "Haddad",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Újvári",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhang",
)
_STREETS = (
    "Main St",
    "Harbour Rd",
    "Elm Ave",
    "Mill Lane",
    "Station Rd",
    "Kingsway",
    "Rue Lafayette",
    "Bahnhofstraße",
    "Via Roma",
    "Calle Mayor",
)
_CITIES = (
    ("Seattle", "US"),
    ("Austin", "US"),
    ("Toronto", "CA"),
    ("Dublin", "IE"),
    ("London", "GB"),
    ("Paris", "FR"),
    ("Berlin", "DE"),
    ("Milan", "IT"),
    ("Madrid", "ES"),
    ("Tokyo", "JP"),
    ("São Paulo", "BR"),
    ("Sydney", "AU"),
)
_CURRENCY = {
    "US": "USD",
    "CA": "CAD",
    "IE": "EUR",
    "GB": "GBP",
    "FR": "EUR",
    "DE": "EUR",
    "IT": "EUR",
    "ES": "EUR",
    "JP": "JPY",
    "BR": "BRL",
    "AU": "AUD",
}
_STATUSES = ("placed", "paid", "shipped", "delivered", "delivered", "delivered", "returned")
_TAGS = ("gift", "express", "fragile", "bulk", "b2b", "first-order", "promo", "subscription")
_CUSTOMER_TAGS = ("newsletter", "vip", "wholesale", "churn-risk", "beta", "referral")
_CARRIERS = ("UPS", "DHL", "FedEx", "USPS", "Royal Mail", "La Poste")
_NOTES = (
    "Leave at the back door",
    "Call before delivery",
    "Please no plastic packaging",
    "Deliver to reception, 3rd floor",
    "Fragile: glassware inside",
)
_FIRST_DAY = date(2021, 1, 1)


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _address(rng: random.Random) -> Item:
    city, country = rng.choice(_CITIES)
    address: Item = {
        "street": {"S": f"{rng.randint(1, 999)} {rng.choice(_STREETS)}"},
        "city": {"S": city},
        "postcode": {"S": f"{rng.randint(10000, 99999)}"},
        "country": {"S": country},
    }
    if rng.random() < 0.2:
        address["line2"] = {"S": f"Apt {rng.randint(1, 120)}"}
    return address


def _customer(rng: random.Random, customer: int) -> Item:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    address = _address(rng)
    since = _FIRST_DAY + timedelta(days=rng.randrange(1400))
    item: Item = {
        "pk": {"S": f"customer#{customer:05d}"},
        "sk": {"S": "profile"},
        "type": {"S": "customer"},
        "name": {"S": f"{first} {last}"},
        "email": {"S": f"{first.lower()}.{customer}@example.com"},
        "since": {"S": since.isoformat()},
        "loyalty_points": {"N": str(rng.randint(0, 25_000))},
        "vip": {"BOOL": rng.random() < 0.1},
        "address": {"M": address},
        "currency": {"S": _CURRENCY[address["country"]["S"]]},
    }
    if rng.random() < 0.7:
        item["tags"] = {"SS": sorted(rng.sample(_CUSTOMER_TAGS, rng.randint(1, 3)))}
    if rng.random() < 0.5:
        item["phone"] = {
            "S": f"+{rng.randint(1, 99)} {rng.randint(100, 999)} "
            f"{rng.randint(1_000_000, 9_999_999)}"
        }
    if rng.random() < 0.15:
        item["avatar_thumbnail"] = {"B": rng.randbytes(rng.randint(48, 96))}
    if rng.random() < 0.05:
        item["referred_by"] = {"NULL": True}
    return item


def _order(rng: random.Random, customer: int, seq: int) -> Item:
    day = _FIRST_DAY + timedelta(days=rng.randrange(1400))
    city, country = rng.choice(_CITIES)
    lines: list[Item] = []
    total = 0
    for _ in range(rng.choices((1, 2, 3), weights=(70, 25, 5))[0]):
        quantity = rng.choices((1, 2, 3, 5), weights=(70, 20, 7, 3))[0]
        price = rng.randint(199, 24_999)
        total += quantity * price
        lines.append(
            {
                "M": {
                    "sku": {"S": f"SKU-{rng.randint(0, 99_999):05d}"},
                    "qty": {"N": str(quantity)},
                    "price": {"N": _money(price)},
                }
            }
        )
    status = rng.choice(_STATUSES)
    item: Item = {
        "pk": {"S": f"customer#{customer:05d}"},
        "sk": {"S": f"order#{day.isoformat()}#{seq:06d}"},
        "status": {"S": status},
        "total": {"N": _money(total)},
        "gift": {"BOOL": rng.random() < 0.12},
        "ship_to": {
            "M": {
                "city": {"S": city},
                "country": {"S": country},
            }
        },
        "lines": {"L": lines},
    }
    if rng.random() < 0.5:
        item["tags"] = {"SS": sorted(rng.sample(_TAGS, rng.randint(1, 2)))}
    if status in ("shipped", "delivered", "returned"):
        item["carrier"] = {"S": rng.choice(_CARRIERS)}
    if rng.random() < 0.1:
        item["note"] = {"S": rng.choice(_NOTES)}
    if rng.random() < 0.1:
        item["discount"] = {"N": _money(rng.randint(100, min(total, 5_000)))}
    if rng.random() < 0.05:
        item["signature"] = {"B": rng.randbytes(24)}
    if rng.random() < 0.05:
        item["coupon"] = {"NULL": True}
    return item


def iter_items(count: int, *, seed: int = 0) -> Iterator[Item]:
    """Like ``generate_items``, one item at a time (for very large counts)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    rng = random.Random(seed)
    customers = max(1, count // 8)
    for seq in range(count):
        if seq % 8 == 0:
            # One profile per customer: customer seq // 8 gets its profile here.
            yield _customer(rng, seq // 8)
        else:
            # Orders land on random customers; seq in the sort key keeps every key unique.
            yield _order(rng, rng.randrange(customers), seq)


def generate_items(count: int, *, seed: int = 0) -> list[Item]:
    """``count`` distinct items (unique pk/sk), the same ones for the same ``seed``.

    About one in eight is a customer profile, the rest are orders spread over ``count // 8``
    partition keys. Compact wire JSON averages roughly 350 bytes per item.
    """
    return list(iter_items(count, seed=seed))


def _wire_value(value: Any) -> Any:
    ((kind, inner),) = value.items()
    if kind == "B":
        return {"B": base64.b64encode(inner).decode("ascii")}
    if kind == "BS":
        return {"BS": [base64.b64encode(b).decode("ascii") for b in inner]}
    if kind == "M":
        return {"M": {name: _wire_value(v) for name, v in inner.items()}}
    if kind == "L":
        return {"L": [_wire_value(v) for v in inner]}
    return {kind: inner}


def to_wire(item: Item) -> Item:
    """The item as DynamoDB's JSON wire form: binary values as base64 strings."""
    return {name: _wire_value(value) for name, value in item.items()}


def to_wire_json(item: Item) -> str:
    """Compact wire JSON text of an item (UTF-8 characters kept as they are)."""
    return json.dumps(to_wire(item), separators=(",", ":"), ensure_ascii=False)


def item_size(item: Item) -> int:
    """DynamoDB's billed size of an item in bytes (names + values), by ddbpipe's own rule."""
    return codec.item_size(to_wire(item))


# --- Loading into DynamoDB ---------------------------------------------------------------


def _client(endpoint: str | None) -> Any:
    import boto3
    from botocore.config import Config

    # One session per client: boto3 sessions are not thread-safe, clients are.
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        config=Config(
            retries={"mode": "standard", "max_attempts": 10},
            max_pool_connections=4,
            parameter_validation=False,
        ),
    )


def create_table(endpoint: str, table: str, *, sort_key_type: str = "S") -> None:
    """Create ``table`` (pk S HASH, sk RANGE, on-demand) and wait until it is ACTIVE."""
    client = _client(endpoint)
    client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": sort_key_type},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )


def count_items(endpoint: str, table: str) -> int:
    """How many items ``table`` holds (a Scan COUNT, every page)."""
    client = _client(endpoint)
    kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT"}
    total = 0
    while True:
        page = client.scan(**kwargs)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def drop_table(endpoint: str, table: str) -> None:
    """Delete ``table`` and wait until it is gone."""
    client = _client(endpoint)
    client.delete_table(TableName=table)
    client.get_waiter("table_not_exists").wait(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


def _write_batch(client: Any, table: str, batch: Sequence[Item]) -> None:
    pending: dict[str, Any] = {table: [{"PutRequest": {"Item": item}} for item in batch]}
    for attempt in range(12):
        reply = client.batch_write_item(RequestItems=pending)
        pending = reply.get("UnprocessedItems") or {}
        if not pending:
            return
        # Full-jitter exponential backoff before retrying what was not written.
        time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
    left = len(pending.get(table, []))
    raise RuntimeError(f"{left} items of a batch to {table} stayed unprocessed after retries")


def fill_table(endpoint: str, table: str, items: Sequence[Item], *, threads: int = 8) -> None:
    """Write ``items`` with BatchWriteItem (25 per call) from ``threads`` threads.

    Unprocessed items are retried with backoff; a batch that still fails raises, so an
    incomplete fill never passes silently.
    """
    if threads < 1:
        raise ValueError("threads must be >= 1")
    batches = [items[i : i + BATCH_SIZE] for i in range(0, len(items), BATCH_SIZE)]
    local = threading.local()

    def write(batch: Sequence[Item]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = _client(endpoint)
        _write_batch(client, table, batch)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fill") as pool:
        # list() re-raises the first failure.
        list(pool.map(write, batches))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.sample_data",
        description="Create a sample orders table in a local DynamoDB and fill it.",
    )
    parser.add_argument("--endpoint", required=True, help="DynamoDB endpoint URL")
    parser.add_argument("--table", required=True, help="table name (3+ characters)")
    parser.add_argument("--items", type=int, default=50_000, help="number of items")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=8, help="writer threads")
    parser.add_argument(
        "--existing", action="store_true", help="fill an existing table instead of creating it"
    )
    parser.add_argument(
        "--aws-credentials",
        action="store_true",
        help="use the AWS credentials of the environment instead of fake local ones",
    )
    args = parser.parse_args(argv)

    if not args.aws_credentials:
        from tools import services

        services.use_local_credentials()
    started = time.perf_counter()
    items = generate_items(args.items, seed=args.seed)
    generated = time.perf_counter()
    if not args.existing:
        create_table(args.endpoint, args.table)
    fill_table(args.endpoint, args.table, items, threads=args.threads)
    done = time.perf_counter()
    size = sum(len(to_wire_json(item).encode("utf-8")) for item in items)
    print(
        f"generated {len(items):,} items ({size / max(len(items), 1):,.0f} B average JSON) in "
        f"{generated - started:.1f} s; loaded into {args.table} in {done - generated:.1f} s "
        f"({len(items) / max(done - generated, 1e-9):,.0f} items/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
