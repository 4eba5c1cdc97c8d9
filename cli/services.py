"""Verbs that run local services: ``beamline kafka`` and ``beamline flink``.

Each handler prints one or two lines; what an operator can fix is raised as a
:class:`~core.errors.BeamlineError`, which the command line prints as one line.
``status`` exits 3 when the service is stopped, so scripts can test it.
"""

from __future__ import annotations

import argparse

from core import settings
from core.arguments import port, whole_number

__all__ = ["EXIT_STOPPED", "add_flink", "add_kafka"]

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


# -- flink ------------------------------------------------------------------------
def _flink(args: argparse.Namespace) -> int:
    from infra.flink_cluster import ClusterStatus, FlinkCluster, FlinkClusterConfig

    def describe(status: ClusterStatus) -> str:
        pool = f", worker pool at {status.worker_pool}" if status.worker_pool else ", no worker pool"
        return (
            f"REST and web UI at http://{status.flink_master}, {status.taskmanagers_registered} TaskManager(s) "
            f"with {status.slots_total} slots ({status.slots_available} free){pool}"
        )

    config = FlinkClusterConfig(
        rest_port=args.rest_port,
        taskmanagers=args.taskmanagers,
        slots_per_taskmanager=args.slots,
        worker_pool_port=args.worker_pool_port,
    )
    cluster = FlinkCluster(args.state_dir, config)
    if args.action == "start":
        status = cluster.start()
        print(f"Flink session cluster up: {describe(status)}; logs in {status.state_dir}")
        print(f"submit with: beamline run inventory --runner flink --flink-master {status.flink_master}")
        return 0
    if args.action == "stop":
        if cluster.stop():
            print(f"Flink session cluster stopped; logs kept in {cluster.folder}")
        else:
            print(f"no Flink session cluster running from {cluster.folder}")
        return 0
    status = cluster.status()
    if not status.running:
        print(f"stopped; state dir {status.state_dir}")
        return EXIT_STOPPED
    print(f"running: {describe(status)}, {status.jobs_running} job(s) running")
    return 0


def add_flink(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline flink start|stop|status``."""
    flink = verbs.add_parser(
        "flink",
        help="run a local Apache Flink session cluster (JobManager, TaskManagers, Python worker pool)",
        description=(
            "Start, stop or inspect a standalone Flink session cluster on this machine: one JobManager "
            "and TaskManagers as separate java processes, plus a Beam Python SDK worker pool for the "
            "EXTERNAL environment. Configuration, pid files and one log per process live in the state dir."
        ),
    )
    flink.add_argument("action", choices=["start", "stop", "status"])
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
    flink.add_argument(
        "--state-dir",
        default=str(settings.state_dir() / "flink"),
        help=f"cluster state folder: config, pid files, logs, checkpoints (flink/ in the state folder, "
        f"{settings.env_help('BEAMLINE_HOME')}; default %(default)s)",
    )
    flink.set_defaults(func=_flink)
