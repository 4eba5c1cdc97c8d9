"""A deterministic generator of retail shipments and sales.

The stream imitates a chain of stores: a few items sell far more than the rest
(Zipf-like popularity), stock arrives by shipment before it is sold, and event
times drift forward with some records arriving out of order. For demos and
tests it can also emit invalid records and re-send earlier events (duplicated
event_ids), at rates the caller chooses. The same seed always gives the same
records, in the same order.

Records carry no timestamp of their own, so Kafka stamps them with the time
they are produced: the event time is the payload's ``event_time``, which is
all the pipelines keep time by (README, "Time is event time").
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core import topics

__all__ = ["GeneratedRecord", "RetailConfig", "generate_retail"]

# Kinds of broken record the generator can emit; each breaks one contract rule.
_INVALID_KINDS = (
    "not-json",
    "not-object",
    "missing-field",
    "quantity-float",
    "quantity-string",
    "quantity-bool",
    "quantity-zero",
    "empty-store",
    "time-without-offset",
    "time-garbage",
    "invalid-utf8",
    "null-value",
)


@dataclass(frozen=True)
class RetailConfig:
    """What to generate. ``start_time`` anchors event times (UTC)."""

    events: int
    stores: int = 5
    items: int = 50
    seed: int = 42
    invalid_rate: float = 0.0
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.05
    start_time: datetime = datetime(2026, 11, 1, tzinfo=timezone.utc)
    mean_gap_s: float = 20.0
    shipments_topic: str = topics.SHIPMENTS
    sales_topic: str = topics.SALES

    def __post_init__(self) -> None:
        from core.errors import ConfigError

        if self.events < 0:
            raise ConfigError(f"--events must be >= 0, got {self.events}")
        if self.stores < 1 or self.items < 1:
            raise ConfigError("--stores and --items must each be at least 1")
        for name in ("invalid_rate", "duplicate_rate", "out_of_order_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")


@dataclass(frozen=True)
class GeneratedRecord:
    """One record to send: topic, key, value bytes (value None = a tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None
    kind: str  # "shipment", "sale", "duplicate" or "invalid:<why>"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def _invalid_value(kind: str, event: dict[str, object]) -> bytes | None:
    broken = dict(event)
    if kind == "not-json":
        return b"{this is not json"
    if kind == "not-object":
        return json.dumps([broken]).encode()
    if kind == "missing-field":
        broken.pop("item_id")
    elif kind == "quantity-float":
        broken["quantity"] = 2.5
    elif kind == "quantity-string":
        broken["quantity"] = "2"
    elif kind == "quantity-bool":
        broken["quantity"] = True
    elif kind == "quantity-zero":
        broken["quantity"] = 0
    elif kind == "empty-store":
        broken["store_id"] = ""
    elif kind == "time-without-offset":
        broken["event_time"] = str(broken["event_time"]).rstrip("Z")
    elif kind == "time-garbage":
        broken["event_time"] = "yesterday"
    elif kind == "invalid-utf8":
        return b'{"event_id": "\xff\xfe"}'
    elif kind == "null-value":
        return None
    return json.dumps(broken).encode()


def generate_retail(config: RetailConfig) -> Iterator[GeneratedRecord]:
    """Yield ``config.events`` records (valid, invalid and duplicates together)."""
    rng = random.Random(config.seed)
    stores = [f"store-{i:03d}" for i in range(1, config.stores + 1)]
    items = [f"item-{i:04d}" for i in range(1, config.items + 1)]
    # Zipf-like popularity: the item of rank r sells about 1/r as often as the top one.
    popularity = [1.0 / (rank**1.1) for rank in range(1, len(items) + 1)]
    stock: dict[tuple[str, str], int] = {}
    clock = config.start_time
    sent: list[GeneratedRecord] = []  # valid records, candidates for re-sending
    pending: list[GeneratedRecord] = []  # a sale queued behind its restocking shipment

    def new_event(store: str, item: str, quantity: int, moment: datetime) -> dict[str, object]:
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "store_id": store,
            "item_id": item,
            "quantity": quantity,
            "event_time": _rfc3339(moment),
        }

    produced = 0
    while produced < config.events:
        if pending:
            record = pending.pop()
        elif sent and rng.random() < config.duplicate_rate:
            original = sent[rng.randrange(len(sent))]
            record = GeneratedRecord(original.topic, original.key, original.value, "duplicate")
        else:
            clock += timedelta(seconds=rng.expovariate(1.0 / config.mean_gap_s))
            moment = clock
            if rng.random() < config.out_of_order_rate:
                moment = clock - timedelta(seconds=rng.uniform(60, 3600))
            store = rng.choice(stores)
            item = rng.choices(items, weights=popularity)[0]
            key = f"{store}:{item}".encode()
            quantity = 1 if rng.random() < 0.6 else rng.randint(2, 5)
            on_hand = stock.get((store, item), 0)
            sale = GeneratedRecord(
                config.sales_topic, key, json.dumps(new_event(store, item, quantity, moment)).encode(), "sale"
            )
            if rng.random() < config.invalid_rate:
                kind = rng.choice(_INVALID_KINDS)
                topic = rng.choice((config.shipments_topic, config.sales_topic))
                event = new_event(store, item, quantity, moment)
                record = GeneratedRecord(topic, key, _invalid_value(kind, event), f"invalid:{kind}")
            elif on_hand < quantity and rng.random() < 0.95:
                # Restock ahead of the sale: a shipment a little earlier in event time.
                restock = rng.randint(10, 60) + quantity
                shipped_at = moment - timedelta(seconds=rng.uniform(1, 300))
                stock[(store, item)] = on_hand + restock - quantity
                record = GeneratedRecord(
                    config.shipments_topic,
                    key,
                    json.dumps(new_event(store, item, restock, shipped_at)).encode(),
                    "shipment",
                )
                pending.append(sale)
            else:
                # Sometimes stock runs short: on_hand goes negative, as in a real shop.
                stock[(store, item)] = on_hand - quantity
                record = sale
        if record.kind in ("shipment", "sale"):
            sent.append(record)
        produced += 1
        yield record
