"""Faults, end to end: after each one the views equal the recompute of the log.

Each test runs ``beamline run inventory --mode streaming`` as a separate process
against the session broker while events are produced, injects one kind of fault,
and then waits until every view equals :mod:`tests.truth`'s recompute of the
whole log: a crash (SIGKILL) at five seeded-random points, a broker stop and
restart, and a bundle failing inside a warehouse commit. Restarts use the same
command, as an operator would.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import pytest

from infra.kafka_broker import KafkaBroker
from producers.retail import GeneratedRecord, RetailConfig, generate_retail
from producers.send import send_records
from tests.conftest import body_failed
from tests.e2e_helpers import (
    RetailLog,
    expected_views,
    kill_group,
    start_streaming,
    stop_pipeline,
    wait_for_views,
)
from warehouse.format import WarehouseMissing, load_snapshot

pytestmark = pytest.mark.slow

# Seeds of the fault schedule; a failure names the one it ran with.
KILL_SCHEDULE_SEED = 20261127
CONVERGE_TIMEOUT_S = 240
READY_TIMEOUT_S = 120


@pytest.fixture
def retail_log(bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path) -> RetailLog:
    return RetailLog(bootstrap_servers, make_topic, tmp_path / "warehouse")


@pytest.fixture
def pipeline_log(tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    """Where the streaming pipeline's stderr goes; if the test fails, its tail goes to the terminal.

    Past pytest's capture: pytest shows no captured output for an expected
    failure (xfail), and the CI log is all that is kept of a run.
    """
    path = tmp_path / "pipeline.log"
    yield path
    if body_failed(request) and path.exists():
        tail = "\n".join(path.read_text(errors="replace").splitlines()[-80:])
        with capsys.disabled():
            print(f"\n--- {request.node.name}: the last 80 lines of the pipeline's log ---\n{tail}")


def live_events(seed: int) -> RetailConfig:
    """An open-ended stream of live retail events (a producer stops it when the test is done)."""
    return RetailConfig(
        events=1_000_000, seed=seed, invalid_rate=0.02, duplicate_rate=0.05,
        start_time=datetime.now(timezone.utc), mean_gap_s=0.01,
    )  # fmt: skip


class Producer(threading.Thread):
    """Sends a retail stream into a log's topics at a steady rate until stopped."""

    def __init__(self, log: RetailLog, config: RetailConfig, rate: float) -> None:
        super().__init__(name="retail-producer", daemon=True)
        self._log = log
        self._config = RetailConfig(**{**config.__dict__, "shipments_topic": log.shipments, "sales_topic": log.sales})
        self._rate = rate
        self._stop_requested = threading.Event()
        self._error: BaseException | None = None
        self.sent = 0  # records handed to the Kafka producer so far

    def _records(self) -> Iterator[GeneratedRecord]:
        for record in itertools.takewhile(lambda _: not self._stop_requested.is_set(), generate_retail(self._config)):
            self.sent += 1
            yield record

    def run(self) -> None:
        try:
            send_records(self._log.bootstrap, self._records(), rate=self._rate, progress=None)
        except BaseException as exc:  # re-raised in the test by finish()
            self._error = exc

    def stop(self) -> None:
        """Stop producing and wait until every record sent is acknowledged (or failed)."""
        self._stop_requested.set()
        if self.is_alive():
            self.join(timeout=120)

    def finish(self) -> int:
        """:meth:`stop`, then raise what the producer raised; the number of records sent."""
        self.stop()
        assert not self.is_alive(), "the producer did not finish within 120s"
        if self._error is not None:
            raise self._error
        return self.sent


def snapshot_id(warehouse: Path) -> int:
    """The newest committed snapshot of the warehouse (-1 before the first commit)."""
    try:
        return load_snapshot(warehouse).snapshot_id
    except WarehouseMissing:
        return -1


def committed_and_produced(warehouse: Path, since: int, producer: Producer, due: int) -> bool:
    """A commit newer than snapshot ``since`` exists, and ``due`` records were produced."""
    return snapshot_id(warehouse) > since and producer.sent >= due


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``condition`` until it holds; fail if the pipeline exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the streaming pipeline exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting until {what}"
        time.sleep(0.2)  # polling interval of a readiness check


