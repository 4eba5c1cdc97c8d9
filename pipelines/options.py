"""Pipeline options, one class per concern, with environment variables as defaults.

Each option accepts both spellings, ``--bootstrap_servers`` (Beam's habit) and
``--bootstrap-servers`` (the ``beamline`` command's), so the same flags work
with ``python -m pipelines.inventory`` and ``beamline run``.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

from apache_beam.options.pipeline_options import PipelineOptions

from core import settings, topics
from pipelines.cli import non_negative_int, positive_int
from transforms.counts import LONGEST_WINDOW
from transforms.kafka import KAFKA_CLIENTS
from transforms.retail import DEFAULT_SHARDS

__all__ = ["BeamlineOptions", "KafkaOptions", "WarehouseOptions", "bootstrap_servers", "default_warehouse"]


def default_warehouse() -> str:
    return str(settings.warehouse_dir())


def window_seconds(text: str) -> int:
    """argparse type: a window length in whole seconds, at least 1 and at most the span of representable times."""
    value = positive_int(text)
    longest = LONGEST_WINDOW // timedelta(seconds=1)
    if value > longest:
        raise argparse.ArgumentTypeError(f"must be at most {longest:,} (all representable time), got {value:,}")
    return value


def _both(name: str) -> tuple[str, str]:
    return f"--{name}", f"--{name.replace('_', '-')}"


class KafkaOptions(PipelineOptions):
    """Where the log is: brokers, topic names, consumer settings."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # --bootstrap_servers itself is Beam's (KafkaStreamsRunnerOptions); we read it
        # from there and fill it from the environment (see ``bootstrap_servers``).
        for name, default in (
            ("shipments_topic", topics.SHIPMENTS),
            ("sales_topic", topics.SALES),
            ("text_topic", topics.TEXT_LINES),
            ("dead_letter_topic", topics.DEAD_LETTERS),
            ("word_counts_topic", topics.WORD_COUNTS),
        ):
            parser.add_argument(*_both(name), dest=name, default=default, help=f"default {default!r}")
        parser.add_argument(
            *_both("consumer_group"),
            dest="consumer_group",
            default=None,
            help="commit read offsets for this consumer group (monitoring only; pipelines replay from the log)",
        )
        parser.add_argument(
            *_both("kafka_client"),
            dest="kafka_client",
            choices=KAFKA_CLIENTS,
            default=os.environ.get("BEAMLINE_KAFKA_CLIENT", KAFKA_CLIENTS[0]),
            help="Kafka client for reads and writes: kafka-python (default; env BEAMLINE_KAFKA_CLIENT) "
            "or confluent (pip install 'beamline[confluent]')",
        )


def bootstrap_servers(options: PipelineOptions) -> str:
    """The brokers: ``--bootstrap_servers``, else env BEAMLINE_BOOTSTRAP_SERVERS, else 127.0.0.1:9092."""
    given = options.get_all_options(retain_unknown_options=False).get("bootstrap_servers")
    explicit = any(a.startswith(("--bootstrap_servers", "--bootstrap-servers")) for a in options._flags)
    if given and explicit:
        return given
    return os.environ.get("BEAMLINE_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


class WarehouseOptions(PipelineOptions):
    """Where the views go."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            *_both("warehouse"),
            dest="warehouse",
            default=default_warehouse(),
            help="warehouse folder for the views (env BEAMLINE_WAREHOUSE)",
        )


class BeamlineOptions(PipelineOptions):
    """How the views are computed: mode, windows, dedupe horizon."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--mode",
            choices=["batch", "streaming"],
            default="batch",
            help="batch: read to the end offsets seen at start, then finish; streaming: run until stopped",
        )
        parser.add_argument(
            *_both("window_size"),
            dest="window_size",
            type=window_seconds,
            default=3600,
            help="tumbling window, seconds",
        )
        parser.add_argument(
            *_both("allowed_lateness"),
            dest="allowed_lateness",
            type=int,
            default=3600,
            help="seconds a window accepts late sales after it closes (streaming)",
        )
        parser.add_argument(
            *_both("early_firing"),
            dest="early_firing",
            type=int,
            default=10,
            help="seconds of processing time between early window results (streaming)",
        )
        parser.add_argument(
            *_both("dedupe_horizon"),
            dest="dedupe_horizon",
            type=int,
            default=7 * 24 * 3600,
            help="seconds of event time an event_id is remembered behind the watermark (streaming)",
        )
        parser.add_argument(
            *_both("state_shards"),
            dest="state_shards",
            type=positive_int,
            default=DEFAULT_SHARDS,
            help="stateful keys of the streaming inventory step (its most parallel workers); "
            "fewer means fewer state round trips per bundle",
        )
        parser.add_argument(
            *_both("gc_threshold"),
            dest="gc_threshold",
            type=non_negative_int,
            default=settings.gc_threshold(),
            help="young-generation threshold of CPython's garbage collector in worker processes "
            "(env BEAMLINE_GC_THRESHOLD; 0 leaves the interpreter's own)",
        )
