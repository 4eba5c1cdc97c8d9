"""The read's elements: the partitions of its topics, with the offset range each is read over.

A bounded read lists the partitions once, resolves every start and stop
offset at the same moment (so a backfill ends at one consistent cut of the
log) and, on several worker processes, cuts the ranges into equal shares. An
unbounded read lists them on every discovery tick and emits each partition
the first time it is seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from core.errors import ConfigError
from transforms.kafka.clients import _Consumer, client_errors, topic_partitions
from transforms.kafka.records import _TP
from transforms.kafka.spec import _ReadSpec
from transforms.kafka.watermarks import SHARED_WATERMARKS

__all__: list[str] = []

_LOG = logging.getLogger(__name__)

# What starting a range costs a reader, in records it could have read meanwhile:
# a seek and the first fetch took 40-150 ms where a reader decodes ~125k records/s.
_RANGE_COST = 10_000


class _Partition(NamedTuple):
    """The SDF element: a (topic, partition) with the offsets resolved when it was found.

    ``stop`` is exclusive (the next offset *not* to read); None means unbounded.
    Resolving both ends in one place means every partition of a backfill
    stops at the end offsets seen at the same moment.
    """

    topic: str
    partition: int
    start: int
    stop: int | None


def _resolve_partitions(consumer: _Consumer, spec: _ReadSpec, tps: list[_TP]) -> list[_Partition]:
    """Turn the start/stop positions into concrete offsets for ``tps``."""
    if not tps:
        return []
    beginning = consumer.beginning_offsets(tps)
    end = consumer.end_offsets(tps)

    def at_time(millis: int) -> dict[_TP, int]:
        found = consumer.offsets_for_times(tps, millis)
        # No record at or after the time: the position is the end of the log.
        return {tp: end[tp] if (offset := found.get(tp)) is None else offset for tp in tps}

    def by_mode(mode: str, tp: _TP) -> int:
        if mode == "earliest":
            return beginning[tp]
        if mode == "latest":
            return end[tp]
        committed = consumer.committed(tp)
        # The committed offset is the next offset to read, as Kafka defines it.
        return committed if committed is not None else by_mode(spec.start_fallback, tp)

    start, stop = spec.start, spec.stop
    start_at_time = at_time(start) if isinstance(start, int) else {}
    stop_at_time = at_time(stop) if isinstance(stop, int) else {}
    out = []
    for tp in tps:
        if isinstance(start, str):
            first = by_mode(start, tp)
        elif isinstance(start, int):
            first = start_at_time[tp]
        else:
            listed = dict(start).get((tp.topic, tp.partition))
            first = by_mode(spec.start_fallback, tp) if listed is None else listed
        # Offsets outside the log: before its start were deleted by retention,
        # beyond its end do not exist yet.
        first = min(max(first, beginning[tp]), end[tp])
        last: int | None
        if stop is None:
            last = None
        elif isinstance(stop, str):  # "end"
            last = end[tp]
        elif isinstance(stop, int):
            last = stop_at_time[tp]
        else:
            last = dict(stop).get((tp.topic, tp.partition), end[tp])
        if last is not None:
            last = max(first, last)
        out.append(_Partition(tp.topic, tp.partition, first, last))
    return out


def _equal_shares(parts: list[_Partition], readers: int) -> list[_Partition]:
    """Bounded ranges cut into ``readers`` shares of equal work, ordered to be dealt in turn.

    The FnApiRunner deals a Reshuffle's elements to its worker processes in
    turn (element i to worker i mod n), whatever their size: on skewed
    partitions one worker read on alone for a second of a 1M-record backfill.
    A share's work is its records plus ``_RANGE_COST`` per range. Largest
    partitions go first, at most ``readers - 1`` of them are cut, and empty
    ones drop out. Share k is the elements k, k + n, k + 2n, ...; a share with
    fewer ranges is padded with empty ones (read at no cost), so the turns stay
    aligned. On other runners the order does no harm.
    """
    bounded = [(part, part.stop) for part in parts if part.stop is not None]
    if readers < 2 or len(bounded) < len(parts):
        return parts
    ranges = sorted(
        ((p, stop) for p, stop in bounded if stop > p.start), key=lambda ps: ps[1] - ps[0].start, reverse=True
    )
    if not ranges:
        return parts
    # Up to readers - 1 cuts each start one more range.
    work = sum(stop - p.start + _RANGE_COST for p, stop in ranges) + (readers - 1) * _RANGE_COST
    room = [work // readers] * readers
    shares: list[list[_Partition]] = [[] for _ in range(readers)]
    k = 0
    for part, stop in ranges:
        start = part.start
        while start < stop:
            # A share without room for another range is done; the last takes the rest.
            while k < readers - 1 and room[k] <= _RANGE_COST:
                k += 1
            take = stop - start if k == readers - 1 else min(stop - start, room[k] - _RANGE_COST)
            shares[k].append(part._replace(start=start, stop=start + take))
            room[k] -= take + _RANGE_COST
            start += take
    dealt = []
    for turn in range(max(len(share) for share in shares)):
        for share in shares:
            if turn < len(share):
                dealt.append(share[turn])
            else:
                dealt.append(_empty_after(share[-1] if share else ranges[0][0]))
    return dealt


def _empty_after(part: _Partition) -> _Partition:
    """An empty range of ``part``'s partition where ``part`` stops: read at no cost."""
    stop = part.start if part.stop is None else part.stop
    return part._replace(start=stop, stop=stop)


