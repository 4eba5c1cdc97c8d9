"""Batch backfill of the inventory views against two plain baselines, in one run.

Run with ``python -m bench.backfill [--events N]``. It starts its own broker in a
temp folder, produces N retail events once (4 partitions per topic, ~1% invalid,
~3% duplicates), then measures, each in a fresh Python process:

* Beamline: ``pipelines.inventory.run`` in batch mode into a fresh warehouse
  (inventory, sales_by_window and dead_letters views, dead letters to Kafka);
* baseline (a): one kafka-python consumer loop that reads both topics to the end
  offsets seen at start, validates per the contract, dedupes by event_id per
  topic, computes inventory and hourly sales in dicts and writes the inventory
  to a Parquet file;
* baseline (b): DuckDB SQL over the same records exported once (not timed) to a
  JSON-lines file, computing the same inventory with dedupe into a Parquet file.

Beamline's default and the plain loop run ``--rounds`` times in turn, and the
best run of each counts. Every inventory is checked against a plain recompute
of the log (``tests.truth``) outside the timed sections. Figures go to
``bench/results/backfill.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.baseline_inventory import parse_event
from bench.consumers import plain_consumer
from bench.machine import cpu_model, memory_gib

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "backfill.md"
PARTITIONS = 4
SHIPMENTS, SALES, DEAD = "bench-shipments", "bench-sales", "bench-dead-letters"
INVALID_RATE, DUPLICATE_RATE = 0.01, 0.03
GOAL_PLAIN, GOAL_DUCKDB = 1.0, 0.5  # issue 26: half of DuckDB SQL's events/s
# By default a backfill this large runs in worker processes (pipelines.runner.auto_workers);
# this keeps it in one, for a row of its own.
ONE_PROCESS_ARGS = ("--direct_num_workers=1",)
CONFLUENT_ARGS = ("--kafka_client=confluent",)
# Beamline runs besides the default one: key, what the row says, extra Beam options.
VARIANTS = (
    ("beamline_one", f"`{' '.join(ONE_PROCESS_ARGS)}` (one process)", ONE_PROCESS_ARGS),
    ("beamline_confluent", f"`{' '.join(CONFLUENT_ARGS)}`", CONFLUENT_ARGS),
    (
        "beamline_confluent_one",
        f"`{' '.join(CONFLUENT_ARGS + ONE_PROCESS_ARGS)}` (one process)",
        CONFLUENT_ARGS + ONE_PROCESS_ARGS,
    ),
)
WINDOW_S = 3600

# Inventory rows compared across the three answers: key -> (shipped, sold, on_hand, events, last_event_time us).
Inventory = dict[tuple[str, str], tuple[int, int, int, int, int]]


# ---------------------------------------------------------------- machine info


def _versions() -> str:
    import apache_beam
    import duckdb
    import kafka
    import pyarrow

    from core.settings import kafka_libs_dir

    broker = "unknown"
    for jar in sorted(kafka_libs_dir().glob("kafka_*.jar")):
        match = re.fullmatch(r"kafka_[\d.]+-([\d.]+)\.jar", jar.name)
        if match:
            broker = match.group(1)
    return (
        f"Python {platform.python_version()}, apache-beam {apache_beam.__version__}, "
        f"kafka-python {kafka.__version__}, duckdb {duckdb.__version__}, pyarrow {pyarrow.__version__}, "
        f"Apache Kafka broker {broker}"
    )


def _crc_impl() -> str:
    """Which CRC32C kafka-python uses: every reader here checks every fetched batch with it."""
    from kafka.record import util

    if getattr(util, "crc32c_c", None) is not None:
        return "C extension (crc32c package)"
    return "pure Python (the crc32c package is not installed)"


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _peak_rss_mib() -> float:
    """Peak RSS of this process (VmHWM) or of its largest finished child, in MiB.

    ``ru_maxrss`` of a fresh process starts from its parent's peak on Linux (it
    survives fork and exec), so this process's own figure comes from VmHWM.
    """
    own = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
    except (OSError, ValueError):
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


# ---------------------------------------------------------------- baseline (a)


def plain_loop(bootstrap: str, out: Path) -> dict[str, Any]:
    """Baseline (a): one consumer, both topics, inventory and hourly sales in dicts, inventory to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    consumer, tps = plain_consumer(bootstrap, [SHIPMENTS, SALES])
    ends = consumer.end_offsets(tps)
    remaining = {tp for tp in tps if ends[tp] > 0}
    shipped: dict[tuple[str, str], int] = defaultdict(int)
    sold: dict[tuple[str, str], int] = defaultdict(int)
    events: dict[tuple[str, str], int] = defaultdict(int)
    last: dict[tuple[str, str], int] = {}  # event time, epoch micros
    windows: dict[tuple[int, str, str], int] = defaultdict(int)
    seen: dict[str, set[str]] = {SHIPMENTS: set(), SALES: set()}
    read = invalid = duplicates = 0
    while remaining:
        for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
            is_sale = tp.topic == SALES
            ids = seen[tp.topic]
            end = ends[tp]
            for record in records:
                if record.offset >= end:
                    break
                read += 1
                event = parse_event(record.value)
                if event is None:
                    invalid += 1
                    continue
                event_id, store, item, quantity, micros = event
                if event_id in ids:
                    duplicates += 1
                    continue
                ids.add(event_id)
                key = (store, item)
                if is_sale:
                    sold[key] += quantity
                    start = micros // 1_000_000 // WINDOW_S * WINDOW_S
                    windows[(start, store, item)] += quantity
                else:
                    shipped[key] += quantity
                events[key] += 1
                if key not in last or micros > last[key]:
                    last[key] = micros
            if consumer.position(tp) >= end:
                remaining.discard(tp)
    consumer.close(autocommit=False)
    keys = sorted(events)
    table = pa.table(
        {
            "store_id": [k[0] for k in keys],
            "item_id": [k[1] for k in keys],
            "on_hand": pa.array([shipped[k] - sold[k] for k in keys], pa.int64()),
            "shipped": pa.array([shipped[k] for k in keys], pa.int64()),
            "sold": pa.array([sold[k] for k in keys], pa.int64()),
            "events": pa.array([events[k] for k in keys], pa.int64()),
            "last_event_time": pa.array([last[k] for k in keys], pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, out)
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "read": read,
        "invalid": invalid,
        "duplicates": duplicates,
        "windows": len(windows),
        "rows": table.num_rows,
    }


# ---------------------------------------------------------------- baseline (b)

DUCKDB_SQL = r"""
COPY (
  WITH raw AS (
    SELECT topic, partition, "offset", TRY_CAST(value AS JSON) AS v
    FROM read_json({input}, format = 'newline_delimited',
                   columns = {{topic: 'VARCHAR', partition: 'INTEGER', "offset": 'BIGINT', value: 'VARCHAR'}})
  ), fields AS (
    SELECT topic, partition, "offset",
           v->>'$.event_id' AS event_id, v->>'$.store_id' AS store_id, v->>'$.item_id' AS item_id,
           v->>'$.event_time' AS event_time, TRY_CAST(v->'$.quantity' AS HUGEINT) AS quantity,
           json_type(v) AS t_obj, json_type(v, '$.event_id') AS t_id, json_type(v, '$.store_id') AS t_store,
           json_type(v, '$.item_id') AS t_item, json_type(v, '$.event_time') AS t_time,
           json_type(v, '$.quantity') AS t_qty
    FROM raw
  ), valid AS (
    SELECT topic, partition, "offset", event_id, store_id, item_id, CAST(quantity AS BIGINT) AS quantity,
           TRY_CAST(event_time AS TIMESTAMPTZ) AS event_time
    FROM fields
    WHERE t_obj = 'OBJECT' AND t_id = 'VARCHAR' AND event_id <> '' AND t_store = 'VARCHAR' AND store_id <> ''
      AND t_item = 'VARCHAR' AND item_id <> '' AND t_qty IN ('UBIGINT', 'BIGINT') AND quantity > 0
      AND t_time = 'VARCHAR'
      AND regexp_full_match(event_time, '\d{{4}}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)')
  ), deduped AS (
    SELECT * FROM valid
    QUALIFY row_number() OVER (PARTITION BY topic, event_id ORDER BY partition, "offset") = 1
  )
  SELECT store_id, item_id,
         sum(CASE WHEN topic = {shipments} THEN quantity ELSE 0 END)
           - sum(CASE WHEN topic = {sales} THEN quantity ELSE 0 END) AS on_hand,
         sum(CASE WHEN topic = {shipments} THEN quantity ELSE 0 END) AS shipped,
         sum(CASE WHEN topic = {sales} THEN quantity ELSE 0 END) AS sold,
         count(*) AS events,
         max(event_time) AS last_event_time
  FROM deduped
  GROUP BY store_id, item_id
  ORDER BY store_id, item_id
) TO {out} (FORMAT parquet)
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_sql(jsonl: Path, out: Path) -> dict[str, Any]:
    """Baseline (b): validate, dedupe and aggregate the exported records with DuckDB SQL into Parquet."""
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    names = {"input": jsonl, "out": out, "shipments": SHIPMENTS, "sales": SALES}
    con.execute(DUCKDB_SQL.format(**{k: _literal(str(v)) for k, v in names.items()}))
    con.close()
    return {"elapsed_s": time.perf_counter() - started, "threads": os.cpu_count()}


# ---------------------------------------------------------------- Beamline


def beamline(bootstrap: str, warehouse: Path, extra: list[str]) -> dict[str, Any]:
    """The Beamline batch backfill, as ``python -m pipelines.inventory --mode=batch`` runs it."""
    from pipelines.inventory import run

    started = time.perf_counter()
    summary = run(
        [
            "--mode=batch",
            f"--bootstrap_servers={bootstrap}",
            f"--warehouse={warehouse}",
            f"--shipments_topic={SHIPMENTS}",
            f"--sales_topic={SALES}",
            f"--dead_letter_topic={DEAD}",
            *extra,
        ]
    )
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "state": summary.state, "counters": summary.counters}


# ---------------------------------------------------------------- workers and checks


def _worker(argv: list[str]) -> int:
    """Child-process entry: run one measured job, print its figures as one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=("beamline", "plain", "duckdb"))
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jsonl", type=Path)
    parser.add_argument("--beam-arg", action="append", default=[])
    args = parser.parse_args(argv)
    if args.job == "beamline":
        figures = beamline(args.bootstrap, args.out, args.beam_arg)
    elif args.job == "plain":
        figures = plain_loop(args.bootstrap, args.out)
    else:
        assert args.jsonl is not None
        figures = duckdb_sql(args.jsonl, args.out)
    figures["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(figures), flush=True)
    return 0


def _variants(args: argparse.Namespace) -> list[tuple[str, str, tuple[str, ...]]]:
    """The extra Beamline runs this invocation makes (confluent ones only where it is installed)."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        confluent = False
    else:
        confluent = not args.no_confluent
    one_process = not args.no_one_process
    return [
        (key, what, extra_args)
        for key, what, extra_args in VARIANTS
        if (confluent or CONFLUENT_ARGS[0] not in extra_args) and (one_process or ONE_PROCESS_ARGS[0] not in extra_args)
    ]


def _run_worker(job: str, args: list[str], profile_to: Path | None = None) -> dict[str, Any]:
    """Run one job in a fresh interpreter; wall time includes start-up and imports."""
    command = [sys.executable, "-m", "bench.backfill", "--worker", job, *args]
    if profile_to is not None:
        py_spy = Path(sys.executable).with_name("py-spy")
        command = [str(py_spy), "record", "-f", "raw", "-r", "50", "-s", "-o", str(profile_to), "--", *command]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{job} failed (exit {done.returncode}):\n{done.stdout[-2000:]}")
    figures = json.loads(lines[-1][len("RESULT ") :])
    figures["wall_s"] = wall
    return figures


def _micros(moment: Any) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _rows_to_inventory(rows: list[dict[str, Any]]) -> Inventory:
    out: Inventory = {}
    for r in rows:
        key = (r["store_id"], r["item_id"])
        if key in out:
            raise AssertionError(f"duplicate inventory row for {key}")
        value = (r["shipped"], r["sold"], r["on_hand"], r["events"], _micros(r["last_event_time"]))
        out[key] = value
    return out


def _parquet_inventory(path: Path) -> Inventory:
    import pyarrow.parquet as pq

    return _rows_to_inventory(pq.read_table(path).to_pylist())


def _warehouse_rows(root: Path, sql: str) -> list[dict[str, Any]]:
    from readside.query import Reader

    reader = Reader(root)
    try:
        return reader.query(sql).to_pylist()
    finally:
        reader.close()


def _warehouse_inventory(root: Path) -> Inventory:
    cols = "store_id, item_id, shipped, sold, on_hand, events, last_event_time"
    return _rows_to_inventory(_warehouse_rows(root, f"SELECT {cols} FROM inventory"))


def _warehouse_windows(root: Path) -> dict[tuple[Any, str, str], int]:
    """The ``sales_by_window`` view as (window_start, store_id, item_id) -> units, as the recompute keys it."""
    rows = _warehouse_rows(root, "SELECT window_start, store_id, item_id, units FROM sales_by_window")
    return {(r["window_start"], r["store_id"], r["item_id"]): r["units"] for r in rows}


def _compare_windows(name: str, got: dict[Any, int], want: dict[Any, int], failures: list[str]) -> str:
    """One line saying whether the windows equal the recompute's; a difference is recorded in ``failures``."""
    if got == want:
        return f"{name}: equal ({len(got):,} windows)"
    differ = sum(1 for k in want.keys() & got.keys() if got[k] != want[k])
    failures.append(name)
    return (
        f"{name}: **DIFFERS** from the recompute: {len(want.keys() - got.keys())} windows missing, "
        f"{len(got.keys() - want.keys())} extra, {differ} with other units"
    )


def _truth_inventory(shipments: list[Any], sales: list[Any]) -> tuple[Inventory, Any]:
    from tests.truth import recompute_retail

    truth = recompute_retail(shipments, sales, WINDOW_S)
    inv = {
        k: (r["shipped"], r["sold"], r["on_hand"], r["events"], _micros(r["last_event_time"]))
        for k, r in truth.inventory.items()
    }
    return inv, truth


def _compare(name: str, got: Inventory, want: Inventory, failures: list[str]) -> str:
    """One line saying whether ``got`` equals the recompute; a difference is recorded in ``failures``."""
    if got == want:
        return f"{name}: equal ({len(got):,} keys)"
    missing = sorted(set(want) - set(got))[:3]
    extra = sorted(set(got) - set(want))[:3]
    diff = [k for k in sorted(set(got) & set(want)) if got[k] != want[k]]
    shown = "; ".join(f"{k}: (shipped, sold, on_hand, events, last us) {got[k]} != {want[k]}" for k in diff[:2])
    line = (
        f"{name}: **DIFFERS** from the recompute: {len(diff)} of {len(want)} keys differ, "
        f"missing {missing}, extra {extra}; e.g. {shown}"
    )
    failures.append(name)
    return line


# ---------------------------------------------------------------- profile summary

# Each sample is charged to the innermost frame that matches one of these (first match from the leaf up).
_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("kafka-python fetch + record parsing", ("packages/kafka/",)),
    ("event JSON decode + validation (transforms/events)", ("transforms/events.py",)),
    ("inventory DoFn (transforms/inventory)", ("transforms/inventory.py",)),
    ("sales windows (transforms/counts, TupleCombineFn)", ("transforms/counts.py", "combiners.py")),
    (
        "warehouse sink (transforms/sinks, warehouse/, duckdb, pyarrow)",
        ("transforms/sinks.py", "warehouse/", "duckdb", "pyarrow"),
    ),
    ("other Beamline code (ReadFromKafka loop, dead letters, wiring)", ("transforms/", "pipelines/")),
    ("Beam coders (pickling elements between stages)", ("coders", "pickle")),
    ("Beam runner: element passing, GBK buffering, data channel", ("apache_beam/",)),
]
_IDLE = ("wait (threading.py", "select (selectors.py", "_worker (concurrent", "sleep", "poll (selectors.py")


