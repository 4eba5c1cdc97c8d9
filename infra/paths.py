"""Where Beamline keeps fetched tools and local state.

Two folders, both ignored by git:

* the cache (``.cache/`` or ``$BEAMLINE_CACHE_DIR``): jars and binaries that
  ``make setup`` fetches once and every later run reuses;
* the state folder (``.beamline/`` or ``$BEAMLINE_HOME``): broker data, logs and
  the default warehouse.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROJECT_ROOT", "cache_dir", "kafka_libs_dir", "prism_binary", "state_dir"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """The folder holding tools fetched by ``make setup``."""
    return Path(os.environ.get("BEAMLINE_CACHE_DIR", PROJECT_ROOT / ".cache"))


def state_dir() -> Path:
    """The folder holding local broker data, logs and the default warehouse."""
    return Path(os.environ.get("BEAMLINE_HOME", PROJECT_ROOT / ".beamline"))


def kafka_libs_dir() -> Path:
    """Jars of the Apache Kafka broker, resolved by Maven during set-up."""
    return cache_dir() / "kafka" / "libs"


def prism_binary() -> Path:
    """Beam's Prism runner, built with ``go install`` during set-up."""
    return Path(os.environ.get("BEAMLINE_PRISM", cache_dir() / "bin" / "prism"))
