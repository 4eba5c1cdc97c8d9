"""Verbs that run local services: ``beamline kafka``, ``flink``, ``prism`` and ``workers``.

Each handler prints one or two lines; what an operator can fix is raised as a
:class:`~core.errors.BeamlineError`, which the command line prints as one line.
``status`` exits 3 when the service is stopped, so scripts can test it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from core import settings
from core.arguments import port, whole_number

__all__ = ["EXIT_STOPPED", "add_flink", "add_kafka", "add_prism", "add_workers"]

#: Exit code of ``status`` when the service is not running.
EXIT_STOPPED = 3


# -- kafka ------------------------------------------------------------------------
def _kafka(args: argparse.Namespace) -> int:
    from infra.kafka_broker import KafkaBroker

    broker = KafkaBroker(args.data_dir)
    if args.action == "start":
        status = broker.start(args.port, auto_create_topics=args.auto_create_topics)
        print(f"Kafka broker up (pid {status.pid}), data in {status.data_dir}")
        print(f"bootstrap servers: {status.bootstrap_servers}")
    elif args.action == "stop":
        if broker.stop():
            print(f"Kafka broker stopped; data kept in {broker.data_dir}")
        else:
            print(f"no Kafka broker running from {broker.data_dir}")
    else:
        status = broker.status()
        if not status.running:
            print(f"stopped; data dir {status.data_dir}")
            return EXIT_STOPPED
        print(f"running (pid {status.pid}) at {status.bootstrap_servers}, data in {status.data_dir}")
    return 0


def add_kafka(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline kafka start|stop|status``."""
    kafka = verbs.add_parser(
        "kafka",
        help="run a local Apache Kafka broker (KRaft)",
        description="Start, stop or inspect a one-node Apache Kafka broker (KRaft) whose data stays on disk.",
    )
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--port", type=port("--port"), default=9092, help="client port (default %(default)s)")
    kafka.add_argument(
        "--data-dir",
        default=str(settings.state_dir() / "kafka"),
        help=f"broker data folder (kafka/ in the state folder, {settings.env_help('BEAMLINE_HOME')}; "
        "default %(default)s)",
    )
    kafka.add_argument(
        "--auto-create-topics",
        action="store_true",
        help="let producers create a topic by writing to it (off by default: a misspelt topic name should "
        "fail at once, not become a new empty topic; Beamline's own commands create the topics they need)",
    )
    kafka.set_defaults(func=_kafka)


