"""Warehouse benchmark: point-lookup latency and upsert throughput on 1M rows, and concurrent writers.

Goals (issue 4): lookup p99 under 20 ms on a 1M-row inventory view; upserts at
least 200k rows/s. Issue 21: at least 50 small commits/s in total from 4
writer processes committing to one warehouse at once (no lock: they race for
each snapshot id and the losers retry). Writes the figures, the machine and
the date to ``bench/results/warehouse.md``. Run: ``python -m bench.warehouse``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from bench.machine import cpu_model
from readside.query import run_query
from warehouse.reader import Reader
from warehouse.writer import Warehouse

__all__ = ["main", "percentile"]

RESULTS = Path(__file__).parent / "results" / "warehouse.md"
STORES = 1000
ITEMS = 1000


def _inventory(n: int, version: int, offset: int = 0) -> pa.Table:
    """``n`` inventory rows for keys offset..offset+n, all at ``version`` events."""
    idx = range(offset, offset + n)
    when = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)
    return pa.table(
        {
            "store_id": [f"store-{i % STORES:04d}" for i in idx],
            "item_id": [f"item-{(i // STORES) % ITEMS:04d}" for i in idx],
            "on_hand": pa.array([version] * n, pa.int64()),
            "shipped": pa.array([version] * n, pa.int64()),
            "sold": pa.array([0] * n, pa.int64()),
            "events": pa.array([version] * n, pa.int64()),
            "last_event_time": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def percentile(values: list[float], p: float) -> float:
    """The ``p``th percentile of ``values`` (the nearest sample, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _reader_loop(root: str, stop_at: float, out: mp.Queue) -> None:
    queries = errors = torn = 0
    reader = Reader(root)
    while time.monotonic() < stop_at:
        try:
            answer = reader.query("SELECT min(events), max(events) FROM inventory WHERE store_id = $1", ["store-0001"])
            lo, hi = answer.column(0)[0].as_py(), answer.column(1)[0].as_py()
            queries += 1
            torn += lo != hi
        except Exception as e:
            errors += 1
            if errors == 1:
                print(f"reader error: {e}", flush=True)
    out.put((queries, errors, torn))


def _writer_loop(root: str, writer: int, commits: int, start_at: float, out: mp.Queue) -> None:
    wh = Warehouse(root)
    while time.monotonic() < start_at:  # every writer starts at once
        time.sleep(0.001)
    lat = []
    t0 = time.perf_counter()
    for n in range(commits):
        t = time.perf_counter()
        # A small commit: 10 new words, as a busy stream's bundle would bring.
        wh.commit("word_counts", [{"word": f"w{writer}-{n}-{j}", "count": 1} for j in range(10)])
        lat.append(time.perf_counter() - t)
    out.put((time.perf_counter() - t0, wh.lost_races, lat))
    wh.close()


def concurrent_writers(writers: int, commits: int) -> dict[str, float]:
    """``writers`` processes commit ``commits`` small batches each to one new warehouse at once."""
    with tempfile.TemporaryDirectory(prefix="beamline-bench-") as tmp:
        root = str(Path(tmp) / "warehouse")
        Warehouse(root).close()
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        start_at = time.monotonic() + 5.0  # after every process has imported and opened the warehouse
        procs = [ctx.Process(target=_writer_loop, args=(root, w, commits, start_at, out)) for w in range(writers)]
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
        lat = [x for r in results for x in r[2]]
        snapshots = len(os.listdir(Path(root) / "snapshots"))
    assert snapshots > writers * commits, snapshots  # one per commit, the empty first one and compactions
    return {
        "writers_commits_per_s": writers * commits / max(r[0] for r in results),
        "writers_lost_races_per_commit": sum(r[1] for r in results) / (writers * commits),
        "writers_commit_p50_ms": statistics.median(lat) * 1000,
        "writers_commit_p99_ms": percentile(lat, 99) * 1000,
        "writers": writers,
        "writers_commits": commits,
    }


def run(rows: int, lookups: int) -> dict[str, float]:
    """Build a ``rows``-row inventory view, then time upserts and lookups."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="beamline-bench-") as tmp:
        wh = Warehouse(Path(tmp) / "warehouse")
        initial = _inventory(rows, 1)
        t0 = time.perf_counter()
        wh.commit("inventory", initial)
        figures["initial_load_rows_per_s"] = rows / (time.perf_counter() - t0)

        # Upserts that replace existing keys with a higher version, 100k rows per commit.
        batch = 100_000
        t0 = time.perf_counter()
        done = 0
        for k in range(5):
            wh.commit("inventory", _inventory(batch, 2 + k, offset=k * batch))
            done += batch
        figures["upsert_rows_per_s"] = done / (time.perf_counter() - t0)

        # A replayed batch: every row is already stored, nothing is written.
        t0 = time.perf_counter()
        result = wh.commit("inventory", _inventory(batch, 2, offset=0))
        assert result.snapshot_id is None
        figures["replay_100k_s"] = time.perf_counter() - t0

        # Small streaming-style commits of 1,000 rows on the 1M-row view.
        small = []
        for k in range(30):
            t0 = time.perf_counter()
            wh.commit("inventory", _inventory(1000, 100 + k, offset=(k * 7919) % (rows - 1000)))
            small.append(time.perf_counter() - t0)
        figures["commit_1k_p50_ms"] = statistics.median(small) * 1000
        figures["commit_1k_p99_ms"] = percentile(small, 99) * 1000
        figures["files_in_view"] = len(wh.current().files["inventory"])

        rng = random.Random(7)
        reader = Reader(wh.root)
        reader.lookup_inventory("store-0000", "item-0000")  # opens the snapshot once
        lat = []
        for _ in range(lookups):
            i = rng.randrange(rows)
            store, item = f"store-{i % STORES:04d}", f"item-{(i // STORES) % ITEMS:04d}"
            t0 = time.perf_counter()
            row = reader.lookup_inventory(store, item)
            lat.append(time.perf_counter() - t0)
            assert row is not None and row["store_id"] == store
        figures["lookup_p50_ms"] = statistics.median(lat) * 1000
        figures["lookup_p99_ms"] = percentile(lat, 99) * 1000
        reader.close()

        # After compaction into one sorted file.
        wh.compact("inventory")
        reader = Reader(wh.root)
        reader.lookup_inventory("store-0000", "item-0000")
        lat = []
        for _ in range(lookups):
            i = rng.randrange(rows)
            t0 = time.perf_counter()
            reader.lookup_inventory(f"store-{i % STORES:04d}", f"item-{(i // STORES) % ITEMS:04d}")
            lat.append(time.perf_counter() - t0)
        figures["lookup_compacted_p50_ms"] = statistics.median(lat) * 1000
        figures["lookup_compacted_p99_ms"] = percentile(lat, 99) * 1000
        reader.close()

        # One-shot query as `beamline query` runs it: open snapshot, sandbox, answer.
        one = []
        for _ in range(20):
            t0 = time.perf_counter()
            run_query("SELECT * FROM inventory WHERE store_id = $1 AND item_id = $2", wh.root, params=["a", "b"])
            one.append(time.perf_counter() - t0)
        figures["one_shot_query_p50_ms"] = statistics.median(one) * 1000

        # Four reader processes while the writer commits 50 small batches.
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        # Readers and writer share a fixed window (a monotonic clock is system-wide on Linux).
        stop_at = time.monotonic() + 10.0
        procs = [ctx.Process(target=_reader_loop, args=(str(wh.root), stop_at, out)) for _ in range(4)]
        for p in procs:
            p.start()
        lat = []
        version = 1000
        while time.monotonic() < stop_at - 1:
            version += 1
            t0 = time.perf_counter()
            # Every key of store-0001 moves to the same version in one commit.
            table = _inventory(ITEMS, version).set_column(0, "store_id", pa.array(["store-0001"] * ITEMS))
            table = table.set_column(1, "item_id", pa.array([f"item-{i:04d}" for i in range(ITEMS)]))
            wh.commit("inventory", table)
            lat.append(time.perf_counter() - t0)
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
        figures["concurrent_commits"] = len(lat)
        figures["concurrent_commit_p50_ms"] = statistics.median(lat) * 1000
        figures["concurrent_reader_queries"] = sum(r[0] for r in results)
        figures["concurrent_reader_errors"] = sum(r[1] for r in results)
        figures["concurrent_torn_answers"] = sum(r[2] for r in results)
        wh.close()
    return figures


def _report(figures: dict[str, float], rows: int, lookups: int) -> str:
    ok_lookup = figures["lookup_p99_ms"] < 20
    ok_upsert = figures["upsert_rows_per_s"] >= 200_000
    ok_writers = figures["writers_commits_per_s"] >= 50
    lines = [
        "# Warehouse benchmark",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}",
        f"- load average before the run (other work on the machine skews figures): {figures['load_before']:.2f}",
        f"- python {platform.python_version()}, duckdb {duckdb.__version__}, pyarrow {pa.__version__}",
        f"- view: inventory, {rows:,} rows ({STORES} stores x {ITEMS} items); {lookups} random lookups",
        "- command: `python -m bench.warehouse`",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| point lookup p50 | {figures['lookup_p50_ms']:.2f} ms | |",
        f"| point lookup p99 | {figures['lookup_p99_ms']:.2f} ms | < 20 ms: {'met' if ok_lookup else 'MISSED'} |",
        f"| point lookup p50 / p99 after compaction | {figures['lookup_compacted_p50_ms']:.2f} / "
        f"{figures['lookup_compacted_p99_ms']:.2f} ms | |",
        f"| upsert throughput (5 x 100k rows replacing existing keys) | {figures['upsert_rows_per_s']:,.0f} rows/s "
        f"| >= 200k rows/s: {'met' if ok_upsert else 'MISSED'} |",
        f"| initial load of {rows:,} rows (one commit) | {figures['initial_load_rows_per_s']:,.0f} rows/s | |",
        f"| replayed 100k-row batch (no-op commit) | {figures['replay_100k_s'] * 1000:.0f} ms | |",
        f"| commit of 1,000 rows on the {rows:,}-row view, p50 / p99 | {figures['commit_1k_p50_ms']:.1f} / "
        f"{figures['commit_1k_p99_ms']:.1f} ms | |",
        f"| one-shot query (`beamline query` path, in-process) p50 | {figures['one_shot_query_p50_ms']:.1f} ms | |",
        f"| 4 reader processes during {figures['concurrent_commits']:.0f} commits (p50 "
        f"{figures['concurrent_commit_p50_ms']:.1f} ms each) | {figures['concurrent_reader_queries']:.0f} queries, "
        f"{figures['concurrent_reader_errors']:.0f} errors, {figures['concurrent_torn_answers']:.0f} torn answers | "
        "0 errors, 0 torn |",
        f"| commits/s with {figures['writers']:.0f} concurrent writers ({figures['writers']:.0f} processes x "
        f"{figures['writers_commits']:.0f} commits of 10 rows, no lock) | {figures['writers_commits_per_s']:.1f} "
        f"commits/s | >= 50 commits/s: {'met' if ok_writers else 'MISSED'} |",
        f"| the same: lost races per commit (each retried on the newest snapshot); commit p50 / p99 | "
        f"{figures['writers_lost_races_per_commit']:.2f}; {figures['writers_commit_p50_ms']:.1f} / "
        f"{figures['writers_commit_p99_ms']:.1f} ms | |",
        "",
        "Lookups use one `warehouse.reader.Reader` (a sandboxed in-memory DuckDB over the snapshot's",
        "files, reopened only when a new snapshot is published). Commits go through",
        "`warehouse.writer.Warehouse.commit` with durable writes: each commit fsyncs its data file, the data",
        "folder, the manifest, `snapshots/`, `CURRENT`, `catalog.sql` and the warehouse folder (seven fsyncs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``bench/results/warehouse.md``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=4, help="concurrent writer processes (default 4)")
    parser.add_argument("--writer-commits", type=int, default=150, help="small commits per writer (default 150)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    figures = run(args.rows, args.lookups)
    figures.update(concurrent_writers(args.writers, args.writer_commits))
    figures["load_before"] = load_before
    text = _report(figures, args.rows, args.lookups)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
