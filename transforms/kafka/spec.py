"""What a read is told: where it starts and stops, how it paces itself, and the frozen spec its workers get.

:class:`StartAt`, :class:`StopAt` and :class:`ReadTiming` are the small frozen
pieces ``ReadFromKafka`` takes instead of a long list of keywords; each checks
itself when made. ``_ReadSpec`` is everything a worker needs, resolved once
when the read is built.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from core.errors import ConfigError
from transforms.kafka.clients import _Consumer, new_consumer
from transforms.kafka.config import ClientSettings
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.worker_gc import WORKER_GC_THRESHOLD

__all__ = ["EventTimeOf", "ReadTiming", "StartAt", "StartPosition", "StopAt", "StopPosition"]

# A record value's event time in epoch microseconds, or None when it has none (an invalid record).
EventTimeOf = Callable[[bytes | None], int | None]
StartPosition = str | datetime | Mapping[tuple[str, int], int]
StopPosition = str | datetime | Mapping[tuple[str, int], int]
# A position as the read's workers resolve it: a mode, epoch milliseconds, or sorted ((topic, partition), offset) pairs.
Resolved = str | int | tuple[tuple[tuple[str, int], int], ...]

_START_MODES = ("earliest", "latest", "committed")
_FALLBACKS = ("earliest", "latest")


def _to_millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ConfigError(f"timestamp {moment.isoformat()} has no time zone; pass an aware datetime")
    return int(moment.timestamp() * 1000)


def _resolved(position: Any, what: str, modes: tuple[str, ...], expected: str) -> Resolved:
    if isinstance(position, str):
        if position not in modes:
            raise ConfigError(f"{what} must be {expected}; got {position!r}")
        return position
    if isinstance(position, datetime):
        return _to_millis(position)
    if isinstance(position, Mapping):
        for tp, offset in position.items():
            if not (isinstance(tp, tuple) and len(tp) == 2 and isinstance(tp[0], str) and isinstance(tp[1], int)):
                raise ConfigError(f"{what} offsets must be keyed by (topic, partition); got {tp!r}")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ConfigError(f"{what} offset for {tp} must be a non-negative integer; got {offset!r}")
        return tuple(sorted(position.items()))
    raise ConfigError(f"{what} must be {expected}; got {position!r}")


def check_offset_topics(position: Resolved | None, what: str, topics: tuple[str, ...]) -> None:
    """Offsets may only name topics the read reads."""
    if isinstance(position, tuple):
        for (topic, _), _ in position:
            if topic not in topics:
                raise ConfigError(f"{what} offset given for topic {topic}, which is not read; add it to topics")


@dataclass(frozen=True)
class StartAt:
    """Where each partition's read starts.

    ``position``: ``"earliest"``, ``"latest"``, ``"committed"`` (the consumer
    group's committed offsets), an aware ``datetime`` (the first record at or
    after it), or ``{(topic, partition): offset}``. ``fallback``
    (``"earliest"`` or ``"latest"``) is where partitions start that
    ``"committed"`` finds no commit for, or that the offsets do not list.
    """

    position: StartPosition = "earliest"
    fallback: str = "earliest"

    def __post_init__(self) -> None:
        self.resolved()
        if self.fallback not in _FALLBACKS:
            raise ConfigError(f"the start's fallback must be 'earliest' or 'latest'; got {self.fallback!r}")

    def resolved(self) -> Resolved:
        return _resolved(self.position, "start", _START_MODES, f"one of {', '.join(_START_MODES)}")


@dataclass(frozen=True)
class StopAt:
    """Where a bounded read (a backfill) stops; a read without one runs for ever.

    ``position``: ``"end"`` (the end offsets seen when the read starts), an
    aware ``datetime`` (before the first record at or after it), or
    ``{(topic, partition): offset}`` (before that offset; unlisted partitions
    stop at their end offsets).
    """

    position: StopPosition = "end"

    def __post_init__(self) -> None:
        self.resolved()

    def resolved(self) -> Resolved:
        return _resolved(self.position, "stop", ("end",), "None, 'end', an aware datetime or offsets")


@dataclass(frozen=True)
class ReadTiming:
    """How a read paces itself; the defaults suit a local broker and most clusters.

    ``allowed_skew_s`` keeps the watermark that far behind the newest time
    read (event time when the read is given ``event_time``, else record
    time), and behind wall time when a partition is idle. Unbounded reads end each call
    once caught up with the broker, or after ``max_bundle_s`` (a streaming
    runner passes output on when a bundle ends), wait ``resume_delay_s``
    before polling an idle partition again, and look for new partitions every
    ``discovery_interval_s``. ``timeout_s`` bounds the wait for the broker
    when the pipeline is built and when a consumer connects.
    """

    allowed_skew_s: float = 5.0
    resume_delay_s: float = 0.25
    max_bundle_s: float = 1.0
    discovery_interval_s: float = 10.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for knob in fields(self):
            seconds = getattr(self, knob.name)
            zero_ok = knob.name == "allowed_skew_s"
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or seconds < 0
                or (seconds == 0 and not zero_ok)
            ):
                raise ConfigError(f"{knob.name} must be {'0 or more' if zero_ok else 'positive'}; got {seconds!r}")
            object.__setattr__(self, knob.name, float(seconds))


@dataclass(frozen=True)
class _ReadSpec:
    """Everything a worker needs to read; small, frozen and picklable (its ``repr`` hides secrets)."""

    connection: KafkaConnection
    topics: tuple[str, ...]
    start: Resolved
    start_fallback: str
    stop: Resolved | None  # None: unbounded
    consumer_config: ClientSettings
    commit_offsets: bool
    timing: ReadTiming
    batched: bool = False
    gc_threshold: int | None = WORKER_GC_THRESHOLD
    readers: int = 1
    event_time: EventTimeOf | None = None
    # Names this read among the reads of a worker process (their partitions' watermarks are kept apart).
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def bounded(self) -> bool:
        return self.stop is not None

    def new_consumer(self) -> _Consumer:
        """A consumer for this read; an unreachable broker is an error, not a hang."""
        return new_consumer(self.connection, self.consumer_config, self.timing.timeout_s)
