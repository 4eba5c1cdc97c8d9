"""Every environment default of Beamline, read in this one module.

Each setting has one environment variable and one built-in default, both named
in :data:`ENVIRONMENT`, so the command line, the pipelines and the read side
agree on them (``BEAMLINE_WAREHOUSE`` is the same folder for ``beamline run``
and ``beamline query``). The functions read the environment when called, not
at import, so a variable set before a command runs is always seen; option
parsers call them once, when they are built, and show the result in ``--help``.

Two folders, both ignored by git:

* the cache (``.cache/`` or ``$BEAMLINE_CACHE_DIR``): jars and binaries that
  ``make setup`` fetches once and every later run reuses;
* the state folder (``.beamline/`` or ``$BEAMLINE_HOME``): broker data, logs and
  the default warehouse.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ConfigError

__all__ = [
    "DEFAULT_BOOTSTRAP_SERVERS",
    "ENVIRONMENT",
    "PROJECT_ROOT",
    "WORKER_GC_THRESHOLD",
    "bootstrap_servers",
    "cache_dir",
    "env_help",
    "flink_job_server_jar",
    "gc_threshold",
    "kafka_client",
    "kafka_libs_dir",
    "prism_binary",
    "serve_token",
    "state_dir",
    "warehouse_dir",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_KAFKA_CLIENT = "kafka-python"
WORKER_GC_THRESHOLD = 50_000
"""Young-generation threshold a Beamline reader sets in its worker process (see transforms.kafka.worker_gc)."""

#: Every variable Beamline reads, with what it sets (shown by ``--help`` texts and the README).
ENVIRONMENT = {
    "BEAMLINE_HOME": "state folder: broker data, logs, the default warehouse (default .beamline/)",
    "BEAMLINE_CACHE_DIR": "folder of tools fetched by `make setup` (default .cache/)",
    "BEAMLINE_WAREHOUSE": "warehouse folder of the views (default $BEAMLINE_HOME/warehouse)",
    "BEAMLINE_BOOTSTRAP_SERVERS": f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP_SERVERS})",
    "BEAMLINE_KAFKA_CLIENT": f"Kafka client, kafka-python or confluent (default {DEFAULT_KAFKA_CLIENT})",
    "BEAMLINE_GC_THRESHOLD": f"young-generation GC threshold of reader processes (default {WORKER_GC_THRESHOLD})",
    "BEAMLINE_PRISM": "Prism runner binary (default $BEAMLINE_CACHE_DIR/bin/prism)",
    "BEAMLINE_FLINK_JOB_SERVER_JAR": "Beam's Flink job server jar (default: the cached copy, if any)",
    "BEAMLINE_TOKEN": "bearer token `beamline serve` requires of every request (default: none, loopback only)",
}


def _env(name: str) -> str | None:
    """The variable's value, or None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_help(name: str) -> str:
    """``env NAME`` for an option's help, with the value in force when it is set."""
    value = _env(name)
    return f"env {name}" + (f"={value}" if value else "")


def cache_dir() -> Path:
    """The folder holding tools fetched by ``make setup``."""
    return Path(_env("BEAMLINE_CACHE_DIR") or PROJECT_ROOT / ".cache")


def state_dir() -> Path:
    """The folder holding local broker data, logs and the default warehouse."""
    return Path(_env("BEAMLINE_HOME") or PROJECT_ROOT / ".beamline")


def warehouse_dir() -> Path:
    """The warehouse every command uses unless told otherwise."""
    return Path(_env("BEAMLINE_WAREHOUSE") or state_dir() / "warehouse")


def kafka_libs_dir() -> Path:
    """Jars of the Apache Kafka broker, resolved by Maven during set-up."""
    return cache_dir() / "kafka" / "libs"


def prism_binary() -> Path:
    """Beam's Prism runner, built with ``go install`` during set-up."""
    return Path(_env("BEAMLINE_PRISM") or cache_dir() / "bin" / "prism")


def flink_job_server_jar() -> Path | None:
    """The job server jar the user named in the environment, if any."""
    value = _env("BEAMLINE_FLINK_JOB_SERVER_JAR")
    return Path(value) if value else None


def serve_token() -> str | None:
    """The token ``beamline serve`` requires of clients, if any (never shown in ``--help``: it is a secret)."""
    return _env("BEAMLINE_TOKEN")


def bootstrap_servers() -> str:
    """The Kafka brokers every command talks to unless told otherwise."""
    return _env("BEAMLINE_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP_SERVERS


def kafka_client() -> str:
    """The Kafka client library reads and writes use unless told otherwise."""
    return _env("BEAMLINE_KAFKA_CLIENT") or DEFAULT_KAFKA_CLIENT


def gc_threshold() -> int:
    """The reader processes' GC threshold: env ``BEAMLINE_GC_THRESHOLD`` (0: leave the GC alone), else the default."""
    text = _env("BEAMLINE_GC_THRESHOLD")
    if text is None:
        return WORKER_GC_THRESHOLD
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"BEAMLINE_GC_THRESHOLD must be a whole number (0 leaves the GC alone); got {text!r}"
        ) from None
    if value < 0:
        raise ConfigError(f"BEAMLINE_GC_THRESHOLD must be 0 or more; got {value}")
    return value