def _list_partitions(consumer: _Consumer, spec: _ReadSpec, *, strict: bool) -> list[_TP]:
    tps = []
    for topic, found in topic_partitions(consumer, spec.topics).items():
        if not found and strict:
            raise ConfigError(
                f"Kafka topic {topic} does not exist at {spec.connection.bootstrap_servers}; "
                "create it or fix the topic name"
            )
        tps.extend(found)
    return tps


class _ConsumerDoFn(beam.DoFn):
    """A DoFn with one consumer of the read's, made when first needed and closed in teardown."""

    def __init__(self, spec: _ReadSpec) -> None:
        self._spec = spec
        self._consumer: _Consumer | None = None

    def _connected(self) -> _Consumer:
        if self._consumer is None:
            self._consumer = self._spec.new_consumer()
        return self._consumer

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class _DiscoverPartitionsFn(_ConsumerDoFn):
    """Bounded mode: lists the topics' partitions and resolves their offset ranges."""

    def setup(self) -> None:
        self._connected()

    def process(self, unused_impulse: Any) -> Iterator[Any]:
        spec = self._spec
        consumer = self._connected()
        parts = _resolve_partitions(consumer, spec, _list_partitions(consumer, spec, strict=spec.bounded))
        if not spec.commit_offsets:
            parts = _equal_shares(parts, spec.readers)  # bounded reads on several workers only
        for part in parts:
            # Minimum timestamp: a partition's element must not hold the watermark
            # later than its oldest record; the read's estimator sets the real one.
            yield TimestampedValue(part, MIN_TIMESTAMP)


class _ListTopicPartitionsFn(_ConsumerDoFn):
    """Unbounded mode, step 1: the (topic, partition) pairs that exist now."""

    def process(self, unused_tick: Any) -> Iterator[tuple[str, tuple[str, int]]]:
        try:
            # Connected lazily: a streaming read outlives broker restarts.
            tps = _list_partitions(self._connected(), self._spec, strict=False)
        except client_errors(self._spec.connection.client) as exc:
            # A streaming read outlives broker restarts: the next tick looks again.
            _LOG.warning("Kafka partition discovery skipped a round: %r", exc)
            return
        for tp in tps:
            yield "", (tp.topic, tp.partition)


_SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
_SEEN_PARAM = beam.DoFn.StateParam(_SEEN)


class _NewPartitionsOnlyFn(_ConsumerDoFn):
    """Unbounded mode, step 2: emit a partition the first time it is seen.

    The set of seen partitions is Beam state, so it survives worker restarts;
    offsets for a new partition are resolved when it first appears.
    """

    def process(self, keyed: tuple[str, tuple[str, int]], seen_state: Any = _SEEN_PARAM) -> Iterator[Any]:
        seen = seen_state.read() or frozenset()
        topic, partition = keyed[1]
        if (topic, partition) in seen:
            return
        try:
            parts = _resolve_partitions(self._connected(), self._spec, [_TP(topic, partition)])
        except client_errors(self._spec.connection.client) as exc:
            # Not marked as seen: the next discovery round tries this partition again.
            _LOG.warning("Kafka offsets for %s/%s not resolved yet: %r", topic, partition, exc)
            return
        seen_state.write(seen | {(topic, partition)})
        for part in parts:
            # Holds its read's watermark from now on, before its reader first gets to it.
            SHARED_WATERMARKS.note(self._spec.token, _TP(part.topic, part.partition), MIN_TIMESTAMP)
            yield TimestampedValue(part, MIN_TIMESTAMP)
