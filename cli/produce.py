"""``beamline produce retail|file``: sample events into Kafka topics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cli.options import add_bootstrap, add_client_settings, connection
from core import topics
from core.arguments import moment, share, whole_number
from core.errors import ConfigError

__all__ = ["add_commands"]


def _produce_retail(args: argparse.Namespace) -> int:
    from producers.retail import RetailConfig, generate_retail
    from producers.send import ensure_topics, send_records

    config = RetailConfig(
        events=args.events,
        stores=args.stores,
        items=args.items,
        seed=args.seed,
        invalid_rate=args.invalid_rate,
        duplicate_rate=args.duplicate_rate,
        shipments_topic=args.shipments_topic,
        sales_topic=args.sales_topic,
        start_time=args.start_time,
        mean_gap_s=args.mean_gap if args.mean_gap is not None else (1.0 / args.rate if args.rate else 20.0),
    )
    kafka = connection(args)
    ensure_topics(kafka, [config.shipments_topic, config.sales_topic], args.partitions)
    summary = send_records(
        kafka,
        generate_retail(config),
        total=config.events,
        rate=args.rate,
        progress=None if args.quiet else sys.stderr,
    )
    print(summary.describe())
    return 0


def _produce_file(args: argparse.Namespace) -> int:
    from producers.send import ensure_topics, file_records, send_records

    records = file_records(Path(args.path), args.topic)
    kafka = connection(args)
    ensure_topics(kafka, [args.topic], args.partitions)
    summary = send_records(kafka, records, total=len(records), rate=args.rate)
    print(summary.describe())
    return 0


def _rate(option: str) -> Callable[[str], float]:
    """A type for ``option``: records per second, more than 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{option} must be a number of records per second; got {text!r}") from None
        if value <= 0:
            raise ConfigError(f"{option} must be more than 0 records per second; got {value}")
        return value

    return parse


def add_commands(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline produce retail`` and ``beamline produce file``."""
    from producers.retail import RetailConfig

    produce = verbs.add_parser("produce", help="produce sample events")
    sources = produce.add_subparsers(dest="source", required=True, metavar="SOURCE")
    retail = sources.add_parser("retail", help="shipments and sales for the inventory pipeline")
    retail.add_argument("--events", type=whole_number("--events"), required=True, help="how many records to produce")
    retail.add_argument("--stores", type=whole_number("--stores", 1), default=5, help="default %(default)s")
    retail.add_argument("--items", type=whole_number("--items", 1), default=50, help="default %(default)s")
    retail.add_argument("--seed", type=int, default=42, help="same seed, same records (default %(default)s)")
    retail.add_argument("--rate", type=_rate("--rate"), default=None, help="records per second (default: at once)")
    retail.add_argument(
        "--invalid-rate", type=share("--invalid-rate"), default=0.0, help="share of invalid records (0..1)"
    )
    retail.add_argument(
        "--duplicate-rate", type=share("--duplicate-rate"), default=0.0, help="share of re-sent event_ids (0..1)"
    )
    retail.add_argument(
        "--start-time",
        type=moment("--start-time"),
        default=RetailConfig.start_time,
        help="event time of the first record: RFC 3339, or 'now' for a live feed (default %(default)s)",
    )
    retail.add_argument(
        "--mean-gap",
        type=float,
        default=None,
        help="mean seconds of event time between records (default 1/rate, else 20)",
    )
    retail.add_argument(
        "--partitions", type=whole_number("--partitions", 1), default=4, help="partitions for new topics"
    )
    retail.add_argument("--shipments-topic", default=topics.SHIPMENTS, help="default %(default)s")
    retail.add_argument("--sales-topic", default=topics.SALES, help="default %(default)s")
    retail.add_argument("--quiet", action="store_true", help="no progress lines")
    add_bootstrap(retail)
    add_client_settings(retail)
    retail.set_defaults(func=_produce_retail)

    from_file = sources.add_parser("file", help="one record per line of a text or JSON-lines file")
    from_file.add_argument("path")
    from_file.add_argument("--topic", required=True)
    from_file.add_argument("--rate", type=_rate("--rate"), default=None, help="records per second (default: at once)")
    from_file.add_argument(
        "--partitions", type=whole_number("--partitions", 1), default=4, help="partitions for new topics"
    )
    add_bootstrap(from_file)
    add_client_settings(from_file)
    from_file.set_defaults(func=_produce_file)
