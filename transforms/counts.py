"""Sales per event-time tumbling window, and word counts over text lines.

Windowed sales. :class:`SalesByWindow` takes the sales the inventory step
*applied* (already deduped) and counts units per (store_id, item_id, window).
It is one stateful DoFn per (store_id, item_id) rather than ``WindowInto`` plus a
trigger, because the contract needs something a GroupByKey cannot give: a sale
later than the allowed lateness must be *reported*, and a GroupByKey drops it
silently. A Python DoFn cannot read the watermark, but its event-time timers
prove where it is: the timer that fires at a window's end emits the on-time pane;
the one at ``window end + allowed lateness`` closes the window and records that
every window ending at or before that point is closed for the key. A sale for a
closed window is a dead letter ("applied to inventory but too late for its
window") and bumps a metric; it never reopens the window. Because the check and
the panes come from the same state, a row is never contradicted by a report.

Firings, per (store_id, item_id, window), accumulating:
- ``early``: a processing-time timer ``early_delay`` after new data (streaming);
- ``on_time``: when the watermark passes the window end (always emitted);
- ``late``: at once for each sale arriving within the allowed lateness.

Each row carries ``pane`` (0, 1, 2, ... per firing of that window in this run)
and ``sales`` (distinct sales counted so far). The sink should keep the row with
the largest ``(sales, pane)``: ``sales`` also orders rows across runs, since a
batch backfill counts a superset of what streaming counted.

In ``mode="batch"`` no window closes and nothing fires early: the rows equal a
plain recompute whatever the event-time order.

Word count. :class:`CountWords` decodes text lines (invalid UTF-8 or a null value
is a dead letter), splits them into lower-cased runs of Unicode word characters,
and keeps a running total per word.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from core import topics
from core.errors import ConfigError
from core.views import SALES_BY_WINDOW
from transforms.events import MAX_MICROS, NO_TIME, DeadLetter, Sale, duration_micros, event_payload, micros_to_datetime
from transforms.kafka import KafkaRecord
from transforms.params import KEY_PARAM, TIMESTAMP_PARAM

__all__ = [
    "COUNT_STATE",
    "DEAD_LETTERS_TAG",
    "DEFAULT_ALLOWED_LATENESS",
    "DEFAULT_EARLY_DELAY",
    "DEFAULT_WINDOW_SIZE",
    "EARLY_TIMER",
    "FINAL_COUNT_TIMER",
    "LONGEST_WINDOW",
    "SALES_KEY_STATE",
    "SALES_WINDOWS_TAG",
    "WINDOW_TIMER",
    "WORD_COUNTS_TAG",
    "CountWords",
    "EarlySalesWindowDoFn",
    "Mode",
    "SalesByWindow",
    "SalesKeyState",
    "SalesWindowDoFn",
    "WindowState",
    "WordCountDoFn",
    "split_line",
    "tokenize",
    "window_row",
    "windows_table",
    "word_count_to_kafka",
]

Mode = Literal["streaming", "batch"]

SALES_WINDOWS_TAG = "sales_by_window"
WORD_COUNTS_TAG = "word_counts"
DEAD_LETTERS_TAG = "dead_letters"

DEFAULT_WINDOW_SIZE = timedelta(hours=1)
# A longer window holds every representable time; the bound keeps window ends within int64 micros.
LONGEST_WINDOW = datetime.max - datetime.min
DEFAULT_ALLOWED_LATENESS = timedelta(hours=1)
DEFAULT_EARLY_DELAY = timedelta(seconds=10)

# The key's open windows, closed-until frontier and timer bookkeeping
# (SalesKeyState): one cell, so a bundle reads one state per key (on a portable
# runner every state read is a round trip).
SALES_KEY_STATE = ReadModifyWriteStateSpec("sales_key", PickleCoder())
# Event time: on-time panes at window end; closing at end + allowed lateness.
WINDOW_TIMER = TimerSpec("window", beam.TimeDomain.WATERMARK)
# Processing time: early panes.
EARLY_TIMER = TimerSpec("early", beam.TimeDomain.REAL_TIME)
# Running total of one word.
COUNT_STATE = ReadModifyWriteStateSpec("count", PickleCoder())
# Batch word count: emit each word's total once, when the input has ended.
FINAL_COUNT_TIMER = TimerSpec("final_count", beam.TimeDomain.WATERMARK)

_SALES_KEY = beam.DoFn.StateParam(SALES_KEY_STATE)
_WINDOW_T = beam.DoFn.TimerParam(WINDOW_TIMER)
_EARLY_T = beam.DoFn.TimerParam(EARLY_TIMER)
_COUNT = beam.DoFn.StateParam(COUNT_STATE)
_FINAL_COUNT_T = beam.DoFn.TimerParam(FINAL_COUNT_TIMER)

_NEVER = 2**63 - 1
# Portable runners (Prism, Flink) keep timer times in milliseconds, so every
# deadline is a whole millisecond: a window's last instant is end - 1 ms.
_MS = 1_000


@dataclass
class WindowState:
    """One open window of a key: its sums and which panes it has had."""

    units: int = 0
    sales: int = 0
    pane: int = -1  # index of the last pane emitted
    on_time_fired: bool = False
    dirty: bool = False  # counted sales not yet in an emitted pane


@dataclass
class SalesKeyState:
    closed_until: int = NO_TIME  # every window ending at or before this is closed
    timer_at: int | None = None
    early_pending: bool = False
    # window_start micros -> WindowState, for the key's windows that are still open.
    windows: dict[int, WindowState] = field(default_factory=dict)


class SalesWindowDoFn(beam.DoFn):
    """((store_id, item_id), Sale) -> sales_by_window rows; too-late sales -> dead letters.

    ``clock`` is the processing-time source for early firings (seconds since the
    epoch, like ``time.time``); a test passes the clock its TestStream drives.
    """

    def __init__(
        self,
        mode: Mode = "streaming",
        window_size: timedelta = DEFAULT_WINDOW_SIZE,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        early_delay: timedelta | None = DEFAULT_EARLY_DELAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mode not in ("streaming", "batch"):
            raise ConfigError(f"mode must be 'streaming' or 'batch', not {mode!r}")
        if window_size <= timedelta(0) or allowed_lateness < timedelta(0):
            raise ConfigError("window_size must be positive and allowed_lateness not negative")
        if window_size % timedelta(milliseconds=1) or allowed_lateness % timedelta(milliseconds=1):
            raise ConfigError("window_size and allowed_lateness must be whole milliseconds")
        self._batch = mode == "batch"
        self._size = duration_micros(window_size)
        self._lateness = duration_micros(allowed_lateness)
        self._early = None if self._batch or early_delay is None else early_delay.total_seconds()
        self._clock = clock

    def process(
        self,
        element: tuple[tuple[str, str], Sale],
        key_state: Any = _SALES_KEY,
        window_timer: Any = _WINDOW_T,
    ) -> Iterator[Any]:
        return self.add(element, key_state, window_timer, None)

    def add(
        self,
        element: tuple[tuple[str, str], Sale],
        key_state: Any,
        window_timer: Any,
        early_timer: Any,
    ) -> Iterator[Any]:
        key, sale = element
        st: SalesKeyState = key_state.read() or SalesKeyState()
        start = sale.event_time - sale.event_time % self._size
        end = start + self._size
        if end <= st.closed_until:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, self._too_late_letter(sale, start, end))
            return
        w = st.windows.setdefault(start, WindowState())
        w.units += sale.quantity
        w.sales += 1
        w.dirty = True
        if w.on_time_fired:
            yield from self._flush(key, start, w, "late")
        elif early_timer is not None and self._early is not None and not st.early_pending:
            early_timer.set(Timestamp(self._clock() + self._early))
            st.early_pending = True
        due = self.next_deadline(start, w)
        if st.timer_at is None or due < st.timer_at:
            window_timer.set(Timestamp(micros=due))
            st.timer_at = due
        key_state.write(st)

    @on_timer(WINDOW_TIMER)
    def on_watermark(
        self,
        key: tuple[str, str] = KEY_PARAM,
        fired: Timestamp = TIMESTAMP_PARAM,
        key_state: Any = _SALES_KEY,
        window_timer: Any = _WINDOW_T,
    ) -> Iterator[dict[str, Any]]:
        st: SalesKeyState = key_state.read() or SalesKeyState()
        windows = st.windows
        now = fired.micros  # the watermark is at least here
        for start in sorted(windows):
            w = windows[start]
            end = start + self._size
            if not w.on_time_fired and end - _MS <= now:
                w.on_time_fired = True
                yield from self._flush(key, start, w, "on_time")
            if not self._batch and end - _MS + self._lateness <= now:
                if w.dirty:  # cannot happen (late sales fire at once), but never lose a pane
                    yield from self._flush(key, start, w, "late")
                del windows[start]
        if not self._batch:
            st.closed_until = max(st.closed_until, now + _MS - self._lateness)
        pending = [self.next_deadline(s, w) for s, w in windows.items()]
        pending = [d for d in pending if d != _NEVER]
        st.timer_at = min(pending) if pending else None
        if st.timer_at is not None:
            window_timer.set(Timestamp(micros=st.timer_at))
        key_state.write(st)

    def closes_by(self, st: SalesKeyState, upto: int) -> bool:
        """Whether a watermark at ``upto`` ends the allowed lateness of one of the key's windows (streaming)."""
        return not self._batch and any(start + self._size - _MS + self._lateness <= upto for start in st.windows)

    def next_deadline(self, start: int, w: WindowState) -> int:
        """When this window next needs the watermark timer (max timestamp rule)."""
        end = start + self._size
        if not w.on_time_fired:
            return end - _MS
        if self._batch:
            return _NEVER
        return end - _MS + self._lateness

    def _flush(self, key: tuple[str, str], start: int, w: WindowState, timing: str) -> Iterator[dict[str, Any]]:
        """Emit the window's next pane; the one place rows are built."""
        w.pane += 1
        w.dirty = False
        yield window_row(key, start, self._size, w.units, w.sales, w.pane, timing)

    def _too_late_letter(self, sale: Sale, start: int, end: int) -> DeadLetter:
        error = (
            "applied to inventory but too late for its window "
            f"[{micros_to_datetime(start).isoformat()}, {micros_to_datetime(end).isoformat()}): "
            f"it arrived after the allowed lateness ({timedelta(microseconds=self._lateness)}) "
            "had passed, so the window was not reopened"
        )
        return DeadLetter(sale.source_topic or topics.SALES, sale.partition, sale.offset, error, event_payload(sale))


