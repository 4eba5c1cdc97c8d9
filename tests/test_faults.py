"""Faults, end to end: after each one the views equal the recompute of the log.

Each test runs ``beamline run inventory --mode streaming`` as a separate process
against the session broker while events are produced, injects one kind of fault,
and then waits until every view equals :mod:`tests.truth`'s recompute of the
whole log: a crash (SIGKILL) at five seeded-random points; a first start on
a long log crashed during its batch catch-up, between a warehouse commit and
the consumer group's commit, and early in a resumed run; a broker stop and
restart; and a bundle failing inside a warehouse commit. Restarts use the same
command, as an operator would.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest

from infra.kafka_broker import KafkaBroker
from pipelines.inventory import PIPELINE
from producers.retail import GeneratedRecord, RetailConfig, generate_retail
from producers.send import send_records
from tests.cli_helpers import run_cli
from tests.conftest import body_failed
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
from transforms.kafka import partition_offsets
from warehouse.format import WarehouseMissing, load_snapshot
from warehouse.resume import RecordedRun, recorded_run

pytestmark = pytest.mark.slow

# Seeds of the fault schedules; a failure names the one it ran with. Another schedule: BEAMLINE_FAULT_SEED=N.
KILL_SCHEDULE_SEED = int(os.environ.get("BEAMLINE_FAULT_SEED", 20261127))
CRASH_SCHEDULE_SEED = int(os.environ.get("BEAMLINE_FAULT_SEED", 20261206))
# The consumer group a streaming inventory run commits its covered offsets to, by default.
GROUP = f"beamline-{PIPELINE}"
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


@dataclass(frozen=True)
class CrashSchedule:
    """Where :func:`test_killed_in_a_catch_up_between_commits_and_in_a_resume_converges` crashes, from one seed."""

    seed: int
    catch_up_delay_s: float  # after the catch-up begins, a kill from outside (its read, its compute, its writes)
    catch_up_commit: str  # a crash point just before or just after the catch-up's one commit
    group_gap: str  # a crash point between a warehouse commit and the consumer group's
    resume: str  # a crash point early in a resumed run: its run begun, its state read, its first commits
    gap: int  # events produced after a commit of a resumed run, then a kill from outside

    @classmethod
    def drawn(cls, seed: int) -> CrashSchedule:
        rng = random.Random(seed)
        return cls(
            seed=seed,
            catch_up_delay_s=rng.uniform(0.0, 1.5),
            catch_up_commit=rng.choice(["before-catch-up-commit", "after-catch-up-commit"]),
            group_gap=f"group-gap:{rng.randint(1, 6)}",
            resume=rng.choice(["published:1", "restored:1", "published:2", "published:3"]),
            gap=rng.randint(25, 300),
        )

    def crash_points(self) -> list[str]:
        """The points the pipeline crashes itself at (``tests/crash_points.py``), in order."""
        return [self.catch_up_commit, self.group_gap, self.resume]


def crashed_itself(process: subprocess.Popen, point: str, log: Path, seed: int) -> None:
    """Wait until the pipeline kills itself at ``point``; fail if it exits otherwise or does not within the timeout."""
    try:
        code = process.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the pipeline did not reach {point} within {READY_TIMEOUT_S}s (seed {seed})") from None
    assert code == -signal.SIGKILL and f"kill -9 at {point}" in log.read_text(), (
        f"the pipeline exited with {code}, not killed at {point} (seed {seed})"
    )


def test_killed_in_a_catch_up_between_commits_and_in_a_resume_converges(
    retail_log: RetailLog, tmp_path: Path, pipeline_log: Path
) -> None:
    """A first start on a long log, killed -9 five times while events keep coming, converges.

    The kills: during its batch catch-up (a seeded delay after it begins), just
    before or after the catch-up's commit, between a warehouse commit and the
    consumer group's commit, early in a resumed run (its run begun, its state
    read, or its first commits), and once a resumed run has committed and more
    events came. Each restart is the same command. Then the views and dead
    letters equal the recompute (nothing lost, nothing counted twice), the
    consumer group holds the offsets the warehouse records, and a batch run of
    the same log gives the same views.
    """
    plan = CrashSchedule.drawn(CRASH_SCHEDULE_SEED)
    print(f"crash schedule: {plan}")  # shown with a failure
    seed = plan.seed
    warehouse, topics = retail_log.warehouse, [retail_log.shipments, retail_log.sales]
    events = 12_000  # past --catch_up_records: a first start catches up in batch
    old = history(events, seed=71, span=timedelta(days=2))
    retail_log.produce(old)
    reached = tmp_path / "crash-points"
    reached.mkdir()
    via = ("tests.crash_points", str(reached), *plan.crash_points(), "--")

    def start() -> subprocess.Popen:
        return start_streaming(retail_log, pipeline_log, "--catch_up_records=10000", via=via)

    producer = Producer(retail_log, live_events(seed=72), rate=100)
    producer.start()
    process = start()
    try:
        # 1. During the catch-up, from outside.
        wait_until(lambda: "catching up in batch first" in pipeline_log.read_text(), "the catch-up began", process, 60)
        time.sleep(plan.catch_up_delay_s)  # the seeded time of the kill, not a wait for readiness
        kill_group(process)
        assert recorded_run(warehouse, PIPELINE) is None, (
            f"the catch-up had committed within {plan.catch_up_delay_s:.1f}s: the kill missed it (seed {seed})"
        )

        # 2. At the catch-up's commit: the batch views are in, the resume point just ahead or just made.
        process = start()
        crashed_itself(process, plan.catch_up_commit, pipeline_log, seed)
        assert views_or_none(warehouse) is not None, f"the catch-up wrote no views before its commit (seed {seed})"
        caught_up = recorded_run(warehouse, PIPELINE)
        if plan.catch_up_commit == "before-catch-up-commit":
            assert caught_up is None, f"a resume point before the catch-up's commit (seed {seed})"
        else:
            assert caught_up is not None and caught_up.run == 1 and sum(caught_up.offsets.values()) >= events, (
                f"the catch-up's commit recorded {caught_up} (seed {seed})"
            )

        # 3. Between a warehouse commit that moved the resume point and the consumer group's commit.
        process = start()
        crashed_itself(process, plan.group_gap, pipeline_log, seed)
        recorded = recorded_run(warehouse, PIPELINE)
        assert recorded is not None
        committed = group_offsets(retail_log.bootstrap, GROUP, topics)
        assert committed != dict(recorded.offsets), f"the group already holds the views' offsets (seed {seed})"
        assert all(committed[tp] is None or committed[tp] <= offset for tp, offset in recorded.offsets.items()), (
            f"the group ran ahead of the views: {committed} > {dict(recorded.offsets)} (seed {seed})"
        )

        # 4. Early in a resumed run.
        process = start()
        crashed_itself(process, plan.resume, pipeline_log, seed)
        resumed = recorded_run(warehouse, PIPELINE)
        assert resumed is not None and resumed.run == recorded.run + 1, f"no resumed run began (seed {seed})"

        # 5. Once a resumed run has moved its resume point and more events came, from outside.
        process = start()
        wait_until(
            lambda: moved_past(warehouse, resumed),
            f"a resumed run committed past its start (seed {seed})",
            process,
            READY_TIMEOUT_S,
        )
        due = producer.sent + plan.gap
        wait_until(lambda: producer.sent >= due, f"{plan.gap} more events were produced", process, READY_TIMEOUT_S)
        kill_group(process)

        process = start()  # every point reached: it runs plainly
        producer.finish()
        retail_log.produce(RetailConfig(**{**old.__dict__, "events": 500}))  # re-sends: the same ids and content
        truth = retail_log.truth()
        assert truth.duplicates and truth.dead_letters
        expected = expected_views(truth)
        wait_for_views(warehouse, expected, process, CONVERGE_TIMEOUT_S)
        ends = {tp: end for tp, (_, end) in partition_offsets(retail_log.bootstrap, topics).items()}
        wait_until(
            lambda: group_offsets(retail_log.bootstrap, GROUP, topics) == covered(warehouse) == ends,
            f"the consumer group and the resume point reached the log's end (seed {seed})",
            process,
            30,
        )
        assert stop_pipeline(process) == 0, pipeline_log.read_text()[-3000:]
    finally:
        producer.stop()
        kill_group(process)
    batch = run_cli(*retail_log.run_args("batch"), timeout=600)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert views_or_none(warehouse) == expected


def moved_past(warehouse: Path, earlier: RecordedRun) -> bool:
    """A later run than ``earlier`` has committed offsets past where ``earlier`` stood."""
    recorded = recorded_run(warehouse, PIPELINE)
    return (
        recorded is not None
        and recorded.run > earlier.run
        and sum(recorded.offsets.values()) > sum(earlier.offsets.values())
    )


def covered(warehouse: Path) -> dict[tuple[str, int], int] | None:
    """The offsets the warehouse's resume point records (None: none yet)."""
    recorded = recorded_run(warehouse, PIPELINE)
    return None if recorded is None else dict(recorded.offsets)


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
