"""One root exception for Beamline.

Every error an operator can act on derives from :class:`BeamlineError`; its
message says what went wrong *and* what to do. The command line prints such
errors as one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

__all__ = [
    "BeamlineError",
    "ConfigError",
    "KafkaUnavailable",
    "PipelineFailed",
    "ServiceError",
    "SetupMissing",
]


class BeamlineError(Exception):
    """Base class: an error whose message tells the operator what to do."""


class ConfigError(BeamlineError):
    """An option or argument is invalid; fix the command line or config."""


class SetupMissing(BeamlineError):
    """A cached tool (Kafka jars, Prism, Flink) is absent; run `make setup`."""


class ServiceError(BeamlineError):
    """A local service (broker, cluster) could not be started or stopped."""


class KafkaUnavailable(BeamlineError):
    """No Kafka broker answered at the given bootstrap servers."""


class PipelineFailed(BeamlineError):
    """A pipeline run ended in a state other than done or cancelled-on-request."""
