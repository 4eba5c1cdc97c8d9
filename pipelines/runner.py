"""Running a Beamline pipeline: runner choice, clean stop on signals, a summary.

The pipelines only describe *what* to compute; this module decides *where*:

* ``--mode batch`` with no runner named runs on Beam's FnApiRunner (no job
  service: the fastest way to backfill on one machine), in this process for a
  small log and in one worker process per core for a large one
  (:func:`auto_workers`);
* ``--mode streaming`` with no runner named runs on Prism, Beam's portable
  local runner, from the binary cached by ``make setup``;
* any runner named explicitly (``--runner=FlinkRunner``, ``PrismRunner``, ...)
  is used as given; ``--runner=PortableRunner --job_endpoint=HOST:PORT``
  submits to a running job service (``beamline prism start``), which must
  answer before anything is staged, and ``--detach`` returns once the job runs.

In streaming mode SIGINT and SIGTERM cancel the job and the process exits 0:
the views hold everything committed so far, and a restart replays the log
(idempotent upserts make that safe).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import apache_beam as beam
import grpc
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
)
from apache_beam.portability.api import (
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_job_api_pb2,
    beam_job_api_pb2_grpc,
)
from apache_beam.runners.runner import PipelineState

from core.errors import (
    BeamlineError,
    ConfigError,
    PipelineFailed,
    ServiceError,
    SetupMissing,
    download_failure,
    quiet_beam_downloads,
    report_errors,
)
from core.settings import prism_binary
from pipelines.options import BeamlineOptions, SubmitOptions, kafka_connection, options_help, without_secrets
from transforms.kafka import LOCAL_PROGRESS, PROGRESS_DIR_ENV, count_records
from warehouse.resume import hand_over_run_locks, set_job_probe

__all__ = [
    "AUTO_WORKERS_FROM_RECORDS",
    "JOB_SERVICE_RUNNERS",
    "MAX_AUTO_WORKERS",
    "PRISM_NO_SPLITS",
    "RunSummary",
    "auto_workers",
    "available_cores",
    "check_submission",
    "main_for",
    "run_pipeline",
]

FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# Prism (2.77) must not split bundles dynamically while stateful DoFns run on it.
# When it splits one (a bundle that shows no progress for a tick, which a busy
# machine makes common), its splitBundle releases the key of every element it
# requeues even if the bundle still holds earlier elements of that key: a second
# bundle then runs the key at the same time, and whichever commits last
# overwrites the other's state (an event vanishes from inventory, a window loses
# sales), and a key's timer can fire twice. Split timers are apache/beam#35771.
# Beamline's sources self-checkpoint, so no step needs a runner split.
PRISM_NO_SPLITS = "prism_disable_sdf_split"
# A streaming job runs until stopped: ten years stands for "no deadline".
STREAM_JOB_TIMEOUT_S = 10 * 365 * 24 * 3600
# Runner names (as --runner takes them, lower case) that submit to a job service given by --job_endpoint.
JOB_SERVICE_RUNNERS = ("portablerunner", "portable")
# How long a job service or a worker pool has to answer before a submission stops with one line.
ENDPOINT_TIMEOUT_S = 10.0
METRICS_NAMESPACE = "beamline"
# A backfill of at least this many records runs in worker processes, one per
# core, when the user left the runner's parallelism alone. Below it, starting
# the workers (each imports Beam first: about 1.5 s of CPU) costs more than they
# save: on 2 vCPU, 250k events took 4.4 s in one process and 5.4 s in two, 1M
# took 15.8 s and 12.7 s (see bench/results/backfill.md for the latest).
AUTO_WORKERS_FROM_RECORDS = 600_000
# Each worker is a whole Python process with its own Beam; more than this many
# was never measured.
MAX_AUTO_WORKERS = 4

_LOG = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counters the pipeline reported (namespace ``beamline``), and the elapsed time.

    A detached run (``--detach``) has only the job's id and its state when
    this process let go of it.
    """

    state: str
    elapsed_s: float
    counters: dict[str, int] = field(default_factory=dict)
    job_id: str | None = None

    def describe(self) -> str:
        if self.job_id is not None:
            return f"submitted as job {self.job_id} in {self.elapsed_s:.1f}s; it is {self.state.lower()}"
        parts = [f"{name}={value:,}" for name, value in sorted(self.counters.items())]
        return f"{self.state.lower()} in {self.elapsed_s:.1f}s" + (": " + ", ".join(parts) if parts else "")


