"""The streaming job's warehouse commits, replayed alone: how long a bundle waits for its commit.

The retail stream commits one snapshot per bundle of its state step (six
tables: the three views, the state, the remembered ids, the offsets), and the
bundle ends only when that commit is durable, so the commit's time is part of
every event's produce-to-visible latency. End-to-end runs on a shared 2-core
machine vary too much to show a change of a few hundred milliseconds in some
commits; this replays the same commits without a runner, so variants can be
compared side by side, in one run:

- *before*: the remembered ids handed over as one dict per id, and the views
  compacted inline by the commit that takes them past the file limit;
- *id columns*: the ids as columns (``transforms.checkpoint.IdColumns``);
- *after*: id columns, and compaction in the shared writer's background
  thread (``warehouse.writer.BackgroundCompactor``), as the product runs.

Each bundle is shaped like one of a stream at ``--events-per-bundle`` events
(5 stores x 50 items; every key changes; ~1% dead letters; one id per event;
8 partitions x 4 shards of offsets). Writes ``bench/results/stream_commits.md``.
Run: ``python -m bench.stream_commits``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from bench.machine import cpu_model
from bench.warehouse import percentile
from transforms.checkpoint import IdColumns, id_row
from warehouse.writer import GroupCommitter, Warehouse

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "stream_commits.md"
KEYS = [(f"store-{s}", f"item-{i:02d}") for s in range(5) for i in range(50)]
PARTITIONS = [(topic, p) for topic in ("shipments", "sales") for p in range(4)]
SHARDS = 4
HOUR_US = 3_600_000_000
T0_US = 1_796_600_000_000_000


def _bundles(count: int, events: int, id_columns: bool) -> Iterator[dict[str, Any]]:
    """One stream's bundles, as the state step hands them to the warehouse."""
    totals = {key: [0, 0, 0] for key in KEYS}  # shipped, sold, events
    windows: dict[tuple[int, tuple[str, str]], list[int]] = {}
    offset = 0
    for n in range(1, count + 1):
        now = T0_US + n * 1_000_000
        ids: IdColumns | list[dict[str, Any]] = IdColumns() if id_columns else []
        touched: set[tuple[int, tuple[str, str]]] = set()
        for e in range(events):
            key = KEYS[(n * 7919 + e) % len(KEYS)]
            kind = "shipment" if e % 20 == 0 else "sale"
            event_id = f"{kind}-{n}-{e}"
            quantity = 1 + e % 5
            totals[key][0 if kind == "shipment" else 1] += quantity
            totals[key][2] += 1
            if kind == "sale":
                start = now - now % HOUR_US
                window = windows.setdefault((start, key), [0, 0])
                window[0] += quantity
                window[1] += 1
                touched.add((start, key))
            if isinstance(ids, IdColumns):
                ids.add(key, kind, event_id, now, quantity)
            else:
                ids.append(id_row(key, kind, event_id, now, quantity))
        stamp = dt.datetime.fromtimestamp(now / 1e6, dt.timezone.utc)
        letters = [
            {
                "source_topic": "sales",
                "partition": offset % 4,
                "offset": offset + k,
                "error": "field 'quantity' must be an integer, got string",
                "payload": b'{"event_id": "x", "quantity": "three"}',
            }
            for k in range(events // 100)
        ]
        offset += events
        yield {
            "inventory": [
                {
                    "store_id": key[0],
                    "item_id": key[1],
                    "on_hand": shipped - sold,
                    "shipped": shipped,
                    "sold": sold,
                    "events": count_,
                    "last_event_time": stamp,
                }
                for key, (shipped, sold, count_) in totals.items()
            ],
            "sales_by_window": [
                {
                    "window_start": dt.datetime.fromtimestamp(start / 1e6, dt.timezone.utc),
                    "window_end": dt.datetime.fromtimestamp((start + HOUR_US) / 1e6, dt.timezone.utc),
                    "store_id": key[0],
                    "item_id": key[1],
                    "units": windows[(start, key)][0],
                    "sales": windows[(start, key)][1],
                }
                for start, key in sorted(touched)
            ],
            "dead_letters": letters,
            "_inventory_state": [
                {
                    "store_id": key[0],
                    "item_id": key[1],
                    "expired_before": now - 7 * 24 * HOUR_US,
                    "state": json.dumps({"inventory": totals[key], "sales": {"windows": {str(now): [n, n]}}}),
                    "version": n,
                }
                for key in KEYS
            ],
            "_inventory_ids": ids.table() if isinstance(ids, IdColumns) else ids,
            "_resume_offsets": [
                {
                    "pipeline": "inventory",
                    "topic": topic,
                    "partition": partition,
                    "shard": shard,
                    "run": 1,
                    "shards": SHARDS,
                    "start_offset": 0,
                    "next_offset": offset // len(PARTITIONS),
                    "pending": "[]",
                    "version": n,
                }
                for topic, partition in PARTITIONS
                for shard in range(SHARDS)
            ],
        }


def run_variant(root: Path, bundles: int, events: int, *, id_columns: bool, background: bool) -> dict[str, Any]:
    """Commit one stream's bundles; the wall time of each commit call and the process CPU in all."""
    batches = list(_bundles(bundles, events, id_columns))  # made before the clock starts
    writer = GroupCommitter(Warehouse(root))
    if not background:
        writer.warehouse.compact_later = None
    waits: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        writer.commit_many(batch)
        waits.append(time.perf_counter() - t)
    committed_wall = time.perf_counter() - wall0
    writer.close()  # waits for a background merge still running
    cpu = time.process_time() - cpu0
    snap = writer.warehouse.current()
    return {
        "waits": waits,
        "wall": committed_wall,
        "cpu": cpu,
        "files": {view: len(files) for view, files in sorted(snap.files.items())},
        "lost_races": writer.warehouse.lost_races,
    }


def _answers(root: Path) -> dict[str, Any]:
    """Every view's rows as the reader answers them (for checking the variants agree)."""
    from warehouse.reader import Reader

    reader = Reader(root)
    try:
        return {
            view: reader.query(f"SELECT * FROM {view} ORDER BY ALL").to_pylist()
            for view in ("inventory", "sales_by_window", "dead_letters")
        }
    finally:
        reader.close()


def _ids(root: Path) -> tuple[int, int]:
    """Rows and distinct ids of ``_inventory_ids`` in the newest snapshot (a table readers are not shown)."""
    files = Warehouse(root).current().paths("_inventory_ids")
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT count(*), count(DISTINCT event_id) FROM read_parquet($files)", {"files": files})
        total, distinct = rows.fetchall()[0]
        return int(total), int(distinct)
    finally:
        con.close()


VARIANTS: dict[str, dict[str, bool]] = {
    "before": {"id_columns": False, "background": False},
    "id columns": {"id_columns": True, "background": False},
    "after": {"id_columns": True, "background": True},
}


def main(argv: list[str] | None = None) -> int:
    """Run every variant ``--rounds`` times, in turn, and write ``bench/results/stream_commits.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=300, help="bundles (commits) per stream")
    parser.add_argument("--events-per-bundle", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, in turn")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    checks: list[str] = []
    with tempfile.TemporaryDirectory(prefix="beamline-bench-commits-") as tmp:
        reference: dict[str, Any] | None = None
        for round_no in range(args.rounds):
            for name, flags in VARIANTS.items():
                root = Path(tmp) / f"{name.replace(' ', '-')}-{round_no}"
                figures = run_variant(root, args.bundles, args.events_per_bundle, **flags)
                results[name].append(figures)
                print(
                    f"{name} (round {round_no + 1}): commit p50 {statistics.median(figures['waits']) * 1000:.0f} ms, "
                    f"p99 {percentile(figures['waits'], 99) * 1000:.0f} ms, cpu {figures['cpu']:.1f} s",
                    flush=True,
                )
                answers = _answers(root)
                ids = _ids(root)
                if reference is None:
                    reference = {"answers": answers, "ids": ids}
                same = answers == reference["answers"] and ids == reference["ids"]
                verdict = "equal to" if same else "DIFFER from"
                checks.append(f"{name} (round {round_no + 1}): views and ids {verdict} the first run's")
    text = _report(args, results, checks, load_before, os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0 if all("equal" in c for c in checks) else 1


def _report(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    checks: list[str],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    import pyarrow

    def ms(x: float) -> str:
        return f"{x * 1000:,.0f}"

    lines = [
        "# The streaming job's commits, replayed alone",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}",
        "- load average (1, 5, 15 min) before / after: "
        + ", ".join(f"{x:.1f}" for x in load_before)
        + " / "
        + ", ".join(f"{x:.1f}" for x in load_after),
        f"- Python {platform.python_version()}, duckdb {duckdb.__version__}, pyarrow {pyarrow.__version__}",
        f"- command: `python -m bench.stream_commits --bundles {args.bundles} "
        f"--events-per-bundle {args.events_per_bundle} --rounds {args.rounds}`",
        f"- workload: {args.bundles} bundles of {args.events_per_bundle:,} events, each one snapshot of six tables "
        f"(inventory {len(KEYS)} rows, sales_by_window, dead_letters {args.events_per_bundle // 100}, "
        f"_inventory_state {len(KEYS)}, _inventory_ids {args.events_per_bundle:,}, "
        f"_resume_offsets {len(PARTITIONS) * SHARDS}); the default limit of 16 files per view",
        "",
        "*Commit* is the wall time of one `GroupCommitter.commit_many` call: what the bundle waits for. "
        "*CPU* is the process's, the background merges included (the last one finished before the clock stops).",
        "",
        "| variant | round | commit p50 ms | p90 ms | p99 ms | max ms | all commits, wall s | CPU s | lost races |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        for n, r in enumerate(runs, 1):
            w = r["waits"]
            lines.append(
                f"| {name} | {n} | {ms(statistics.median(w))} | {ms(percentile(w, 90))} | {ms(percentile(w, 99))} "
                f"| {ms(max(w))} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['lost_races']} |"
            )
    best: dict[str, dict[str, float]] = {
        name: {
            "p99": min(percentile(r["waits"], 99) for r in runs),
            "p50": min(statistics.median(r["waits"]) for r in runs),
            "cpu": min(r["cpu"] for r in runs),
        }
        for name, runs in results.items()
    }
    before, after = best["before"], best["after"]
    lines += [
        "",
        f"- commit p99, after / before (best round of each): **{after['p99'] / before['p99']:.2f}x** "
        f"({ms(after['p99'])} ms against {ms(before['p99'])} ms)",
        f"- commit p50, after / before: **{after['p50'] / before['p50']:.2f}x**",
        f"- process CPU, after / before: **{after['cpu'] / before['cpu']:.2f}x**",
        f"- files per view at the end (after, round 1): {results['after'][0]['files']}",
        *[f"- {c}" for c in checks],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
