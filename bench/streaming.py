"""Streaming benchmark: sustained events/s, produce-to-visible latency and memory.

Run with ``python -m bench.streaming [--seconds S] [--quick]``. It starts its own
Kafka broker (temp folder, free port) and measures, one system at a time, each
on fresh topics of 4 partitions:

* Beamline: ``beamline run inventory --mode streaming --runner direct`` (Prism) in
  a subprocess, writing a fresh temp warehouse;
* baseline (a): the same inventory app on Quix Streams (``bench.streaming_quix``),
  publishing each changed row to an output topic;
* baseline (b): a plain kafka-python loop (``bench.streaming_plain``) that upserts
  the changed rows into the same kind of warehouse every 100 ms.

Each system gets three phases of the same retail stream (``producers.retail``,
~1% invalid, ~3% duplicates): 1,000 and 5,000 records/s, then "max" (as fast as
the producer can while at most ``--max-backlog`` valid events are produced but
not yet visible). A phase is ``--warmup`` seconds (discarded) plus ``--seconds``
measured. Then a "30-minute-equivalent" stream, for Beamline and for Quix
Streams: event times spanning 30 minutes compressed into ``--memory-seconds`` of
wall time (for Beamline with the dedupe horizon and windows scaled down, so that
state must be forgotten while it runs), the system's process tree sampled for RSS.

How figures are taken is written into ``bench/results/streaming.md`` itself.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.machine import cpu_model, memory_gib
from bench.memory import RssSampler

__all__ = ["PhaseResult", "SystemResult", "latency_percentiles", "main"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT_ROOT / "bench" / "results" / "streaming.md"
PARTITIONS = 4
INVALID_RATE, DUPLICATE_RATE = 0.01, 0.03
POLL_S = 0.1
# The paced phases send what is due every this many seconds (see _send_paced).
SEND_TICK_S = 0.005
GOAL_P99_S = 1.0  # at 5,000 records/s, and below Quix Streams' in the same run
# How long the idle Beam job runs (bench.idle_beam): long enough for Prism and the worker to settle.
FLOOR_SECONDS, FLOOR_SECONDS_QUICK = 40.0, 10.0
GOAL_RSS_VS_QUIX = 1.0  # peak RSS of all the job's processes, Beamline / Quix Streams
GOAL_VS_QUIX = 1.0  # sustained events/s at "max"
KEEPS_UP = 0.90  # sustained / offered valid events over the measured window
# Records/s of the memory stream: low enough that Beamline keeps up while the watermark runs
# ~3x faster than the clock (expiring ids and closing windows 3x as often as live).
MEMORY_RATE = 300
MEMORY_SPAN_S = 30 * 60
# Scaled-down state settings for the memory stream (defaults: 7 days / 1 h / 1 h).
MEMORY_OPTIONS = ("--dedupe_horizon=600", "--window_size=300", "--allowed_lateness=300")

# (label, records/s; None = as fast as possible)
PHASES: tuple[tuple[str, int | None], ...] = (("1k", 1_000), ("5k", 5_000), ("max", None))


# ---------------------------------------------------------------- producing


def _sender_client() -> str:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent-kafka"


class Sender:
    """A Kafka producer for the load: confluent-kafka when installed (cheap per record), else kafka-python."""

    def __init__(self, bootstrap: str) -> None:
        self.errors: list[str] = []
        try:
            from confluent_kafka import Producer
        except ImportError:
            from kafka import KafkaProducer

            self.client = "kafka-python"
            self._kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
            self._cp = None
        else:
            self.client = "confluent-kafka"
            self._cp = Producer(
                {
                    "bootstrap.servers": bootstrap,
                    "acks": "all",
                    "linger.ms": 5,
                    "enable.idempotence": True,
                    "queue.buffering.max.messages": 1_000_000,
                    "log_level": 3,  # errors only: broker start-up and shutdown chatter is expected here
                }
            )
            self._kp = None

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None and len(self.errors) < 10:
            self.errors.append(str(error))

    def send(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None) -> None:
        """Hand one record to the client (asynchronous; delivery errors are collected)."""
        if self._cp is not None:
            while True:
                try:
                    self._cp.produce(topic, value, key, on_delivery=self._delivered, timestamp=timestamp_ms or 0)
                    return
                except BufferError:
                    self._cp.poll(0.01)
        else:
            self._kp.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)

    def serve(self) -> None:
        """Serve delivery callbacks without blocking."""
        if self._cp is not None:
            self._cp.poll(0)

    def flush(self) -> None:
        """Wait until every record is acknowledged; raise if any was refused."""
        if self._cp is not None:
            left = self._cp.flush(60)
            if left:
                self.errors.append(f"{left} records not delivered within 60 s")
        else:
            self._kp.flush(timeout=60)
        if self.errors:
            raise RuntimeError(f"the broker refused records: {self.errors[:3]}")

    def close(self) -> None:
        """Release the client (its connections and threads)."""
        if self._kp is not None:
            self._kp.close(timeout=10)
        self._cp = None


@dataclass
class ProduceLog:
    """Produce time (monotonic s) of every valid distinct event, in the order sent (k-th = index k-1)."""

    times: list[float] = field(default_factory=list)
    records: int = 0

    @property
    def valid(self) -> int:
        return len(self.times)


def _is_valid_distinct(kind: str) -> bool:
    # The generator tags every record: re-sends are "duplicate", broken ones "invalid:<why>".
    return kind in ("shipment", "sale")


def _retail(seed: int, events: int, topics: tuple[str, str], start: datetime, gap_s: float) -> Iterator[Any]:
    from producers.retail import RetailConfig, generate_retail

    config = RetailConfig(
        events=events,
        seed=seed,
        invalid_rate=INVALID_RATE,
        duplicate_rate=DUPLICATE_RATE,
        start_time=start,
        mean_gap_s=gap_s,
        shipments_topic=topics[0],
        sales_topic=topics[1],
    )
    return generate_retail(config)


# ---------------------------------------------------------------- what is visible


class WarehouseCount:
    """``SELECT sum(events) FROM inventory`` through the read side, as ``beamline query`` runs it."""

    def __init__(self, warehouse: Path) -> None:
        self.warehouse = warehouse
        self._reader: Any = None

    def __call__(self) -> int | None:
        row = self._first_row("SELECT sum(events) FROM inventory")
        return None if row is None else int(row[0] or 0)

    def _first_row(self, sql: str) -> tuple[Any, ...] | None:
        """The query's first row through one long-lived reader; None before the first snapshot."""
        from core.errors import BeamlineError
        from readside.query import Reader

        if self._reader is None:
            if not (self.warehouse / "CURRENT").exists():
                return None
            self._reader = Reader(self.warehouse)
        try:
            return tuple(self._reader.query(sql).to_pylist()[0].values())
        except BeamlineError:
            return None  # no snapshot yet

    def inventory(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """The inventory view per key: (shipped, sold, events), through the read side."""
        from readside.query import Reader

        reader = Reader(self.warehouse)
        try:
            rows = reader.query("SELECT store_id, item_id, shipped, sold, events FROM inventory").to_pylist()
        finally:
            reader.close()
        return {(r["store_id"], r["item_id"]): (r["shipped"], r["sold"], r["events"]) for r in rows}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class SettledCount(WarehouseCount):
    """Visible events plus events refused as too old to dedupe: what a stream past its horizon accounts for."""

    SQL = (
        "SELECT (SELECT coalesce(sum(events), 0) FROM inventory), "
        "(SELECT count(*) FROM dead_letters WHERE error LIKE '%dedupe horizon%'), "
        "(SELECT count(*) FROM dead_letters)"
    )

    def __init__(self, warehouse: Path) -> None:
        super().__init__(warehouse)
        self.parts = (0, 0)
        self.dead_letters = 0

    def __call__(self) -> int | None:
        row = self._first_row(self.SQL)
        if row is None:
            return None
        visible, too_old, self.dead_letters = (int(v or 0) for v in row)
        self.parts = (visible, too_old)
        return visible + too_old


class TopicCount(threading.Thread):
    """Sum of the newest ``events`` per key in an output topic, read as it grows (Quix Streams' view)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="output-topic-reader", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.total = 0
        self.rows = 0
        self._latest: dict[bytes | None, int] = {}
        self.rows_by_key: dict[tuple[str, str], dict[str, Any]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
        tps = [TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        try:
            while not self._halt.is_set():
                for records in consumer.poll(timeout_ms=20, max_records=50_000).values():
                    for record in records:
                        row = json.loads(record.value)
                        events = row["events"]
                        old = self._latest.get(record.key, 0)
                        if events > old:
                            self._latest[record.key] = events
                            self.rows_by_key[(row["store_id"], row["item_id"])] = row
                            self.total += events - old
                        self.rows += 1
        finally:
            consumer.close(autocommit=False)

    def __call__(self) -> int | None:
        return self.total

    def inventory(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """The newest row per key: (shipped, sold, events)."""
        return {k: (r["shipped"], r["sold"], r["events"]) for k, r in list(self.rows_by_key.items())}

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class Tracker(threading.Thread):
    """Samples a visible count every ``POLL_S``: (monotonic time taken before the read, running max)."""

    def __init__(self, count: Callable[[], int | None]) -> None:
        super().__init__(name="visibility-poller", daemon=True)
        self.count = count
        self.times: list[float] = []
        self.sums: list[int] = []
        self.query_s: list[float] = []
        self._halt = threading.Event()

    @property
    def current(self) -> int:
        return self.sums[-1] if self.sums else 0

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            t = time.monotonic()
            try:
                value = self.count()
            except Exception as exc:  # a read that fails once is retried at the next tick
                print(f"  poll failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                value = None
            self.query_s.append(time.monotonic() - t)
            self.times.append(t)
            self.sums.append(max(self.current, value or 0))
            next_at = max(next_at + POLL_S, time.monotonic())
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def first_reached(self, k: int) -> float | None:
        """When the count was first seen at ``k`` or more (None if never)."""
        i = bisect.bisect_left(self.sums, k)
        return self.times[i] if i < len(self.sums) else None

    def wait_for(self, k: int, timeout_s: float, alive: Callable[[], bool]) -> float | None:
        """Block until the count reaches ``k``; the time it did, or None on timeout / a dead system."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.current >= k:
                return self.first_reached(k)
            if not alive():
                return None
            time.sleep(POLL_S / 2)
        return None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def commit_cadence(warehouse: Path) -> dict[str, tuple[int, float]]:
    """Per view: commits that changed it, and the mean seconds between them (from the snapshot manifests).

    Visibility comes in commits, so this says how often a reader could see anything new.
    """
    from warehouse.format import list_snapshots, read_manifest

    try:
        snapshots = list_snapshots(warehouse)
    except Exception:  # no warehouse: nothing was committed
        return {}
    times: dict[str, list[int]] = {}
    previous: dict[str, tuple[Any, ...]] = {}
    for _sid, committed_us, name in snapshots:
        files = read_manifest(warehouse, name).files
        for view, entries in files.items():
            current = tuple(entries)
            if current and current != previous.get(view, ()):
                times.setdefault(view, []).append(committed_us)
            previous[view] = current
    return {
        view: (len(ts), (ts[-1] - ts[0]) / 1e6 / (len(ts) - 1) if len(ts) > 1 else math.nan)
        for view, ts in times.items()
    }


def check_view(system: System) -> str:
    """Compare the system's final view with ``tests.truth``'s plain recompute of its topics."""
    from tests.truth import read_topic, recompute_retail

    truth = recompute_retail(
        read_topic(system.bootstrap, system.topics.shipments), read_topic(system.bootstrap, system.topics.sales)
    )
    want = {k: (r["shipped"], r["sold"], r["events"]) for k, r in truth.inventory.items()}
    got = system.count.inventory()
    if got == want:
        return f"equal to the recompute ({len(want):,} keys, {truth.applied:,} events)"
    differ = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
    shown = "; ".join(f"{k}: (shipped, sold, events) {got.get(k)} != {want.get(k)}" for k in differ[:2])
    return f"**DIFFERS** from the recompute: {len(differ)} of {len(want)} keys, e.g. {shown}"


# ---------------------------------------------------------------- figures


def latency_percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max by the nearest-rank method (inf = never visible)."""
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


@dataclass
class PhaseResult:
    """One rate phase of one system."""

    name: str
    target_rate: int | None
    records: int = 0
    offered_valid_per_s: float = 0.0
    records_per_s: float = 0.0
    sustained_per_s: float = 0.0
    measured_s: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)
    never_visible: int = 0
    drained_s: float | None = None
    drain_timeout_s: float = 0.0
    throttled_s: float = 0.0
    visible_at_end: int = 0
    produced_valid_total: int = 0
    visible_span_s: float | None = None

    @property
    def keeps_up(self) -> bool:
        """Sustained at least ``KEEPS_UP`` of the offered rate."""
        return self.offered_valid_per_s > 0 and self.sustained_per_s >= KEEPS_UP * self.offered_valid_per_s

    @property
    def over_count(self) -> bool:
        """More events visible than valid distinct events were produced: a double count."""
        return self.visible_at_end > self.produced_valid_total


@dataclass
class SystemResult:
    """Every figure of one system; ``status`` says why there are none."""

    name: str
    status: str = "ok"
    startup_s: float | None = None
    phases: list[PhaseResult] = field(default_factory=list)
    peak_rss_mib: float | None = None
    hwm_sum_mib: float | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    poll_ms_p50: float | None = None
    commits: dict[str, tuple[int, float]] = field(default_factory=dict)
    check: str = "not checked"
    log_tail: str = ""

    def phase(self, name: str) -> PhaseResult | None:
        """The phase called ``name``, if it ran."""
        return next((p for p in self.phases if p.name == name), None)


# ---------------------------------------------------------------- the systems


@dataclass
class Topics:
    shipments: str
    sales: str
    dead_letters: str
    output: str

    @classmethod
    def fresh(cls, system: str) -> Topics:
        tag = f"bench-stream-{system}-{uuid.uuid4().hex[:6]}"
        return cls(f"{tag}-shipments", f"{tag}-sales", f"{tag}-dead-letters", f"{tag}-inventory")


class System:
    """A system under test running in its own process group, and how to see its view."""

    name = ""
    label = ""
    startup_timeout_s = 300.0

    def __init__(self, bootstrap: str, topics: Topics, work: Path) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.work = work
        self.log_path = work / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.count: Any = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the process (its own session, so a stop reaches every child)."""
        argv, env = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (a clean stop for all three), then SIGKILL of the group if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left (Prism)
        except ProcessLookupError:
            pass
        self.process.wait()
        if self.count is not None:
            self.count.close()
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def counters(self) -> dict[str, Any]:
        """Counters the process printed on a clean stop (a ``RESULT {...}`` line), if any."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        found = [ln for ln in lines if ln.startswith("RESULT ")]
        return json.loads(found[-1][len("RESULT ") :]) if found else {}


class Beamline(System):
    name = "beamline"
    label = "Beamline streaming (`beamline run inventory --mode streaming --runner direct`, Prism)"

    def __init__(self, bootstrap: str, topics: Topics, work: Path, extra: tuple[str, ...] = ()) -> None:
        super().__init__(bootstrap, topics, work)
        self.warehouse = work / "beamline-warehouse"
        self.extra = extra
        self.count = WarehouseCount(self.warehouse)

    def command(self) -> tuple[list[str], dict[str, str]]:
        t = self.topics
        argv = [
            sys.executable, "-m", "cli", "run", "inventory", "--mode", "streaming", "--runner", "direct",
            "--bootstrap-servers", self.bootstrap, "--warehouse", str(self.warehouse),
            f"--shipments_topic={t.shipments}", f"--sales_topic={t.sales}", f"--dead_letter_topic={t.dead_letters}",
            *self.extra,
        ]  # fmt: skip
        return argv, {}

    def counters(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return found
        # The summary line `cancelled in 12.3s: name=1,234, ...` printed on a clean stop.
        for line in text.splitlines():
            if re.match(r"^(cancelled|done|cancelling) in ", line):
                found = {k: int(v.replace(",", "")) for k, v in re.findall(r"(\w+)=([\d,]+)", line)}
        return found


class Plain(System):
    name = "plain"
    label = "(b) plain kafka-python loop, upserts into the warehouse every 100 ms"
    startup_timeout_s = 120.0

    def __init__(self, bootstrap: str, topics: Topics, work: Path) -> None:
        super().__init__(bootstrap, topics, work)
        self.warehouse = work / "plain-warehouse"
        self.count = WarehouseCount(self.warehouse)

    def command(self) -> tuple[list[str], dict[str, str]]:
        t = self.topics
        argv = [
            sys.executable, "-m", "bench.streaming_plain", "--bootstrap", self.bootstrap,
            "--warehouse", str(self.warehouse), "--shipments", t.shipments, "--sales", t.sales,
        ]  # fmt: skip
        return argv, {}


class Quix(System):
    name = "quix"
    label = "(a) Quix Streams app (state store + output topic)"
    startup_timeout_s = 180.0

    def __init__(self, bootstrap: str, topics: Topics, work: Path, python: str) -> None:
        super().__init__(bootstrap, topics, work)
        self.python = python
        self.count = TopicCount(bootstrap, topics.output)

    def command(self) -> tuple[list[str], dict[str, str]]:
        t = self.topics
        argv = [
            self.python, "-m", "bench.streaming_quix", "--bootstrap", self.bootstrap, "--shipments", t.shipments,
            "--sales", t.sales, "--output", t.output, "--state-dir", str(self.work / "quix-state"),
            "--group", f"bench-quix-{uuid.uuid4().hex[:8]}",
        ]  # fmt: skip
        # The bench virtualenv has none of Beamline's packages; bench/ itself is found from the project root.
        return argv, {"PYTHONPATH": str(PROJECT_ROOT)}

    def start(self) -> None:
        super().start()
        self.count.start()


def quix_python() -> tuple[str | None, str]:
    """An interpreter that can import quixstreams, and its versions (or why there is none)."""
    from core.settings import cache_dir

    candidates = [os.environ.get("BEAMLINE_QUIX_PYTHON", ""), sys.executable]
    candidates.append(str(cache_dir() / "bench-venv" / "bin" / "python"))
    probe = (
        "import json, quixstreams, confluent_kafka; "
        "print(json.dumps([quixstreams.__version__, confluent_kafka.__version__, confluent_kafka.libversion()[0]]))"
    )
    for python in filter(None, candidates):
        if not Path(python).exists():
            continue
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            quix, ck, librdkafka = json.loads(done.stdout.strip().splitlines()[-1])
            return python, f"quixstreams {quix} (confluent-kafka {ck}, librdkafka {librdkafka})"
    return None, (
        "Quix Streams is not installed: `make bench` installs requirements-bench.txt into .cache/bench-venv "
        "(a separate virtualenv: quixstreams pins confluent-kafka below Beamline's pin)"
    )


# ---------------------------------------------------------------- running one system


@dataclass
class Settings:
    seconds: float
    warmup: float
    drain_timeout: float
    max_backlog: int
    memory_seconds: float
    seed: int
    memory_rate: float = MEMORY_RATE
    memory_options: tuple[str, ...] = MEMORY_OPTIONS


def _send_paced(
    sender: Sender, records: list[Any], rate: float, log: ProduceLog, stamp: Callable[[Any], int | None] | None = None
) -> None:
    """Send ``records`` at ``rate`` per second against a schedule (not per record), logging produce times.

    Every ``SEND_TICK_S`` the records due by then go out together, each logged
    at its own send time. Waking once per record instead (a sleep of a fifth
    of a millisecond at 5k records/s) kept a whole core busy in this process,
    which took it from the system measured on a 2-core machine.
    """
    started = time.monotonic()
    i, n = 0, len(records)
    while i < n:
        now = time.monotonic()
        due = min(n, int((now - started) * rate) + 1)
        while i < due:
            record = records[i]
            t = time.monotonic()
            sender.send(record.topic, record.key, record.value, stamp(record) if stamp else None)
            if _is_valid_distinct(record.kind):
                log.times.append(t)
            log.records += 1
            i += 1
        sender.serve()
        # Until the next tick, or later when the next record is not due before then.
        pause = max(SEND_TICK_S - (time.monotonic() - now), started + i / rate - time.monotonic())
        if pause > 0:
            time.sleep(pause)


def _send_max(
    sender: Sender, records: Iterator[Any], until: float, log: ProduceLog, tracker: Tracker, backlog: int
) -> float:
    """Send as fast as possible until ``until``, pausing while the unseen backlog exceeds ``backlog``."""
    throttled = 0.0
    while time.monotonic() < until:
        if log.valid - tracker.current > backlog:
            t = time.monotonic()
            sender.serve()
            time.sleep(0.005)
            throttled += time.monotonic() - t
            continue
        for _ in range(500):
            record = next(records)
            t = time.monotonic()
            sender.send(record.topic, record.key, record.value)
            if _is_valid_distinct(record.kind):
                log.times.append(t)
            log.records += 1
        sender.serve()
    return throttled


def run_phase(
    system: System, sender: Sender, tracker: Tracker, log: ProduceLog, label: str, rate: int | None, s: Settings, i: int
) -> PhaseResult:
    """Produce one phase, wait for it to become visible, and compute its figures."""
    result = PhaseResult(label, rate)
    topics = (system.topics.shipments, system.topics.sales)
    first_record, first_valid = log.records, log.valid
    span = s.warmup + s.seconds
    now = datetime.now(timezone.utc)
    started = time.monotonic()
    if rate is not None:
        # Event times follow the wall clock (one new event per 1/rate s), as in a live shop.
        records = list(_retail(s.seed + i, int(rate * span), topics, now, 1.0 / rate))
        started = time.monotonic()
        _send_paced(sender, records, rate, log)
        ended = time.monotonic()
    else:
        stream = _retail(s.seed + i, 10**9, topics, now, 1.0 / 20_000)
        started = time.monotonic()
        result.throttled_s = _send_max(sender, stream, started + span, log, tracker, s.max_backlog)
        ended = time.monotonic()
    sender.flush()
    window_start, window_end = started + s.warmup, ended
    result.measured_s = window_end - window_start
    result.records = log.records - first_record
    result.records_per_s = result.records / (ended - started)
    in_window = [k for k in range(first_valid, log.valid) if window_start <= log.times[k] <= window_end]
    result.offered_valid_per_s = len(in_window) / result.measured_s
    result.produced_valid_total = log.valid

    # Drain: everything produced so far must become visible (a real check, not a sleep).
    result.drain_timeout_s = s.drain_timeout
    reached = tracker.wait_for(log.valid, s.drain_timeout, system.alive)
    result.drained_s = None if reached is None else max(0.0, reached - ended)
    seen_end = time.monotonic()
    result.visible_at_end = tracker.current
    if in_window:
        # How fast the window's events became visible: from the first of them to the last.
        first, last = tracker.first_reached(in_window[0] + 1), tracker.first_reached(in_window[-1] + 1)
        if first is not None and last is not None:
            result.visible_span_s = last - first
            result.sustained_per_s = len(in_window) / max(result.measured_s, result.visible_span_s)
    latencies = []
    for k in in_window:
        when = tracker.first_reached(k + 1)  # event index k is the (k+1)-th valid distinct event
        if when is None:
            result.never_visible += 1
            latencies.append(math.inf)
        else:
            latencies.append(max(0.0, when - log.times[k]))
    result.latency = latency_percentiles(latencies)
    if result.never_visible:
        # A lower bound for what is missing, so the percentiles stay numbers.
        floor = [seen_end - log.times[k] for k in in_window if tracker.first_reached(k + 1) is None]
        result.latency["censored_floor"] = min(floor)
    return result


def run_system(system: System, bootstrap: str, s: Settings) -> SystemResult:
    """Start the system, prove it is live with a probe event, run the three phases, stop it."""
    from transforms.kafka import ensure_topics

    result = SystemResult(system.name)
    t = system.topics
    ensure_topics(bootstrap, [t.shipments, t.sales, t.output], PARTITIONS)
    ensure_topics(bootstrap, [t.dead_letters], 1)
    sender = Sender(bootstrap)
    log = ProduceLog()
    started = time.monotonic()
    system.start()
    assert system.process is not None
    sampler = RssSampler(system.process.pid)
    sampler.start()
    tracker = Tracker(system.count)
    tracker.start()
    try:
        # Readiness: one valid event, produced now, must come out of the read side.
        probe = {
            "event_id": f"probe-{uuid.uuid4()}",
            "store_id": "store-probe",
            "item_id": "item-probe",
            "quantity": 1,
            "event_time": datetime.now(timezone.utc).isoformat(),
        }
        sender.send(t.shipments, b"store-probe:item-probe", json.dumps(probe).encode())
        log.times.append(time.monotonic())
        log.records += 1
        sender.flush()
        if tracker.wait_for(1, system.startup_timeout_s, system.alive) is None:
            raise RuntimeError(
                f"no event became visible within {system.startup_timeout_s:.0f}s of the start"
                + ("" if system.alive() else f" (the process exited with {system.process.returncode})")
            )
        result.startup_s = tracker.first_reached(1) - started  # type: ignore[operator]
        print(f"  {system.name}: first event visible {result.startup_s:.1f}s after the start", flush=True)
        for i, (label, rate) in enumerate(PHASES):
            phase = run_phase(system, sender, tracker, log, label, rate, s, i)
            result.phases.append(phase)
            p99 = phase.latency.get("p99", math.nan)
            print(
                f"  {system.name} {label}: offered {phase.offered_valid_per_s:,.0f}/s, sustained "
                f"{phase.sustained_per_s:,.0f}/s, p99 {p99:.2f}s, drained "
                f"{'no' if phase.drained_s is None else f'{phase.drained_s:.1f}s'}",
                flush=True,
            )
            if not system.alive():
                raise RuntimeError(f"the process exited with {system.process.returncode} during phase {label}")
        if result.phases[-1].drained_s is None:
            result.check = "not checked: the last phase never drained"
        else:
            try:
                result.check = check_view(system)
            except Exception as exc:  # the figures stand; say why the check is missing
                result.check = f"not checked: {type(exc).__name__}: {exc}"
        print(f"  {system.name}: final view {result.check}", flush=True)
    except Exception as exc:
        result.status = f"failed: {exc}"
        print(f"  {system.name}: {result.status}", file=sys.stderr, flush=True)
    finally:
        try:
            sampler.sample()
            sampler.stop()
            tracker.stop()
        finally:
            rc = system.stop()  # whatever failed above, never leave the system running
        sender.close()
        result.counters = system.counters()
        result.log_tail = system.log_tail()
        if rc not in (0, None) and result.status == "ok":
            result.status = f"ok, but the process exited with {rc} when stopped"
    result.peak_rss_mib = max((x.rss_kib for x in sampler.samples), default=0) / 1024
    result.hwm_sum_mib = sum(sampler.peaks.values()) / 1024
    warehouse = getattr(system, "warehouse", None)
    if warehouse is not None:
        result.commits = commit_cadence(warehouse)
    if tracker.query_s:
        result.poll_ms_p50 = sorted(tracker.query_s)[len(tracker.query_s) // 2] * 1000
    return result


# ---------------------------------------------------------------- memory (30-minute-equivalent)


@dataclass
class MemoryResult:
    system: str = "beamline"
    status: str = "ok"
    wall_s: float = 0.0
    records: int = 0
    event_span_s: float = 0.0
    rate: float = 0.0
    samples: list[tuple[str, float, float, dict[str, int]]] = field(default_factory=list)  # label, t, MiB, by proc
    peak_sampled_mib: float = 0.0
    series: list[float] = field(default_factory=list)
    hwm: dict[str, float] = field(default_factory=dict)
    visible: int = 0
    too_old: int = 0
    valid: int = 0
    settled_s: float | None = None
    backlog_at_end: int | None = None
    dead_letters: int | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


def _event_micros(value: bytes | None) -> int | None:
    from bench.baseline_inventory import parse_event

    event = parse_event(value)
    return None if event is None else event[4]


def run_memory(bootstrap: str, work: Path, s: Settings, quix_python: str | None = None) -> MemoryResult:
    """Beamline (or Quix Streams, given its interpreter) on a steady stream whose event times span 30 minutes.

    RSS of the system's processes is sampled every second.

    Record timestamps are the event times, so the read's watermark (record time
    minus 5 s) advances through the 30 minutes as fast as the stream does and
    the dedupe horizon and window lateness are crossed while it runs. Event
    times start now and run ahead of the wall clock (the broker refuses record
    times more than an hour ahead, so the span stays under that).
    """
    from transforms.kafka import ensure_topics

    system: System
    if quix_python is None:
        result = MemoryResult()
        topics = Topics.fresh("memory")
        system = Beamline(bootstrap, topics, work / "memory", s.memory_options)
    else:
        result = MemoryResult("quix")
        topics = Topics.fresh("memory-quix")
        system = Quix(bootstrap, topics, work / "memory-quix", quix_python)
    system.work.mkdir(parents=True, exist_ok=True)
    system.log_path = system.work / f"{system.name}.log"
    ensure_topics(bootstrap, [topics.shipments, topics.sales, topics.output], PARTITIONS)
    ensure_topics(bootstrap, [topics.dead_letters], 1)
    n = int(s.memory_rate * s.memory_seconds)
    start = datetime.now(timezone.utc) + timedelta(seconds=5)
    # One new event per gap; about a tenth of records do not move the clock (restocks, re-sends).
    gap = MEMORY_SPAN_S / (n * 0.85)
    records = list(_retail(s.seed + 100, n, (topics.shipments, topics.sales), start, gap))
    times: list[int] = []
    stamps: dict[int, int] = {}
    last = int(start.timestamp() * 1000)
    for record in records:
        micros = _event_micros(record.value) if _is_valid_distinct(record.kind) or record.kind == "duplicate" else None
        if micros is not None:
            times.append(micros)
            last = max(last, micros // 1000)
        stamps[id(record)] = micros // 1000 if micros is not None else last
    # The generator's clock span; ~5% out-of-order events reach up to an hour before it.
    result.event_span_s = (max(times) / 1e6 - start.timestamp()) if times else 0.0
    result.records = len(records)
    result.valid = 1 + sum(1 for r in records if _is_valid_distinct(r.kind))

    sender = Sender(bootstrap)
    log = ProduceLog()
    system.start()
    assert system.process is not None
    sampler = RssSampler(system.process.pid)
    sampler.start()
    # Settled: every valid event visible, or (Beamline) refused as older than its key's dedupe horizon.
    # Quix Streams' baseline never forgets an id, so for it every valid event becomes visible.
    settled = SettledCount(system.warehouse) if isinstance(system, Beamline) else None
    tracker = Tracker(settled if settled is not None else system.count)
    tracker.start()
    try:
        probe = {
            "event_id": f"probe-{uuid.uuid4()}",
            "store_id": "store-probe",
            "item_id": "item-probe",
            "quantity": 1,
            "event_time": start.isoformat(),
        }
        sender.send(topics.shipments, None, json.dumps(probe).encode(), int(start.timestamp() * 1000))
        sender.flush()
        if tracker.wait_for(1, system.startup_timeout_s, system.alive) is None:
            raise RuntimeError("no event became visible after the start")
        t0 = time.monotonic()
        offset = t0 - sampler.started_at
        picks = [("start of the stream", sampler.sample())]
        _send_paced(sender, records, s.memory_rate, log, lambda r: stamps[id(r)])
        sender.flush()
        result.wall_s = time.monotonic() - t0
        result.rate = result.records / result.wall_s
        end = sampler.sample()
        result.backlog_at_end = result.valid - tracker.current
        # Settled: every valid event is either visible or a "too old to dedupe" dead letter.
        done = tracker.wait_for(result.valid, s.drain_timeout, system.alive)
        result.settled_s = None if done is None else done - t0
        last_sample = sampler.sample()
        inside = [x for x in sampler.samples if offset <= x.t <= end.t]
        for label, fraction in (("25%", 0.25), ("middle (50%)", 0.5), ("75%", 0.75)):
            picks.append((label, min(inside, key=lambda x: abs(x.t - offset - fraction * (end.t - offset)))))
        picks.append(("end of the stream (last record sent)", end))
        picks.append(("settled" if done is not None else "drain timeout", last_sample))
        result.samples = [(label, x.t - offset, x.rss_kib / 1024, x.by_process) for label, x in picks]
        run = [x for x in sampler.samples if offset <= x.t <= last_sample.t]
        result.series = [
            min(run, key=lambda x: abs(x.t - offset - i / 10 * (last_sample.t - offset))).rss_kib / 1024
            for i in range(11)
        ]
        if settled is not None:
            result.visible, result.too_old = settled.parts
            result.dead_letters = settled.dead_letters
        else:
            result.visible = tracker.current
    except Exception as exc:
        result.status = f"failed: {exc}"
        print(f"  memory: {result.status}", file=sys.stderr, flush=True)
    finally:
        try:
            sampler.sample()
            sampler.stop()
            tracker.stop()
        finally:
            system.stop()
        sender.close()
        if settled is not None:
            settled.close()
        if system.count is not None:
            system.count.close()
        result.counters = system.counters()
        result.log_tail = system.log_tail()
    result.peak_sampled_mib = max((x.rss_kib for x in sampler.samples), default=0) / 1024
    result.hwm = {name: kib / 1024 for name, kib in sampler.peaks.items()}
    return result


@dataclass
class FloorResult:
    """The idle Beam job's memory (``bench.idle_beam``): a floor under any streaming job on Beam and Prism."""

    status: str = "ok"
    seconds: float = 0.0
    peak_sampled_mib: float = 0.0
    hwm: dict[str, float] = field(default_factory=dict)


