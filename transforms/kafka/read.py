"""ReadFromKafka: Kafka topics as a splittable DoFn, for streaming and for backfill alike.

Beam's own Kafka connector for Python is a Java cross-language transform; this
one runs on any portable runner with a Python Kafka client. The read is a
splittable DoFn: one element per partition (see
:mod:`transforms.kafka.partitions`), a restriction that is a range of offsets,
and a watermark per partition. The same transform serves streaming
(``stop=None``) and backfill (``stop="end"``): a backfill reads up to the end
offsets seen when the read starts and then finishes on its own.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.iobase import RestrictionTracker
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.errors import ConfigError, KafkaUnavailable
from transforms.kafka.clients import _Consumer, check_topics
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.partitions import (
    _ConsumerDoFn,
    _DiscoverPartitionsFn,
    _ListTopicPartitionsFn,
    _NewPartitionsOnlyFn,
    _Partition,
)
from transforms.kafka.progress import LOCAL_PROGRESS
from transforms.kafka.records import _TP, KafkaBatch, KafkaRecord
from transforms.kafka.spec import (
    EventTimeOf,
    ReadTiming,
    StartAt,
    StartPosition,
    StopAt,
    StopPosition,
    _ReadSpec,
    check_offset_topics,
)
from transforms.kafka.watermarks import SHARED_WATERMARKS, _PartitionWatermarkProvider, event_time_step
from transforms.kafka.worker_gc import WORKER_GC_THRESHOLD, tune_worker_gc

__all__ = ["GLOBAL_WINDOWS", "METRICS_NAMESPACE", "ReadFromKafka"]

# Beam metrics: counters ``<topic>.records_read`` / ``<topic>.bytes_read`` and
# gauges ``<topic>.<partition>.lag`` (records between position and high watermark).
METRICS_NAMESPACE = "beamline.kafka"
_LOG = logging.getLogger(__name__)
# The upper bound of an unbounded restriction: "no stop offset".
_UNBOUNDED_STOP = sys.maxsize
_DEFAULT_TIMING = ReadTiming()


class _OffsetTracker(OffsetRestrictionTracker):
    """Offset tracker that knows whether its range is unbounded.

    An unbounded range only accepts checkpoints (fraction 0): splitting
    ``[n, inf)`` in half would hand a worker offsets that never exist.
    """

    def __init__(self, offset_range: OffsetRange, bounded: bool) -> None:
        super().__init__(offset_range)
        self._bounded = bounded

    def try_split(self, fraction_of_remainder: float) -> Any:
        if not self._bounded and fraction_of_remainder != 0:
            return None
        return super().try_split(fraction_of_remainder)

    def is_bounded(self) -> bool:
        return self._bounded


class _OffsetRangeProvider(RestrictionProvider):
    def initial_restriction(self, element: _Partition) -> OffsetRange:
        stop = _UNBOUNDED_STOP if element.stop is None else element.stop
        return OffsetRange(element.start, stop)

    def create_tracker(self, restriction: OffsetRange) -> RestrictionTracker:
        return _OffsetTracker(restriction, restriction.stop != _UNBOUNDED_STOP)

    def restriction_size(self, element: _Partition, restriction: OffsetRange) -> int:
        if restriction.stop == _UNBOUNDED_STOP:
            return 1
        return max(0, restriction.stop - restriction.start)

    def truncate(self, element: _Partition, restriction: OffsetRange) -> OffsetRange | None:
        # On drain an unbounded read stops; a bounded one still finishes its range.
        return None if restriction.stop == _UNBOUNDED_STOP else restriction


# How long a bounded read (a backfill) waits on a partition that stops
# answering, or stops delivering records below its stop offset, before failing.
_BOUNDED_STALL_S = 120.0


class _Stall:
    """Fails a bounded read that makes no progress for a while, with one clear line.

    A backfill outlives a short broker outage (it retries in place), but must
    never hang for ever on a partition that cannot be read.
    """

    def __init__(self, tp: _TP, servers: str) -> None:
        self._tp = tp
        self._servers = servers
        self._offset: int | None = None
        self._since = 0.0

    def check(self, offset: int, reason: str) -> None:
        now = time.monotonic()
        if offset != self._offset:
            self._offset, self._since = offset, now
        elif now - self._since > _BOUNDED_STALL_S:
            raise KafkaUnavailable(
                f"reading {self._tp.topic}/{self._tp.partition} at {self._servers} made no progress at offset "
                f"{offset} for {_BOUNDED_STALL_S:.0f}s ({reason}); check the broker"
            )

    def wait(self, offset: int, reason: str, backoff_s: float) -> None:
        self.check(offset, reason)
        time.sleep(backoff_s)  # back off before asking the broker again


# The windows of a value in the global window, built once. The read's input is
# always in the global window (this module makes it), so records are emitted
# as ready-made windowed values: a TimestampedValue would make Beam assign
# windows per element, building a GlobalWindow each time. Other steps whose
# output stays in the global window use it for the same reason.
GLOBAL_WINDOWS = (GlobalWindow(),)
_TRACKER_PARAM = beam.DoFn.RestrictionParam(_OffsetRangeProvider())
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(_PartitionWatermarkProvider())


class _PartitionReader(_ConsumerDoFn):
    """Reads one partition's offset range; one consumer per DoFn instance.

    Its two subclasses differ only in ``process``: :class:`_ReadPartitionFn`
    reads, :class:`_CommittingReadPartitionFn` also commits offsets once the
    runner made a bundle's output durable.
    """

    def __init__(self, spec: _ReadSpec) -> None:
        super().__init__(spec)
        self._fresh_state()

    def _fresh_state(self) -> None:
        """What a reader keeps besides its spec; none of it travels with the pickled DoFn."""
        self._consumer = None
        self._next_offset: dict[_TP, int] = {}
        self._committed: dict[_TP, int] = {}
        self._commit_lock = threading.Lock()
        self._records: dict[str, Any] = {}
        self._bytes: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_spec": self._spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._spec = state["_spec"]
        self._fresh_state()

    def setup(self) -> None:
        tune_worker_gc(self._spec.gc_threshold)
        self._connect(not self._spec.bounded)

    def _connect(self, tolerate_outage: bool) -> bool:
        """Create the consumer; in streaming an unreachable broker only pauses the read."""
        try:
            self._consumer = self._spec.new_consumer()
        except KafkaUnavailable as exc:
            if not tolerate_outage:
                raise
            _LOG.warning("Kafka read waiting for the broker: %s", exc)
            return False
        return True

    def _counters(self, topic: str) -> tuple[Any, Any]:
        if topic not in self._records:
            self._records[topic] = Metrics.counter(METRICS_NAMESPACE, f"{topic}.records_read")
            self._bytes[topic] = Metrics.counter(METRICS_NAMESPACE, f"{topic}.bytes_read")
        return self._records[topic], self._bytes[topic]

    def _seek(self, consumer: _Consumer, tp: _TP, offset: int) -> None:
        """Point the shared consumer at ``tp``/``offset``, keeping its buffer if already there."""
        if consumer.assigned() != tp:
            consumer.assign(tp)
            self._next_offset.clear()
        if self._next_offset.get(tp) != offset:
            consumer.seek(tp, offset)
            self._next_offset[tp] = offset

    def _read(self, element: _Partition, tracker: Any, watermark: Any, finalizer: Any) -> Iterator[WindowedValue]:
        """Claim and emit records until the range ends, the poll is empty, or time is up."""
        spec = self._spec
        restriction = tracker.current_restriction()
        tp = _TP(element.topic, element.partition)
        if restriction.stop == _UNBOUNDED_STOP:
            # Report the lowest watermark of the read's partitions (see transforms.kafka.watermarks).
            watermark.share(SHARED_WATERMARKS, spec.token, tp)
        if restriction.start >= restriction.stop or (
            self._consumer is None and not self._connect(restriction.stop == _UNBOUNDED_STOP)
        ):
            if finalizer is not None:
                finalizer.register(_no_commit)
            if restriction.start < restriction.stop:
                tracker.defer_remainder(Duration.of(spec.timing.resume_delay_s))
            return
        consumer = self._consumer
        assert consumer is not None
        self._seek(consumer, tp, restriction.start)
        records_counter, bytes_counter = self._counters(tp.topic)
        lag_gauge = Metrics.gauge(METRICS_NAMESPACE, f"{tp.topic}.{tp.partition}.lag")
        poll = consumer.poll_batch
        claim = tracker.try_claim
        deadline = time.monotonic() + spec.timing.max_bundle_s
        skew = Duration.of(spec.timing.allowed_skew_s)
        next_offset = restriction.start  # the next offset to read = what a commit saves
        # A bounded range is read to its end in this call: no self-checkpoints.
        # Batch needs none, and the FnApiRunner's multi-worker mode can drop the
        # residual of a self-checkpointed SDF (its merged bundle response keeps
        # only metrics; apache/beam#19842): 2-worker backfills came out short.
        bounded = restriction.stop != _UNBOUNDED_STOP
        # A bounded read may wait for its fetch; an unbounded one keeps each call short,
        # because other partitions in the same bundle wait for it.
        poll_s = max(0.001, min(spec.timing.resume_delay_s, 0.5 if bounded else 0.1))
        stall = _Stall(tp, spec.connection.bootstrap_servers)
        try:
            while True:
                try:
                    batch = poll(tp, poll_s)
                    position = None if batch else consumer.position(tp)
                except consumer.errors as exc:
                    if self._consumer is not consumer and not bounded:
                        # Torn down under this call: the SDK harness shut this DoFn down
                        # while its bundle still ran, which closed the consumer. Go on
                        # with a new one from the next call, from the next offset to read.
                        _LOG.warning("Kafka read of %s lost its consumer (%r); reconnecting", tp, exc)
                        self._next_offset.pop(tp, None)
                        tracker.defer_remainder(Duration.of(spec.timing.resume_delay_s))
                        return
                    if not consumer.retriable(exc):
                        raise KafkaUnavailable(
                            f"reading {tp.topic}/{tp.partition} at {spec.connection.bootstrap_servers} failed: "
                            f"{exc!r}; check the broker and the consumer settings"
                        ) from exc
                    # The broker is away (restart, leader change): try again from the
                    # next offset to read, without moving the watermark.
                    _LOG.warning("Kafka read of %s paused: %r", tp, exc)
                    self._next_offset.pop(tp, None)
                    if not bounded:
                        tracker.defer_remainder(Duration.of(spec.timing.resume_delay_s))
                        return
                    stall.wait(next_offset, repr(exc), poll_s)
                    self._seek(consumer, tp, next_offset)
                    continue
                if not batch:
                    if position is None:
                        self._next_offset.pop(tp, None)
                        if not bounded:
                            tracker.defer_remainder(Duration.of(spec.timing.resume_delay_s))
                            return
                        stall.wait(next_offset, "the consumer lost its position", poll_s)
                        self._seek(consumer, tp, next_offset)
                        continue
                    stop = tracker.current_restriction().stop
                    if position >= stop:
                        # Offsets up to the stop hold no records (transaction
                        # markers, compaction): claim the stop to end the range.
                        claim(stop)
                        return
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        lag_gauge.set(max(0, highwater - position))
                    if bounded:
                        # Records below the stop exist; the fetch is on its way.
                        stall.check(position, "no records arrived")
                        continue
                    # Caught up (per the broker's last answer, never a guess): let the
                    # watermark follow the clock so windows downstream can close.
                    if highwater is not None and position >= highwater:
                        watermark.advance_to(Timestamp.now() - skew)
                    tracker.defer_remainder(Duration.of(spec.timing.resume_delay_s))
                    return
                # One claim per poll: claiming the batch's last offset claims every
                # offset before it. If a split moved the stop into this batch, the
                # records below the new stop are still ours and nothing after it is.
                # No later split can cut below a failed claim, so the stop is final.
                if batch[0].offset < next_offset:
                    # Already emitted (a re-fetch after a reconnect): never twice.
                    batch = [rec for rec in batch if rec.offset >= next_offset]
                    if not batch:
                        continue
                claimed_all = claim(batch[-1].offset)
                if not claimed_all:
                    stop = tracker.current_restriction().stop
                    batch = [rec for rec in batch if rec.offset < stop]
                    self._next_offset.pop(tp, None)
                if batch:
                    size, newest = _batch_size_and_newest(batch)
                    if spec.event_time is not None:
                        moved_to, stamps = event_time_step(
                            [spec.event_time(rec.value) for rec in batch],
                            watermark.get_estimator_state().micros,  # the partition's own
                            Timestamp.now().micros,
                            skew.micros,
                        )
                        yield from _stamped(tp, batch, stamps, min(stamps) if spec.batched else None)
                        watermark.advance_to(Timestamp(micros=moved_to))
                    else:
                        record_times = [rec.timestamp * 1000 for rec in batch]
                        yield from _stamped(tp, batch, record_times, newest * 1000 if spec.batched else None)
                        watermark.advance_to(Timestamp(micros=newest * 1000) - skew)
                    next_offset = batch[-1].offset + 1  # the next offset to read
                    records_counter.inc(len(batch))
                    bytes_counter.inc(size)
                    LOCAL_PROGRESS.add(len(batch))
                if not claimed_all:
                    return
                self._next_offset[tp] = next_offset
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag_gauge.set(max(0, highwater - next_offset))
                if next_offset >= tracker.current_restriction().stop:
                    return
                if not bounded and (
                    (highwater is not None and next_offset >= highwater) or time.monotonic() > deadline
                ):
                    # Caught up with what the broker had, or time is up: end the call so the
                    # runner passes this output downstream now (a streaming runner releases a
                    # bundle's output only when the bundle ends) and moves the watermark.
                    # The next call starts at once; it waits for new records in its poll.
                    tracker.defer_remainder()
                    return
        finally:
            LOCAL_PROGRESS.share()  # the last records of a call count before the next tick
            # Registered on every call: a runner may ask to finalize any bundle of
            # a DoFn that declares a finalizer.
            if finalizer is not None:
                finalizer.register(lambda tp=tp, offset=next_offset: self._commit(tp, offset))

    def _commit(self, tp: _TP, offset: int) -> None:
        """Commit ``offset`` (the next one to read) once the runner made the output durable."""
        with self._commit_lock:
            if self._committed.get(tp, 0) >= offset or self._consumer is None:
                return
            self._consumer.commit(tp, offset)
            self._committed[tp] = offset


def _stamped(tp: _TP, batch: list[KafkaRecord], stamps: list[int], batch_stamp: int | None) -> Iterator[WindowedValue]:
    """A poll's records with their stamps (epoch micros), or the poll as one :class:`KafkaBatch` at ``batch_stamp``."""
    if batch_stamp is not None:
        yield WindowedValue(
            KafkaBatch(tp.topic, tp.partition, tuple(batch)), Timestamp(micros=batch_stamp), GLOBAL_WINDOWS
        )
        return
    last: int | None = None
    stamp = MIN_TIMESTAMP
    for rec, micros in zip(batch, stamps, strict=True):
        if micros != last:
            # Neighbouring records often share a stamp: reuse the (immutable)
            # Timestamp, which is costly to build.
            last = micros
            stamp = Timestamp(micros=micros)
        yield WindowedValue(rec, stamp, GLOBAL_WINDOWS)


