"""Pipeline options, one class per concern, with environment variables as defaults.

Each option accepts both spellings, ``--bootstrap_servers`` (Beam's habit) and
``--bootstrap-servers`` (the ``beamline`` command's), so the same flags work
with ``python -m pipelines.inventory`` and ``beamline run``. A bad value is a
:class:`~core.errors.ConfigError` naming the option: one line, not a traceback.
Every default is defined once, in the module whose code uses it (windows in
``transforms.counts``, the dedupe horizon in ``transforms.inventory``, shards
in ``transforms.retail``, environment defaults in ``core.settings``), and
``--help`` shows the value in force.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import timedelta

from apache_beam.options.pipeline_options import PipelineOptions

from core import settings, topics
from core.arguments import whole_number
from core.errors import ConfigError
from core.views import check_version, split_name
from transforms.changes import DEFAULT_CHANGES_TOPIC, ChangesTopics, prepare_changes
from transforms.checkpoint import CATCH_UP_RECORDS
from transforms.counts import DEFAULT_ALLOWED_LATENESS, DEFAULT_EARLY_DELAY, DEFAULT_WINDOW_SIZE, LONGEST_WINDOW
from transforms.inventory import DEFAULT_HORIZON
from transforms.kafka import KAFKA_CLIENTS, OUTAGE_S, KafkaConnection, load_client_properties, parse_client_setting
from transforms.retail import DEFAULT_SHARDS
from warehouse.versions import RunTables
from warehouse.versions import run_tables as resolve_run_tables

__all__ = [
    "BeamlineOptions",
    "KafkaOptions",
    "SubmitOptions",
    "WarehouseOptions",
    "bootstrap_servers",
    "changes_topics",
    "connection_of",
    "default_warehouse",
    "kafka_connection",
    "options_help",
    "run_tables",
    "without_secrets",
]

# A window (and so a lateness or a horizon) longer than all representable time cannot be computed.
LONGEST_SECONDS = LONGEST_WINDOW // timedelta(seconds=1)


def _seconds(duration: timedelta) -> int:
    return duration // timedelta(seconds=1)


def default_warehouse() -> str:
    """The warehouse folder pipelines write unless ``--warehouse`` says otherwise."""
    return str(settings.warehouse_dir())


def _both(name: str) -> tuple[str, str]:
    return f"--{name}", f"--{name.replace('_', '-')}"


def _kafka_client(text: str) -> str:
    if text not in KAFKA_CLIENTS:
        raise ConfigError(
            f"--kafka_client (or env BEAMLINE_KAFKA_CLIENT) must be one of {', '.join(KAFKA_CLIENTS)}; got {text!r} "
            "(confluent needs pip install 'beamline[confluent]')"
        )
    return text


class KafkaOptions(PipelineOptions):
    """Where the log is: brokers, topic names, client and consumer settings."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        help_text = (
            f"Kafka bootstrap servers HOST:PORT ({settings.env_help('BEAMLINE_BOOTSTRAP_SERVERS')}; "
            f"default {settings.bootstrap_servers()})"
        )
        try:
            parser.add_argument(*_both("bootstrap_servers"), dest="bootstrap_servers", help=help_text)
        except argparse.ArgumentError:
            # Beam's KafkaStreamsRunnerOptions defines --bootstrap_servers too (default localhost:9092);
            # the dashed spelling is ours, and the default below replaces Beam's for both.
            parser.add_argument("--bootstrap-servers", dest="bootstrap_servers", help=help_text)
        parser.set_defaults(bootstrap_servers=settings.bootstrap_servers())
        for name, default in (
            ("shipments_topic", topics.SHIPMENTS),
            ("sales_topic", topics.SALES),
            ("text_topic", topics.TEXT_LINES),
            ("dead_letter_topic", topics.DEAD_LETTERS),
            ("word_counts_topic", topics.WORD_COUNTS),
        ):
            parser.add_argument(*_both(name), dest=name, default=default, help=f"default {default}")
        parser.add_argument(
            *_both("consumer_group"),
            dest="consumer_group",
            default=None,
            help="consumer group to commit offsets to, for Kafka's lag tools (monitoring only): a batch read "
            "commits what it read; a streaming inventory run the offsets its warehouse covers, to "
            "beamline-inventory when not given",
        )
        parser.add_argument(
            *_both("kafka_client"),
            dest="kafka_client",
            type=_kafka_client,
            default=settings.kafka_client(),
            help=f"Kafka client for reads and writes: {' or '.join(KAFKA_CLIENTS)} "
            f"({settings.env_help('BEAMLINE_KAFKA_CLIENT')}; default %(default)s); "
            "confluent needs pip install 'beamline[confluent]'",
        )
        parser.add_argument(
            *_both("publish_changes"),
            dest="publish_changes",
            action="store_true",
            help=f"after each commit of a view, publish its changed rows to a compacted topic {DEFAULT_CHANGES_TOPIC} "
            "(inventory-changes, ...): key = the view's key, value = the row as JSON with its version and snapshot "
            "(default %(default)s)",
        )
        parser.add_argument(
            *_both("changes_topic"),
            dest="changes_topic",
            nargs="?",
            const=DEFAULT_CHANGES_TOPIC,
            default=None,
            metavar="NAME",
            help=f"publish changes (as --publish_changes) to NAME, where {{view}} stands for the view "
            f"(default {DEFAULT_CHANGES_TOPIC})",
        )
        parser.add_argument(
            *_both("kafka_config"),
            dest="kafka_config",
            action="append",
            default=None,
            metavar="KEY=VALUE",
            help="a Kafka client setting for every read and write, in Kafka's names (security.protocol=SASL_SSL, "
            "sasl.mechanism=PLAIN, sasl.jaas.config=..., ssl.ca.location=...) or the client's own; repeatable, "
            "after --kafka_config_file. Prefer the file for secrets: values given here are never printed, but "
            "they sit in the process's command line",
        )
        parser.add_argument(
            *_both("kafka_config_file"),
            dest="kafka_config_file",
            default=None,
            metavar="PATH",
            help="a Kafka client properties file (as Kafka's own tools take with --command-config)",
        )