def test_streaming_killed_at_five_random_points_converges(retail_log: RetailLog, pipeline_log: Path) -> None:
    # Each kill comes once the running pipeline has committed something of its own
    # (it is up and processing: replaying, or live) and a seeded-random number of
    # further events has been produced, so the kills land at different stages:
    # mid-replay, mid-commit, while idle between bundles.
    schedule = random.Random(KILL_SCHEDULE_SEED)
    gaps = [schedule.randint(25, 300) for _ in range(5)]
    stderr_path = pipeline_log
    producer = Producer(retail_log, live_events(seed=31), rate=100)
    process = start_streaming(retail_log, stderr_path)
    producer.start()
    try:
        for kill, gap in enumerate(gaps, 1):
            since, due = max(snapshot_id(retail_log.warehouse), 0), producer.sent + gap
            wait_until(
                partial(committed_and_produced, retail_log.warehouse, since, producer, due),
                f"run {kill} committed and {gap} more events were produced (seed {KILL_SCHEDULE_SEED})",
                process,
                READY_TIMEOUT_S,
            )
            kill_group(process)  # SIGKILL to the whole group: the launcher, Prism, the workers
            process = start_streaming(retail_log, stderr_path)  # the same command again
        sent = producer.finish()
        truth = retail_log.truth()
        assert truth.duplicates and truth.dead_letters, f"{sent} records, no duplicate or no invalid one"
        wait_for_views(retail_log.warehouse, expected_views(truth), process, CONVERGE_TIMEOUT_S)
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        producer.stop()
        kill_group(process)


@pytest.mark.xfail(
    strict=False,
    reason="not yet shown reliable: it failed every run while WriteToKafka connected in setup() (a writer set up "
    "while the broker was down failed its bundle, and Prism fails the whole job on a bundle error). Since the writer "
    "connects with its first record it has passed 16 of 17 runs (alone, next to two CPU-bound processes, and in "
    "CI); the one failure, in CI under load, left no log to explain it (a failure now prints the pipeline's log)",
)
def test_streaming_survives_a_broker_restart(
    kafka_broker: KafkaBroker, retail_log: RetailLog, pipeline_log: Path
) -> None:
    port = kafka_broker.status().port
    assert port is not None
    stderr_path = pipeline_log
    before = Producer(retail_log, live_events(seed=41), rate=300)
    after = Producer(retail_log, live_events(seed=42), rate=300)
    process = start_streaming(retail_log, stderr_path)
    try:
        before.start()
        # Stop the broker while the pipeline is busy: it has committed, and events keep coming.
        wait_until(
            lambda: snapshot_id(retail_log.warehouse) >= 2 and before.sent >= 600,
            "the pipeline committed while events were produced",
            process,
            READY_TIMEOUT_S,
        )
        before.finish()
        kafka_broker.stop()  # a clean stop: the broker is gone once this returns
        kafka_broker.start(port)  # returns once the broker answers again, with every record kept
        after.start()
        wait_until(lambda: after.sent >= 600, "600 events were produced after the restart", process, 60)
        after.finish()
        wait_for_views(retail_log.warehouse, expected_views(retail_log.truth()), process, CONVERGE_TIMEOUT_S)
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        before.stop()
        after.stop()
        kill_group(process)
        if not kafka_broker.status().running:  # the session broker serves the tests after this one
            kafka_broker.start(port)


def start_streaming_with_sink_fault(log: RetailLog, marker: Path, nth: int, stderr_path: Path) -> subprocess.Popen:
    """``beamline run inventory --mode streaming`` whose ``nth`` warehouse commit fails once."""
    return start_streaming(log, stderr_path, via=("tests.sink_fault", str(marker), str(nth)))


def test_a_commit_failing_once_then_a_restart_converges(
    retail_log: RetailLog, tmp_path: Path, pipeline_log: Path
) -> None:
    marker = tmp_path / "sink-failed-once"
    stderr_path = pipeline_log
    producer = Producer(retail_log, live_events(seed=51), rate=300)
    producer.start()
    process = start_streaming_with_sink_fault(retail_log, marker, 4, stderr_path)
    try:
        # The failed bundle fails the job: the process exits with an error (Prism does not retry it).
        assert process.wait(timeout=READY_TIMEOUT_S) != 0
        assert marker.exists() and "injected sink failure at commit 4" in stderr_path.read_text()
        process = start_streaming_with_sink_fault(retail_log, marker, 4, stderr_path)  # the same command
        wait_until(lambda: producer.sent >= 2_000, "2000 events were produced", process, READY_TIMEOUT_S)
        producer.finish()
        wait_for_views(retail_log.warehouse, expected_views(retail_log.truth()), process, CONVERGE_TIMEOUT_S)
        assert stop_pipeline(process) == 0, stderr_path.read_text()[-3000:]
    finally:
        producer.stop()
        kill_group(process)
