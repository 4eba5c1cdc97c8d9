"""Batch backfill of the retail views: the plain recompute of the log, as two combines.

A backfill has the whole log, so nothing is late and nothing expires: the views
are exactly "drop invalid records, keep each event_id once per topic, sum". The
streaming DoFns would pay a state read and write per event, and grouping the
raw events would push every event through a shuffle. Instead:

1. the read hands over whole polls (``ReadFromKafka(batched=True)``), and each
   record is decoded straight into columns (an invalid one becomes a dead
   letter), one set per (kind, bucket of its event_id): one element per poll
   and bucket, not per event, crosses Beam's machinery;
2. a CombinePerKey joins each bucket's columns. Beam runs the combine on each
   worker before the shuffle, so a worker ships one set of columns per bucket,
   which pickles as a few arrays and a list of ids;
3. each bucket keeps per event_id the occurrence first in the log (lowest
   partition, then offset), as the recompute does, and sums the survivors per
   (store_id, item_id) (totals, events, last event time) and, for sales, per
   (store_id, item_id, event-time window), with numpy over the columns.
   Dedupe is per topic whatever store or item a repeated event_id names;
4. a second CombinePerKey merges the buckets' sums per (store_id, item_id),
   and a global combine adds up the buckets' window sums into one Arrow table;
5. the ``inventory`` rows are built from the merged sums by the function the
   streaming path uses; the ``sales_by_window`` table has the rows
   ``window_row`` builds (``windows_table``, held equal to it by a test).

Sums stay in int64 only where no sum can pass it; otherwise they are Python
ints, which fail at the sink as the streaming path's do.

Buckets (a CRC of the event_id, stable across processes) let the dedupe run on
several workers at once; their count barely matters on one machine.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from core.errors import ConfigError
from transforms.coders import EstimatedPickleCoder
from transforms.counts import DEFAULT_WINDOW_SIZE, LONGEST_WINDOW, windows_table
from transforms.events import DEAD_LETTERS_TAG, NO_TIME, DeadLetter, EventKind, decode_fields
from transforms.inventory import inventory_row
from transforms.kafka import KafkaBatch, KafkaRecord

__all__ = ["BUCKETS", "BackfillResult", "BackfillRetail"]

BUCKETS = 16
_WINDOWS_TAG = "windows"


# Sizes for Beam's byte counters, in pickled bytes per item measured on
# generated retail events: ~80 per decoded event.
def _events_size(events: _Events) -> int:
    return 64 + 80 * len(events.ids)


class _Events(NamedTuple):
    """Decoded events of one (kind, bucket), column by column.

    Columns because a bucket crosses the shuffle whole: as a dict of one tuple
    per event it took about 1 us an event to pickle and as much to unpickle;
    arrays pickle as their bytes, and the ids as one string. The FnApiRunner
    also copies every shuffled byte through its runner process, on one
    thread, while the workers wait.
    """

    ids: list[str]
    partitions: array[int]
    offsets: array[int]
    store_ids: list[str]
    item_ids: list[str]
    quantities: array[int]
    event_times: array[int]  # epoch micros

    @classmethod
    def empty(cls) -> _Events:
        return cls([], array("i"), array("q"), [], [], array("q"), array("q"))

    def extend(self, other: _Events) -> None:
        columns: tuple[Any, ...] = tuple(self)
        for mine, theirs in zip(columns, other, strict=True):
            mine.extend(theirs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The ids as one string when none holds a NUL (any id may, so check):
        # pickling a list of a million strings costs 3x more than the other columns.
        joined = "\0".join(self.ids)
        if self.ids and joined.count("\0") == len(self.ids) - 1:
            return _joined_events, (joined, *self[1:])
        return _Events, tuple(self)


def _joined_events(ids: str, *columns: Any) -> _Events:
    return _Events(ids.split("\0"), *columns)


# Sums of one (store_id, item_id): [shipped, sold, events, last event time]
_Sums = list[Any]


class _DecodeColumns(beam.DoFn):
    """Records -> ((kind, bucket), :class:`_Events`), or dead letters.

    Takes a :class:`KafkaBatch` (the backfill reads batched) or a single
    :class:`KafkaRecord`, of one kind or of several (``kinds``: topic -> kind).
    Each bucket's part of an element leaves as one element, which the
    lifted ``_GatherEvents`` joins to the others before the shuffle.
    """

    def __init__(self, kinds: EventKind | Mapping[str, EventKind], buckets: int) -> None:
        self._kinds = kinds
        self._buckets = buckets
        kind_names = {kinds} if isinstance(kinds, str) else set(kinds.values())
        self._dead_counters = {kind: Metrics.counter("beamline", f"{kind}_dead_letters") for kind in kind_names}
        self._names: dict[str, str] = {}

    def setup(self) -> None:
        # One string object per store and item name, however many events repeat
        # it: the columns hold every event until the shuffle, and a repeated
        # object pickles as a reference.
        self._names = {}

    def process(self, element: KafkaBatch | KafkaRecord) -> Iterator[Any]:
        records = element.records if isinstance(element, KafkaBatch) else (element,)
        names = self._names
        buckets = self._buckets
        kinds = self._kinds
        kind = kinds if isinstance(kinds, str) else kinds[element.topic]
        parts: dict[int, _Events] = {}
        dead = 0
        for record in records:
            fields = decode_fields(record.value)
            if isinstance(fields, str):
                dead += 1
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTERS_TAG,
                    DeadLetter(record.topic, record.partition, record.offset, fields, record.value or b""),
                )
                continue
            event_id, store_id, item_id, quantity, event_time = fields
            bucket = zlib.crc32(event_id.encode("utf-8")) % buckets
            part = parts.get(bucket)
            if part is None:
                part = parts[bucket] = _Events.empty()
            part.ids.append(event_id)
            part.partitions.append(record.partition)
            part.offsets.append(record.offset)
            part.store_ids.append(names.setdefault(store_id, store_id))
            part.item_ids.append(names.setdefault(item_id, item_id))
            part.quantities.append(quantity)
            part.event_times.append(event_time)
        if dead:
            self._dead_counters[kind].inc(dead)
        for bucket, part in parts.items():
            yield (kind, bucket), part


class _GatherEvents(beam.CombineFn):
    """Joins the decoded parts of one bucket; input and accumulator alike are :class:`_Events`."""

    def create_accumulator(self) -> _Events:
        return _Events.empty()

    def add_input(self, acc: _Events, part: _Events) -> _Events:
        if not acc.ids:
            return part  # the first part of a bucket becomes its accumulator (parts are never reused)
        acc.extend(part)
        return acc

    def merge_accumulators(self, accumulators: Iterable[_Events]) -> _Events:
        accs = sorted(accumulators, key=lambda a: len(a.ids), reverse=True)
        merged = accs[0]
        for other in accs[1:]:
            merged.extend(other)
        return merged

    def extract_output(self, acc: _Events) -> _Events:
        return acc

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return EstimatedPickleCoder(_events_size)


def _first_in_log(events: _Events) -> Iterable[int]:
    """Rows of ``events`` to keep: per event_id, the occurrence first in the log (lowest partition, then offset)."""
    index: dict[str, int] = {}
    keep = index.setdefault
    partitions, offsets = events.partitions, events.offsets
    for row, event_id in enumerate(events.ids):
        kept = keep(event_id, row)
        # Most ids occur once; a repeat replaces the kept row only if it is earlier in the log.
        if kept != row and (partitions[row], offsets[row]) < (partitions[kept], offsets[kept]):
            index[event_id] = row
    return index.values()


_INT64_LIMIT = 2**63


def _sum_dtype(values: np.ndarray, count: int) -> np.dtype:
    """int64 if any ``count`` of ``values`` add up within int64, else Python ints (object)."""
    if values.dtype == object or not len(values):
        return values.dtype
    largest = max(-int(values.min()), int(values.max()))
    return values.dtype if largest * count < _INT64_LIMIT else np.dtype(object)


class _WindowSums(NamedTuple):
    """Sales per (key, window start): row ``i`` is key ``keys[codes[i]]``, its window and sums.

    Columns, not a dict per key: a backfill has hundreds of thousands of
    windows, which as small Python objects cost more to build, pickle and
    merge than the events they came from. ``units`` is int64, or object
    (Python ints) where a sum could pass int64.
    """

    keys: list[tuple[str, str]]
    codes: np.ndarray  # int32
    starts: np.ndarray  # int64, epoch micros
    units: np.ndarray
    sales: np.ndarray  # int64

    def grouped(self) -> _WindowSums:
        """One row per (key, window), in window then key code order."""
        codes, starts = self.codes, self.starts
        order = np.lexsort((codes, starts))
        codes, starts = codes[order], starts[order]
        first = np.empty(len(codes), dtype=bool)
        first[:1] = True
        np.not_equal(codes[1:], codes[:-1], out=first[1:])
        first[1:] |= starts[1:] != starts[:-1]
        heads = np.flatnonzero(first)
        units = self.units[order]
        units = units.astype(_sum_dtype(units, len(units)), copy=False)
        sales = self.sales[order]
        return _WindowSums(
            self.keys, codes[heads], starts[heads], np.add.reduceat(units, heads), np.add.reduceat(sales, heads)
        )


def _joined_windows(parts: list[_WindowSums]) -> _WindowSums:
    """Several parts' rows in one part (rows of one (key, window) not yet added), keys coded in sorted order.

    Sorted codes make :meth:`_WindowSums.grouped` give rows in the view's key
    order (window, store_id, item_id), which the sink then need not sort.
    """
    if not parts:
        return _WindowSums([], *(np.empty(0, dtype) for dtype in (np.int32, np.int64, np.int64, np.int64)))
    keys = sorted({key for part in parts for key in part.keys})
    code_of = {key: code for code, key in enumerate(keys)}
    recoded = [np.array([code_of[key] for key in part.keys], dtype=np.int32)[part.codes] for part in parts]
    return _WindowSums(
        keys,
        np.concatenate(recoded),
        np.concatenate([part.starts for part in parts]),
        np.concatenate([part.units for part in parts]),
        np.concatenate([part.sales for part in parts]),
    )


class _SumBucket(beam.DoFn):
    """One bucket's events -> partial sums per (store_id, item_id), and per window for sales; each event_id once."""

    def __init__(self, window_size: int) -> None:
        self._size = window_size
        self._applied = Metrics.counter("beamline", "inventory_events_applied")
        self._duplicates = Metrics.counter("beamline", "inventory_duplicates")

    def process(self, element: tuple[tuple[str, int], _Events]) -> Iterator[Any]:
        (kind, _bucket), events = element
        rows = list(_first_in_log(events))
        kept = np.array(rows, dtype=np.int64)
        self._applied.inc(len(kept))
        self._duplicates.inc(len(events.ids) - len(kept))
        # Keys of kept rows only: a key named only by dropped repeats gets no code and no sums.
        code_of: dict[tuple[str, str], int] = {}
        code = code_of.setdefault
        pairs = zip(map(events.store_ids.__getitem__, rows), map(events.item_ids.__getitem__, rows), strict=True)
        codes = np.fromiter((code(key, len(code_of)) for key in pairs), np.int32, len(rows))
        quantities = np.frombuffer(events.quantities, dtype=np.int64)[kept]
        quantities = quantities.astype(_sum_dtype(quantities, len(quantities)), copy=False)
        times = np.frombuffer(events.event_times, dtype=np.int64)[kept]
        keys = len(code_of)
        totals = np.zeros(keys, dtype=quantities.dtype)
        np.add.at(totals, codes, quantities)
        latest = np.full(keys, NO_TIME, dtype=np.int64)
        np.maximum.at(latest, codes, times)
        counts = np.bincount(codes, minlength=keys)
        sale = kind == "sale"
        for key, total, count, last in zip(code_of, totals.tolist(), counts.tolist(), latest.tolist(), strict=True):
            yield key, [0, total, count, last] if sale else [total, 0, count, last]
        if sale:
            windows = _WindowSums(
                list(code_of), codes, times - times % self._size, quantities, np.ones(len(kept), dtype=np.int64)
            )
            yield beam.pvalue.TaggedOutput(_WINDOWS_TAG, windows.grouped())


