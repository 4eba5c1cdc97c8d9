"""Verbs that run pipelines: ``beamline run`` and ``beamline demo``.

``beamline run PIPELINE`` translates its own options into the pipeline's
Beam-style arguments and passes every argument it does not know to Beam, so
``beamline run inventory --window_size=1800 --direct_num_workers=2`` works as
``python -m pipelines.inventory`` would. ``--help`` lists both. ``--runner
flink`` and ``--runner portable`` add the Beam options that submit to Flink or
to a running job service (:mod:`infra.flink_cluster`, :mod:`infra.submit`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

from cli.options import add_bootstrap, add_warehouse
from core.arguments import port
from infra.submit import ENVIRONMENTS, portable_runner_args

__all__ = ["DEMO_EVENTS", "PIPELINES", "add_commands", "pipeline_argv"]

PIPELINES = {"inventory": "pipelines.inventory", "wordcount": "pipelines.wordcount"}
DEMO_EVENTS = 20_000


def pipeline_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """Translate ``beamline run`` options into the pipeline's Beam-style arguments."""
    argv = [f"--mode={args.mode}"]
    if args.bootstrap_servers is not None:  # an empty value is refused in one line, not replaced by the default
        argv.append(f"--bootstrap_servers={args.bootstrap_servers}")
    if args.warehouse:
        argv.append(f"--warehouse={args.warehouse}")
    if args.runner == "flink":
        from infra.flink_cluster import flink_runner_args

        argv.extend(flink_runner_args(args.flink_master, extra))
    elif args.runner == "portable":
        argv.extend(portable_runner_args(args.job_endpoint, args.environment, args.environment_config, extra))
    if args.detach:
        argv.append("--detach")
    argv.extend(extra)
    return argv


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(PIPELINES[args.pipeline])
    summary = module.run(pipeline_argv(args, args.beam_args))
    print(f"{args.pipeline} ({args.mode}) {summary.describe()}")
    if summary.job_id is not None:
        print(f"stop it with: beamline jobs cancel {summary.job_id}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Broker up, sample events in, the inventory pipeline, a few queries out, then the read service."""
    from core import topics
    from infra.kafka_broker import KafkaBroker
    from pipelines import inventory
    from pipelines.options import default_warehouse
    from producers.retail import RetailConfig, generate_retail
    from producers.send import ensure_topics, send_records
    from readside.query import format_result, run_query

    steps = 4 if args.no_serve else 5
    broker = KafkaBroker()
    status = broker.status()
    if not status.running:
        status = broker.start(args.port)
    bootstrap = status.bootstrap_servers or f"127.0.0.1:{args.port}"
    print(f"[1/{steps}] Kafka broker up at {bootstrap} (data in {status.data_dir})")

    created = ensure_topics(bootstrap, [topics.SHIPMENTS, topics.SALES, topics.DEAD_LETTERS])
    if topics.SHIPMENTS in created:
        config = RetailConfig(events=args.events, invalid_rate=0.01, duplicate_rate=0.02)
        summary = send_records(bootstrap, generate_retail(config), total=config.events)
        print(f"[2/{steps}] {summary.describe()}")
    else:
        print(f"[2/{steps}] sample topics already exist: reusing their events (the log is the truth)")

    warehouse = default_warehouse()
    result = inventory.run([f"--bootstrap_servers={bootstrap}", f"--warehouse={warehouse}", "--mode=batch"])
    print(f"[3/{steps}] inventory pipeline (batch backfill) {result.describe()}; views in {warehouse}")

    print(f'[4/{steps}] queries (try your own: beamline query "SELECT ...")')
    for title, sql in (
        (
            "Top 5 items by units sold",
            "SELECT item_id, sum(sold) AS sold, sum(on_hand) AS on_hand FROM inventory "
            "GROUP BY item_id ORDER BY sold DESC LIMIT 5",
        ),
        (
            "Stock at store-001 (first 5 items)",
            "SELECT item_id, on_hand, shipped, sold, events FROM inventory "
            "WHERE store_id = 'store-001' ORDER BY item_id LIMIT 5",
        ),
        (
            "Dead letters by error (first 5)",
            "SELECT error, count(*) AS records FROM dead_letters GROUP BY error ORDER BY records DESC LIMIT 5",
        ),
    ):
        print(f"\n{title}:\n{format_result(run_query(sql, warehouse), 'table')}")
    print(f"\nThe broker keeps running at {bootstrap}; stop it with `beamline kafka stop`.")
    if not args.no_serve:
        _serve_demo(args, warehouse, steps)
    return 0


def _serve_demo(args: argparse.Namespace, warehouse: Any, steps: int) -> None:
    """The last step: the read service over the demo's views, until Ctrl-C."""
    from cli.serve import announce
    from readside.serve import ServeConfig, run

    print(f"\n[{steps}/{steps}] read service (the live page, the JSON API): Ctrl-C stops it", flush=True)
    run(ServeConfig(warehouse, port=args.serve_port), announce)


class _RunHelp(argparse.Action):
    """``beamline run --help``: the verb's own options, then every pipeline option with its default."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from pipelines.options import options_help

        parser.print_help()
        print("\npipeline options (passed on to the pipeline):\n")
        print(options_help("beamline run PIPELINE"))
        parser.exit()


def add_commands(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline run`` and ``beamline demo``."""
    run = verbs.add_parser(
        "run",
        add_help=False,
        help="run a pipeline (extra arguments go to the pipeline and Beam)",
        description="Run a pipeline. Arguments not listed here are passed on as pipeline options "
        "(listed below) or Beam pipeline options (--runner, --direct_num_workers, ...).",
    )
    run.add_argument("-h", "--help", action=_RunHelp, help="show this help, with every pipeline option, and exit")
    run.add_argument("pipeline", choices=sorted(PIPELINES))
    run.add_argument("--mode", choices=["batch", "streaming"], default="batch", help="default %(default)s")
    run.add_argument(
        "--runner",
        choices=["direct", "flink", "portable"],
        default="direct",
        help="direct: Beam's FnApiRunner for batch, Prism for streaming; flink: see docs/flink.md; "
        "portable: submit to a running job service, e.g. `beamline prism start` (default %(default)s)",
    )
    run.add_argument(
        "--flink-master",
        default="[local]",
        help="with --runner flink: [local] (embedded) or HOST:PORT of a session cluster's REST endpoint",
    )
    run.add_argument(
        "--job-endpoint",
        metavar="HOST:PORT",
        help="with --runner portable: the job service (default: the one `beamline prism start` runs, localhost:8073)",
    )
    run.add_argument(
        "--environment",
        choices=ENVIRONMENTS,
        help="with --runner portable: where the job's Python code runs: external, in a worker pool "
        "(`beamline workers start`), or loopback, in this process (default: external when a pool runs "
        "or --environment-config names one, else loopback)",
    )
    run.add_argument(
        "--environment-config",
        metavar="HOST:PORT",
        help="with --environment external: the worker pool (default: the one `beamline workers start` runs)",
    )
    run.add_argument(
        "--detach",
        action="store_true",
        help="with --runner portable: print the job's id once it runs and return; "
        "`beamline jobs cancel JOB_ID` stops it",
    )
    add_bootstrap(run, unset=True)
    add_warehouse(run, unset=True)
    run.set_defaults(func=_run, accepts_extra=True)

    demo = verbs.add_parser("demo", help="the whole story on a local broker, end to end")
    demo.add_argument("--events", type=int, default=DEMO_EVENTS, help="sample events (default %(default)s)")
    demo.add_argument("--port", type=int, default=9092, help="broker port (default %(default)s)")
    demo.add_argument(
        "--no-serve", action="store_true", help="end after the queries, without starting `beamline serve`"
    )
    demo.add_argument(
        "--serve-port", type=port("--serve-port"), default=8000, help="port of the read service (default %(default)s)"
    )
    demo.set_defaults(func=_demo)