def _has_flag(argv: Sequence[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in argv)


def resolve_argv(argv: Sequence[str]) -> list[str]:
    """Add the runner Beamline picks for the mode when the caller named none."""
    args = list(argv)
    options = PipelineOptions(args)
    mode = options.view_as(BeamlineOptions).mode
    if mode == "streaming" and not _has_flag(args, "--streaming"):
        args.append("--streaming")
    if mode == "streaming" and not (_has_flag(args, "--job_server_timeout") or _has_flag(args, "--job-server-timeout")):
        # Beam's portable runner opens the job's state stream with this as its
        # gRPC deadline (300 s by default): when it passed, waiting for the job
        # failed and took a healthy streaming pipeline down after five minutes.
        args.append(f"--job_server_timeout={STREAM_JOB_TIMEOUT_S}")
    if not _has_flag(args, "--runner"):
        args.append("--runner=" + ("PrismRunner" if mode == "streaming" else FN_API_RUNNER))
    runner = (options.view_as(StandardOptions).runner or "").lower()
    uses_prism = "--runner=PrismRunner" in args or runner in ("prismrunner", "prism")
    if uses_prism and not _has_flag(args, "--prism_location"):
        binary = prism_binary()
        if not binary.is_file():
            raise SetupMissing(f"Prism runner not found at {binary}; run `make setup`")
        args.append(f"--prism_location={binary}")
    # A job service is most often Prism's (`beamline prism start`); other runners ignore the experiment.
    may_be_prism = uses_prism or runner in JOB_SERVICE_RUNNERS
    if may_be_prism and PRISM_NO_SPLITS not in (options.view_as(DebugOptions).experiments or []):
        args.append(f"--experiments={PRISM_NO_SPLITS}")
    return args


def _answers(address: str, timeout_s: float) -> bool:
    """Whether a gRPC server at ``address`` (HOST:PORT) accepts a connection within ``timeout_s``.

    A refused TCP connection answers at once; gRPC alone would retry until the timeout.
    """
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "localhost", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return False
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
    return True


def check_submission(options: PipelineOptions) -> None:
    """Refuse in one line what would fail later and worse: a job service or worker pool that does not answer.

    Beam's PortableRunner waits for a job service as long as the job's
    deadline (years, for a streaming run), and Prism 2.77 stops altogether when
    it cannot reach the worker pool of an EXTERNAL environment, failing every
    job it runs. ``--detach`` needs a job service and workers outside this
    process.
    """
    runner = (options.view_as(StandardOptions).runner or "").lower()
    portable = options.view_as(PortableOptions)
    detach = options.view_as(SubmitOptions).detach
    if runner not in JOB_SERVICE_RUNNERS:
        if detach:
            raise ConfigError("--detach needs --runner=PortableRunner --job_endpoint=HOST:PORT (a running job service)")
        return
    if not portable.job_endpoint:
        raise ConfigError("--runner=PortableRunner needs --job_endpoint=HOST:PORT of a running job service")
    environment = (portable.environment_type or "").upper()
    if detach and environment in ("LOOPBACK", ""):
        raise ConfigError(
            "--detach needs workers outside this process: --environment_type=EXTERNAL "
            "--environment_config=HOST:PORT of a worker pool (LOOPBACK workers end with this process)"
        )
    setup_file = options.view_as(SetupOptions).setup_file
    if setup_file and not os.path.isfile(setup_file):
        raise ConfigError(f"--setup_file {setup_file} is not a file; pass the setup.py of a Beamline checkout")
    if not _answers(portable.job_endpoint, ENDPOINT_TIMEOUT_S):
        raise ServiceError(
            f"no job service answers at {portable.job_endpoint}; start one with `beamline prism start` "
            "or pass the job endpoint of a running one"
        )
    if not _speaks(portable.job_endpoint, _probe_job_service):
        raise ServiceError(
            f"{portable.job_endpoint} answers but is not a job service (a worker pool's port?); "
            "pass the job endpoint `beamline prism status` shows"
        )
    if environment == "EXTERNAL" and portable.environment_config and not portable.environment_config.startswith("{"):
        if not _answers(portable.environment_config, ENDPOINT_TIMEOUT_S):
            raise ServiceError(
                f"no worker pool answers at {portable.environment_config}; start one with "
                "`beamline workers start` or pass the address of a running one"
            )
        # Prism 2.77 panics, ending every job it runs, when the EXTERNAL address is not a worker pool.
        if not _speaks(portable.environment_config, _probe_worker_pool):
            raise ServiceError(
                f"{portable.environment_config} answers but is not a worker pool (a job service's port?); "
                "pass the address `beamline workers status` shows"
            )


def _probe_job_service(channel: grpc.Channel) -> None:
    beam_job_api_pb2_grpc.JobServiceStub(channel).GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=ENDPOINT_TIMEOUT_S)


