"""Helpers shared by the end-to-end tests: a retail log, the views, a streaming run.

A test produces events into fresh topics (:class:`RetailLog`), runs a pipeline as
a user would, and compares :func:`views` (what ``beamline query`` sees) with
:func:`expected_views` (what :mod:`tests.truth` recomputes from the same log).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from producers.retail import RetailConfig, generate_retail
from producers.send import send_records
from readside.query import run_query
from tests.cli_helpers import PROJECT_ROOT
from tests.truth import Truth, read_topic, recompute_retail

__all__ = [
    "RetailLog",
    "describe_diff",
    "expected_views",
    "group_offsets",
    "history",
    "kill_group",
    "start_streaming",
    "stop_pipeline",
    "streaming_convergence_s",
    "views",
    "views_or_none",
    "wait_for_views",
]


class RetailLog:
    """Fresh shipments/sales/dead-letter topics for one test, plus its warehouse."""

    def __init__(self, bootstrap: str, make_topic: Callable[..., str], warehouse: Path) -> None:
        self.bootstrap = bootstrap
        self.shipments = make_topic(4)
        self.sales = make_topic(4)
        self.dead_letters = make_topic(1)
        self.warehouse = warehouse

    def with_warehouse(self, warehouse: Path) -> RetailLog:
        """The same topics, another warehouse."""
        other = copy.copy(self)
        other.warehouse = warehouse
        return other

    def produce(self, config: RetailConfig, rate: float | None = None) -> None:
        config = RetailConfig(**{**config.__dict__, "shipments_topic": self.shipments, "sales_topic": self.sales})
        send_records(self.bootstrap, generate_retail(config), rate=rate, progress=None)

    def run_args(self, mode: str) -> list[str]:
        return [
            "run", "inventory", "--mode", mode, "--bootstrap-servers", self.bootstrap,
            "--warehouse", str(self.warehouse), f"--shipments_topic={self.shipments}",
            f"--sales_topic={self.sales}", f"--dead_letter_topic={self.dead_letters}",
        ]  # fmt: skip

    def truth(self) -> Truth:
        return recompute_retail(read_topic(self.bootstrap, self.shipments), read_topic(self.bootstrap, self.sales))


def history(events: int, seed: int, span: timedelta) -> RetailConfig:
    """``events`` retail events spread evenly over the ``span`` before now; a few invalid, a few re-sent."""
    return RetailConfig(
        events=events, seed=seed, invalid_rate=0.01, duplicate_rate=0.03, mean_gap_s=span.total_seconds() / events,
        start_time=datetime.now(timezone.utc) - span,
    )  # fmt: skip


def views(warehouse: Path) -> dict[str, object]:
    """The inventory, sales_by_window and dead_letters views, as comparable values."""
    inventory = run_query("SELECT * FROM inventory", warehouse).to_pylist()
    windows = run_query("SELECT * FROM sales_by_window", warehouse).to_pylist()
    dead = run_query('SELECT source_topic, partition, "offset" FROM dead_letters', warehouse).to_pylist()
    return {
        "inventory": {
            (r["store_id"], r["item_id"]): (r["on_hand"], r["shipped"], r["sold"], r["events"], r["last_event_time"])
            for r in inventory
        },
        "windows": {(r["window_start"], r["store_id"], r["item_id"]): r["units"] for r in windows},
        "window_ends_ok": all((r["window_end"] - r["window_start"]).total_seconds() == 3600 for r in windows),
        "dead": {(r["source_topic"], r["partition"], r["offset"]) for r in dead},
    }


def expected_views(truth: Truth) -> dict[str, object]:
    """What :func:`views` must return for a log whose recompute is ``truth``."""
    return {
        "inventory": {
            key: (row["on_hand"], row["shipped"], row["sold"], row["events"], row["last_event_time"])
            for key, row in truth.inventory.items()
        },
        "windows": dict(truth.sales_by_window),
        "window_ends_ok": True,
        "dead": set(truth.dead_letters),
    }


def views_or_none(warehouse: Path) -> dict[str, object] | None:
    from core.errors import BeamlineError

    try:
        return views(warehouse)
    except BeamlineError:  # the pipeline has not committed every view yet
        return None


def wait_for_views(warehouse: Path, expected: dict[str, object], process: subprocess.Popen, timeout_s: float) -> None:
    """Poll until the views equal ``expected``; fail if the pipeline exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    latest = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the streaming pipeline exited early with {process.returncode}"
        latest = views_or_none(warehouse)
        if latest == expected:
            return
        time.sleep(1.0)  # polling interval of a convergence check, not a readiness guess
    assert latest is not None, "no view was ever committed"
    for name in expected:
        assert latest[name] == expected[name], (
            f"view {name} did not converge to the recompute: {describe_diff(latest[name], expected[name])}"
        )


def streaming_convergence_s(log: RetailLog, stderr_path: Path, timeout_s: float) -> float:
    """Seconds from starting a streaming run on ``log`` until every view equals the recompute.

    The pipeline is stopped (SIGTERM) once it has converged; a failure names the views that did not.
    """
    expected = expected_views(log.truth())
    started = time.monotonic()
    process = start_streaming(log, stderr_path)
    try:
        wait_for_views(log.warehouse, expected, process, timeout_s)
        elapsed = time.monotonic() - started
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        kill_group(process)
    return elapsed


def describe_diff(got: object, want: object, limit: int = 5) -> str:
    """The first few differences between a view and its recompute, for a readable failure."""
    if isinstance(got, dict) and isinstance(want, dict):
        keys = sorted((k for k in got.keys() | want.keys() if got.get(k) != want.get(k)), key=repr)
        return f"{len(keys)} keys differ; " + "; ".join(
            f"{k}: got {got.get(k)}, want {want.get(k)}" for k in keys[:limit]
        )
    if isinstance(got, set) and isinstance(want, set):
        return f"missing {sorted(want - got)[:limit]}, unexpected {sorted(got - want)[:limit]}"
    return f"got {got!r}, want {want!r}"


def start_streaming(log: RetailLog, stderr_path: Path, *args: str, via: Sequence[str] = ("cli",)) -> subprocess.Popen:
    """``beamline run inventory --mode streaming [args]`` in its own process group.

    ``via``: the module that runs ``beamline`` and its own arguments (a
    test-only entry point that injects a fault, as ``tests/sink_fault.py``).
    """
    return subprocess.Popen(
        [sys.executable, "-m", *via, *log.run_args("streaming"), *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(stderr_path, "ab"),
        start_new_session=True,  # its own process group: Prism dies with it on kill -9
    )


def group_offsets(bootstrap: str, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int | None]:
    """The offsets consumer group ``group`` has committed, per partition of ``topics`` (None: none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {
            (topic, p): consumer.committed(TopicPartition(topic, p))
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        }
    finally:
        consumer.close()


def kill_group(process: subprocess.Popen) -> None:
    """kill -9 the pipeline's whole process group (a crash) and reap it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_pipeline(process: subprocess.Popen) -> int:
    """Stop a streaming run as a user would (SIGTERM); its exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    finally:
        kill_group(process)
