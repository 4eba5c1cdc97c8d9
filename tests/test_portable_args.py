"""What `beamline run --runner portable` hands to Beam, and what it refuses in one line (no services run).

The state folder is a fresh temp one, so no job service or worker pool of
``beamline prism|workers start`` is found there; the end-to-end runs are in
``tests/test_portable.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions

from cli.main import build_parser
from cli.run import pipeline_argv
from core.errors import ConfigError
from core.settings import PROJECT_ROOT
from infra.process import free_port
from infra.submit import portable_runner_args
from pipelines import inventory
from pipelines.runner import PRISM_NO_SPLITS, _job_failure, resolve_argv
from tests.test_cli import one_line_error


@pytest.fixture(autouse=True)
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BEAMLINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _argv(*given: str) -> list[str]:
    args, extra = build_parser().parse_known_args(["run", "inventory", "--runner", "portable", *given])
    return pipeline_argv(args, extra)


def test_with_nothing_running_it_submits_to_the_default_job_service_with_loopback_workers() -> None:
    assert _argv() == [
        "--mode=batch",
        "--runner=PortableRunner",
        "--job_endpoint=localhost:8073",
        "--environment_type=LOOPBACK",
    ]


def test_a_worker_pool_makes_the_environment_external_and_stages_the_package() -> None:
    argv = _argv("--job-endpoint", "jobs.example:8099", "--environment-config", "pool.example:50000", "--detach")
    assert argv == [
        "--mode=batch",
        "--runner=PortableRunner",
        "--job_endpoint=jobs.example:8099",
        "--environment_type=EXTERNAL",
        "--environment_config=pool.example:50000",
        f"--setup_file={PROJECT_ROOT / 'setup.py'}",
        "--detach",
    ]


def test_beam_options_given_win_over_beamlines() -> None:
    argv = _argv("--environment-config", "pool:1", "--job_endpoint=other:2", "--environment_type=DOCKER")
    assert [arg for arg in argv if arg.startswith(("--job_endpoint", "--environment_"))] == [
        "--job_endpoint=other:2",
        "--environment_type=DOCKER",
    ]


@pytest.mark.parametrize(
    ("endpoint", "environment", "config", "needle"),
    [
        (None, "external", None, "beamline workers start"),
        (None, "loopback", "pool:1", "goes with --environment external"),
        ("nowhere", None, None, "--job-endpoint 'nowhere' is not HOST:PORT"),
        (None, "external", "pool", "--environment-config 'pool' is not HOST:PORT"),
        (None, "docker", None, "--environment must be one of external, loopback"),
    ],
)
def test_a_submission_that_cannot_work_is_refused(
    endpoint: str | None, environment: str | None, config: str | None, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        portable_runner_args(endpoint, environment, config, [])


def test_a_job_service_is_given_the_prism_experiment() -> None:
    # A job service is usually Prism's, whose dynamic splits lose state updates (pipelines/runner.py).
    args = resolve_argv(["--runner=PortableRunner", "--job_endpoint=localhost:1"])
    assert PRISM_NO_SPLITS in (PipelineOptions(args).view_as(DebugOptions).experiments or [])


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["run", "inventory", "--detach"], ["--detach needs --runner=PortableRunner"]),
        (
            ["run", "inventory", "--runner", "portable", "--environment", "loopback", "--detach"],
            ["--detach needs workers outside this process", "EXTERNAL"],
        ),
        (["run", "inventory", "--runner", "portable", "--environment", "external"], ["beamline workers start"]),
        (["jobs", "cancel"], ["JOB_ID", "beamline jobs list"]),
        (["prism", "start", "--job-port", "9999", "--ui-port", "9999"], ["must differ"]),
        (["workers", "start", "--python", "/nonexistent/python"], ["/nonexistent/python", "not an executable"]),
        (["workers", "start", "--count", "0"], ["--count", "at least 1"]),
    ],
)
def test_a_bad_submission_or_service_option_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    one_line_error(capsys, argv, *needles)


def test_no_job_service_answering_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    nothing = f"localhost:{free_port()}"
    one_line_error(capsys, ["run", "inventory", "--runner", "portable", "--job-endpoint", nothing],
                   f"no job service answers at {nothing}", "beamline prism start")  # fmt: skip
    one_line_error(capsys, ["jobs", "list", "--job-endpoint", nothing], f"no job service answers at {nothing}")
    one_line_error(capsys, ["jobs", "cancel", "job-001", "--job-endpoint", nothing], "no job service answers")


def test_the_pipeline_module_refuses_a_portable_runner_without_a_job_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert inventory.main(["--runner=PortableRunner"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "apitools" not in line]
    assert len(err) == 1 and "--job_endpoint=HOST:PORT" in err[0], err


@pytest.fixture
def grpc_services() -> Iterator[tuple[str, str]]:
    """A bare job service and a bare worker pool (gRPC servers that answer, nothing behind them)."""
    import grpc
    from apache_beam.portability.api import (
        beam_fn_api_pb2,
        beam_fn_api_pb2_grpc,
        beam_job_api_pb2,
        beam_job_api_pb2_grpc,
    )

    class Jobs(beam_job_api_pb2_grpc.JobServiceServicer):
        def GetJobs(self, request: object, context: object) -> object:
            return beam_job_api_pb2.GetJobsResponse()

    class Pool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
        def StopWorker(self, request: object, context: object) -> object:
            return beam_fn_api_pb2.StopWorkerResponse()

    servers = []
    addresses = []
    for add, servicer in (
        (beam_job_api_pb2_grpc.add_JobServiceServicer_to_server, Jobs()),
        (beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server, Pool()),
    ):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add(servicer, server)
        port = server.add_insecure_port("localhost:0")
        server.start()
        servers.append(server)
        addresses.append(f"localhost:{port}")
    yield addresses[0], addresses[1]
    for server in servers:
        server.stop(None)


def test_an_endpoint_that_is_not_the_service_asked_for_is_one_line(
    capsys: pytest.CaptureFixture[str], grpc_services: tuple[str, str]
) -> None:
    """Ports swapped by mistake: refused before anything is submitted (Prism panics on a pool that is not one)."""
    jobs, pool = grpc_services
    run = ["run", "inventory", "--runner", "portable"]
    one_line_error(capsys, [*run, "--job-endpoint", pool, "--environment-config", pool],
                   f"{pool} answers but is not a job service")  # fmt: skip
    one_line_error(capsys, [*run, "--job-endpoint", jobs, "--environment-config", jobs],
                   f"{jobs} answers but is not a worker pool")  # fmt: skip


def test_a_setup_file_that_is_not_a_file_is_one_line(
    capsys: pytest.CaptureFixture[str], grpc_services: tuple[str, str]
) -> None:
    jobs, pool = grpc_services
    assert inventory.main([
        "--runner=PortableRunner", f"--job_endpoint={jobs}", "--environment_type=EXTERNAL",
        f"--environment_config={pool}", "--setup_file=/nonexistent/setup.py",
    ]) == 1  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if "apitools" not in line]
    assert len(err) == 1 and "--setup_file /nonexistent/setup.py is not a file" in err[0], err


def test_a_detached_streaming_job_keeps_its_warehouse_locked_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second streaming run beside a detached job (its submitter long gone) is refused until the job ends."""
    import fcntl
    import os

    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    from warehouse import resume

    states = {"job-7": beam_job_api_pb2.JobState.RUNNING}

    class Jobs(beam_job_api_pb2_grpc.JobServiceServicer):
        def GetState(self, request: object, context: grpc.ServicerContext) -> object:
            if request.job_id not in states:
                context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
            return beam_job_api_pb2.JobStateEvent(state=states[request.job_id])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    beam_job_api_pb2_grpc.add_JobServiceServicer_to_server(Jobs(), server)
    endpoint = f"localhost:{server.add_insecure_port('localhost:0')}"
    server.start()
    held: dict[str, int] = {}
    monkeypatch.setattr(resume, "_HELD_LOCKS", held)

    def submitter_exits() -> None:
        for fd in held.values():
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        held.clear()

    try:
        resume.hold_run_lock(tmp_path, "inventory")  # the detached submission's start_run
        resume.hand_over_run_locks(endpoint, "job-7")
        submitter_exits()
        with pytest.raises(ConfigError, match=f"job job-7 of the job service at {endpoint} is streaming inventory"):
            resume.hold_run_lock(tmp_path, "inventory")
        resume.hold_run_lock(tmp_path, "wordcount")  # another pipeline's lock is its own
        submitter_exits()
        states["job-7"] = beam_job_api_pb2.JobState.CANCELLED
        resume.hold_run_lock(tmp_path, "inventory")  # the job ended: the warehouse is free again
        submitter_exits()
        resume.hand_over_run_locks(endpoint, "job-8")  # nothing held: nothing written
        resume.hold_run_lock(tmp_path, "inventory")
        resume.hand_over_run_locks(endpoint, "job-unknown")
        submitter_exits()
        resume.hold_run_lock(tmp_path, "inventory")  # a job the service does not know is not running
    finally:
        submitter_exits()
        server.stop(None)


