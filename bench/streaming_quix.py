"""Streaming baseline: the inventory app written with Quix Streams.

Run by ``bench.streaming`` with the bench virtualenv's interpreter (Quix
Streams pins confluent-kafka below the version Beamline pins, so it cannot
share Beamline's virtualenv)::

    python -m bench.streaming_quix --bootstrap HOST:PORT --shipments T --sales T --output T --state-dir DIR

The app is what the Quix Streams documentation suggests for a keyed
aggregate: one StreamingDataFrame per input topic, ``concat`` to process both
in timestamp order, a stateful ``apply`` whose state (RocksDB, backed by a
changelog topic) lives per message key, and ``to_topic`` that publishes every
changed inventory row to an output topic. "Visible" for it means: the updated
row is readable from the output topic (at-least-once processing, the default,
so a row is readable as soon as the producer delivers it; state and offsets are
committed every ``--commit-interval`` seconds).

Two differences from Beamline, both in the baseline's favour: state is keyed by
the record key (the producers here key records by ``<store_id>:<item_id>``; the
contract says pipelines must not rely on it, Beamline does not, and a
``group_by`` would add a repartition topic), and it keeps no dead letters and no
sales_by_window. Validation, dedupe per topic and the totals are the same as the
plain loop's (:mod:`bench.baseline_inventory`).
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from bench.baseline_inventory import parse_event

__all__ = ["build_app", "main"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _apply(value: tuple[bool, bytes | None], state: Any) -> dict[str, Any] | None:
    """One record into the key's state; the new inventory row, or None if nothing changed."""
    is_sale, raw = value
    event = parse_event(raw)
    if event is None:
        return None
    event_id, store, item, quantity, micros = event
    seen = ("x:" if is_sale else "s:") + event_id
    if state.exists(seen):
        return None
    state.set(seen, 1)
    totals = state.get("totals") or [0, 0, 0, micros]
    totals[1 if is_sale else 0] += quantity
    totals[2] += 1
    totals[3] = max(totals[3], micros)
    state.set("totals", totals)
    return {
        "store_id": store,
        "item_id": item,
        "on_hand": totals[0] - totals[1],
        "shipped": totals[0],
        "sold": totals[1],
        "events": totals[2],
        "last_event_time": (_EPOCH + timedelta(microseconds=totals[3])).isoformat(),
    }


def build_app(args: argparse.Namespace) -> Any:
    """The Quix Streams Application with the inventory dataframe attached."""
    from quixstreams import Application

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval,
        loglevel="WARNING",
    )
    shipments = app.topic(args.shipments, key_deserializer="bytes", value_deserializer="bytes")
    sales = app.topic(args.sales, key_deserializer="bytes", value_deserializer="bytes")
    output = app.topic(args.output, key_serializer="bytes", value_serializer="json")
    shipped = app.dataframe(shipments).apply(lambda v: (False, v))
    sold = app.dataframe(sales).apply(lambda v: (True, v))
    rows = shipped.concat(sold).apply(_apply, stateful=True).filter(lambda row: row is not None)
    rows.to_topic(output)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the app until SIGTERM/SIGINT (Quix Streams stops cleanly on both)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--shipments", required=True)
    parser.add_argument("--sales", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--group", default="bench-quix-inventory")
    parser.add_argument("--commit-interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import quixstreams

    print(json.dumps({"quixstreams": quixstreams.__version__}), flush=True)
    build_app(args).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
