"""Verbs of the ``beamline`` command that run pipelines: ``run`` and ``demo``."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]

DEMO_EVENTS = 20_000


def _demo(args: argparse.Namespace) -> int:
    """Broker up, sample events in, the inventory pipeline, a few queries out."""
    from infra.kafka_broker import KafkaBroker
    from producers.retail import RetailConfig, generate_retail
    from producers.send import ensure_topics, send_records
    from transforms import topics

    broker = KafkaBroker()
    status = broker.status()
    if not status.running:
        status = broker.start(args.port)
    bootstrap = status.bootstrap_servers or f"127.0.0.1:{args.port}"
    print(f"[1/2] Kafka broker up at {bootstrap} (data in {status.data_dir})")

    created = ensure_topics(bootstrap, [topics.SHIPMENTS, topics.SALES])
    if created:
        config = RetailConfig(events=args.events, invalid_rate=0.01, duplicate_rate=0.02)
        summary = send_records(bootstrap, generate_retail(config), total=config.events)
        print(f"[2/2] {summary.describe()}")
    else:
        print("[2/2] sample topics already exist: reusing their events (the log is the truth)")
    print(f"broker up, events in topics {topics.SHIPMENTS!r} and {topics.SALES!r}")
    return 0


def add_commands(verbs: argparse._SubParsersAction) -> None:
    demo = verbs.add_parser("demo", help="the whole story on a local broker, end to end")
    demo.add_argument("--events", type=int, default=DEMO_EVENTS)
    demo.add_argument("--port", type=int, default=9092)
    demo.set_defaults(func=_demo)