def _probe_worker_pool(channel: grpc.Channel) -> None:
    # Stopping a worker no pool ever started: a no-op for a pool (Beam's and Beamline's).
    beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel).StopWorker(
        beam_fn_api_pb2.StopWorkerRequest(worker_id="beamline-submission-probe"), timeout=ENDPOINT_TIMEOUT_S
    )


#: Job states a job never leaves (beam_job_api.proto).
_TERMINAL_STATES = frozenset({"DONE", "FAILED", "CANCELLED", "DRAINED", "UPDATED"})


def job_running(endpoint: str, job_id: str) -> bool:
    """Whether the job service at ``endpoint`` says job ``job_id`` has not ended (False if it cannot say)."""
    with grpc.insecure_channel(endpoint) as channel:
        try:
            event = beam_job_api_pb2_grpc.JobServiceStub(channel).GetState(
                beam_job_api_pb2.GetJobStateRequest(job_id=job_id), timeout=ENDPOINT_TIMEOUT_S
            )
        except grpc.RpcError:  # no such job, or no job service there any more: its jobs are gone
            return False
    return beam_job_api_pb2.JobState.Enum.Name(event.state) not in _TERMINAL_STATES


set_job_probe(job_running)


def _speaks(address: str, probe: Callable[[grpc.Channel], None]) -> bool:
    """Whether the gRPC server at ``address`` implements what ``probe`` calls (False: UNIMPLEMENTED)."""
    with grpc.insecure_channel(address) as channel:
        try:
            probe(channel)
        except grpc.RpcError as exc:
            return not (isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED)
    return True