def run_floor(work: Path, seconds: float) -> FloorResult:
    """Run ``bench.idle_beam`` for ``seconds`` in a subprocess and sample its process tree's RSS every second."""
    result = FloorResult(seconds=seconds)
    log_path = work / "idle-beam.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(  # `-m` from the project root: bench and core import from there
            [sys.executable, "-m", "bench.idle_beam", "--seconds", f"{seconds:g}"],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        sampler = RssSampler(process.pid)
        sampler.start()
        try:
            code = process.wait(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        finally:
            sampler.stop()
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
        result.status = f"failed (exit {code}): {tail[0] if tail else 'no output'}"
        print(f"  floor: {result.status}", file=sys.stderr, flush=True)
    result.peak_sampled_mib = max((x.rss_kib for x in sampler.samples), default=0) / 1024
    result.hwm = {name: kib / 1024 for name, kib in sampler.peaks.items()}
    return result


# ---------------------------------------------------------------- report


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _versions(quix: str) -> str:
    import apache_beam
    import duckdb
    import kafka

    from core.settings import kafka_libs_dir

    broker = "unknown"
    for jar in sorted(kafka_libs_dir().glob("kafka_*.jar")):
        match = re.fullmatch(r"kafka_[\d.]+-([\d.]+)\.jar", jar.name)
        if match:
            broker = match.group(1)
    try:
        import confluent_kafka

        ck = f"confluent-kafka {confluent_kafka.__version__} (load producer)"
    except ImportError:
        ck = "confluent-kafka not installed (load producer: kafka-python)"
    return (
        f"Python {platform.python_version()}, apache-beam {apache_beam.__version__} (Prism runner), "
        f"kafka-python {kafka.__version__}, {ck}, duckdb {duckdb.__version__}, Apache Kafka broker {broker}; "
        f"baseline (a): {quix}"
    )


def _s(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "never"
    return f"{x:.{digits}f}"


def _latency_cell(p: PhaseResult, key: str) -> str:
    value = p.latency.get(key)
    if value is None:
        return "-"
    if math.isinf(value):
        return f"> {p.latency['censored_floor']:.2f}"
    return f"{value:.2f}"


def _phase_row(label: str, p: PhaseResult) -> str:
    target = f"{p.target_rate:,}" if p.target_rate else "max"
    if p.target_rate is None:
        up = "saturated" if p.throttled_s > 0.1 * p.measured_s else ("yes" if p.keeps_up else "no")
    else:
        up = "yes" if p.keeps_up else "**no**"
    drained = f"not within {p.drain_timeout_s:.0f}" if p.drained_s is None else f"{p.drained_s:.1f}"
    return (
        f"| {label} | {p.name} | {target} | {p.records_per_s:,.0f} | {p.offered_valid_per_s:,.0f} "
        f"| {p.sustained_per_s:,.0f} "
        f"| {up} | {_latency_cell(p, 'p50')} | {_latency_cell(p, 'p99')} | {_latency_cell(p, 'max')} | {drained} |"
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def report(
    args: argparse.Namespace,
    s: Settings,
    systems: list[SystemResult],
    memory: list[MemoryResult],
    floor: FloorResult | None,
    versions: str,
    skipped: dict[str, str],
    loads: tuple[str, str],
    client: str,
) -> str:
    """The results file: settings, method, every figure with its baselines, ratios and goals."""
    by = {x.name: x for x in systems}
    labels = {"beamline": "Beamline", "quix": "(a) Quix Streams", "plain": "(b) plain loop"}
    # Where files went (--output, --keep) is this machine's business, not the figures'.
    shown_args: list[str] = []
    skip = False
    for arg in args.raw_argv:
        if skip or arg.startswith(("--output", "--keep")):
            skip = not skip and "=" not in arg
            continue
        shown_args.append(arg)
    command = " ".join(["python -m bench.streaming", *shown_args])
    lines = [
        "# Streaming: sustained events/s, produce-to-visible latency, memory",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, {memory_gib():.1f} GiB RAM; shared with other work",
        f"- load average (1, 5, 15 min) before / after: {loads[0]} / {loads[1]}",
        f"- {versions}",
        f"- command: `{command}`; each phase {s.warmup:.0f} s warm-up (discarded) + {s.seconds:.0f} s measured; "
        f"drain timeout {s.drain_timeout:.0f} s; max-phase backlog cap {s.max_backlog:,} events",
        f"- workload: `producers.retail` (~{INVALID_RATE:.0%} invalid, ~{DUPLICATE_RATE:.0%} duplicates, ~5% out of "
        f"order, 5 stores x 50 items), two topics of {PARTITIONS} partitions per system, one local broker; "
        f"load sent with {client} from the benchmark process",
        "",
    ]
    if args.quick:
        lines += ["**Quick run (`--quick`): harness check only; phases are too short for figures.**", ""]

    lines += [
        "| system | phase | target records/s | sent records/s | offered events/s | sustained events/s | keeps up "
        "| p50 s | p99 s | max s | drained after (s) |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name in ("beamline", "quix", "plain"):
        x = by.get(name)
        if x is None:
            continue
        if not x.phases:
            lines.append(f"| {labels[name]} | - | - | - | - | - | - | - | - | - | {x.status} |")
            continue
        for p in x.phases:
            lines.append(_phase_row(labels[name], p))
    lines.append("")

    beam = by.get("beamline")
    quix = by.get("quix")
    plain = by.get("plain")

    def sustained(x: SystemResult | None, phase: str) -> float | None:
        p = x.phase(phase) if x is not None else None
        return p.sustained_per_s if p is not None else None

    b5 = beam.phase("5k") if beam else None
    p99 = b5.latency.get("p99") if b5 else None
    if p99 is not None and math.isinf(p99):
        p99_text = f"> {b5.latency['censored_floor']:.2f}"  # type: ignore[union-attr]
        p99_met = False
    else:
        p99_text = _s(p99)
        p99_met = p99 is not None and p99 < GOAL_P99_S
    vs_quix = _ratio(sustained(beam, "max"), sustained(quix, "max"))
    vs_plain = _ratio(sustained(beam, "max"), sustained(plain, "max"))
    q5 = quix.phase("5k") if quix else None
    quix_p99 = q5.latency.get("p99") if q5 else None
    if quix_p99 is not None and p99_met:
        p99_met = p99 is not None and p99 < quix_p99
    rss_vs_quix = _ratio(beam.peak_rss_mib if beam else None, quix.peak_rss_mib if quix else None)
    lines += [
        (
            f"- Beamline p99 at 5k events/s: **{p99_text} s** (goal < {GOAL_P99_S:g} s and below Quix Streams' "
            f"{_s(quix_p99)} s: {'met' if p99_met else 'MISSED'})"
            if b5 is not None
            else f"- Beamline p99 at 5k events/s: not measured ({beam.status if beam else 'not run'})"
        ),
        f"- Beamline sustained events/s at max: **{sustained(beam, 'max') or 0:,.0f}**"
        if sustained(beam, "max") is not None
        else "- Beamline sustained events/s at max: not measured",
        (
            f"- Beamline / (a) Quix Streams, sustained events/s at max: **{vs_quix:.2f}x** (goal >= "
            f"{GOAL_VS_QUIX:.1f}x, matched or beaten: {'met' if vs_quix >= GOAL_VS_QUIX else 'MISSED'})"
            if vs_quix is not None
            else "- Beamline / (a) Quix Streams: not measured "
            + f"({quix.status if quix else skipped.get('quix', 'not run')})"
        ),
        (
            f"- peak RSS of all the job's processes over the three phases, Beamline / (a) Quix Streams: "
            f"**{rss_vs_quix:.2f}x** (goal <= {GOAL_RSS_VS_QUIX:.1f}x: "
            f"{'met' if rss_vs_quix <= GOAL_RSS_VS_QUIX else 'MISSED'})"
            if rss_vs_quix is not None
            else "- peak RSS, Beamline / (a) Quix Streams: not measured"
        ),
        (
            f"- Beamline / (b) plain loop, sustained events/s at max: **{vs_plain:.2f}x**"
            if vs_plain is not None
            else "- Beamline / (b) plain loop: not measured"
        ),
    ]
    for phase in ("1k", "5k"):
        parts = []
        for other, name in ((quix, "(a)"), (plain, "(b)")):
            ratio = _ratio(sustained(beam, phase), sustained(other, phase))
            if ratio is not None:
                parts.append(f"{name} {ratio:.2f}x")
        if parts:
            lines.append(f"- sustained events/s at {phase}, Beamline / baseline: {', '.join(parts)}")
    lines.append("")

    lines += [
        "| system | status | first event visible after start (s) | peak RSS of its processes, sampled (MiB) "
        "| sum of per-process peaks, VmHWM (MiB) | read-side poll, median (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for x in systems:
        lines.append(
            f"| {labels[x.name]} | {x.status} | {_s(x.startup_s, 1)} | {_s(x.peak_rss_mib, 0)} | "
            f"{_s(x.hwm_sum_mib, 0)} | {_s(x.poll_ms_p50, 1)} |"
        )
    lines.append("")
    for x in systems:
        lines.append(f"- {labels[x.name]} final inventory view: {x.check}")
        if x.commits:
            shown = ", ".join(
                f"{view} {n:,} (one per {gap:.2f} s)" for view, (n, gap) in sorted(x.commits.items()) if n > 1
            )
            lines.append(f"- {labels[x.name]} warehouse commits over the whole run, per view: {shown}")
        if x.counters:
            shown = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in sorted(x.counters.items()))
            lines.append(f"- {labels[x.name]} counters: {shown}")
        if x.status != "ok" and x.log_tail:
            lines += [f"- {labels[x.name]} log, last lines:", "", "```", x.log_tail, "```", ""]
    for name, why in skipped.items():
        lines.append(f"- {labels[name]} skipped: {why}")
    lines.append("")

    for m in memory:
        lines += _memory_section(m, s)
    lines += _memory_comparison(memory)
    if floor is not None:
        lines += _floor_section(floor, memory, quix)

    lines += [
        "## Method",
        "",
        "- **Systems**, one at a time on fresh topics, each started as a subprocess in its own process group and",
        "  stopped with SIGTERM: Beamline exactly as `beamline run inventory --mode streaming --runner direct`",
        "  (Prism, default options: 3 views + dead letters to a view and a topic); (a) `bench/streaming_quix.py`;",
        "  (b) `bench/streaming_plain.py`. Both baselines validate records as the contract says, dedupe by",
        "  event_id per topic and keep shipped/sold/events/last_event_time per (store_id, item_id)",
        "  (`bench/baseline_inventory.py`); neither keeps dead letters or sales_by_window.",
        "- **Visible** means: for Beamline and (b), in the answer of the read side's query API",
        "  (`readside.query.Reader`, what `beamline query` uses) to `SELECT sum(events) FROM inventory`;",
        "  for (a), the sum over keys of the newest `events` in Quix's output topic, read by a consumer",
        "  in the benchmark process (Quix Streams' natural read side: the changelog of its view).",
        "- **Readiness**: before the phases, one valid probe event is produced and the benchmark waits",
        "  until the read side shows it (the *first event visible* column); no sleeps stand in for checks.",
        f"- **Polling**: a thread reads the visible count every {POLL_S * 1000:.0f} ms and keeps (time taken",
        "  just before the read, running maximum of the count). The view only grows, so this is the",
        "  time series of how many distinct valid events are visible.",
        "- **Latency**: each valid, distinct event (the generator tags invalid records and re-sends;",
        "  the probe counts as event 1) gets its produce time (just before the client's `produce` call)",
        "  and its rank k in produce order. Its latency is the first poll time at which the visible",
        "  count was >= k, minus its produce time. Partitions are read in parallel, so this is the time",
        "  until *k events* are visible, not necessarily event k itself; the poll interval adds up to",
        f"  {POLL_S * 1000:.0f} ms. Percentiles are nearest-rank over the events produced in the measured window.",
        "  An event never visible before the drain timeout is counted as infinitely late; the table then",
        "  shows `> x`, x being the shortest time such an event had waited.",
        "- **Sustained events/s**: the valid distinct events produced in the measured window, divided by",
        "  the time from when the first of them became visible to when the last did (or by the window's",
        "  length if that is longer: a fixed-rate phase cannot apply more than it is offered). So a system",
        "  that falls behind shows the rate at which it worked through the window's events, whatever its",
        "  latency. *Offered events/s*: those events divided by the window's length. *Keeps up*:",
        f"  sustained >= {KEEPS_UP:.0%} of offered (visibility comes in commits, which blurs the span by a",
        "  commit interval). Target and sent rates count every record (invalid and duplicates too).",
        "- **max**: the producer sends as fast as it can, but pauses while more than the backlog cap of",
        "  valid events are produced and not yet visible, so a slow system faces a full queue without",
        "  an unbounded backlog; *saturated* means the cap throttled the producer for more than 10% of",
        "  the window (the system, not the producer, set the pace); *yes* there means the system kept up",
        "  with everything the producer could send, so its figure is a lower bound of its capacity. The",
        "  producer runs in the benchmark process and shares the 2 cores with the system under test.",
        "- **Drain**: after each phase the benchmark waits until every valid event produced so far is",
        "  visible (and checks the count never exceeds it: no double count). After the last phase each",
        "  system's final view (shipped, sold, events per key) is compared with `tests.truth`'s plain",
        "  recompute of its topics.",
        "",
    ]
    return "\n".join(lines)


def _floor_section(floor: FloorResult, memory: list[MemoryResult], quix: SystemResult | None) -> list[str]:
    """The idle Beam job's peak, and how it compares with Quix Streams' peaks in the same run."""
    lines = ["## Memory floor: an idle Beam streaming job on Prism", ""]
    if floor.status != "ok":
        return [*lines, f"- not measured: {floor.status}", ""]
    per_process = ", ".join(f"{n.split('[')[0]} {mib:,.0f} MiB" for n, mib in sorted(floor.hwm.items()))
    lines += [
        f"- `bench/idle_beam.py` for {floor.seconds:g} s: Prism with the SDK worker in the launching process "
        "(LOOPBACK, as Beamline's streaming runs), a `PeriodicImpulse` once a second into a step that does "
        "nothing; no Kafka, no state, no Beamline code",
        f"- peak of the sampled sums: **{floor.peak_sampled_mib:,.0f} MiB** (per-process peaks: {per_process})",
    ]
    quix_stream = next((m for m in memory if m.system == "quix" and m.status == "ok"), None)
    beam_stream = next((m for m in memory if m.system == "beamline" and m.status == "ok"), None)
    if quix_stream is not None:
        ratio = _ratio(floor.peak_sampled_mib, quix_stream.peak_sampled_mib)
        lines.append(
            f"- idle Beam job on Prism, peak RSS / Quix Streams' peak on the 30-minute stream: **{ratio:.2f}x** "
            f"({quix_stream.peak_sampled_mib:,.0f} MiB): above 1.0x, no job with a Beam SDK worker and Prism "
            f"can meet the goal of <= {GOAL_RSS_VS_QUIX:.1f}x on that stream, whatever its own code holds"
        )
    if quix is not None and quix.peak_rss_mib:
        ratio = _ratio(floor.peak_sampled_mib, quix.peak_rss_mib)
        lines.append(
            f"- idle Beam job / Quix Streams' peak over the rate phases ({quix.peak_rss_mib:,.0f} MiB): {ratio:.2f}x"
        )
    if beam_stream is not None:
        lines.append(
            f"- Beamline above the floor on the 30-minute stream: "
            f"{beam_stream.peak_sampled_mib - floor.peak_sampled_mib:+,.0f} MiB"
        )
    return [*lines, ""]


def _memory_comparison(memory: list[MemoryResult]) -> list[str]:
    """Beamline against Quix Streams on the same 30-minute-equivalent stream: peak and second-half growth."""
    by = {m.system: m for m in memory if m.status == "ok"}
    beam, quix = by.get("beamline"), by.get("quix")
    if beam is None or quix is None:
        return []
    ratio = _ratio(beam.peak_sampled_mib, quix.peak_sampled_mib)
    growth = {m.system: _second_half_growth(m) for m in (beam, quix)}
    shown = {k: "-" if v is None else f"{v:+,.0f} MiB" for k, v in growth.items()}
    return [
        "## Memory on the 30-minute-equivalent stream: Beamline / Quix Streams",
        "",
        f"- peak of the sampled sums, Beamline / (a) Quix Streams: **{ratio:.2f}x** "
        f"({beam.peak_sampled_mib:,.0f} MiB against {quix.peak_sampled_mib:,.0f} MiB; goal <= {GOAL_RSS_VS_QUIX:.1f}x: "
        f"{'met' if ratio is not None and ratio <= GOAL_RSS_VS_QUIX else 'MISSED'})",
        f"- RSS growth over the second half of the stream: Beamline {shown['beamline']}, "
        f"(a) Quix Streams {shown['quix']}",
        "",
    ]


def _second_half_growth(m: MemoryResult) -> float | None:
    middle = next((x for x in m.samples if x[0].startswith("middle")), None)
    last = next((x for x in m.samples if x[0].startswith("end of the stream")), None)
    return None if middle is None or last is None else last[2] - middle[2]


def _memory_section(m: MemoryResult, s: Settings) -> list[str]:
    if m.system == "quix":
        options = [
            "- Quix Streams: the same baseline app as above (`bench/streaming_quix.py`); it keeps every event id",
            "  it has seen (no dedupe horizon), so all valid events become visible",
            f"- status: {m.status}; {m.visible:,} of {m.valid:,} valid distinct events visible"
            + (
                f"; all visible {m.settled_s:.0f} s after the first record was sent"
                if m.settled_s is not None
                else f"; **not all visible within the drain timeout ({s.drain_timeout:.0f} s)**"
            ),
        ]
    else:
        options = [
            f"- Beamline options: `{' '.join(s.memory_options)}`. The benchmark's default scales the state settings",
            "  down (dedupe horizon 10 min, 5-minute windows, 5 min allowed lateness): with the product defaults",
            "  (7 days, 1 h, 1 h) a 30-minute stream never crosses a horizon, so no state could be seen being",
            "  forgotten. The generator's ~5% out-of-order events (up to 1 h back) then become dead letters once",
            "  older than their key's horizon, as the contract says.",
            f"- status: {m.status}; of {m.valid:,} valid distinct events, {m.visible:,} visible in the inventory "
            f"and {m.too_old:,} refused as older than the dedupe horizon (dead letters); "
            + (
                f"all accounted for {m.settled_s:.0f} s after the first record was sent"
                if m.settled_s is not None
                else f"**not all accounted for within the drain timeout ({s.drain_timeout:.0f} s)**"
            )
            + f"; dead_letters rows in all: {m.dead_letters if m.dead_letters is not None else '-'}",
        ]
    lines = [
        f"## Memory: a 30-minute-equivalent stream ({'Quix Streams' if m.system == 'quix' else 'Beamline'})",
        "",
        f"- {m.records:,} records at {m.rate:,.0f} records/s for {m.wall_s:.0f} s of wall time; event times span "
        f"**{m.event_span_s / 60:.1f} minutes** (compressed {m.event_span_s / max(m.wall_s, 1e-9):.0f}x; ~5% "
        "out-of-order events reach up to an hour further back); record timestamps are the event times"
        + (
            ", so the read's watermark (record time minus 5 s) walks through them at that speed"
            if m.system == "beamline"
            else ""
        ),
        *options,
        "- backlog when the last record was sent (valid events neither visible nor refused yet): "
        + ("-" if m.backlog_at_end is None else f"{m.backlog_at_end:,}")
        + " (a backlog grows RSS by itself: buffered records, not state)",
        "",
        "| when | seconds into the stream | RSS of the pipeline's processes (MiB) | per process (MiB) |",
        "|---|---:|---:|---|",
    ]
    for label, t, mib, by_proc in m.samples:
        parts = ", ".join(f"{k} {v / 1024:,.0f}" for k, v in sorted(by_proc.items()))
        lines.append(f"| {label} | {t:.0f} | {mib:,.0f} | {parts} |")
    middle = next((x for x in m.samples if x[0].startswith("middle")), None)
    growth = _second_half_growth(m)
    lines.append("")
    if middle is not None and growth is not None and middle[2] > 0:
        bounded = "bounded state: close to 0 once the horizon and windows are crossed"
        lines.append(
            f"- second half of the stream: RSS {growth:+,.0f} MiB ({growth / middle[2]:+.0%}) from the middle "
            f"to the last record sent ({bounded if m.system == 'beamline' else 'every id is kept'})"
        )
    if m.series:
        lines.append(
            "- RSS (MiB) every tenth of the run, from the first record sent to settled: "
            + ", ".join(f"{x:,.0f}" for x in m.series)
        )
    lines += [
        f"- peak of the sampled sums: **{m.peak_sampled_mib:,.0f} MiB**; per-process peaks (VmHWM): "
        + ", ".join(f"{k} {v:,.0f} MiB" for k, v in sorted(m.hwm.items())),
        *(
            ["- the 1M-event batch backfill's peak RSS is in `bench/results/backfill.md` (Beamline peak RSS)"]
            if m.system == "beamline"
            else []
        ),
        "",
    ]
    if m.counters:
        lines.append("- counters: " + ", ".join(f"{k}={v:,}" for k, v in sorted(m.counters.items())))
        lines.append("")
    if m.status != "ok" and m.log_tail:
        lines += ["```", m.log_tail, "```", ""]
    return lines


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run every system and the memory stream; write the results file; exit 1 if Beamline failed."""
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds discarded at the start of each phase")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for a phase to be visible")
    parser.add_argument("--max-backlog", type=int, default=100_000, help="max phase: valid events produced, unseen")
    parser.add_argument("--memory-seconds", type=float, default=300.0, help="wall seconds of the 30-minute stream")
    parser.add_argument("--memory-rate", type=float, default=MEMORY_RATE, help="records/s of the 30-minute stream")
    parser.add_argument(
        "--systems",
        default="beamline,quix,plain,memory,memory-quix,floor",
        help="comma-separated subset to run; memory, memory-quix = the 30-minute-equivalent stream on Beamline, "
        "on Quix Streams; floor = an idle Beam job on Prism (bench.idle_beam)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (harness check, not figures)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--memory-beam-arg",
        action="append",
        default=[],
        help=f"Beam option for the memory stream, repeatable; replaces {' '.join(MEMORY_OPTIONS)}",
    )
    parser.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="extra Beam option for Beamline's rate phases (1k, 5k, max), repeatable; default none",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it (logs, warehouses, broker)")
    args = parser.parse_args(raw)
    args.raw_argv = raw
    if args.quick:
        args.seconds, args.warmup, args.drain_timeout, args.memory_seconds = 4.0, 1.0, 30.0, 15.0
        args.max_backlog = min(args.max_backlog, 20_000)
    s = Settings(args.seconds, args.warmup, args.drain_timeout, args.max_backlog, args.memory_seconds, args.seed)
    s.memory_rate = args.memory_rate
    if args.memory_beam_arg:
        s.memory_options = tuple(args.memory_beam_arg)
    wanted = [x.strip() for x in args.systems.split(",") if x.strip()]
    known = ("beamline", "quix", "plain", "memory", "memory-quix", "floor")
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")

    from infra.kafka_broker import KafkaBroker, free_port

    # kafka-python logs every refused connection while the broker starts; the outcome is checked anyway.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    quix_python_path, quix_note = quix_python()
    versions = _versions(quix_note if quix_python_path else "not installed")
    load_before = _load()
    results: list[SystemResult] = []
    skipped: dict[str, str] = {}
    memory: list[MemoryResult] = []
    floor: FloorResult | None = None
    with tempfile.TemporaryDirectory(prefix="beamline-bench-streaming-") as tmp_dir:
        work = Path(tmp_dir)
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=False)
        broker = KafkaBroker(work / "kafka")
        broker.start(free_port())
        client = _sender_client()
        try:
            bootstrap = broker.status().bootstrap_servers or ""
            for name in [x for x in wanted if x in ("beamline", "quix", "plain")]:
                topics = Topics.fresh(name)
                system: System
                if name == "beamline":
                    system = Beamline(bootstrap, topics, work, tuple(args.beam_arg))
                elif name == "plain":
                    system = Plain(bootstrap, topics, work)
                elif name == "quix":
                    if quix_python_path is None:
                        skipped["quix"] = quix_note
                        print(f"== quix: skipped: {quix_note}", flush=True)
                        continue
                    system = Quix(bootstrap, topics, work, quix_python_path)
                else:
                    continue
                print(f"== {name}", flush=True)
                results.append(run_system(system, bootstrap, s))
            if "memory" in wanted:
                print("== memory: 30-minute-equivalent stream on Beamline", flush=True)
                memory.append(run_memory(bootstrap, work, s))
            if "memory-quix" in wanted:
                if quix_python_path is None:
                    print(f"== memory-quix: skipped: {quix_note}", flush=True)
                else:
                    print("== memory-quix: 30-minute-equivalent stream on Quix Streams", flush=True)
                    memory.append(run_memory(bootstrap, work, s, quix_python_path))
            if "floor" in wanted:
                print("== floor: an idle Beam streaming job on Prism", flush=True)
                floor = run_floor(work, FLOOR_SECONDS_QUICK if args.quick else FLOOR_SECONDS)
        finally:
            broker.stop()
    text = report(args, s, results, memory, floor, versions, skipped, (load_before, _load()), client)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    failed = [x.name for x in results if x.status.startswith("failed")]
    over = [f"{x.name} {p.name}" for x in results for p in x.phases if p.over_count]
    over += [f"{x.name} final view" for x in results if "DIFFERS" in x.check]
    if over:
        print(f"wrong answers: {', '.join(over)}", file=sys.stderr)
    beam_failed = "beamline" in failed or any(m.system == "beamline" and m.status != "ok" for m in memory)
    return 1 if beam_failed or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