@pytest.mark.parametrize(
    ("failure", "needle"),
    [
        (RuntimeError("Pipeline job-6 failed in state FAILED: SDK worker disconnected\nTraceback ..."),
         "Pipeline job-6 failed in state FAILED: SDK worker disconnected; the workers' logs"),
        (None, "lost the job service at"),
    ],
)  # fmt: skip
def test_a_job_that_fails_or_loses_its_job_service_while_waited_for_is_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    grpc_services: tuple[str, str],
    failure: Exception | None,
    needle: str,
) -> None:
    """`beamline workers stop` or `beamline prism stop` under an attached run: one line, not Beam's traceback."""
    import apache_beam as beam
    import grpc

    from pipelines.runner import main_for

    class Gone(grpc.RpcError, grpc.Call):  # what Beam's wait raises when the job service stops
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

    class Result:
        def wait_until_finish(self) -> None:
            raise failure if failure is not None else Gone()

    monkeypatch.setattr(beam.Pipeline, "run", lambda self: Result())
    jobs, _ = grpc_services
    code = main_for(lambda pipeline, options: None, ["--runner=PortableRunner", f"--job_endpoint={jobs}"])
    err = [line for line in capsys.readouterr().err.splitlines() if "apitools" not in line]
    assert code == 1 and len(err) == 1 and needle in err[0], err


def test_a_job_whose_workers_lack_beamline_says_to_stage_it() -> None:
    """Workers without the code fail deep in Beam; the run says in one line what to pass."""
    failed = RuntimeError(
        "Pipeline job-001 failed in state FAILED: Traceback (most recent call last):\n  ...\n"
        "ModuleNotFoundError: No module named 'transforms.retail'"
    )
    line = _job_failure(failed, "localhost:8073")
    assert "\n" not in line
    assert "'transforms.retail'" in line and "--setup_file" in line
    other = _job_failure(RuntimeError("Pipeline job-002 failed: No module named 'numpy'"), "localhost:8073")
    assert "--setup_file" not in other and other.startswith("Pipeline job-002 failed")