def auto_workers(argv: Sequence[str], records: int, cores: int) -> int:
    """Worker processes for a batch run of ``records`` records: 1 unless Beamline may choose more.

    Beamline chooses only on the FnApiRunner it picked itself (``argv`` names
    no runner) and only when ``argv`` sets neither ``--direct_num_workers`` nor
    ``--direct_running_mode``.
    """
    if records < AUTO_WORKERS_FROM_RECORDS or cores < 2:
        return 1
    if any(_has_flag(argv, flag) for flag in ("--runner", "--direct_num_workers", "--direct_running_mode")):
        return 1
    return min(cores, MAX_AUTO_WORKERS)


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _collect_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    try:
        metrics = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception as exc:  # a runner without metrics support still finished its work
        _LOG.debug("metrics unavailable: %s", exc)
        return {}
    totals: dict[str, int] = {}
    for counter in metrics.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment (and its children's) for the block."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class _ProgressReporter(threading.Thread):
    """Prints "read X of Y records" of a backfill every few seconds, on stderr."""

    def __init__(
        self, total: int, shared_dir: str | None = None, every_s: float = 5.0, out: TextIO | None = None
    ) -> None:
        super().__init__(name="beamline-progress", daemon=True)
        self._out = out
        self._total = total
        self._shared_dir = shared_dir
        self._every_s = every_s
        self._done = threading.Event()
        self._base = LOCAL_PROGRESS.records

    def run(self) -> None:
        started = time.monotonic()
        out = self._out or sys.stderr
        while not self._done.wait(self._every_s):
            read = LOCAL_PROGRESS.records - self._base
            if self._shared_dir is not None:
                read += LOCAL_PROGRESS.in_other_processes(self._shared_dir)
            elapsed = time.monotonic() - started
            if not read:
                # Nothing read yet, or readers that cannot tell (workers elsewhere):
                # say what is known.
                print(f"  reading {self._total:,} records, {elapsed:,.0f}s elapsed", file=out)
                continue
            share = f" ({100 * read / self._total:.0f}%)" if self._total else ""
            print(f"  read {read:,} of {self._total:,} records{share}, {read / elapsed:,.0f}/s", file=out)

    def stop(self) -> None:
        self._done.set()


@contextlib.contextmanager
def _workers_log() -> Iterator[TextIO]:
    """Point file descriptor 2 at a temp file for the block; yield a stream to the terminal.

    Worker processes inherit the descriptor when they start: Beam's SDK harness
    logs at INFO to stderr (about 90 lines per worker in a backfill), which
    would bury the progress lines. The file is removed after a good run and
    named after a failed one.
    """
    handle, path = tempfile.mkstemp(prefix="beamline-workers-", suffix=".log")
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(handle, 2)
    os.close(handle)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    failed = True
    try:
        yield terminal
        failed = False
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
        if failed:
            print(f"beamline: the worker processes' log is {path}", file=sys.stderr)
        else:
            os.remove(path)


def run_pipeline(
    build: Callable[[beam.Pipeline, PipelineOptions], contextlib.AbstractContextManager[Any] | None],
    argv: Sequence[str] | None = None,
    *,
    progress_topics: Callable[[PipelineOptions], list[str]] | None = None,
    on_started: Callable[[beam.runners.runner.PipelineResult], None] | None = None,
    prepare: Callable[[PipelineOptions, list[str]], None] | None = None,
) -> RunSummary:
    """Build and run a pipeline; block until it finishes or a signal stops it.

    ``progress_topics`` names the topics a batch run reads, so a long backfill
    reports how far it got while it runs. ``build`` may return a context
    manager that runs beside the pipeline (entered once it is built, left when
    it ends), as a streaming run's consumer-group commits do. ``prepare``
    runs first with the options and the arguments (a catch-up runs a batch
    pipeline there).
    """
    given = list(sys.argv[1:] if argv is None else argv)
    args = resolve_argv(given)
    options = PipelineOptions(args)
    check_submission(options)
    detach = options.view_as(SubmitOptions).detach
    if prepare is not None:
        prepare(options, given)
    # The runner (and a job service's UI) gets the options without client secrets: the
    # pipeline's steps are built from ``options`` and carry their settings themselves.
    runner_options = PipelineOptions(without_secrets(args))
    for each in (options, runner_options):
        each.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = False
    streaming = options.view_as(BeamlineOptions).mode == "streaming"
    # A detached run returns at once: nothing to report progress on.
    wants_progress = progress_topics is not None and not streaming and not detach
    counted_topics = progress_topics(options) if progress_topics is not None and wants_progress else None
    counted = counted_topics is not None
    if counted_topics is not None:
        # Counted before the pipeline is built: the worker count it decides
        # shapes the read (each worker gets an equal share of the records).
        total = count_records(kafka_connection(options), counted_topics)
        workers = auto_workers(given, total, available_cores())
        if workers > 1:
            for each in (options, runner_options):
                direct = each.view_as(DirectOptions)
                direct.direct_num_workers = workers
                direct.direct_running_mode = "multi_processing"
    pipeline = beam.Pipeline(options=runner_options)
    beside = build(pipeline, options)

    with contextlib.ExitStack() as stack:
        if beside is not None:
            stack.enter_context(beside)
        terminal: TextIO | None = None
        if counted:
            if workers > 1:
                print(
                    f"beamline: {total:,} records to read: running {workers} worker processes "
                    "(--direct_num_workers=1 keeps one)",
                    file=sys.stderr,
                )
                terminal = stack.enter_context(_workers_log())
            # Worker processes inherit the environment: their readers report there.
            shared_dir = tempfile.mkdtemp(prefix="beamline-progress-")
            stack.callback(shutil.rmtree, shared_dir, ignore_errors=True)
            stack.enter_context(_environment(PROGRESS_DIR_ENV, shared_dir))
            reporter = _ProgressReporter(total, shared_dir, out=terminal)
            reporter.start()
            stack.callback(reporter.stop)
        started = time.monotonic()
        runner = (options.view_as(StandardOptions).runner or "").lower()
        job_endpoint = options.view_as(PortableOptions).job_endpoint if runner in JOB_SERVICE_RUNNERS else None
        try:
            with quiet_beam_downloads() if runner == "flinkrunner" else contextlib.nullcontext():
                result = pipeline.run()
        except RuntimeError as exc:
            failure = _runner_failure(exc, runner)
            if failure is None:
                raise
            raise failure from None
        if on_started is not None:
            on_started(result)
        if detach:
            # Beam's portable result keeps the job service's id of the job as _job_id and offers no accessor.
            state = str(result.state).split(".")[-1]
            job_id = getattr(result, "_job_id", None) or "?"
            # The run locks this process took (a streaming run's) go to the job, which outlives it.
            hand_over_run_locks(options.view_as(PortableOptions).job_endpoint, job_id)
            return RunSummary(state, time.monotonic() - started, job_id=job_id)
        stop_requested = threading.Event()

        def _stop(signum: int, _frame: object) -> None:
            if stop_requested.is_set():
                return
            stop_requested.set()
            print(f"beamline: {signal.Signals(signum).name} received, stopping the pipeline", file=sys.stderr)
            try:
                result.cancel()
            except Exception as exc:  # already finished, or the runner cannot cancel
                _LOG.debug("cancel failed: %s", exc)

        previous = {}
        if streaming and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, _stop)
        try:
            state = result.wait_until_finish()
        except Exception as exc:
            if stop_requested.is_set():
                state = PipelineState.CANCELLED
            elif job_endpoint is not None:
                # Beam's traceback says nothing more than its message: the job's own failure is in the workers' logs.
                raise PipelineFailed(_job_failure(exc, job_endpoint)) from None
            else:
                raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    state_name = str(state).split(".")[-1]
    if state_name not in ("DONE", "CANCELLED", "CANCELLING") or (state_name != "DONE" and not stop_requested.is_set()):
        raise PipelineFailed(f"the pipeline ended in state {state_name}; see the log above for the failing step")
    return RunSummary(state_name, time.monotonic() - started, _collect_counters(result))


