"""Streaming baseline: one kafka-python consumer loop that keeps the inventory view.

Run by ``bench.streaming`` as ``python -m bench.streaming_plain --bootstrap HOST:PORT
--warehouse DIR --shipments T --sales T`` until SIGTERM. It reads both topics
from the earliest offsets, validates and dedupes each record
(:class:`bench.baseline_inventory.InventoryTable`), and upserts the changed
rows into the same warehouse format Beamline writes (``transforms.sinks.Warehouse``)
at most every ``--commit-every`` seconds, so the read side sees its answer
exactly as it sees Beamline's and latency is measured the same way.

This is what a careful engineer would write by hand without a framework: no
dead letters, no sales_by_window, no restart story beyond "replay from the
start" (the versioned upserts make that safe, as for Beamline).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

from bench.baseline_inventory import InventoryTable
from bench.consumers import plain_consumer

__all__ = ["main", "run"]


def run(bootstrap: str, warehouse: Path, shipments: str, sales: str, commit_every_s: float) -> dict[str, int]:
    """Consume and commit until SIGTERM/SIGINT; return counters."""

    from warehouse.writer import Warehouse

    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    store = Warehouse(warehouse)
    consumer, _ = plain_consumer(bootstrap, [shipments, sales])
    table = InventoryTable()
    commits = 0
    last_commit = time.monotonic()
    try:
        while not stopping:
            for tp, records in consumer.poll(timeout_ms=20).items():
                is_sale = tp.topic == sales
                for record in records:
                    table.apply(is_sale, record.value)
            now = time.monotonic()
            if table.dirty and now - last_commit >= commit_every_s:
                store.commit("inventory", table.take_dirty_rows())
                commits += 1
                last_commit = now
        if table.dirty:
            store.commit("inventory", table.take_dirty_rows())
            commits += 1
    finally:
        consumer.close(autocommit=False)
        store.close()
    return {
        "applied": table.applied,
        "invalid": table.invalid,
        "duplicates": table.duplicates,
        "keys": len(table.totals),
        "commits": commits,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (a subprocess of ``bench.streaming``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--shipments", required=True)
    parser.add_argument("--sales", required=True)
    parser.add_argument("--commit-every", type=float, default=0.1, help="seconds between warehouse commits")
    args = parser.parse_args(argv)
    counters = run(args.bootstrap, args.warehouse, args.shipments, args.sales, args.commit_every)
    print("RESULT " + json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
