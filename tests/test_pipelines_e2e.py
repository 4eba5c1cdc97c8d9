"""End to end: the real broker, the `beamline` command, the warehouse, and a recompute.

Each test produces events into fresh topics, runs a pipeline as a user would
(a separate `beamline run ...` process), and compares every view with
:mod:`tests.truth`, an independent recompute of the same log.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from producers.retail import RetailConfig, generate_retail
from readside.query import run_query
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.e2e_helpers import RetailLog, streaming_convergence_s
from tests.e2e_helpers import expected_views as _expected
from tests.e2e_helpers import start_streaming as _start_streaming
from tests.e2e_helpers import stop_pipeline as _stop
from tests.e2e_helpers import views as _views
from tests.e2e_helpers import wait_for_views as _wait_for_views
from tests.truth import read_topic, recompute_word_counts
from warehouse.resume import recorded_run

pytestmark = pytest.mark.slow


@pytest.fixture
def retail_log(bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path) -> RetailLog:
    return RetailLog(bootstrap_servers, make_topic, tmp_path / "warehouse")


def test_batch_backfill_equals_the_recompute(retail_log: RetailLog):
    retail_log.produce(RetailConfig(events=100_000, seed=21, invalid_rate=0.01, duplicate_rate=0.03))
    result = run_cli(*retail_log.run_args("batch"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    truth = retail_log.truth()
    assert truth.duplicates > 1000 and len(truth.dead_letters) > 500  # the log has what we test against
    assert _views(retail_log.warehouse) == _expected(truth)
    # A second backfill over the same log changes nothing.
    again = run_cli(*retail_log.run_args("batch"), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _views(retail_log.warehouse) == _expected(truth)


def test_streaming_survives_kill_9_and_matches_a_later_batch(retail_log: RetailLog, tmp_path: Path):
    live = RetailConfig(
        events=3_000, seed=5, invalid_rate=0.02, duplicate_rate=0.05, start_time=datetime.now(timezone.utc),
        mean_gap_s=0.01,
    )  # fmt: skip
    stderr_path = tmp_path / "pipeline.log"
    process = _start_streaming(retail_log, stderr_path)
    try:
        retail_log.produce(live, rate=1_000)
        _wait_for_views(retail_log.warehouse, _expected(retail_log.truth()), process, timeout_s=240)

        os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean shutdown of anything
        process.wait()
        more = RetailConfig(**{**live.__dict__, "seed": 6, "start_time": datetime.now(timezone.utc)})
        retail_log.produce(more, rate=1_000)  # produced while the pipeline is down
        process = _start_streaming(retail_log, stderr_path)
        retail_log.produce(RetailConfig(**{**more.__dict__, "seed": 7, "events": 1_000}), rate=500)
        expected = _expected(retail_log.truth())
        _wait_for_views(retail_log.warehouse, expected, process, timeout_s=300)
        assert _stop(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    streamed = _views(retail_log.warehouse)
    batch = run_cli(*retail_log.run_args("batch"), timeout=600)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert _views(retail_log.warehouse) == streamed == expected


def test_streaming_from_scratch_converges_as_fast_over_twelve_days_of_event_time_as_over_three(
    bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path
):
    """A log longer than the 7-day dedupe horizon, read from scratch, converges to the recompute.

    The same 20,000 events (4 partitions, up to an hour out of order, re-sends
    and invalid records) spread over 3 days and over 12: the 12-day log must
    converge within twice the 3-day log's time, in the same run. Then a crash
    (kill -9), 1,000 more events and a restart converge again.
    """
    twelve_days = 12 * 86_400 / 20_000
    logs = {}
    for name, gap in (("3 days", twelve_days / 4), ("12 days", twelve_days)):
        logs[name] = RetailLog(bootstrap_servers, make_topic, tmp_path / name.replace(" ", "-"))
        logs[name].produce(RetailConfig(events=20_000, seed=12, invalid_rate=0.01, duplicate_rate=0.02, mean_gap_s=gap))
    for log in logs.values():
        truth = log.truth()
        assert truth.duplicates > 100 and len(truth.dead_letters) > 100  # the log has what we test against
    took = {
        name: streaming_convergence_s(log, tmp_path / f"{name.replace(' ', '-')}.log", timeout_s=600)
        for name, log in logs.items()
    }
    print(f"streaming from scratch converged in {took}")  # for the record of a run (pytest -s)
    assert took["12 days"] <= 2 * took["3 days"], took

    log = logs["12 days"]
    stderr_path = tmp_path / "restart.log"
    process = _start_streaming(log, stderr_path)
    try:
        _wait_for_views(log.warehouse, _expected(log.truth()), process, timeout_s=600)
        os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean shutdown of anything
        process.wait()
        covered = recorded_run(log.warehouse, "inventory")
        assert covered is not None and sum(covered.offsets.values()) == 20_000
        last = datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(days=12)
        log.produce(RetailConfig(events=1_000, seed=13, invalid_rate=0.01, duplicate_rate=0.02, start_time=last))
        restarted = time.monotonic()
        process = _start_streaming(log, stderr_path)
        # Resumed from the warehouse, not replayed: bounded by its state, not by the 12 days of log. On a
        # quiet machine this takes well under 15 s (bench.restart holds that goal); the bound here allows
        # for a loaded CI machine and fails a replay of the log, which took minutes.
        _wait_for_views(log.warehouse, _expected(log.truth()), process, timeout_s=60)
        print(f"restart to the new events visible: {time.monotonic() - restarted:.1f}s")
        assert "resuming from snapshot" in stderr_path.read_text()
        assert _stop(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("case", ["produced today, events of last month", "record times of last month, events now"])
def test_streaming_keeps_time_by_event_time_whatever_the_record_timestamps(
    retail_log: RetailLog, tmp_path: Path, case: str
):
    """Record timestamps say when a record was written; the views follow event_time alone.

    A backfill produced today of events from 42 to 30 days ago, and the
    reverse: records stamped a month back (as a mirror of an old topic keeps
    them) holding the last 12 days' events. Both span more than the 7-day
    dedupe horizon; streaming from scratch converges to the recompute.
    """
    now = datetime.now(timezone.utc)
    span = timedelta(days=12)
    events = 5_000
    config = RetailConfig(
        events=events,
        seed=31,
        invalid_rate=0.01,
        duplicate_rate=0.03,
        mean_gap_s=span.total_seconds() / events,
        shipments_topic=retail_log.shipments,
        sales_topic=retail_log.sales,
        start_time=now - timedelta(days=30) - span if case.startswith("produced today") else now - span,
    )
    record_time = now if case.startswith("produced today") else now - timedelta(days=30)
    producer = KafkaProducer(bootstrap_servers=retail_log.bootstrap, linger_ms=5)
    try:
        for n, record in enumerate(generate_retail(config)):
            stamp = int(record_time.timestamp() * 1000) + n // 100  # record time creeps forward, as it does
            producer.send(record.topic, key=record.key, value=record.value, timestamp_ms=stamp)
        producer.flush(timeout=60)
    finally:
        producer.close()
    # The log is what this test is about: record times and event times weeks apart.
    first = _first_record(retail_log.bootstrap, retail_log.sales)
    event_time = datetime.fromisoformat(json.loads(first.value)["event_time"].replace("Z", "+00:00"))
    assert abs(first.timestamp / 1000 - record_time.timestamp()) < 120
    assert abs(event_time - record_time) > timedelta(days=10)
    truth = retail_log.truth()
    assert truth.duplicates > 50 and len(truth.dead_letters) > 20
    streaming_convergence_s(retail_log, tmp_path / "pipeline.log", timeout_s=300)


def test_event_identity_and_int64_totals_end_to_end_batch_and_streaming(retail_log: RetailLog, tmp_path: Path):
    """A crafted log: one identity rule and one overflow rule in both modes, dead letters with their raw bytes."""
    big = 2**63 - 1

    def event(event_id: str, item: str, quantity: int, minute: int) -> bytes:
        when = f"2026-11-26T10:{minute:02d}:00Z"
        return json.dumps(
            {"event_id": event_id, "store_id": "s", "item_id": item, "quantity": quantity, "event_time": when}
        ).encode()

    sends = [  # (topic, partition, value); a key's records share a partition, as keyed producers put them
        (retail_log.shipments, 0, event("e1", "i", 5, 0)),
        (retail_log.shipments, 1, event("e1", "j", 5, 1)),  # the same id for another item: another event
        (retail_log.shipments, 1, event("e2", "j", 1, 2)),
        (retail_log.shipments, 1, event("e2", "j", 1, 2)),  # a re-send: once
        (retail_log.shipments, 1, event("e2", "j", 9, 2)),  # other content: a dead letter
        (retail_log.shipments, 1, event("e2", "j", 1, 3)),  # another event_time: a dead letter
        (retail_log.sales, 0, event("e1", "i", 2, 4)),  # the same id in the other topic: another event
        (retail_log.shipments, 2, event("b1", "k", big, 5)),
        (retail_log.shipments, 2, event("b2", "k", 1, 6)),  # would pass int64: a dead letter
        (retail_log.shipments, 2, event("b2", "k", 1, 6)),  # its re-send: a re-send, no second letter
        (retail_log.sales, 2, event("b3", "k", big, 7)),
        (retail_log.sales, 2, event("b4", "k", 3, 8)),  # sold would pass int64
    ]
    producer = KafkaProducer(bootstrap_servers=retail_log.bootstrap)
    try:
        for topic, partition, value in sends:
            producer.send(topic, value=value, partition=partition).get(timeout=60)
    finally:
        producer.close()
    truth = retail_log.truth()
    assert truth.refused == {
        (retail_log.shipments, 1, 3): "reused",
        (retail_log.shipments, 1, 4): "reused",
        (retail_log.shipments, 2, 1): "overflow",
        (retail_log.sales, 2, 1): "overflow",
    }
    assert {key: (row["shipped"], row["sold"]) for key, row in truth.inventory.items()} == {
        ("s", "i"): (5, 2),
        ("s", "j"): (6, 0),
        ("s", "k"): (big, big),
    }
    expected = _expected(truth)
    offsets: dict[tuple[str, int], list[bytes]] = {}
    for topic, partition, value in sends:
        offsets.setdefault((topic, partition), []).append(value)  # sent one by one: the list index is the offset

    def letters(warehouse: Path) -> dict[tuple[str, int, int], tuple[str, bytes]]:
        rows = run_query('SELECT source_topic, partition, "offset", error, payload FROM dead_letters', warehouse)
        return {(r["source_topic"], r["partition"], r["offset"]): (r["error"], r["payload"]) for r in rows.to_pylist()}

    batch = run_cli(*retail_log.run_args("batch"), timeout=600)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert _views(retail_log.warehouse) == expected
    batch_letters = letters(retail_log.warehouse)
    # Each dead letter says why and holds its record's raw bytes (read back by offset).
    why = {"reused": "event_id reused with different content: ", "overflow": "quantity would overflow "}
    assert {
        where: (error.startswith(why[truth.refused[where]]), payload)
        for where, (error, payload) in batch_letters.items()
    } == {
        (topic, partition, offset): (True, offsets[(topic, partition)][offset])
        for topic, partition, offset in truth.refused
    }

    streamed = retail_log.with_warehouse(tmp_path / "streamed")
    streaming_convergence_s(streamed, tmp_path / "pipeline.log", timeout_s=300)
    assert _views(streamed.warehouse) == expected
    assert letters(streamed.warehouse) == batch_letters


def _first_record(bootstrap: str, topic: str) -> Any:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        for _ in range(60):
            for records in consumer.poll(timeout_ms=1000, max_records=1).values():
                return records[0]
        raise AssertionError(f"no record in {topic}/0")
    finally:
        consumer.close()


def test_wordcount_batch_equals_the_recompute(bootstrap_servers: str, make_topic, tmp_path: Path):
    lines_topic, counts_topic, dead_topic = make_topic(2), make_topic(1), make_topic(1)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    lines = ["The quick brown fox", "jumps over the lazy dog", "Ünïcode wörds, ÜNÏCODE", "", "x_y 42 x_y"]
    for index in range(400):
        producer.send(lines_topic, value=f"{lines[index % len(lines)]} n{index % 7}".encode())
    producer.send(lines_topic, value=b"\xff\xfe broken utf-8")
    producer.flush()
    producer.close()
    warehouse = tmp_path / "warehouse"
    result = run_cli(
        "run", "wordcount", "--mode", "batch", "--bootstrap-servers", bootstrap_servers, "--warehouse", str(warehouse),
        f"--text_topic={lines_topic}", f"--word_counts_topic={counts_topic}", f"--dead_letter_topic={dead_topic}",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    counts, dead = recompute_word_counts(read_topic(bootstrap_servers, lines_topic))
    got = {r["word"]: r["count"] for r in run_query("SELECT * FROM word_counts", warehouse).to_pylist()}
    assert got == counts
    got_dead = run_query('SELECT source_topic, partition, "offset" FROM dead_letters', warehouse).to_pylist()
    assert {(r["source_topic"], r["partition"], r["offset"]) for r in got_dead} == dead
    # The word-counts topic carries the totals too: the last record per word is the final count.
    latest: dict[str, int] = {}
    for _, _, _, value in read_topic(bootstrap_servers, counts_topic):
        row = json.loads(value)
        latest[row["word"]] = max(latest.get(row["word"], 0), row["count"])
    assert latest == counts


def test_a_bad_option_is_one_line(tmp_path: Path):
    result = run_cli("run", "inventory", "--mode", "batch", "--bootstrap-servers", "127.0.0.1:1", "--warehouse",
                     str(tmp_path / "w"), timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "beamline: error:" in result.stderr


@pytest.mark.parametrize("size", ["0", "abc", "315537897600"])
def test_a_window_size_out_of_range_is_one_line_before_any_read(tmp_path: Path, size: str):
    # 315,537,897,600 s is one second more than all representable time: window ends would leave int64.
    result = run_cli("run", "inventory", "--mode", "batch", "--bootstrap-servers", "127.0.0.1:1", "--warehouse",
                     str(tmp_path / "w"), f"--window_size={size}", timeout=120)  # fmt: skip
    assert_one_line_error(result, "--window_size", size if size == "abc" else f"{int(size):,}")
