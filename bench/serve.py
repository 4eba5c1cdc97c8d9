"""Read-service benchmark: point lookups over HTTP on a 1M-row inventory, and freshness.

Goals (issue 23), on this 2-core machine with 16 concurrent clients:

* point lookups: p99 under 5 ms at 2,000 lookups/s, and at least 2,000 lookups/s;
* freshness: from a commit to the service answering from it, p99 under 200 ms.

What runs: ``beamline serve`` as a user starts it (a process of its own, its
rate limit raised out of the way but still checked per request), and a load
generator in another process: 16 keep-alive HTTP/1.1 connections asking for
random keys, either flat out (closed loop: the next request when the answer
came) or at a fixed offered rate (open loop: each request has a send time, and
its latency counts from that time, so a stalled server cannot hide queued
requests). Baselines in the same run: ``beamline lookup`` as a process per
lookup, and a tiny server (the same Starlette and uvicorn) that runs one
DuckDB query per request through the sandboxed reader. Freshness: a writer
commits 100 updated rows at a time while a client polls one of the updated
keys every 2 ms; the time counts from the commit time the manifest records.
Writes ``bench/results/serve.md``. Run: ``python -m bench.serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.machine import cpu_model

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "serve.md"
PROJECT = Path(__file__).resolve().parents[1]
STORES = 1000
CLIENTS = 16
OFFERED = 2000.0
ROUNDS = 3
WHEN = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)


def _inventory(rows: int, events: int = 1) -> pa.Table:
    """``rows`` inventory rows: ``rows / STORES`` items in each of up to STORES stores, in key order."""
    stores = min(STORES, rows)
    items = rows // stores
    store = np.repeat(np.arange(stores), items)
    item = np.tile(np.arange(items), stores)
    numbers = np.full(stores * items, events, dtype=np.int64)
    return pa.table(
        {
            "store_id": pa.array([f"store-{s:04d}" for s in store.tolist()]),
            "item_id": pa.array([f"item-{i:05d}" for i in item.tolist()]),
            "on_hand": numbers,
            "shipped": numbers,
            "sold": np.zeros_like(numbers),
            "events": numbers,
            "last_event_time": pa.array(np.full(len(numbers), int(WHEN.timestamp() * 1e6)), pa.timestamp("us", "UTC")),
        }
    )


def _keys(rows: int, n: int, seed: int) -> list[tuple[str, str]]:
    stores = min(STORES, rows)
    items = rows // stores
    rng = random.Random(seed)
    return [(f"store-{rng.randrange(stores):04d}", f"item-{rng.randrange(items):05d}") for _ in range(n)]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


# -- the load generator: a process of its own -------------------------------------------------------
async def _connection(
    port: int, paths: list[bytes], start: float, until: float, rate: float | None, out: dict[str, list[float]]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    due = start + (random.random() / rate if rate else 0)
    errors = 0
    while True:
        if rate:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
        sent = time.perf_counter()
        if sent >= until:
            break
        writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % random.choice(paths))
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        done = time.perf_counter()
        if not head.startswith(b"HTTP/1.1 200"):
            errors += 1
        if sent >= start:
            out["service"].append(done - sent)
            out["latency"].append(done - (due if rate else sent))
        if rate:
            due += 1 / rate
    out["errors"].append(errors)
    writer.close()


async def _load(port: int, keys: list[tuple[str, str]], prefix: str, seconds: float, rate: float | None) -> dict:
    paths = [f"{prefix}/{s}/{i}".encode() for s, i in keys]
    out: dict[str, list[float]] = {"service": [], "latency": [], "errors": []}
    start = time.perf_counter() + 1.0  # one second of warm-up is not counted
    until = start + seconds
    per_client = rate / CLIENTS if rate else None
    await asyncio.gather(*(_connection(port, paths, start, until, per_client, out) for _ in range(CLIENTS)))
    return {
        "lookups": len(out["latency"]),
        "per_s": len(out["latency"]) / seconds,
        "errors": sum(out["errors"]),
        "latency_ms": {k: v * 1000 for k, v in _percentiles(out["latency"]).items()},
        "service_ms": {k: v * 1000 for k, v in _percentiles(out["service"]).items()},
    }


def _load_main(port: int, rows: int, prefix: str, seconds: float, rate: float | None) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_load(port, _keys(rows, 20_000, port), prefix, seconds, rate))))


def run_load(port: int, rows: int, seconds: float, rate: float | None = None, prefix: str = "/v1/inventory") -> dict:
    """The load generator in its own process; its figures."""
    argv = [sys.executable, "-m", "bench.serve", "--load", str(port), "--rows", str(rows), "--seconds", str(seconds)]
    argv += ["--prefix", prefix] + (["--rate", str(rate)] if rate else [])
    done = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, check=True, timeout=seconds + 120)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the servers ----------------------------------------------------------------------------------
def _start(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()
    if "http://" not in first:
        process.kill()
        raise SystemExit(f"server did not start: {first!r} {process.communicate()[1][-2000:]}")
    url = next(word for word in first.split() if word.startswith("http://"))
    return process, int(url.rstrip("/").rsplit(":", 1)[1])


def start_service(root: Path) -> tuple[subprocess.Popen[str], int]:
    """``beamline serve`` on a free port; its rate limit raised past the load (still checked per request)."""
    return _start(
        [sys.executable, "-m", "cli", "serve", "--warehouse", str(root), "--port", "0", "--rate-limit", "1000000"]
    )


def _duckdb_server_main(root: str) -> None:
    """The baseline: a tiny server answering each lookup with one DuckDB query (the sandboxed reader)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from readside.serve.server import bind, url_of
    from warehouse.reader import QueryLimits, Reader

    local = threading.local()
    limits = QueryLimits(memory_limit="1GB", threads=1)

    def lookup(store: str, item: str) -> dict[str, Any] | None:
        reader = getattr(local, "reader", None)
        if reader is None:
            reader = local.reader = Reader(root, limits=limits)  # one per worker thread, following new snapshots
        row = reader.lookup_inventory(store, item)
        return None if row is None else {**row, "last_event_time": row["last_event_time"].isoformat()}

    async def endpoint(request: Request) -> JSONResponse:
        row = await run_in_threadpool(lookup, request.path_params["store"], request.path_params["item"])
        return JSONResponse({"row": row}, status_code=200 if row else 404)

    app = Starlette(routes=[Route("/lookup/{store}/{item}", endpoint)])
    sock = bind("127.0.0.1", 0)
    print(f"duckdb-per-request server: {url_of(sock)}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False)).run(sockets=[sock])


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


# -- baselines and freshness ----------------------------------------------------------------------
def cli_lookups(root: Path, keys: list[tuple[str, str]]) -> dict:
    """``beamline lookup`` as a process per lookup, CLIENTS at a time."""
    latencies: list[float] = []
    started = time.perf_counter()
    for chunk in range(0, len(keys), CLIENTS):
        batch = []
        for store, item in keys[chunk : chunk + CLIENTS]:
            argv = [
                sys.executable,
                "-m",
                "cli",
                "lookup",
                "inventory",
                "--store",
                store,
                "--item",
                item,
                "--warehouse",
                str(root),
            ]
            batch.append((time.perf_counter(), subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.DEVNULL)))
        for began, process in batch:
            assert process.wait(timeout=300) == 0
            latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - started
    return {
        "lookups": len(keys),
        "per_s": len(keys) / elapsed,
        "latency_ms": {k: v * 1000 for k, v in _percentiles(latencies).items()},
    }


