"""The ``beamline`` entry point: the parser of every verb, logging, errors as one line.

Any :class:`~core.errors.BeamlineError` (a bad option, a missing service, a
refused query) is printed as one line on stderr with a non-zero exit code; a
traceback means a bug in Beamline, not in the input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cli import jobs, produce, read, run, serve, services, views, warehouse
from core.errors import report_errors

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests and ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="beamline",
        description="Event-sourced views from Kafka topics on Apache Beam.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    services.add_kafka(verbs)
    produce.add_commands(verbs)
    run.add_commands(verbs)
    read.add_commands(verbs)
    serve.add_commands(verbs)
    warehouse.add_commands(verbs)
    views.add_commands(verbs)
    services.add_flink(verbs)
    services.add_prism(verbs)
    services.add_workers(verbs)
    jobs.add_commands(verbs)
    return parser


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
    """Parse ``argv`` (default: the process's), run the verb, return its exit code."""
    _configure_logging()

    def parse_and_run() -> int | None:
        # Parsing is inside: an option check raises ConfigError, printed as one line.
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.beam_args = extra
        return args.func(args)

    return report_errors(parse_and_run)


if __name__ == "__main__":
    sys.exit(main())
