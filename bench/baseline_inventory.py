"""The inventory view in plain Python, for the streaming baselines.

Shared by the plain kafka-python loop (``bench.streaming_plain``) and the Quix
Streams app (``bench.streaming_quix``), so both baselines validate records and
apply events exactly as the contract in DESIGN.md says, and as Beamline does:
invalid records are skipped, an event_id is applied once per topic, and each
(store_id, item_id) keeps shipped, sold, events and last_event_time.

Standard library only: the Quix Streams app runs in its own virtualenv (its
confluent-kafka pin conflicts with Beamline's), which has none of Beamline's
dependencies.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

__all__ = ["Event", "InventoryTable", "parse_event"]

_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", re.ASCII)

# event_id, store_id, item_id, quantity, event time in microseconds since the epoch
Event = tuple[str, str, str, int, int]
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def parse_event(value: bytes | None) -> Event | None:
    """The event in a record value, or None if the record breaks the contract."""
    if value is None:
        return None
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    event_id, store, item, when = obj.get("event_id"), obj.get("store_id"), obj.get("item_id"), obj.get("event_time")
    quantity = obj.get("quantity")
    if not (type(event_id) is str and event_id and type(store) is str and store and type(item) is str and item):
        return None
    if type(quantity) is not int or quantity <= 0 or type(when) is not str or not _TIME.fullmatch(when):
        return None
    try:
        moment = datetime.fromisoformat(when.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    delta = moment - _EPOCH
    return event_id, store, item, quantity, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class InventoryTable:
    """Totals per (store_id, item_id), each event_id applied once per topic; tracks changed keys."""

    def __init__(self) -> None:
        self.seen: dict[bool, set[str]] = {True: set(), False: set()}  # is_sale -> event_ids
        # key -> [shipped, sold, events, last_event_time µs]
        self.totals: dict[tuple[str, str], list[int]] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.applied = 0
        self.invalid = 0
        self.duplicates = 0

    def apply(self, is_sale: bool, value: bytes | None) -> bool:
        """Apply one record; True if it changed the view."""
        event = parse_event(value)
        if event is None:
            self.invalid += 1
            return False
        event_id, store, item, quantity, micros = event
        ids = self.seen[is_sale]
        if event_id in ids:
            self.duplicates += 1
            return False
        ids.add(event_id)
        key = (store, item)
        row = self.totals.get(key)
        if row is None:
            row = self.totals[key] = [0, 0, 0, micros]
        row[1 if is_sale else 0] += quantity
        row[2] += 1
        if micros > row[3]:
            row[3] = micros
        self.dirty.add(key)
        self.applied += 1
        return True

    def take_dirty_rows(self) -> list[dict[str, object]]:
        """Rows of the inventory view for the keys changed since the last call."""
        rows = []
        for key in sorted(self.dirty):
            shipped, sold, events, micros = self.totals[key]
            rows.append(
                {
                    "store_id": key[0],
                    "item_id": key[1],
                    "on_hand": shipped - sold,
                    "shipped": shipped,
                    "sold": sold,
                    "events": events,
                    "last_event_time": _EPOCH + timedelta(microseconds=micros),
                }
            )
        self.dirty.clear()
        return rows
