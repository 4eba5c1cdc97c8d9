"""End to end: a streaming restart resumes from the warehouse's resume point, not from offset 0.

Real broker, real `beamline` processes, real Prism; the views are compared with
:mod:`tests.truth`, an independent recompute of the whole log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kafka import KafkaProducer

from producers.retail import RetailConfig
from readside.query import run_query
from tests.cli_helpers import PROJECT_ROOT, assert_one_line_error, run_cli
from tests.e2e_helpers import (
    RetailLog,
    expected_views,
    group_offsets,
    history,
    kill_group,
    start_streaming,
    stop_pipeline,
    views_or_none,
    wait_for_views,
)
from tests.truth import read_topic, recompute_word_counts
from warehouse.resume import query_tables, recorded_run

pytestmark = pytest.mark.slow


@pytest.fixture
def retail_log(bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path) -> RetailLog:
    return RetailLog(bootstrap_servers, make_topic, tmp_path / "warehouse")


def _run_starts(warehouse: Path, run: int) -> dict[tuple[str, int], int]:
    """Where run ``run`` started each partition (its shards' rows before any commit of theirs)."""
    _, (rows,) = query_tables(
        warehouse,
        "SELECT topic, partition, min(start_offset) AS start FROM _resume_offsets WHERE run = $run GROUP BY ALL",
        ["_resume_offsets"],
        {"run": run},
    )
    return {(r["topic"], r["partition"]): r["start"] for r in rows.to_pylist()}


def _wait_for_run(warehouse: Path, run: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll until the pipeline's newest recorded run is ``run``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the streaming pipeline exited early with {process.returncode}"
        recorded = recorded_run(warehouse, "inventory")
        if recorded is not None and recorded.run >= run:
            assert recorded.run == run
            return
        time.sleep(0.2)  # polling for a commit of the pipeline
    raise AssertionError(f"run {run} recorded no resume point within {timeout_s}s")


def test_a_restart_resumes_from_the_recorded_offsets_with_its_state(retail_log: RetailLog, tmp_path: Path):
    """Converge, crash (kill -9), produce more, restart: the restart starts where the views stood, not at 0.

    Re-sends of events from before the crash are deduped by the restored ids;
    the views equal the recompute of the whole log, and a batch backfill of the
    same log then changes nothing. The consumer group carries the covered offsets.
    """
    now = datetime.now(timezone.utc)
    first = RetailConfig(
        events=20_000, seed=31, invalid_rate=0.01, duplicate_rate=0.03, start_time=now, mean_gap_s=0.01
    )
    retail_log.produce(first)
    stderr_path = tmp_path / "pipeline.log"
    process = start_streaming(retail_log, stderr_path)
    try:
        wait_for_views(retail_log.warehouse, expected_views(retail_log.truth()), process, timeout_s=300)
        kill_group(process)  # a crash: nothing shut down cleanly
        before = recorded_run(retail_log.warehouse, "inventory")
        assert before is not None and before.run == 1
        covered = sum(before.offsets.values())
        assert covered == 20_000  # every record of the log, nothing past it
        # Re-sends of old events (same seed: the same ids and content) and new ones.
        retail_log.produce(RetailConfig(**{**first.__dict__, "events": 500}))
        retail_log.produce(RetailConfig(**{**first.__dict__, "seed": 32, "events": 1_000, "start_time": now}))
        expected = expected_views(retail_log.truth())
        restarted = time.monotonic()
        process = start_streaming(retail_log, stderr_path)
        wait_for_views(retail_log.warehouse, expected, process, timeout_s=120)
        print(f"restart to visible: {time.monotonic() - restarted:.1f}s")  # for the record (pytest -s)
        # The restart began every partition where the views stood: no record before was read again.
        assert _run_starts(retail_log.warehouse, 2) == dict(before.offsets)
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        kill_group(process)

    after = recorded_run(retail_log.warehouse, "inventory")
    assert after is not None and sum(after.offsets.values()) == 21_500
    topics = [retail_log.shipments, retail_log.sales]
    assert group_offsets(retail_log.bootstrap, "beamline-inventory", topics) == dict(after.offsets)

    status = run_cli(
        "status", "--warehouse", str(retail_log.warehouse), "--bootstrap-servers", retail_log.bootstrap,
        "--format", "json",
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    (inventory,) = json.loads(status.stdout)
    assert inventory["pipeline"] == "inventory" and inventory["run"] == 2
    assert {t["topic"]: (t["covered"], t["lag"]) for t in inventory["topics"]} == {
        topic: (sum(o for (t, _), o in after.offsets.items() if t == topic), 0) for topic in topics
    }

    streamed = views_or_none(retail_log.warehouse)
    batch = run_cli(*retail_log.run_args("batch"), timeout=600)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert views_or_none(retail_log.warehouse) == streamed == expected


def test_a_second_run_or_other_topics_on_a_warehouse_are_refused_in_one_line(
    retail_log: RetailLog, make_topic: Callable[..., str], tmp_path: Path
):
    retail_log.produce(RetailConfig(events=200, seed=3, start_time=datetime.now(timezone.utc), mean_gap_s=0.01))
    # A misspelt topic is refused before anything is recorded: the right command still works afterwards.
    misspelt = [
        a if not a.startswith("--sales_topic=") else "--sales_topic=no-such-topic"
        for a in retail_log.run_args("streaming")
    ]
    assert_one_line_error(run_cli(*misspelt, timeout=120), "no-such-topic", "do not exist")
    assert recorded_run(retail_log.warehouse, "inventory") is None
    process = start_streaming(retail_log, tmp_path / "pipeline.log")
    try:
        deadline = time.monotonic() + 120
        while recorded_run(retail_log.warehouse, "inventory") is None and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "pipeline.log").read_text()[-3000:]
            time.sleep(0.5)  # polling for the run's resume point, which it records before reading
        # Two runs writing one resume point would take each other's offsets: the second is refused.
        second = run_cli(*retail_log.run_args("streaming"), timeout=120)
        assert_one_line_error(second, "another streaming run of inventory", f"pid {process.pid}")
        assert process.poll() is None  # the first run goes on
    finally:
        kill_group(process)  # its lock goes with it
    other_sales = make_topic(4)
    args = [
        a if not a.startswith("--sales_topic=") else f"--sales_topic={other_sales}"
        for a in retail_log.run_args("streaming")
    ]
    result = run_cli(*args, timeout=120)
    assert result.returncode == 1
    assert_one_line_error(result, "resume point for topics")
    assert other_sales in result.stderr and "--warehouse" in result.stderr


def test_a_first_start_on_a_long_log_catches_up_in_batch_then_streams_on(retail_log: RetailLog, tmp_path: Path):
    """No resume point and a long log: a batch catch-up, one commit of its state, then streaming from there.

    Afterwards the live events, and re-sends of events the catch-up applied,
    give the recompute of the whole log, as a pure streaming run would.
    """
    events = 30_000
    old = history(events, seed=61, span=timedelta(days=2))
    retail_log.produce(old)
    stderr_path = tmp_path / "pipeline.log"
    process = start_streaming(retail_log, stderr_path, "--catch_up_records=10000")
    try:
        wait_for_views(retail_log.warehouse, expected_views(retail_log.truth()), process, timeout_s=300)
        _wait_for_run(retail_log.warehouse, 2, process)  # run 1: the catch-up's resume point; 2: streaming from it
        deadline = time.monotonic() + 30
        while "resuming from snapshot" not in stderr_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # the run says so just after it records its start
        log = stderr_path.read_text()
        assert "catching up in batch first" in log and "resuming from snapshot" in log, log[-3000:]
        assert sum(_run_starts(retail_log.warehouse, 2).values()) == events  # streaming began where the batch ended
        retail_log.produce(RetailConfig(**{**old.__dict__, "events": 2_000}))  # re-sends: the same ids and content
        live = RetailConfig(events=1_000, seed=62, invalid_rate=0.02, duplicate_rate=0.05, mean_gap_s=0.01,
                            start_time=datetime.now(timezone.utc))  # fmt: skip
        retail_log.produce(live)
        expected = expected_views(retail_log.truth())
        wait_for_views(retail_log.warehouse, expected, process, timeout_s=120)
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        kill_group(process)
    streamed = views_or_none(retail_log.warehouse)
    batch = run_cli(*retail_log.run_args("batch"), timeout=600)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert views_or_none(retail_log.warehouse) == streamed == expected


def _send_lines(bootstrap: str, topic: str, first: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    lines = ["The quick brown fox", "jumps over the lazy dog", "Ünïcode wörds, ÜNÏCODE", "", "x_y 42 x_y"]
    for index in range(first, first + count):
        value = b"\xff\xfe broken utf-8" if index % 97 == 0 else f"{lines[index % len(lines)]} n{index % 7}".encode()
        producer.send(topic, value=value)
    producer.flush()
    producer.close()


def test_the_word_count_resumes_too_and_counts_each_line_once(
    bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path
):
    """Word counts have no ids to dedupe: a line read again after a restart must not count twice."""
    lines_topic, counts_topic, dead_topic = make_topic(2), make_topic(1), make_topic(1)
    warehouse = tmp_path / "warehouse"
    args = [
        sys.executable, "-m", "cli", "run", "wordcount", "--mode", "streaming", "--bootstrap-servers",
        bootstrap_servers, "--warehouse", str(warehouse), f"--text_topic={lines_topic}",
        f"--word_counts_topic={counts_topic}", f"--dead_letter_topic={dead_topic}",
    ]  # fmt: skip
    stderr_path = tmp_path / "pipeline.log"

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            args, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=open(stderr_path, "ab"), start_new_session=True
        )

    def converge(process: subprocess.Popen) -> None:
        counts, dead = recompute_word_counts(read_topic(bootstrap_servers, lines_topic))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            covered = recorded_run(warehouse, "wordcount")
            if covered is not None and sum(covered.offsets.values()) == total[0]:
                break
            time.sleep(0.5)  # polling the warehouse for the run's commits
        got = {r["word"]: r["count"] for r in run_query("SELECT * FROM word_counts", warehouse).to_pylist()}
        got_dead = run_query('SELECT source_topic, partition, "offset" FROM dead_letters', warehouse).to_pylist()
        assert got == counts
        assert {(r["source_topic"], r["partition"], r["offset"]) for r in got_dead} == dead

    total = [2_000]
    _send_lines(bootstrap_servers, lines_topic, 0, 2_000)
    process = start()
    try:
        converge(process)
        kill_group(process)  # a crash
        before = recorded_run(warehouse, "wordcount")
        _send_lines(bootstrap_servers, lines_topic, 2_000, 500)
        total[0] = 2_500
        process = start()
        converge(process)
        assert _run_starts(warehouse, 2) == dict(before.offsets)  # resumed where the views stood
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        kill_group(process)
