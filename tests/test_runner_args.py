"""The Beam options Beamline adds to a run, and its progress lines (pure logic; one test uses the broker)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from kafka import KafkaProducer

from core.errors import ConfigError
from pipelines import inventory, runner
from pipelines.runner import (
    AUTO_WORKERS_FROM_RECORDS,
    MAX_AUTO_WORKERS,
    STREAM_JOB_TIMEOUT_S,
    RunSummary,
    _ProgressReporter,
    auto_workers,
    resolve_argv,
    run_pipeline,
)
from transforms.kafka.progress import PROGRESS_DIR_ENV, _LocalProgress


def _timeout(argv: list[str]) -> int:
    return PipelineOptions(resolve_argv(argv)).view_as(PortableOptions).job_server_timeout


def test_a_streaming_job_has_no_five_minute_deadline() -> None:
    # Beam's default (300 s) is the deadline of the job's state stream: a
    # streaming run used to fail after five minutes while waiting on it.
    assert _timeout(["--mode=streaming", "--runner=PortableRunner"]) == STREAM_JOB_TIMEOUT_S
    assert STREAM_JOB_TIMEOUT_S > 365 * 24 * 3600


def test_a_timeout_the_user_gives_is_kept() -> None:
    assert _timeout(["--mode=streaming", "--runner=PortableRunner", "--job_server_timeout=42"]) == 42
    assert _timeout(["--mode=streaming", "--runner=PortableRunner", "--job-server-timeout=43"]) == 43


def test_a_batch_run_keeps_beams_default() -> None:
    assert _timeout(["--mode=batch"]) == PipelineOptions([]).view_as(PortableOptions).job_server_timeout


def test_readers_in_other_processes_count_in_the_progress_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A worker process's reader writes its total where the launcher asked ...
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))
    progress = _LocalProgress()
    progress.add(30)
    progress.add(10)
    progress.share()
    (tmp_path / str(os.getpid())).rename(tmp_path / "1")  # as if another process wrote it
    (tmp_path / "2.tmp").write_text("999")  # a half-written report is not counted
    assert _LocalProgress.in_other_processes(str(tmp_path)) == 40
    # ... and the launcher's progress line counts it.
    reporter = _ProgressReporter(100, str(tmp_path), every_s=0.01)
    reporter.start()
    while "read 40 of 100 records (40%)" not in capsys.readouterr().err:
        assert reporter.is_alive()
    reporter.stop()
    reporter.join()


def test_one_topic_for_shipments_and_sales_is_refused_before_any_read() -> None:
    options = PipelineOptions(["--shipments_topic=events", "--sales_topic=events", "--bootstrap_servers=127.0.0.1:1"])
    with pytest.raises(ConfigError, match="shipments and sales need a topic each"):
        inventory.build(beam.Pipeline(), options)


def test_a_large_backfill_uses_every_core_unless_the_user_chose() -> None:
    large = AUTO_WORKERS_FROM_RECORDS
    assert auto_workers(["--mode=batch"], large, cores=2) == 2
    assert auto_workers(["--mode=batch"], large, cores=64) == MAX_AUTO_WORKERS
    assert auto_workers(["--mode=batch"], large - 1, cores=2) == 1  # starting workers costs more
    assert auto_workers(["--mode=batch"], large, cores=1) == 1
    for chosen in ("--direct_num_workers=1", "--direct_running_mode=in_memory", "--runner=FlinkRunner"):
        assert auto_workers(["--mode=batch", chosen], large, cores=2) == 1


class _RecordPid(beam.DoFn):
    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, element: int) -> None:
        Path(self._folder, f"{os.getpid()}-{element}").touch()


def _run_on_workers(
    step: beam.PTransform, bootstrap_servers: str, make_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> RunSummary:
    """Run ``Create(range(4)) | step`` as a batch whose 3-record log is 'large enough' for workers."""
    topic = make_topic(1)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for _ in range(3):
        producer.send(topic, b"x")
    producer.flush()
    producer.close()
    monkeypatch.setattr(runner, "AUTO_WORKERS_FROM_RECORDS", 3)

    def build(pipeline: beam.Pipeline, options: PipelineOptions) -> None:
        _ = pipeline | beam.Create(range(4)) | step

    argv = ["--mode=batch", f"--bootstrap_servers={bootstrap_servers}"]
    return run_pipeline(build, argv, progress_topics=lambda _: [topic])


def test_the_chosen_workers_run_the_job_in_other_processes_quietly(
    bootstrap_servers: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    summary = _run_on_workers(beam.ParDo(_RecordPid(str(tmp_path))), bootstrap_servers, make_topic, monkeypatch)
    assert summary.state == "DONE"
    err = capfd.readouterr().err
    assert "3 records to read: running 2 worker processes" in err
    # The workers' own logging (Beam's SDK harness logs at INFO) stays off the terminal.
    assert "sdk_worker" not in err and "INFO" not in err, err[-2000:]
    pids = {name.split("-")[0] for name in os.listdir(tmp_path)}
    assert len(os.listdir(tmp_path)) == 4 and str(os.getpid()) not in pids


def _fail(element: int) -> int:
    raise ValueError(f"element {element} is broken on purpose")


def test_a_failed_run_with_workers_names_their_log(
    bootstrap_servers: str,
    make_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(Exception, match="broken on purpose"):
        _run_on_workers(beam.Map(_fail), bootstrap_servers, make_topic, monkeypatch)
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "the worker processes' log is" in line]
    log = Path(line.rsplit(" ", 1)[1])
    try:
        assert "broken on purpose" in log.read_text()
    finally:
        log.unlink()
