"""One root exception for Beamline.

Every error an operator can act on derives from :class:`BeamlineError`; its
message says what went wrong *and* what to do. The command line prints such
errors as one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from urllib.error import HTTPError, URLError

__all__ = [
    "BeamlineError",
    "ConfigError",
    "KafkaUnavailable",
    "PipelineFailed",
    "ServiceError",
    "SetupMissing",
    "download_failure",
    "quiet_beam_downloads",
    "report_errors",
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


def report_errors(action: Callable[[], int | None], prefix: str = "beamline: error:", code: int = 1) -> int:
    """Run ``action``; print a BeamlineError as one line on stderr and return an exit code.

    Ctrl-C is exit 130 with one line, as shells expect. Anything else is a bug
    in Beamline and keeps its traceback.
    """
    try:
        return int(action() or 0)
    except BeamlineError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("beamline: interrupted", file=sys.stderr)
        return 130


def download_failure(exc: BaseException) -> str:
    """Why a download failed, on one line: the first URL error met on the way, else the exception's own message."""
    reason: object = exc
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, URLError):
            reason = cause if isinstance(cause, HTTPError) else cause.reason
        cause = cause.__context__
    return " ".join(str(reason).split())[:200]


@contextlib.contextmanager
def quiet_beam_downloads() -> Iterator[None]:
    """Beam warns in eight lines each time it downloads a jar from a public repository; a failure is said in one."""
    downloads = logging.getLogger("apache_beam.utils.subprocess_server")
    level = downloads.level
    downloads.setLevel(logging.ERROR)
    try:
        yield
    finally:
        downloads.setLevel(level)
