"""``beamline flink start|stop|status``: a local Flink session cluster.

Drives :class:`infra.flink_cluster.FlinkCluster`. Each handler prints one or
two lines; what an operator can fix is raised as a
:class:`~core.errors.BeamlineError`, which the command line prints as
one line.
"""

from __future__ import annotations

import argparse

from infra.flink_cluster import ClusterStatus, FlinkCluster, FlinkClusterConfig

__all__ = ["add_commands", "handler"]

#: Exit code of ``status`` when no cluster runs (as ``beamline kafka status``).
EXIT_STOPPED = 3


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def add_commands(verbs: argparse._SubParsersAction) -> None:
    """Register the ``flink`` verb on the ``beamline`` subcommands."""
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
        "--rest-port", type=_port, default=8081, help="JobManager REST API and web UI port (default %(default)s)"
    )
    flink.add_argument(
        "--taskmanagers", type=_positive_int, default=1, help="TaskManager processes to start (default %(default)s)"
    )
    flink.add_argument(
        "--slots", type=_positive_int, default=2, help="task slots per TaskManager (default %(default)s)"
    )
    flink.add_argument(
        "--worker-pool-port",
        type=_port,
        default=50000,
        help="port of the Python SDK worker pool, the EXTERNAL environment (default %(default)s)",
    )
    flink.add_argument(
        "--state-dir",
        default=None,
        help="cluster state folder: config, pid files, logs, checkpoints (default: flink/ in $BEAMLINE_HOME, "
        "else .beamline/flink in the project)",
    )
    flink.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``beamline flink ACTION``; return the exit code."""
    config = FlinkClusterConfig(
        rest_port=args.rest_port,
        taskmanagers=args.taskmanagers,
        slots_per_taskmanager=args.slots,
        worker_pool_port=args.worker_pool_port,
    )
    cluster = FlinkCluster(args.state_dir, config)
    if args.action == "start":
        status = cluster.start()
        print(f"Flink session cluster up: {_describe(status)}; logs in {status.state_dir}")
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
    print(f"running: {_describe(status)}, {status.jobs_running} job(s) running")
    return 0


def _describe(status: ClusterStatus) -> str:
    pool = f", worker pool at {status.worker_pool}" if status.worker_pool else ", no worker pool"
    return (
        f"REST and web UI at http://{status.flink_master}, {status.taskmanagers_registered} TaskManager(s) "
        f"with {status.slots_total} slots ({status.slots_available} free){pool}"
    )