def _batch_size_and_newest(batch: list[KafkaRecord]) -> tuple[int, int]:
    """Bytes (keys and values) and the newest record time (ms) of a poll's records."""
    size = 0
    newest = -1
    for rec in batch:
        if rec.timestamp > newest:
            newest = rec.timestamp
        if rec.value:
            size += len(rec.value)
        if rec.key:
            size += len(rec.key)
    return size, newest


class _ReadPartitionFn(_PartitionReader):
    """The read without offset commits: where a pipeline resumes is its own business."""

    def process(
        self,
        element: _Partition,
        tracker: Any = _TRACKER_PARAM,
        watermark: Any = _WATERMARK_PARAM,
    ) -> Iterator[WindowedValue]:
        return self._read(element, tracker, watermark, None)


class _CommittingReadPartitionFn(_PartitionReader):
    """The read with offset commits after bundle finalization (output durable)."""

    def process(
        self,
        element: _Partition,
        # The finalizer goes first: Beam passes it by position, the tracker
        # and the watermark estimator by keyword.
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = _TRACKER_PARAM,
        watermark: Any = _WATERMARK_PARAM,
    ) -> Iterator[WindowedValue]:
        return self._read(element, tracker, watermark, finalizer)


def _no_commit() -> None:
    """Finalization callback for a bundle that read nothing."""


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics as :class:`KafkaRecord` elements, timestamped with record time or event time.

    ``connection``: a :class:`KafkaConnection` (brokers, client, settings), or
    only the brokers (``"host:9092"``) for kafka-python without settings.

    ``start``: a :class:`StartAt`, or its position alone: ``"earliest"``,
    ``"latest"``, ``"committed"`` (the group in ``consumer_config``:
    ``group_id`` for kafka-python, ``group.id`` for confluent), an aware
    ``datetime``, or ``{(topic, partition): offset}``.

    ``stop``: ``None`` reads forever and picks up partitions added later;
    otherwise a :class:`StopAt` or its position alone: ``"end"`` stops at the
    end offsets seen when the read starts (backfill), an aware ``datetime``
    before the first record at or after it, ``{(topic, partition): offset}``
    before that offset (unlisted partitions stop at their end offsets).

    ``consumer_config`` holds this read's consumer settings, in the client's
    names or Kafka's (see :class:`KafkaConnection`). ``commit_offsets``
    commits, for its group, the next offset to read once a bundle's output is
    durable. ``timing`` (:class:`ReadTiming`) holds the watermark skew, the
    pacing of unbounded reads and the bounded wait for the broker that
    ``validate`` uses to check the broker and topics when the pipeline is built.

    On Prism 2.77 run an unbounded read with
    ``--experiments=prism_disable_sdf_split`` (Beamline's runner adds it): a
    Prism split of the stateful partition-discovery step can run its key in two
    bundles at once and emit a partition twice, so it is read twice.

    ``batched=True`` emits :class:`KafkaBatch` elements, one per poll of a
    partition, instead of one :class:`KafkaRecord` per record: for a step that
    loops over records itself (a backfill), at a fraction of the per-record cost.

    ``readers``: the worker processes a bounded read runs on (the
    FnApiRunner's ``direct_num_workers``). Above 1, the offsets are cut into
    that many shares of equal work, each dealt to one worker (see
    ``_equal_shares``), unless the read commits offsets.

    ``event_time``: a function of a record's value giving its event time
    (epoch microseconds), or None for a record without one. Given, the read
    keeps time by it instead of by record time (CreateTime or
    LogAppendTime, which say when a record was written, not when its event
    happened): each partition's watermark follows the newest event time read
    there, never past the wall clock, less ``timing.allowed_skew_s``, and
    each record is stamped with its event time kept within the watermark's
    step over the poll that read it (see :func:`event_time_step`). Records
    older than that are late; records without an event time never move it.
    An idle partition follows the wall clock either way.

    ``gc_threshold`` is the young-generation threshold of CPython's garbage
    collector that the read sets in its worker process, unless the process
    already runs with a threshold of its own (see
    :mod:`transforms.kafka.worker_gc`); ``None`` leaves the collector alone.
    """

    def __init__(
        self,
        connection: KafkaConnection | str | Sequence[str],
        topics: str | Sequence[str],
        *,
        start: StartAt | StartPosition = "earliest",
        stop: StopAt | StopPosition | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        commit_offsets: bool = False,
        timing: ReadTiming = _DEFAULT_TIMING,
        batched: bool = False,
        readers: int = 1,
        event_time: EventTimeOf | None = None,
        gc_threshold: int | None = WORKER_GC_THRESHOLD,
        validate: bool = True,
    ) -> None:
        super().__init__()
        kafka = KafkaConnection.of(connection)
        topic_list = (topics,) if isinstance(topics, str) else tuple(topics)
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise ConfigError(f"topics must be one or more non-empty names; got {topics!r}")
        config = kafka.role_settings(consumer_config, "consumer")
        start_at = start if isinstance(start, StartAt) else StartAt(start)
        stop_at = stop if stop is None or isinstance(stop, StopAt) else StopAt(stop)
        start_value = start_at.resolved()
        stop_value = None if stop_at is None else stop_at.resolved()
        check_offset_topics(start_value, "start", topic_list)
        check_offset_topics(stop_value, "stop", topic_list)
        group_key = "group.id" if kafka.client == "confluent" else "group_id"
        if (start_value == "committed" or commit_offsets) and not {**kafka.settings_for("consumer"), **config}.get(
            group_key
        ):
            raise ConfigError(f"committed offsets need a consumer group: set consumer_config['{group_key}']")
        if not isinstance(timing, ReadTiming):
            raise ConfigError(f"timing must be a ReadTiming; got {timing!r}")
        if gc_threshold is not None and (
            isinstance(gc_threshold, bool) or not isinstance(gc_threshold, int) or gc_threshold < 1
        ):
            raise ConfigError(f"gc_threshold must be a positive whole number or None; got {gc_threshold!r}")
        if isinstance(readers, bool) or not isinstance(readers, int) or readers < 1:
            raise ConfigError(f"readers must be a positive whole number; got {readers!r}")
        if event_time is not None and not callable(event_time):
            raise ConfigError(f"event_time must be a function of a record value, or None; got {event_time!r}")
        self._spec = _ReadSpec(
            connection=kafka,
            topics=topic_list,
            start=start_value,
            start_fallback=start_at.fallback,
            stop=stop_value,
            consumer_config=config,
            commit_offsets=commit_offsets,
            timing=timing,
            batched=batched,
            gc_threshold=gc_threshold,
            readers=readers,
            event_time=event_time,
        )
        if validate:
            consumer = self._spec.new_consumer()
            try:
                check_topics(consumer, topic_list, kafka)
            finally:
                consumer.close()

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord] | beam.PCollection[KafkaBatch]:
        spec = self._spec
        read_fn = (_CommittingReadPartitionFn if spec.commit_offsets else _ReadPartitionFn)(spec)
        output_type = KafkaBatch if spec.batched else KafkaRecord
        if spec.bounded:
            return (
                pbegin
                | "Impulse" >> beam.Impulse()
                | "DiscoverPartitions" >> beam.ParDo(_DiscoverPartitionsFn(spec))
                | "SpreadPartitions" >> beam.Reshuffle()
                | "ReadPartitions" >> beam.ParDo(read_fn).with_output_types(output_type)
            )
        # The first listing comes from an Impulse, whose element has the minimum
        # timestamp: it holds the watermark from the very start until each
        # partition's own estimator takes over, so history already in the log is
        # not late. Later ticks only add partitions (records in a partition added
        # while running that are older than the watermark are late, as in any
        # Kafka source). No shuffle between here and the read: it would not keep
        # that hold.
        first = pbegin | "FirstListing" >> beam.Impulse()
        ticks = pbegin | "DiscoveryTicks" >> PeriodicImpulse(
            start_timestamp=Timestamp.now() + Duration.of(spec.timing.discovery_interval_s),
            fire_interval=spec.timing.discovery_interval_s,
        )
        return (
            (first, ticks)
            | "Listings" >> beam.Flatten()
            | "ListPartitions" >> beam.ParDo(_ListTopicPartitionsFn(spec))
            | "NewPartitionsOnly" >> beam.ParDo(_NewPartitionsOnlyFn(spec))
            | "ReadPartitions" >> beam.ParDo(read_fn).with_output_types(output_type)
        )

    def default_label(self) -> str:
        return f"ReadFromKafka({','.join(self._spec.topics)})"

    def display_data(self) -> dict[str, Any]:
        """What runners show of the read; settings with ``***`` for secrets."""
        spec = self._spec
        return {
            "bootstrap_servers": spec.connection.bootstrap_servers,
            "client": spec.connection.client,
            "topics": ",".join(spec.topics),
            "start": f"{spec.start} (fallback {spec.start_fallback})",
            "stop": str(spec.stop),
            "settings": repr(spec.connection.settings),
            "consumer_config": repr(spec.consumer_config),
        }
