"""An independent recompute of the views from the log, for end-to-end tests.

Written from DESIGN.md alone, in plain Python, without importing Beamline's
transforms: if the pipelines and this file disagree, one of them misreads the
contract. Records are read straight from the topics with kafka-python.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kafka import KafkaConsumer, TopicPartition

RawRecord = tuple[str, int, int, bytes | None]  # topic, partition, offset, value


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120) -> list[RawRecord]:
    """Every record of ``topic`` up to the end offsets seen now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        out: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end offsets")
            for batch in consumer.poll(timeout_ms=500, max_records=50_000).values():
                out.extend((r.topic, r.partition, r.offset, r.value) for r in batch)
        return out
    finally:
        consumer.close()


# Views store quantities and totals as 64-bit integers (DESIGN.md sets no other bound).
MAX_QUANTITY = 2**63 - 1


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: RFC 8259 has no such numbers


def _no_duplicate_names(pairs: list[tuple[str, object]]) -> dict:
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("duplicate name")  # RFC 8259: readers disagree on which one wins
    return dict(pairs)


class _LongInteger:
    """A JSON integer too long for int() (Python refuses > 4300 digits); valid only where ignored."""


def _int_or_long(text: str) -> int | _LongInteger:
    return int(text) if len(text) < 100 else _LongInteger()


def _utf8_text(value: object) -> bool:
    """A non-empty string that UTF-8 can carry (no lone surrogate from a \\ud800 escape)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_event(value: bytes | None) -> dict | None:
    """The event if it obeys the contract, else None."""
    if value is None:
        return None
    try:
        event = json.loads(
            value.decode("utf-8"),
            parse_constant=_no_constant,
            object_pairs_hook=_no_duplicate_names,
            parse_int=_int_or_long,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    for name in ("event_id", "store_id", "item_id", "event_time"):
        if not _utf8_text(event.get(name)):
            return None
    quantity = event.get("quantity")
    if type(quantity) is not int or not 0 < quantity <= MAX_QUANTITY:
        return None
    text = event["event_time"]
    # RFC 3339 section 5.6: "T" between date and time (the space of its note is not the grammar).
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", text, re.ASCII):
        return None
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # no such date, or out of range once moved to UTC
        return None
    event["_time"] = moment
    return event


@dataclass
class Truth:
    inventory: dict[tuple[str, str], dict]
    sales_by_window: dict[tuple[datetime, str, str], int]
    dead_letters: set[tuple[str, int, int]]
    applied: int
    duplicates: int
    # Why each valid record that was not applied is a dead letter: "reused" or "overflow".
    refused: dict[tuple[str, int, int], str] = field(default_factory=dict)


def recompute_retail(shipments: list[RawRecord], sales: list[RawRecord], window_s: int = 3600) -> Truth:
    """Inventory, hourly sales and dead letters exactly as the contract defines them.

    An event is (topic, store_id, item_id, event_id). Kafka orders a topic only
    within a partition; this recompute takes a topic's records partition by
    partition, each in offset order (the rule the README states for an event
    whose records sit in several partitions). The first record of an event
    counts; a later one with the same quantity and event_time is a re-send,
    one with another quantity or event_time a dead letter. A record that would
    take its key's shipped or sold total past a 64-bit integer is a dead letter
    too (the event is still known: its re-sends are re-sends).
    """
    inventory: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"shipped": 0, "sold": 0, "events": 0, "last_event_time": None}
    )
    windows: dict[tuple[datetime, str, str], int] = defaultdict(int)
    dead: set[tuple[str, int, int]] = set()
    refused: dict[tuple[str, int, int], str] = {}
    applied = duplicates = 0
    for records, column in ((shipments, "shipped"), (sales, "sold")):
        first_seen: dict[tuple[str, str, str, str], tuple[int, datetime]] = {}
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for topic, partition, offset, value in sorted(records, key=lambda r: (r[1], r[2])):
            event = parse_event(value)
            if event is None:
                dead.add((topic, partition, offset))
                continue
            key = (event["store_id"], event["item_id"])
            identity = (topic, *key, event["event_id"])
            content = (event["quantity"], event["_time"])
            if identity in first_seen:
                if first_seen[identity] == content:
                    duplicates += 1
                else:
                    dead.add((topic, partition, offset))
                    refused[(topic, partition, offset)] = "reused"
                continue
            first_seen[identity] = content
            if totals[key] + event["quantity"] > MAX_QUANTITY:
                dead.add((topic, partition, offset))
                refused[(topic, partition, offset)] = "overflow"
                continue
            totals[key] += event["quantity"]
            applied += 1
            row = inventory[key]
            row[column] += event["quantity"]
            row["events"] += 1
            if row["last_event_time"] is None or event["_time"] > row["last_event_time"]:
                row["last_event_time"] = event["_time"]
            if column == "sold":
                epoch = event["_time"].timestamp()
                start = datetime.fromtimestamp(math.floor(epoch / window_s) * window_s, timezone.utc)
                windows[(start, event["store_id"], event["item_id"])] += event["quantity"]
    for row in inventory.values():
        row["on_hand"] = row["shipped"] - row["sold"]
    return Truth(dict(inventory), dict(windows), dead, applied, duplicates, refused)


def recompute_word_counts(lines: list[RawRecord]) -> tuple[dict[str, int], set[tuple[str, int, int]]]:
    counts: dict[str, int] = defaultdict(int)
    dead: set[tuple[str, int, int]] = set()
    for topic, partition, offset, value in lines:
        try:
            text = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            dead.add((topic, partition, offset))
            continue
        for word in re.findall(r"\w+", text.lower()):
            counts[word] += 1
    return dict(counts), dead