def _job_failure(exc: Exception, endpoint: str) -> str:
    """One line for a job on a job service that failed, or a job service that went away, while this process waited."""
    if isinstance(exc, grpc.RpcError):
        code = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
        return (
            f"lost the job service at {endpoint} while the job ran ({code}): was it stopped? "
            "Start it again (`beamline prism start`) and submit again: a streaming run resumes from the warehouse"
        )
    text = str(exc)
    missing = _MISSING_BEAMLINE.search(text)
    if missing is not None:
        return (
            f"the job's workers cannot import Beamline (No module named {missing.group(1)!r}): pass "
            "--setup_file=PATH/setup.py of this checkout so the job stages it (`beamline run` does), "
            "or install Beamline in the workers' Python"
        )
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    return f"{first}; the workers' logs say more (`beamline workers status`); a streaming run resumes if resubmitted"


# A worker's import of Beamline's own packages failed: the job was not given the code.
_MISSING_BEAMLINE = re.compile(
    r"No module named '((?:cli|core|pipelines|producers|readside|transforms|warehouse)[\w.]*)'"
)
# Beam's FlinkRunner fetches its job server jar itself when it runs; where it cannot, it raises this.
_FLINK_JAR_FETCH = "job server jar"


def _runner_failure(exc: RuntimeError, runner: str) -> BeamlineError | None:
    """One line for a runner that could not start: Beam's FlinkRunner without its job server jar."""
    if runner != "flinkrunner" or _FLINK_JAR_FETCH not in str(exc):
        return None
    return ServiceError(
        f"Beam could not fetch its Flink job server jar ({download_failure(exc)}); pass "
        "--flink_job_server_jar=PATH of a downloaded one, or use `beamline run --runner flink`, which also "
        "finds it through env BEAMLINE_FLINK_JOB_SERVER_JAR or the project cache"
    )


def main_for(
    build: Callable[[beam.Pipeline, PipelineOptions], contextlib.AbstractContextManager[Any] | None],
    argv: Sequence[str] | None = None,
    progress_topics: Callable[[PipelineOptions], list[str]] | None = None,
    prog: str = "python -m pipelines.PIPELINE",
    prepare: Callable[[PipelineOptions, list[str]], None] | None = None,
) -> int:
    """``python -m pipelines.X`` entry: run, print the summary, errors as one line; ``--help`` lists the options."""
    given = list(sys.argv[1:] if argv is None else argv)
    if "-h" in given or "--help" in given:
        print(options_help(prog))
        return 0
    return report_errors(
        lambda: print(run_pipeline(build, given, progress_topics=progress_topics, prepare=prepare).describe())
    )
