"""End to end: the real broker, the `beamline` command, the warehouse, and a recompute.

Each test produces events into fresh topics, runs a pipeline as a user would
(a separate `beamline run ...` process), and compares every view with
:mod:`tests.truth`, an independent recompute of the same log.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kafka import KafkaProducer

from producers.retail import RetailConfig
from readside.query import run_query
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.e2e_helpers import RetailLog
from tests.e2e_helpers import expected_views as _expected
from tests.e2e_helpers import start_streaming as _start_streaming
from tests.e2e_helpers import stop_pipeline as _stop
from tests.e2e_helpers import views as _views
from tests.e2e_helpers import wait_for_views as _wait_for_views
from tests.truth import read_topic, recompute_word_counts

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
