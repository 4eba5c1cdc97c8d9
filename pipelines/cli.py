"""The ``beamline`` command line.

Verbs: ``kafka`` (a local broker), ``produce`` (sample events), ``run``
(pipelines), ``query`` and ``lookup`` (the read side), ``demo``. Any
:class:`~core.errors.BeamlineError` is printed as one line on stderr with
a non-zero exit code; a traceback means a bug in Beamline, not in the input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from core.errors import BeamlineError

__all__ = ["build_parser", "default_bootstrap_servers", "main", "report_errors"]


def default_bootstrap_servers() -> str:
    return os.environ.get("BEAMLINE_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def _add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=default_bootstrap_servers(),
        help="Kafka bootstrap servers HOST:PORT (env BEAMLINE_BOOTSTRAP_SERVERS; default %(default)s)",
    )


# -- kafka ------------------------------------------------------------------------
def _kafka(args: argparse.Namespace) -> int:
    from infra.kafka_broker import KafkaBroker

    broker = KafkaBroker(args.data_dir)
    if args.action == "start":
        status = broker.start(args.port)
        print(f"Kafka broker up (pid {status.pid}), data in {status.data_dir}")
        print(f"bootstrap servers: {status.bootstrap_servers}")
    elif args.action == "stop":
        if broker.stop():
            print(f"Kafka broker stopped; data kept in {broker.data_dir}")
        else:
            print(f"no Kafka broker running from {broker.data_dir}")
    else:
        status = broker.status()
        if status.running:
            print(f"running (pid {status.pid}) at {status.bootstrap_servers}, data in {status.data_dir}")
        else:
            print(f"stopped; data dir {status.data_dir}")
            return 3
    return 0


# -- produce ----------------------------------------------------------------------
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
    ensure_topics(args.bootstrap_servers, [config.shipments_topic, config.sales_topic], args.partitions)
    summary = send_records(
        args.bootstrap_servers,
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
    ensure_topics(args.bootstrap_servers, [args.topic], args.partitions)
    summary = send_records(args.bootstrap_servers, records, total=len(records), rate=args.rate)
    print(summary.describe())
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _moment(text: str) -> datetime:
    if text == "now":
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time or 'now': {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset, e.g. {text}Z")
    return moment


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests and `--help`)."""
    from core import topics
    from producers.retail import RetailConfig

    parser = argparse.ArgumentParser(
        prog="beamline",
        description="Event-sourced views from Kafka topics on Apache Beam.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    kafka = verbs.add_parser("kafka", help="run a local Apache Kafka broker (KRaft)")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--port", type=int, default=9092, help="client port (default %(default)s)")
    kafka.add_argument("--data-dir", default=None, help="broker data folder (default: .beamline/kafka in the project)")
    kafka.set_defaults(func=_kafka)

    produce = verbs.add_parser("produce", help="produce sample events")
    sources = produce.add_subparsers(dest="source", required=True, metavar="SOURCE")
    retail = sources.add_parser("retail", help="shipments and sales for the inventory pipeline")
    retail.add_argument("--events", type=int, required=True, help="how many records to produce")
    retail.add_argument("--stores", type=positive_int, default=5)
    retail.add_argument("--items", type=positive_int, default=50)
    retail.add_argument("--seed", type=int, default=42, help="same seed, same records")
    retail.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    retail.add_argument("--invalid-rate", type=_rate, default=0.0, help="share of invalid records (0..1)")
    retail.add_argument("--duplicate-rate", type=_rate, default=0.0, help="share of re-sent event_ids (0..1)")
    retail.add_argument(
        "--start-time",
        type=_moment,
        default=RetailConfig.start_time,
        help="event time of the first record: RFC 3339, or 'now' for a live feed (default %(default)s)",
    )
    retail.add_argument(
        "--mean-gap",
        type=float,
        default=None,
        help="mean seconds of event time between records (default 1/rate, else 20)",
    )
    retail.add_argument("--partitions", type=positive_int, default=4, help="partitions for new topics")
    retail.add_argument("--shipments-topic", default=topics.SHIPMENTS)
    retail.add_argument("--sales-topic", default=topics.SALES)
    retail.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_bootstrap(retail)
    retail.set_defaults(func=_produce_retail)

    from_file = sources.add_parser("file", help="one record per line of a text or JSON-lines file")
    from_file.add_argument("path")
    from_file.add_argument("--topic", required=True)
    from_file.add_argument("--rate", type=float, default=None)
    from_file.add_argument("--partitions", type=positive_int, default=4)
    _add_bootstrap(from_file)
    from_file.set_defaults(func=_produce_file)

    _add_optional_verbs(verbs)
    return parser


def _add_optional_verbs(verbs: argparse._SubParsersAction) -> None:
    """Verbs defined beside the code they drive (pipelines, read side, Flink)."""
    from pipelines import commands

    commands.add_commands(verbs)


def report_errors(action: Callable[[], int | None]) -> int:
    """Run ``action``; print a BeamlineError as one line and return an exit code."""
    try:
        return int(action() or 0)
    except BeamlineError as exc:
        print(f"beamline: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("beamline: interrupted", file=sys.stderr)
        return 130


class _QuietLibraries(logging.Filter):
    """Drop library chatter that says nothing to an operator of Beamline."""

    _NOISE = ("apitools not found", "It is blocking the event loop")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self._NOISE)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    # kafka-python logs every refused connection at ERROR; Beamline reports those itself.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    return report_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