def freshness(root: Path, port: int, rows: int, commits: int, pause_s: float) -> dict:
    """Commit 100 updated rows at a time; poll one of them until the service answers with the new version."""
    from warehouse.format import manifest_name, read_manifest
    from warehouse.writer import Warehouse

    writer = Warehouse(root)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    from_commit: list[float] = []
    from_return: list[float] = []
    commit_ms: list[float] = []
    rng = random.Random(7)
    stores = min(STORES, rows)
    items = rows // stores
    for n in range(commits):
        keys = {(f"store-{rng.randrange(stores):04d}", f"item-{rng.randrange(items):05d}") for _ in range(100)}
        version = 2 + n
        batch = [
            {
                "store_id": s,
                "item_id": i,
                "on_hand": version,
                "shipped": version,
                "sold": 0,
                "events": version,
                "last_event_time": WHEN,
            }
            for s, i in sorted(keys)
        ]
        store, item = sorted(keys)[0]
        began = time.perf_counter()
        result = writer.commit("inventory", batch)
        returned_wall, returned = time.time(), time.perf_counter()
        commit_ms.append((returned - began) * 1000)
        assert result.snapshot_id is not None
        while True:
            conn.request("GET", f"/v1/inventory/{store}/{item}")
            answer = json.loads(conn.getresponse().read())
            if answer["row"]["events"] >= version:
                seen_wall, seen = time.time(), time.perf_counter()
                break
            time.sleep(0.002)
        committed_us = read_manifest(root.absolute(), manifest_name(result.snapshot_id)).committed_at_us
        from_commit.append(seen_wall - committed_us / 1e6)
        from_return.append(seen - returned)
        assert returned_wall - committed_us / 1e6 >= -0.01
        time.sleep(pause_s)
    writer.close()
    conn.request("GET", "/v1/health")
    index = json.loads(conn.getresponse().read())["index"]
    conn.close()
    return {
        "index": index,
        "commits": commits,
        "from_commit_ms": {k: v * 1000 for k, v in _percentiles(from_commit).items()},
        "from_return_ms": {k: v * 1000 for k, v in _percentiles(from_return).items()},
        "commit_ms": _percentiles(commit_ms),
    }