class EarlySalesWindowDoFn(SalesWindowDoFn):
    """SalesWindowDoFn plus early panes on a processing-time timer (streaming only).

    A separate class because a DoFn that merely declares a processing-time timer
    cannot run on the batch runner (the FnApiRunner stalls on it).
    """

    def process(
        self,
        element: tuple[tuple[str, str], Sale],
        key_state: Any = _SALES_KEY,
        window_timer: Any = _WINDOW_T,
        early_timer: Any = _EARLY_T,
    ) -> Iterator[Any]:
        return self.add(element, key_state, window_timer, early_timer)

    @on_timer(EARLY_TIMER)
    def on_early(
        self,
        key: tuple[str, str] = KEY_PARAM,
        key_state: Any = _SALES_KEY,
    ) -> Iterator[dict[str, Any]]:
        st: SalesKeyState = key_state.read() or SalesKeyState()
        for start in sorted(st.windows):
            w = st.windows[start]
            if w.dirty and not w.on_time_fired:
                yield from self._flush(key, start, w, "early")
        st.early_pending = False
        key_state.write(st)


class CountTooLate(beam.DoFn):
    """Counts too-late sales in a stateless step, where every runner reports metrics."""

    def __init__(self) -> None:
        self._too_late = Metrics.counter("beamline", "sales_too_late_for_window")

    def process(self, dead: DeadLetter) -> Iterator[DeadLetter]:
        self._too_late.inc()
        yield dead