def kafka_connection(options: PipelineOptions) -> KafkaConnection:
    """The brokers, client and client settings every read and write of the pipeline uses."""
    kafka = options.view_as(KafkaOptions)
    return connection_of(bootstrap_servers(options), kafka.kafka_client, kafka.kafka_config_file, kafka.kafka_config)


def kafka_outage_s(options: PipelineOptions) -> float | None:
    """How long the pipeline's Kafka writes wait out a broker outage: a streaming run as long as its read does."""
    return None if options.view_as(BeamlineOptions).mode == "streaming" else OUTAGE_S


def connection_of(
    servers: str, client: str, config_file: str | None = None, settings: Sequence[str] | None = None
) -> KafkaConnection:
    """A connection from command-line values: a properties file first, then ``KEY=VALUE`` settings over it."""
    merged: dict[str, str] = dict(load_client_properties(config_file)) if config_file else {}
    merged.update(parse_client_setting(text) for text in settings or ())
    return KafkaConnection(servers, client=client, settings=merged)


def without_secrets(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every ``--kafka_config`` hidden: what the runner (and its UI) may see.

    The pipeline reads its settings before it is handed to the runner, so the
    runner's copy of the options needs none of them.
    """
    hidden: list[str] = []
    follows = False
    for arg in argv:
        if follows:
            hidden.append(_hidden_setting(arg))
            follows = False
        elif arg in ("--kafka_config", "--kafka-config"):
            hidden.append(arg)
            follows = True
        elif arg.startswith(("--kafka_config=", "--kafka-config=")):
            flag, _, value = arg.partition("=")
            hidden.append(f"{flag}={_hidden_setting(value)}")
        else:
            hidden.append(arg)
    return hidden


def _hidden_setting(text: str) -> str:
    key, sep, _ = text.partition("=")
    return f"{key}{sep}***" if sep else "***"


def bootstrap_servers(options: PipelineOptions) -> str:
    """The brokers: ``--bootstrap_servers``, else env BEAMLINE_BOOTSTRAP_SERVERS, else 127.0.0.1:9092."""
    return str(options.view_as(KafkaOptions).bootstrap_servers)


class WarehouseOptions(PipelineOptions):
    """Where the views go, and which version of them."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            *_both("warehouse"),
            dest="warehouse",
            default=default_warehouse(),
            help=f"warehouse folder for the views ({settings.env_help('BEAMLINE_WAREHOUSE')}; default %(default)s)",
        )
        parser.add_argument(
            *_both("view_version"),
            dest="view_version",
            type=_view_version,
            default=None,
            metavar="VERSION",
            help="write this version of the pipeline's views (inventory@v2, ...) beside the one readers see, with "
            "a resume point of its own; `beamline views promote` swaps it in (default: the version each view "
            "shows now; v1 in a new warehouse)",
        )


def _view_version(text: str) -> str:
    try:
        return check_version(text)
    except ConfigError as exc:
        raise ConfigError(f"--view_version: {exc}") from None