class _MergeSums(beam.CombineFn):
    """Adds partial sums of one (store_id, item_id)."""

    def create_accumulator(self) -> _Sums:
        return [0, 0, 0, NO_TIME]

    def add_input(self, acc: _Sums, part: _Sums) -> _Sums:
        acc[0] += part[0]
        acc[1] += part[1]
        acc[2] += part[2]
        if part[3] > acc[3]:
            acc[3] = part[3]
        return acc

    def merge_accumulators(self, accumulators: Iterable[_Sums]) -> _Sums:
        merged = self.create_accumulator()
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: _Sums) -> _Sums:
        return acc


def _windows_size(parts: list[_WindowSums]) -> int:
    return 64 + sum(64 * len(part.keys) + 32 * len(part.codes) for part in parts)


class _MergeWindows(beam.CombineFn):
    """Adds the buckets' window sums into one ``sales_by_window`` table.

    Accumulators are lists of parts; each worker adds its parts up before the
    shuffle (``compact``), so one (key, window) seen in several buckets
    crosses once per worker.
    """

    def __init__(self, window_size: int) -> None:
        self._size = window_size

    def create_accumulator(self) -> list[_WindowSums]:
        return []

    def add_input(self, acc: list[_WindowSums], part: _WindowSums) -> list[_WindowSums]:
        acc.append(part)
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[_WindowSums]]) -> list[_WindowSums]:
        return [part for acc in accumulators for part in acc]

    def compact(self, acc: list[_WindowSums]) -> list[_WindowSums]:
        return [_joined_windows(acc).grouped()] if len(acc) > 1 else acc

    def extract_output(self, acc: list[_WindowSums]) -> pa.Table:
        windows = _joined_windows(acc).grouped()
        return windows_table(windows.keys, windows.codes, windows.starts, windows.units, windows.sales, self._size)

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return EstimatedPickleCoder(_windows_size)