# -- what the services below share ------------------------------------------------------
def _add_service(
    verbs: argparse._SubParsersAction, name: str, *, what: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A ``beamline NAME start|stop|status [--state-dir DIR]`` parser; ``what`` says what the folder holds."""
    parser = verbs.add_parser(name, help=summary, description=description)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--state-dir",
        default=str(settings.state_dir() / name),
        help=f"{what} ({name}/ in the state folder, {settings.env_help('BEAMLINE_HOME')}; default %(default)s)",
    )
    return parser


class _Service(Protocol):
    folder: Path

    def status(self) -> Any: ...

    def stop(self) -> bool: ...


def _service_verb(
    action: str,
    what: str,
    service: _Service,
    start: Callable[[], Any],
    describe: Callable[[Any], str],
    hint: Callable[[Any], str],
) -> int:
    """``start`` (then how to use it), ``stop`` (logs stay) or ``status`` (exit 3 when stopped), a line or two each."""
    if action == "start":
        status = start()
        print(f"{what} up: {describe(status)}; logs in {service.folder}")
        print(hint(status))
        return 0
    if action == "stop":
        print(
            f"{what} stopped; logs kept in {service.folder}"
            if service.stop()
            else f"no {what} running from {service.folder}"
        )
        return 0
    status = service.status()
    if not status.running:
        print(f"stopped; state dir {service.folder}")
        return EXIT_STOPPED
    print(f"running: {describe(status)}")
    return 0


# -- flink ------------------------------------------------------------------------
def _flink(args: argparse.Namespace) -> int:
    from infra.flink_cluster import ClusterStatus, FlinkCluster, FlinkClusterConfig

    def describe(status: ClusterStatus) -> str:
        pool = f", worker pool at {status.worker_pool}" if status.worker_pool else ", no worker pool"
        return (
            f"REST and web UI at http://{status.flink_master}, {status.taskmanagers_registered} TaskManager(s) "
            f"with {status.slots_total} slots ({status.slots_available} free){pool}, "
            f"{status.jobs_running} job(s) running"
        )

    config = FlinkClusterConfig(
        rest_port=args.rest_port,
        taskmanagers=args.taskmanagers,
        slots_per_taskmanager=args.slots,
        worker_pool_port=args.worker_pool_port,
    )
    cluster = FlinkCluster(args.state_dir, config)
    return _service_verb(
        args.action,
        "Flink session cluster",
        cluster,
        cluster.start,
        describe,
        lambda status: f"submit with: beamline run inventory --runner flink --flink-master {status.flink_master}",
    )


def add_flink(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline flink start|stop|status``."""
    flink = _add_service(
        verbs,
        "flink",
        what="cluster state folder: config, pid files, logs, checkpoints",
        summary="run a local Apache Flink session cluster (JobManager, TaskManagers, Python worker pool)",
        description=(
            "Start, stop or inspect a standalone Flink session cluster on this machine: one JobManager "
            "and TaskManagers as separate java processes, plus a Beam Python SDK worker pool for the "
            "EXTERNAL environment. Configuration, pid files and one log per process live in the state dir."
        ),
    )
    flink.add_argument(
        "--rest-port",
        type=port("--rest-port"),
        default=8081,
        help="JobManager REST API and web UI port (default %(default)s)",
    )
    flink.add_argument(
        "--taskmanagers",
        type=whole_number("--taskmanagers", 1),
        default=1,
        help="TaskManager processes to start (default %(default)s)",
    )
    flink.add_argument(
        "--slots", type=whole_number("--slots", 1), default=2, help="task slots per TaskManager (default %(default)s)"
    )
    flink.add_argument(
        "--worker-pool-port",
        type=port("--worker-pool-port"),
        default=50000,
        help="port of the Python SDK worker pool, the EXTERNAL environment (default %(default)s)",
    )
    flink.set_defaults(func=_flink)


# -- prism ------------------------------------------------------------------------
def _prism(args: argparse.Namespace) -> int:
    from infra.prism import PrismJobService, PrismStatus

    def describe(status: PrismStatus) -> str:
        return f"pid {status.pid}, job endpoint {status.job_endpoint}, web UI {status.ui_url}"

    service = PrismJobService(args.state_dir)
    return _service_verb(
        args.action,
        "Prism job service",
        service,
        lambda: service.start(args.job_port, args.ui_port),
        describe,
        lambda status: f"submit with: beamline run inventory --runner portable --job-endpoint {status.job_endpoint}",
    )


def add_prism(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline prism start|stop|status``."""
    from infra.prism import DEFAULT_JOB_PORT, DEFAULT_UI_PORT

    prism = _add_service(
        verbs,
        "prism",
        what="pid file and log",
        summary="run Beam's Prism runner as a job service, with its web UI",
        description="Start, stop or inspect Prism as a long-running job service: pipelines are submitted to it "
        "with `beamline run ... --runner portable` and keep running after the command ends. Its pid file and "
        "log live in the state dir.",
    )
    prism.add_argument(
        "--job-port",
        type=port("--job-port"),
        default=DEFAULT_JOB_PORT,
        help="port of the job service, where jobs are submitted (default %(default)s)",
    )
    prism.add_argument(
        "--ui-port", type=port("--ui-port"), default=DEFAULT_UI_PORT, help="port of the web UI (default %(default)s)"
    )
    prism.set_defaults(func=_prism)


# -- workers ----------------------------------------------------------------------
def _workers(args: argparse.Namespace) -> int:
    from infra.worker_pool import WorkerPool, WorkerPoolStatus

    def describe(status: WorkerPoolStatus) -> str:
        counts = ", ".join(f"{len(status.in_state(state))} {state}" for state in ("idle", "busy", "starting"))
        pids = " ".join(str(worker.pid) for worker in status.workers) or "none"
        return f"pid {status.pid} at {status.endpoint}, {counts} (worker pids {pids})"

    pool = WorkerPool(args.state_dir)
    return _service_verb(
        args.action,
        "worker pool",
        pool,
        lambda: pool.start(args.port, count=args.count, python=args.python),
        describe,
        lambda status: (
            "use with: beamline run inventory --runner portable --environment external "
            f"--environment-config {status.endpoint}"
        ),
    )


def add_workers(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline workers start|stop|status``."""
    from infra.worker_pool import DEFAULT_PORT

    workers = _add_service(
        verbs,
        "workers",
        what="pid file, pool state and one log per worker",
        summary="run a pool of Python SDK workers for the EXTERNAL environment",
        description="Start, stop or inspect a pool of Beam Python SDK workers that portable runners (Prism's job "
        "service, Flink) use with --environment_type=EXTERNAL. Idle workers wait with Beam imported; each job's "
        "workers import its code from the package it staged (--setup_file). Logs live in the state dir.",
    )
    workers.add_argument(
        "--port", type=port("--port"), default=DEFAULT_PORT, help="port of the pool service (default %(default)s)"
    )
    workers.add_argument(
        "--count",
        type=whole_number("--count", 1),
        default=1,
        help="worker processes the pool keeps alive; a job takes one, and one that ends or dies is replaced "
        "(default %(default)s)",
    )
    workers.add_argument(
        "--python",
        default=None,
        help="the Python that runs the workers: it needs Beam and the pipelines' requirements, not Beamline "
        "(default: this one)",
    )
    workers.set_defaults(func=_workers)