def changes_topics(options: PipelineOptions, tables: RunTables) -> ChangesTopics | None:
    """Where this run publishes its views' changes (its topics made and recorded first), or None: it does not."""
    kafka = options.view_as(KafkaOptions)
    template = kafka.changes_topic or (DEFAULT_CHANGES_TOPIC if kafka.publish_changes else None)
    if template is None:
        return None
    views = [split_name(view)[0] for view, _ in tables.tables]
    return prepare_changes(kafka_connection(options), options.view_as(WarehouseOptions).warehouse, views, template)


def run_tables(options: PipelineOptions, pipeline: str) -> RunTables:
    """The tables this run of ``pipeline`` writes (``--view_version``, else what each view shows now)."""
    warehouse = options.view_as(WarehouseOptions)
    return resolve_run_tables(warehouse.warehouse, pipeline, warehouse.view_version)


class BeamlineOptions(PipelineOptions):
    """How the views are computed: mode, windows, dedupe horizon, state layout."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mode",
            choices=["batch", "streaming"],
            default="batch",
            help="batch: read to the end offsets seen at start, then finish; streaming: run until stopped "
            "(default %(default)s)",
        )
        parser.add_argument(
            *_both("window_size"),
            dest="window_size",
            type=whole_number("--window_size", 1, LONGEST_SECONDS, " seconds"),
            default=_seconds(DEFAULT_WINDOW_SIZE),
            help="tumbling window of sales_by_window, seconds (default %(default)s)",
        )
        parser.add_argument(
            *_both("allowed_lateness"),
            dest="allowed_lateness",
            type=whole_number("--allowed_lateness", 0, LONGEST_SECONDS, " seconds"),
            default=_seconds(DEFAULT_ALLOWED_LATENESS),
            help="seconds a window accepts late sales after it closes (streaming; default %(default)s)",
        )
        parser.add_argument(
            *_both("early_firing"),
            dest="early_firing",
            type=whole_number("--early_firing", 0, LONGEST_SECONDS, " seconds"),
            default=_seconds(DEFAULT_EARLY_DELAY),
            help="seconds of processing time before a window's sales not yet in a result get an early result "
            "(streaming; 0 turns early results off; default %(default)s)",
        )
        parser.add_argument(
            *_both("dedupe_horizon"),
            dest="dedupe_horizon",
            type=whole_number("--dedupe_horizon", 1, LONGEST_SECONDS, " seconds"),
            default=_seconds(DEFAULT_HORIZON),
            help="seconds of event time an event_id is remembered behind the watermark "
            "(streaming; default %(default)s)",
        )
        parser.add_argument(
            *_both("state_shards"),
            dest="state_shards",
            type=whole_number("--state_shards", 1),
            default=DEFAULT_SHARDS,
            help="stateful keys of the streaming inventory step (its most parallel workers); "
            "fewer means fewer state round trips per bundle (default %(default)s)",
        )
        parser.add_argument(
            *_both("catch_up_records"),
            dest="catch_up_records",
            type=whole_number("--catch_up_records"),
            default=CATCH_UP_RECORDS,
            help="a streaming start with no resume point in the warehouse first catches up in batch (several "
            "times faster) when the log holds at least this many records; 0: never (default %(default)s)",
        )
        parser.add_argument(
            *_both("gc_threshold"),
            dest="gc_threshold",
            type=whole_number("--gc_threshold"),
            default=settings.gc_threshold(),
            help="young-generation threshold of CPython's garbage collector in worker processes "
            f"({settings.env_help('BEAMLINE_GC_THRESHOLD')}; 0 leaves the interpreter's own; default %(default)s)",
        )


class SubmitOptions(PipelineOptions):
    """How the job is handed to its runner."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--detach",
            action="store_true",
            default=False,
            help="submit the job to a job service (--runner=PortableRunner --job_endpoint=HOST:PORT), print its id "
            "and return while it runs; its workers must not live in this process (EXTERNAL environment)",
        )


def options_help(prog: str) -> str:
    """Every Beamline pipeline option with its default in force, as ``--help`` prints them."""
    parser = argparse.ArgumentParser(
        prog=prog,
        add_help=False,
        usage=f"{prog} [--mode batch|streaming] [Beamline options] [Beam pipeline options]",
        description="Beamline options (either spelling, --name_with_underscores or --name-with-dashes). "
        "Any other argument is a Beam pipeline option, e.g. --runner, --direct_num_workers.",
    )
    for options_class, title in (
        (BeamlineOptions, "how the views are computed"),
        (KafkaOptions, "where the log is"),
        (WarehouseOptions, "where the views go"),
        (SubmitOptions, "how the job is submitted"),
    ):
        options_class._add_argparse_args(parser.add_argument_group(title))  # type: ignore[arg-type]
    return parser.format_help()