def summarize_profile(raw: Path, top: int = 12) -> list[str]:
    """Turn a py-spy raw (collapsed stacks) file into short notes: categories and hottest leaf functions."""
    leaf: Counter[str] = Counter()
    category: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if len(frames) <= 1 or any(w in frames[-1] for w in _IDLE):
            idle += count
            continue
        total += count
        leaf[re.sub(r"\s*\((?:[^()]*/)?", " (", frames[-1])] += count
        charged = "other (interpreter, threads)"
        for frame in reversed(frames):
            hit = next((name for name, needles in _CATEGORIES if any(n in frame for n in needles)), None)
            if hit is not None:
                charged = hit
                break
        category[charged] += count
    if total == 0:
        return ["(no samples)"]
    lines = [f"Busy samples: {total:,} (idle or waiting samples left out: {idle:,}).", ""]
    lines += ["| where (innermost matching frame) | share of busy samples |", "|---|---:|"]
    lines += [f"| {name} | {100 * n / total:.0f}% |" for name, n in category.most_common()]
    lines += ["", "| hottest leaf functions (self time) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {100 * n / total:.1f}% |" for name, n in leaf.most_common(top)]
    return lines


# ---------------------------------------------------------------- main


def _export(bootstrap: str, path: Path) -> tuple[list[Any], list[Any]]:
    """Read both topics once (not timed) and write the JSON-lines file baseline (b) reads."""
    from tests.truth import read_topic

    shipments, sales = read_topic(bootstrap, SHIPMENTS, 600), read_topic(bootstrap, SALES, 600)
    with path.open("w", encoding="utf-8") as out:
        for topic, partition, offset, value in (*shipments, *sales):
            try:
                text = None if value is None else value.decode("utf-8")
            except UnicodeDecodeError:
                text = None  # not UTF-8: a dead letter for every reader; kept as a null value
            line = {"topic": topic, "partition": partition, "offset": offset, "value": text}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return shipments, sales


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``bench/results/backfill.md``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--beam-arg", action="append", default=[], help="extra Beam option for the Beamline run")
    parser.add_argument("--profile", action="store_true", help="after the timed runs, profile one Beamline run")
    parser.add_argument(
        "--no-one-process", action="store_true", help="skip the extra Beamline runs kept in one process"
    )
    parser.add_argument(
        "--no-confluent", action="store_true", help="skip the extra Beamline runs with the confluent-kafka client"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of Beamline's default and of the plain loop, in turn"
    )
    parser.add_argument("--profile-raw", type=Path, help="keep py-spy's raw profile at this path")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from infra.kafka_broker import KafkaBroker, free_port
    from producers.retail import RetailConfig, generate_retail
    from producers.send import send_records
    from transforms.kafka import ensure_topics

    load_before = _load()
    figures: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    checks: list[str] = []
    failures: list[str] = []
    profile_notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="beamline-bench-backfill-") as tmp_dir:
        tmp = Path(tmp_dir)
        broker = KafkaBroker(tmp / "kafka")
        broker.start(free_port())
        try:
            bootstrap = broker.status().bootstrap_servers or ""
            ensure_topics(bootstrap, [SHIPMENTS, SALES, DEAD], PARTITIONS)
            config = RetailConfig(
                events=args.events,
                seed=args.seed,
                invalid_rate=INVALID_RATE,
                duplicate_rate=DUPLICATE_RATE,
                shipments_topic=SHIPMENTS,
                sales_topic=SALES,
            )
            produced = send_records(bootstrap, generate_retail(config), total=args.events, progress=None)
            print(produced.describe(), flush=True)

            jsonl = tmp / "events.jsonl"
            shipments, sales = _export(bootstrap, jsonl)
            truth, truth_full = _truth_inventory(shipments, sales)
            log_records = len(shipments) + len(sales)
            del shipments, sales
            print(f"exported {log_records:,} records; recompute has {len(truth):,} keys", flush=True)

            beam_args = [f"--beam-arg={a}" for a in args.beam_arg]
            # Beamline's default and the plain loop run once per round, in turn; each
            # ratio uses the best run of each (a shared VM slows single runs at random).
            warehouses: list[Path] = []
            for round_no in range(args.rounds):
                warehouses.append(tmp / f"warehouse-{round_no}")
                runs["beamline"].append(
                    _run_worker("beamline", ["--bootstrap", bootstrap, "--out", str(warehouses[-1]), *beam_args])
                )
                print(f"Beamline: {runs['beamline'][-1]['elapsed_s']:.1f}s", flush=True)
                plain_out = tmp / f"plain-{round_no}.parquet"
                runs["plain"].append(_run_worker("plain", ["--bootstrap", bootstrap, "--out", str(plain_out)]))
                print(f"plain loop: {runs['plain'][-1]['elapsed_s']:.1f}s", flush=True)
                if round_no == 0:
                    for key, what, extra_args in _variants(args):
                        variant_args = [f"--beam-arg={a}" for a in extra_args]
                        figures[key] = _run_worker(
                            "beamline",
                            ["--bootstrap", bootstrap, "--out", str(tmp / key), *beam_args, *variant_args],
                        )
                        print(f"Beamline, {what}: {figures[key]['elapsed_s']:.1f}s", flush=True)
            for job in ("beamline", "plain"):
                figures[job] = min(runs[job], key=lambda f: f["elapsed_s"])
            figures["duckdb"] = _run_worker("duckdb", ["--jsonl", str(jsonl), "--out", str(tmp / "duckdb.parquet")])
            print(f"DuckDB SQL: {figures['duckdb']['elapsed_s']:.1f}s", flush=True)
            load_after = _load()

            truth_windows = dict(truth_full.sales_by_window)
            for round_no, warehouse in enumerate(warehouses, 1):
                got = _warehouse_inventory(warehouse)
                checks.append(_compare(f"Beamline inventory view (round {round_no})", got, truth, failures))
                name = f"Beamline sales_by_window view (round {round_no})"
                checks.append(_compare_windows(name, _warehouse_windows(warehouse), truth_windows, failures))
            for key, what, _ in _variants(args):
                got = _warehouse_inventory(tmp / key)
                checks.append(_compare(f"Beamline inventory view ({what})", got, truth, failures))
                name = f"Beamline sales_by_window view ({what})"
                checks.append(_compare_windows(name, _warehouse_windows(tmp / key), truth_windows, failures))
            for round_no in range(args.rounds):
                got = _parquet_inventory(tmp / f"plain-{round_no}.parquet")
                checks.append(_compare(f"baseline (a) Parquet (round {round_no + 1})", got, truth, failures))
            checks.append(_compare("baseline (b) Parquet", _parquet_inventory(tmp / "duckdb.parquet"), truth, failures))
            if figures["plain"]["windows"] != len(truth_full.sales_by_window):
                raise SystemExit("baseline (a) hourly sales windows differ from the recompute")
            print("\n".join(checks), flush=True)

            if args.profile:
                raw = args.profile_raw or tmp / "profile.txt"
                profiled = _run_worker(
                    "beamline", ["--bootstrap", bootstrap, "--out", str(tmp / "warehouse-profiled"), *beam_args], raw
                )
                profile_notes = [
                    f"One more Beamline run under `py-spy record -r 50 -s -f raw` (all threads; "
                    f"{profiled['elapsed_s']:.0f} s with the sampler attached):",
                    "",
                    *summarize_profile(raw),
                ]
        finally:
            broker.stop()

    runs_by_name = [(f"round {n}", "beamline") for n in range(1, args.rounds + 1)]
    runs_by_name += [(what, key) for key, what, _ in _variants(args)]
    views = {
        f"Beamline {view} view ({name})": key for name, key in runs_by_name for view in ("inventory", "sales_by_window")
    }
    for name in failures:
        if views.get(name) in figures:
            figures[views[name]]["wrong"] = True
    text = _report(args, figures, runs, produced, log_records, checks, profile_notes, load_before, load_after)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    if failures:
        print(f"wrong answers: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


def _report(
    args: argparse.Namespace,
    figures: dict[str, dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    produced: Any,
    log_records: int,
    checks: list[str],
    profile_notes: list[str],
    load_before: str,
    load_after: str,
) -> str:
    n = log_records
    beam, plain = figures["beamline"], figures["plain"]
    rate = {k: n / v["elapsed_s"] for k, v in figures.items()}
    vs_plain, vs_duck = rate["beamline"] / rate["plain"], rate["beamline"] / rate["duckdb"]
    ok_plain = "met" if vs_plain >= GOAL_PLAIN else "MISSED"
    ok_duck = "met" if vs_duck >= GOAL_DUCKDB else "MISSED"
    counters = beam.get("counters", {})
    counter_text = ", ".join(f"{k}={v:,}" for k, v in sorted(counters.items())) or "none reported"
    extra = " ".join(args.beam_arg) or "none (FnApiRunner defaults)"
    from pipelines.runner import auto_workers, available_cores

    workers = auto_workers(args.beam_arg, log_records, available_cores())

    def row(label: str, key: str) -> str:
        f = figures[key]
        return (
            f"| {label} | {f['elapsed_s']:.1f} | {rate[key]:,.0f} | {f['wall_s']:.1f} | {f['peak_rss_mib']:,.0f} MiB |"
        )

    lines = [
        "# Batch backfill: Beamline vs a plain kafka-python loop vs DuckDB SQL",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, {memory_gib():.1f} GiB RAM",
        f"- load average (1, 5, 15 min) before / after the timed runs: {load_before} / {load_after} "
        "(other work shared the machine; every figure below is from the same run)",
        f"- {_versions()}; kafka-python CRC32C: {_crc_impl()}",
        f"- workload: {args.events:,} retail events (seed {args.seed}, ~{INVALID_RATE:.0%} invalid, "
        f"~{DUPLICATE_RATE:.0%} duplicates, ~5% out of order) in two topics of {PARTITIONS} partitions; "
        f"{log_records:,} records read by each reader; one local broker",
        f"- command: `python -m bench.backfill --events {args.events}`; extra Beam options: {extra}",
        "",
        "Each reader runs in a fresh Python process. *Seconds* is the job itself (from just before it",
        "connects to the end of its output); *process wall* adds interpreter start-up and imports.",
        f"Beamline's default and the plain loop ran {args.rounds} times each, in turn; their rows are",
        "the best run of each. The other rows ran once, after the first round.",
        "",
        "| reader | seconds | events/s | process wall s | peak RSS |",
        "|---|---:|---:|---:|---:|",
        row(
            "Beamline batch backfill (`pipelines.inventory.run`, FnApiRunner, 3 views + dead letters; "
            f"defaults: {workers} worker process{'es' if workers > 1 else ''} at this size)",
            "beamline",
        ),
        *[row(f"Beamline, same, with {what}", key) for key, what, _ in VARIANTS if key in figures],
        row("(a) plain kafka-python loop, dicts, inventory to Parquet", "plain"),
        row("(b) DuckDB SQL over the JSON-lines export, inventory to Parquet", "duckdb"),
        "",
        f"- Beamline / (a): **{vs_plain:.2f}x** (goal >= {GOAL_PLAIN:.1f}x: {ok_plain}); best of {args.rounds} runs "
        "each, in turn: Beamline "
        + ", ".join(f"{r['elapsed_s']:.1f}" for r in runs["beamline"])
        + " s; plain loop "
        + ", ".join(f"{r['elapsed_s']:.1f}" for r in runs["plain"])
        + " s; per round "
        + ", ".join(
            f"{p['elapsed_s'] / b['elapsed_s']:.2f}x" for b, p in zip(runs["beamline"], runs["plain"], strict=True)
        ),
        f"- Beamline / (b): **{vs_duck:.2f}x** (goal >= {GOAL_DUCKDB:.1f}x: {ok_duck})",
        f"- Beamline peak RSS: **{beam['peak_rss_mib']:,.0f} MiB**",
        *[
            f"- with {what}: Beamline / (a) **{rate[key] / rate['plain']:.2f}x**, "
            f"Beamline / (b) {rate[key] / rate['duckdb']:.2f}x"
            for key, what, _ in VARIANTS
            if key in figures
        ],
        *(["- with worker processes, peak RSS is the largest single process, not the sum"] if workers > 1 else []),
        f"- produce (once, not compared): {produced.describe()}",
        f"- Beamline counters: {counter_text}",
        *[
            f"- Beamline counters with {what}: "
            + ", ".join(f"{k}={v:,}" for k, v in sorted(figures[key].get("counters", {}).items()))
            for key, what, _ in VARIANTS
            if key in figures
        ],
        f"- baseline (a): read {plain['read']:,}, invalid {plain['invalid']:,}, duplicates {plain['duplicates']:,}, "
        f"{plain['rows']:,} inventory rows, {plain['windows']:,} hourly sales windows",
        "",
        "What each does. Beamline reads both topics with `ReadFromKafka` to the end offsets seen at",
        "start, decodes and validates every record (dead letters to the `dead_letters` view and the",
        "dead-letters topic), dedupes by event_id per topic and sums per key in two combines",
        "(`BackfillRetail`), and commits the",
        "`inventory`, `sales_by_window` and `dead_letters` views to the warehouse. (a) does the same",
        "validation, dedupe, inventory and hourly sales in dicts in one loop and writes only the",
        "inventory Parquet file (no dead-letter output, no catalog). (b) reads a JSON-lines file",
        "written once beforehand (one object per record: topic, partition, offset, value as text;",
        "not timed), validates with SQL, dedupes with `QUALIFY row_number() OVER (PARTITION BY topic,",
        "event_id) = 1`, groups by store and item, and copies the result to Parquet, on all cores.",
        "",
        "Correctness (outside the timed sections), each inventory (and Beamline's sales_by_window)",
        "against `tests.truth.recompute_retail` over the same records:",
        "",
        *[f"- {c}" for c in checks],
        "",
    ]
    if profile_notes:
        lines += ["## Where the Beamline time goes", "", *profile_notes, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
