"""Options several verbs share, each with its environment default shown in ``--help``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from core import settings

if TYPE_CHECKING:
    from transforms.kafka import KafkaConnection

__all__ = ["add_bootstrap", "add_client_settings", "add_warehouse", "connection"]


def add_bootstrap(parser: argparse.ArgumentParser, *, unset: bool = False) -> None:
    """``--bootstrap-servers``; ``unset=True`` leaves it None when not given (the pipeline's default applies)."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None if unset else settings.bootstrap_servers(),
        help=f"Kafka bootstrap servers HOST:PORT ({settings.env_help('BEAMLINE_BOOTSTRAP_SERVERS')}; "
        f"default {settings.bootstrap_servers()})",
    )


def add_warehouse(parser: argparse.ArgumentParser, *, unset: bool = False) -> None:
    """``--warehouse``; ``unset=True`` leaves it None when not given (the pipeline's default applies)."""
    parser.add_argument(
        "--warehouse",
        default=None if unset else str(settings.warehouse_dir()),
        help=f"warehouse folder of the views ({settings.env_help('BEAMLINE_WAREHOUSE')}; "
        f"default {settings.warehouse_dir()})",
    )


def add_client_settings(parser: argparse.ArgumentParser) -> None:
    """``--kafka-config KEY=VALUE`` (repeatable) and ``--kafka-config-file PATH``: security for real clusters."""
    parser.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Kafka client setting in Kafka's names (security.protocol=SASL_SSL, sasl.mechanism=PLAIN, "
        "sasl.jaas.config=..., ssl.ca.location=...); repeatable, applied after --kafka-config-file",
    )
    parser.add_argument(
        "--kafka-config-file",
        metavar="PATH",
        help="a Kafka client properties file, as Kafka's own tools take with --command-config",
    )


def connection(args: argparse.Namespace) -> KafkaConnection:
    """The Kafka connection a verb's ``--bootstrap-servers`` and client settings name."""
    from pipelines.options import connection_of

    return connection_of(args.bootstrap_servers, "kafka-python", args.kafka_config_file, args.kafka_config)