def _inventory_row(element: tuple[tuple[str, str], _Sums]) -> dict[str, Any]:
    key, (shipped, sold, events, last_event_time) = element
    return inventory_row(key, shipped, sold, events, last_event_time)


class BackfillResult(NamedTuple):
    inventory: beam.PCollection
    windows: beam.PCollection
    dead_letters: beam.PCollection


class BackfillRetail(beam.PTransform):
    """Shipment and sale records -> inventory rows, sales_by_window tables, dead letters.

    Takes ``(shipment records, sale records)``, or one collection read from
    both topics with ``topics`` naming each topic's kind: the faster form, as
    the events then meet the dedupe on the worker that decoded them (two
    inputs first pass through a Flatten, which the FnApiRunner materializes).
    Records come as :class:`KafkaBatch` elements (fastest) or one
    :class:`KafkaRecord` each. The windows come as one Arrow table per
    (store_id, item_id), which ``WriteToWarehouse`` takes as it takes rows.

    The batch equivalent of DecodeEvents + ComputeInventory + SalesByWindow,
    with the same rows; bounded input only (a backfill).
    """

    def __init__(
        self,
        window_size: timedelta = DEFAULT_WINDOW_SIZE,
        buckets: int = BUCKETS,
        *,
        topics: Mapping[str, EventKind] | None = None,
    ) -> None:
        super().__init__()
        if not timedelta(0) < window_size <= LONGEST_WINDOW:
            raise ConfigError(f"window_size must be positive and at most {LONGEST_WINDOW.days:,} days")
        if buckets < 1:
            raise ConfigError("buckets must be at least 1")
        if topics is not None and sorted(set(topics.values())) != ["sale", "shipment"]:
            raise ConfigError(f"topics must name a shipment topic and a sale topic, got {dict(topics)}")
        self._size = window_size // timedelta(microseconds=1)
        self._buckets = buckets
        self._topics = dict(topics) if topics is not None else None

    def expand(self, records: beam.PCollection | tuple[beam.PCollection, beam.PCollection]) -> BackfillResult:
        if isinstance(records, beam.PCollection):
            if self._topics is None:
                raise ConfigError("one input collection needs topics={topic: kind} to tell shipments from sales")
            decoded = [
                records
                | "Decode"
                >> beam.ParDo(_DecodeColumns(self._topics, self._buckets)).with_outputs(DEAD_LETTERS_TAG, main="events")
            ]
            events = decoded[0].events
        else:
            shipments, sales = records
            by_kind: tuple[tuple[EventKind, beam.PCollection], ...] = (("shipment", shipments), ("sale", sales))
            decoded = [
                pcoll
                | f"Decode{kind.title()}s"
                >> beam.ParDo(_DecodeColumns(kind, self._buckets)).with_outputs(DEAD_LETTERS_TAG, main="events")
                for kind, pcoll in by_kind
            ]
            events = [d.events for d in decoded] | "AllEvents" >> beam.Flatten()
        sums = (
            events
            | "GatherBuckets" >> beam.CombinePerKey(_GatherEvents())
            | "SumBuckets" >> beam.ParDo(_SumBucket(self._size)).with_outputs(_WINDOWS_TAG, main="totals")
        )
        inventory = sums.totals | "MergeSums" >> beam.CombinePerKey(_MergeSums()) | "Rows" >> beam.Map(_inventory_row)
        windows = (
            sums[_WINDOWS_TAG] | "MergeWindows" >> beam.CombineGlobally(_MergeWindows(self._size)).without_defaults()
        )
        dead = (
            decoded[0][DEAD_LETTERS_TAG]
            if len(decoded) == 1
            else [d[DEAD_LETTERS_TAG] for d in decoded] | "AllDeadLetters" >> beam.Flatten()
        )
        return BackfillResult(inventory, windows, dead)