# -- the report -----------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def write_report(path: Path, figures: dict, args: argparse.Namespace) -> None:
    flat, offered, under = figures["flat_out"], figures["offered"], figures["under_commits"]
    duck, cli, fresh = figures["duckdb"], figures["cli"], figures["freshness"]
    import duckdb
    import starlette
    import uvicorn

    p99_ok = offered["latency_ms"]["p99"] < 5 and offered["per_s"] >= OFFERED * 0.98
    lines = [
        "# Read service benchmark",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}",
        f"- load average before the run (other work on the machine skews figures): {figures['load_before']:.2f}; "
        f"after: {os.getloadavg()[0]:.2f}",
        f"- python {platform.python_version()}, starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, "
        f"duckdb {duckdb.__version__}",
        f"- view: inventory, {args.rows:,} rows ({min(STORES, args.rows)} stores); {CLIENTS} clients, "
        f"{args.seconds:g} s per run after 1 s of warm-up; server, load generator and writer share the 2 cores",
        "- command: `python -m bench.serve`",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| point lookups/s, {CLIENTS} clients flat out | {flat['per_s']:,.0f} | >= 2,000: "
        f"{_verdict(flat['per_s'] >= 2000)} |",
        f"| the same, latency p50 / p99 | {flat['latency_ms']['p50']:.2f} / {flat['latency_ms']['p99']:.2f} ms | |",
        f"| point lookup p99 at {OFFERED:,.0f} lookups/s offered ({CLIENTS} clients) | "
        f"{offered['latency_ms']['p99']:.2f} ms | < 5 ms: {_verdict(p99_ok)} |",
        f"| the same, each of {len(offered['rounds'])} rounds: p99 (service time p99; load average) | "
        + "; ".join(
            f"{r['latency_ms']['p99']:.2f} ms ({r['service_ms']['p99']:.2f} ms; {r['load']:.1f})"
            for r in offered["rounds"]
        )
        + " | |",
        f"| the same (median round): achieved lookups/s; p50; max | {offered['per_s']:,.0f}; "
        f"{offered['latency_ms']['p50']:.2f} ms; {offered['latency_ms']['max']:.1f} ms | |",
        f"| the same while a writer commits (the freshness run) p50 / p99 | {under['latency_ms']['p50']:.2f} / "
        f"{under['latency_ms']['p99']:.2f} ms | |",
        f"| freshness p99: commit to the service answering from it | {fresh['from_commit_ms']['p99']:.0f} ms | "
        f"< 200 ms: {_verdict(fresh['from_commit_ms']['p99'] < 200)} |",
        f"| the same p50 / max; from the writer's return p50 / p99 | {fresh['from_commit_ms']['p50']:.0f} / "
        f"{fresh['from_commit_ms']['max']:.0f} ms; {fresh['from_return_ms']['p50']:.0f} / "
        f"{fresh['from_return_ms']['p99']:.0f} ms | |",
        f"| commits measured (100 rows each on the {args.rows:,}-row view), commit p50 / p99 | {fresh['commits']}, "
        f"{fresh['commit_ms']['p50']:.0f} / {fresh['commit_ms']['p99']:.0f} ms | |",
        f"| the service's index update per new snapshot, last / slowest | {fresh['index']['last_update_ms']:.1f} / "
        f"{fresh['index']['max_update_ms']:.1f} ms ({fresh['index']['incremental_updates']} commits read, "
        f"{fresh['index']['compactions_skipped']} compactions skipped, {fresh['index']['full_builds']} full build) | |",
        f"| baseline (a): one DuckDB query per request, {CLIENTS} clients flat out | {duck['per_s']:,.0f} lookups/s, "
        f"p50 / p99 {duck['latency_ms']['p50']:.1f} / {duck['latency_ms']['p99']:.1f} ms | |",
        f"| baseline (b): `beamline lookup`, a process per lookup, {CLIENTS} at a time | {cli['per_s']:.1f} lookups/s, "
        f"p50 / p99 {cli['latency_ms']['p50']:.0f} / {cli['latency_ms']['p99']:.0f} ms | |",
        f"| service / baseline (a), lookups/s flat out | **{flat['per_s'] / duck['per_s']:.1f}x** | |",
        "",
        f"Errors (non-200 answers): service {flat['errors'] + sum(r['errors'] for r in offered['rounds'])}"
        f" + {under['errors']}, baseline (a) {duck['errors']}. At a fixed offered rate a request's latency"
        " counts from the time it was due, so a stall of the server (or of the load generator, which",
        "shares the cores) is charged to every request queued behind it; the service time counts from",
        f"the actual send. The headline is the median round (by p99) of {ROUNDS}.",
        "",
        "The service answers a lookup from an index of the newest snapshot in memory (a dict keyed by",
        "(store_id, item_id) over NumPy columns, with small layers for the rows each commit changed), never",
        "from a query. A watcher thread polls the warehouse every 50 ms; a commit's rows are read from the",
        "files it added (milliseconds), a compaction changes nothing, and the new index is published with",
        "one assignment. Baseline (a) is the same Starlette and uvicorn with the index replaced by",
        "`warehouse.reader.Reader.lookup_inventory` (one DuckDB query over the snapshot's files) in worker",
        "threads, one reader per thread. Baseline (b) pays for a Python start, imports and a fresh DuckDB each time.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--commits", type=int, default=60)
    parser.add_argument("--cli-lookups", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for checking the harness")
    parser.add_argument("--load", type=int, help=argparse.SUPPRESS)  # the load generator's process
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="/v1/inventory", help=argparse.SUPPRESS)
    parser.add_argument("--duckdb-server", help=argparse.SUPPRESS)  # baseline (a)'s process
    args = parser.parse_args(argv)
    if args.load:
        _load_main(args.load, args.rows, args.prefix, args.seconds, args.rate)
        return 0
    if args.duckdb_server:
        _duckdb_server_main(args.duckdb_server)
        return 0
    if args.quick:
        args.rows, args.seconds, args.commits, args.cli_lookups = 20_000, 2.0, 8, 4
    from warehouse.writer import Warehouse

    figures: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="beamline-bench-serve-") as tmp:
        root = Path(tmp) / "warehouse"
        started = time.perf_counter()
        Warehouse(root).commit("inventory", _inventory(args.rows))
        print(f"bench.serve: {args.rows:,}-row inventory written in {time.perf_counter() - started:.1f} s", flush=True)

        service, port = start_service(root)
        try:
            figures["flat_out"] = run_load(port, args.rows, args.seconds)
            print(f"bench.serve: flat out {figures['flat_out']}", flush=True)
            rounds = []
            for _ in range(ROUNDS):  # the machine is shared: three windows, and the median of them
                rounds.append({**run_load(port, args.rows, args.seconds, rate=OFFERED), "load": os.getloadavg()[0]})
                print(f"bench.serve: at {OFFERED:g}/s {rounds[-1]}", flush=True)
            rounds.sort(key=lambda r: r["latency_ms"]["p99"])
            figures["offered"] = {**rounds[len(rounds) // 2], "rounds": rounds}
            box: dict[str, Any] = {}
            loader = threading.Thread(
                target=lambda: box.update(run_load(port, args.rows, args.seconds * 3, rate=OFFERED)), daemon=True
            )
            loader.start()
            time.sleep(1.0)
            figures["freshness"] = freshness(root, port, args.rows, args.commits, 0.2)
            loader.join()
            figures["under_commits"] = box
            print(f"bench.serve: freshness {figures['freshness']}; lookups meanwhile {box}", flush=True)
        finally:
            _stop(service)

        baseline, port = _start([sys.executable, "-m", "bench.serve", "--duckdb-server", str(root)])
        try:
            figures["duckdb"] = run_load(port, args.rows, args.seconds, prefix="/lookup")
            print(f"bench.serve: baseline (a) {figures['duckdb']}", flush=True)
        finally:
            _stop(baseline)
        figures["cli"] = cli_lookups(root, _keys(args.rows, args.cli_lookups, 3))
        print(f"bench.serve: baseline (b) {figures['cli']}", flush=True)
    output = args.output or RESULTS
    write_report(output, figures, args)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