class SalesByWindow(beam.PTransform):
    """Applied sales -> sales_by_window rows (main) and too-late dead letters.

    Feed it the ``applied`` output of ComputeInventory (shipments in it are
    ignored), so that duplicates are never counted and a too-late sale still
    counts in inventory. ``rows, dead = applied | SalesByWindow()``.
    Row: window_start, window_end (aware UTC datetimes), store_id, item_id, units,
    sales, pane, timing ('early' | 'on_time' | 'late').
    """

    def __init__(
        self,
        mode: Mode = "streaming",
        window_size: timedelta = DEFAULT_WINDOW_SIZE,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        early_delay: timedelta | None = DEFAULT_EARLY_DELAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        early = mode == "streaming" and early_delay is not None
        fn_class = EarlySalesWindowDoFn if early else SalesWindowDoFn
        self._fn = fn_class(mode, window_size, allowed_lateness, early_delay, clock)
        self._batch = mode == "batch"
        self._size = duration_micros(window_size)

    def expand(self, events: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        if self._batch and events.is_bounded:
            return self._expand_batch(events)
        keyed = events | "KeySales" >> beam.FlatMap(_key_sale).with_output_types(tuple[tuple[str, str], Any])
        rows, too_late = keyed | "CountWindows" >> beam.ParDo(self._fn).with_outputs(
            DEAD_LETTERS_TAG, main=SALES_WINDOWS_TAG
        )
        return rows, too_late | "CountTooLate" >> beam.ParDo(CountTooLate())

    def _expand_batch(self, events: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        """Batch: nothing is late, so a window is a plain sum per (window, store, item)."""
        rows = (
            events
            | "KeySaleWindows" >> beam.FlatMap(_window_units, self._size)
            | "SumWindows" >> beam.CombinePerKey(beam.combiners.TupleCombineFn(sum, sum))
            | "WindowRows" >> beam.Map(_batch_window_row, self._size)
        )
        nothing_late = events.pipeline | "NoSaleIsLateInBatch" >> beam.Create([])
        return rows, nothing_late


def _window_units(event: Any, size: int) -> Iterable[tuple[tuple[int, str, str], tuple[int, int]]]:
    if isinstance(event, Sale):
        start = event.event_time - event.event_time % size
        yield (start, event.store_id, event.item_id), (event.quantity, 1)


def window_row(
    key: tuple[str, str], start: int, size: int, units: int, sales: int, pane: int = 0, timing: str = "on_time"
) -> dict[str, Any]:
    """A ``sales_by_window`` row (plus the sink's ``sales``, ``pane``, ``timing``); the one place it is built."""
    return {
        "window_start": micros_to_datetime(start),
        "window_end": micros_to_datetime(start + size),
        "store_id": key[0],
        "item_id": key[1],
        "units": units,
        "sales": sales,
        "pane": pane,
        "timing": timing,
    }


def windows_table(
    keys: Sequence[tuple[str, str]],
    codes: np.ndarray,
    starts: np.ndarray,
    units: np.ndarray,
    sales: np.ndarray,
    size: int,
) -> pa.Table:
    """``sales_by_window`` rows as an Arrow table, column by column: row ``i`` is key ``keys[codes[i]]``.

    The same rows as :func:`window_row`, for a backfill's hundreds of thousands
    of windows: no dict and no datetimes per row. ``starts`` are epoch micros;
    ``units`` may be Python ints (an object array), which fail here as they
    would in :func:`window_row`'s sink if past int64.
    """
    schema = SALES_BY_WINDOW.storage_schema
    indices = pa.array(codes, pa.int32())

    def times(micros: np.ndarray) -> pa.Array:
        return pa.array(micros, schema.field("window_start").type)

    return pa.table(
        [
            times(starts),
            times(np.minimum(starts + size, MAX_MICROS)),
            pa.array([key[0] for key in keys], pa.string()).take(indices),
            pa.array([key[1] for key in keys], pa.string()).take(indices),
            pa.array(units, pa.int64()),
            pa.array(sales, pa.int64()),
        ],
        schema=schema,
    )


def _batch_window_row(summed: tuple[tuple[int, str, str], tuple[int, int]], size: int) -> dict[str, Any]:
    (start, store_id, item_id), (units, sales) = summed
    return window_row((store_id, item_id), start, size, units, sales)


def _key_sale(event: Any) -> Iterable[tuple[tuple[str, str], Sale]]:
    if isinstance(event, Sale):
        yield (event.key, event)


_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of Unicode word characters, in order of appearance.

    Runs are found first and lower-cased after, so a letter whose lower case
    is not itself a word character (``İ`` -> ``i`` + a combining dot) stays in
    its word.
    """
    return [run.lower() for run in _WORD.findall(text)]


def split_line(record: KafkaRecord) -> Iterator[Any]:
    """A text line's (word, count) pairs, or a dead letter for a line that is not UTF-8 text."""
    if record.value is None:
        error = "null value (tombstone): expected a UTF-8 text line"
    else:
        try:
            text = record.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = f"invalid UTF-8 at byte {exc.start}"
        else:
            yield from Counter(tokenize(text)).items()
            return
    letter = DeadLetter(record.topic, record.partition, record.offset, error, record.value or b"")
    yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, letter)


class WordCountDoFn(beam.DoFn):
    """(word, n) -> running total rows; per change in streaming, once in batch."""

    def __init__(self, mode: Mode = "streaming") -> None:
        if mode not in ("streaming", "batch"):
            raise ConfigError(f"mode must be 'streaming' or 'batch', not {mode!r}")
        self._batch = mode == "batch"

    def process(
        self,
        element: tuple[str, int],
        count_state: Any = _COUNT,
        final: Any = _FINAL_COUNT_T,
    ) -> Iterator[dict[str, Any]]:
        word, n = element
        old = count_state.read()
        total = (old or 0) + n
        count_state.write(total)
        if self._batch:
            if old is None:
                final.set(GlobalWindow().max_timestamp())
        else:
            yield from self._flush(word, total)

    @on_timer(FINAL_COUNT_TIMER)
    def _final(self, word: str = KEY_PARAM, count_state: Any = _COUNT) -> Iterator[dict[str, Any]]:
        total = count_state.read()
        if total:
            yield from self._flush(word, total)

    @staticmethod
    def _flush(word: str, total: int) -> Iterator[dict[str, Any]]:
        yield {"word": word, "count": total}


class CountWords(beam.PTransform):
    """Text-line KafkaRecords -> word_counts rows (main) and dead letters.

    ``rows, dead = records | CountWords(mode="streaming")``; row: word, count
    (running total). Use :func:`word_count_to_kafka` for the word-counts topic.
    """

    def __init__(self, mode: Mode = "streaming") -> None:
        super().__init__()
        self._fn = WordCountDoFn(mode)

    def expand(self, records: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        split = records | "SplitLines" >> beam.FlatMap(split_line).with_outputs(DEAD_LETTERS_TAG, main="words")
        words = split.words | "TypedWords" >> beam.Map(lambda kv: kv).with_output_types(tuple[str, int])
        if self._fn._batch and records.is_bounded:
            # A backfill sees every line: a combiner sums partial counts before the shuffle.
            totals = words | "SumPerWord" >> beam.CombinePerKey(sum)
            rows = totals | "WordRows" >> beam.MapTuple(lambda word, total: {"word": word, "count": total})
        else:
            rows = words | "RunningTotal" >> beam.ParDo(self._fn)
        return rows, split[DEAD_LETTERS_TAG]


def word_count_to_kafka(row: dict[str, Any]) -> tuple[bytes, bytes]:
    """A (key, value) pair for the word-counts topic: key = word, value = JSON row.

    The key is the word so a compacted topic keeps the latest total per word.
    """
    word = row["word"]
    return word.encode("utf-8"), json.dumps({"word": word, "count": row["count"]}, ensure_ascii=False).encode("utf-8")
