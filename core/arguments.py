"""Checks for option values, shared by the command line and the pipeline options.

Each check is an argparse ``type`` that raises :class:`~core.errors.ConfigError`
naming the option, so a bad value anywhere (``beamline run``, ``python -m
pipelines.inventory``, ``beamline produce``) ends as one line and a non-zero
exit instead of argparse's usage block or a traceback from deep in a transform.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from core.errors import ConfigError

__all__ = ["duration", "moment", "port", "share", "whole_number"]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def whole_number(option: str, minimum: int = 0, maximum: int | None = None, unit: str = "") -> Callable[[str], int]:
    """A type for ``option``: a whole number in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            what = f"a whole number of{unit}" if unit else "a whole number"
            raise ConfigError(f"{option} must be {what}; got {text!r}") from None
        if value < minimum:
            raise ConfigError(f"{option} must be at least {minimum:,}{unit}; got {value:,}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{option} must be at most {maximum:,}{unit}; got {value:,}")
        return value

    parse.__name__ = "whole number"
    return parse


def port(option: str) -> Callable[[str], int]:
    """A type for ``option``: a TCP port, 1-65535."""
    return whole_number(option, 1, 65535)


def share(option: str) -> Callable[[str], float]:
    """A type for ``option``: a fraction between 0 and 1."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{option} must be a number between 0 and 1; got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{option} must be between 0 and 1; got {value}")
        return value

    parse.__name__ = "fraction"
    return parse


def duration(option: str) -> Callable[[str], float]:
    """A type for ``option``: a duration such as ``1s``, ``500ms``, ``2m`` or ``1h`` (a bare number: seconds)."""

    def parse(text: str) -> float:
        raw = str(text).strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h") if raw.endswith(u)), "")
        try:
            value = float(raw[: len(raw) - len(unit)]) * _DURATION_UNITS.get(unit, 1.0)
        except ValueError:
            raise ConfigError(f"{option} must be a duration such as 1s, 500ms, 2m or 1h; got {text!r}") from None
        if not 0.0 <= value < float("inf"):
            raise ConfigError(f"{option} must be 0 or more; got {text!r}")
        return value

    parse.__name__ = "duration"
    return parse


def moment(option: str) -> Callable[[str], datetime]:
    """A type for ``option``: an RFC 3339 time with an offset, or ``now``."""

    def parse(text: str) -> datetime:
        if text == "now":
            return datetime.now(timezone.utc)
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{option} is not an RFC 3339 time or 'now': {text!r}") from None
        if value.tzinfo is None:
            raise ConfigError(f"{option} needs a UTC offset, e.g. {text}Z")
        return value

    parse.__name__ = "time"
    return parse
