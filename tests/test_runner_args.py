"""The Beam options Beamline adds to a run (pure argument logic)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

from pipelines.runner import STREAM_JOB_TIMEOUT_S, resolve_argv


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
