"""The read's watermarks: one per partition, the lowest of a read's partitions reported, and event time.

Each partition (an element of the splittable read) keeps its own watermark,
moved forward by its reader only: after a poll to the newest time read less
the allowed skew, and to the wall clock less the skew when the partition is
idle. Time is record time, or event time when the read is given a function
that finds it in a record (:func:`event_time_step`).

What a partition reports to the runner is the lowest watermark of its read's
partitions known in this worker process (:class:`SharedWatermarks`). Prism
(2.77) takes a splittable step's output watermark from the residuals of the
bundle that finished last, not from all of the step's residuals: a partition
read in another bundle (one parked after an empty poll, one not read yet) held
nothing, and a partition read ahead moved the watermark past another's unread
history. A runner that tracks every residual's watermark (Flink) gets the
same lowest value it would compute itself, or a lower one for a while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from apache_beam.coders import PickleCoder
from apache_beam.io.iobase import WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.transforms.core import WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from transforms.kafka.records import _TP

__all__ = ["SHARED_WATERMARKS", "SharedWatermarks", "event_time_step"]


def event_time_step(times: Sequence[int | None], before: int, now: int, skew: int) -> tuple[int, list[int]]:
    """Where a partition's event-time watermark moves after a poll, and each record's stamp (epoch micros).

    ``times`` are the poll's event times in log order (None for a record
    without one), ``before`` the partition's watermark before the poll,
    ``now`` the wall clock, ``skew`` the out-of-orderness allowed. The
    watermark moves up to the newest event time read, never past the wall
    clock (one record dated in the year 9999 must not expire everything),
    less ``skew``; it never goes back. Each record is stamped with its event
    time kept within ``[before, after]``: a record older than the watermark
    is stamped at it (it holds nothing back), and none is stamped beyond
    where the watermark stands after the poll (on Prism a stateful step takes
    a key's elements behind its pending timers, in timestamp order, so a
    record stamped far ahead would wait for the watermark to get there).
    """
    known = [t for t in times if t is not None]
    after = before if not known else max(before, min(max(known), now) - skew)
    return after, [before if t is None else min(max(t, before), after) for t in times]


class SharedWatermarks:
    """The watermarks of each read's partitions in this worker process, so that each reports the lowest.

    A partition counts while it is read or was found lately: an entry not
    renewed for ``stale_s`` (a partition another worker process reads, say)
    stops holding the others. Readers renew theirs on every call, several
    times a second even when idle.
    """

    def __init__(self, stale_s: float = 60.0) -> None:
        self._stale_s = stale_s
        self._lock = threading.Lock()
        self._marks: dict[str, dict[_TP, tuple[Timestamp, float]]] = {}

    def note(self, read: str, tp: _TP, mark: Timestamp) -> None:
        """Record ``tp``'s watermark (its own, not the lowest) for the read named ``read``."""
        with self._lock:
            self._marks.setdefault(read, {})[tp] = (mark, time.monotonic())

    def lowest(self, read: str, own: Timestamp) -> Timestamp:
        """The lowest of ``own`` and the watermarks of the read's partitions noted lately."""
        fresh_since = time.monotonic() - self._stale_s
        with self._lock:
            marks = [mark for mark, noted in self._marks.get(read, {}).values() if noted >= fresh_since]
        return min([own, *marks])


SHARED_WATERMARKS = SharedWatermarks()


class _PartitionWatermark(WatermarkEstimator):
    """Monotonic watermark of one partition, moved only by the reader; reports its read's lowest once shared.

    Per-output observation is a no-op: once per poll is enough and cheaper.
    The estimator state is the partition's own watermark.
    """

    def __init__(self, state: Timestamp | None) -> None:
        self._watermark = state if state is not None else MIN_TIMESTAMP
        self._shared: tuple[SharedWatermarks, str, _TP] | None = None

    def share(self, shared: SharedWatermarks, read: str, tp: _TP) -> None:
        """From now on report the lowest watermark of the read's partitions; note this one's there."""
        self._shared = (shared, read, tp)
        shared.note(read, tp, self._watermark)

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        pass

    def advance_to(self, timestamp: Timestamp) -> None:
        if timestamp > self._watermark:
            self._watermark = timestamp
            if self._shared is not None:
                shared, read, tp = self._shared
                shared.note(read, tp, timestamp)

    def current_watermark(self) -> Timestamp:
        if self._shared is None:
            return self._watermark
        shared, read, _ = self._shared
        return shared.lowest(read, self._watermark)

    def get_estimator_state(self) -> Timestamp:
        return self._watermark


class _PartitionWatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element: Any, restriction: OffsetRange) -> None:
        return None

    def create_watermark_estimator(self, estimator_state: Timestamp | None) -> _PartitionWatermark:
        return _PartitionWatermark(estimator_state)

    def estimator_state_coder(self) -> Any:
        return PickleCoder()
