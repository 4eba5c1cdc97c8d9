"""Batch backfill of the retail views: the plain recompute of the log, as two combines.

A backfill has the whole log, so nothing is late and nothing expires: the views
are exactly "drop invalid records, apply each event once, sum", with the
streaming step's rules (``transforms/inventory.py``) in the log's order. The
streaming DoFns would pay a state read and write per event, and grouping the
raw events would push every event through a shuffle. Instead:

1. the read hands over whole polls (``ReadFromKafka(batched=True)``), and each
   record is decoded straight into columns (an invalid one becomes a dead
   letter), one set per (topic, bucket of its store and item): one element per
   poll and bucket, not per event, crosses Beam's machinery;
2. a CombinePerKey joins each bucket's columns. Beam runs the combine on each
   worker before the shuffle, so a worker ships one set of columns per bucket,
   which pickles as a few arrays and one string of ids;
3. each bucket holds every event of its (store_id, item_id) keys of its kind,
   so it applies the rules alone. Per identity (topic, store_id, item_id,
   event_id) the occurrence first in the log (lowest partition, then offset)
   wins: another with the same quantity and event_time is a re-send, one with
   other content a dead letter. The winners are applied in log order, and one
   that would take its key's total past int64 is a dead letter (checked event
   by event only when the bucket's quantities could add up that far). The
   survivors are summed per (store_id, item_id) (totals, events, last event
   time) and, for sales, per (store_id, item_id, event-time window), with
   numpy over the columns;
4. a second CombinePerKey merges each key's shipment and sale sums, and a
   global combine adds up the buckets' window sums into one Arrow table;
5. the ``inventory`` rows are built from the merged sums by the function the
   streaming path uses; the ``sales_by_window`` table has the rows
   ``window_row`` builds (``windows_table``, held equal to it by a test).

A dead letter carries its raw record, but which records the rules refuse is
known only once a bucket is whole, far from where it was read; payloads
through the shuffle made a 1M-event backfill a quarter slower. So the
refused records (a few, if any) are read back by offset (``refetch``, such
as ``FetchRecords``), or picked out of the input when there is no log to
read them from.

Buckets (a CRC of the store and item, stable across processes) let the rules
run on several workers at once; their count barely matters on one machine.
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
from transforms.inventory import MAX_TOTAL, conflict_error, inventory_row, overflow_error
from transforms.kafka import KafkaBatch, KafkaRecord
from transforms.seen_ids import ident_hash

__all__ = ["BUCKETS", "BackfillResult", "BackfillRetail"]

BUCKETS = 16
_WINDOWS_TAG = "windows"
_REFUSED_TAG = "refused"
_IDS_TAG = "ids"


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
    """Records -> ((topic, kind, bucket), :class:`_Events`), or dead letters.

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
        self._buckets_of: dict[tuple[str, str], int] = {}

    def setup(self) -> None:
        # One string object per store and item name, however many events repeat
        # it: the columns hold every event until the shuffle, and a repeated
        # object pickles as a reference.
        self._names = {}
        self._buckets_of = {}

    def process(self, element: KafkaBatch | KafkaRecord) -> Iterator[Any]:
        records = element.records if isinstance(element, KafkaBatch) else (element,)
        names = self._names
        buckets = self._buckets
        buckets_of = self._buckets_of
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
            key = (store_id, item_id)
            bucket = buckets_of.get(key)
            if bucket is None:
                bucket = buckets_of[key] = _bucket_of(key, buckets)
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
            yield (element.topic, kind, bucket), part


def _bucket_of(key: tuple[str, str], buckets: int) -> int:
    """The bucket of a (store_id, item_id): the same in every process and run."""
    return zlib.crc32(f"{key[0]}\0{key[1]}".encode()) % buckets


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


class _Identities(NamedTuple):
    """A bucket's rows sorted out by identity: the first occurrence in the log of each wins."""

    first: list[int]  # one row per identity, in the order its identity was met
    conflicts: list[tuple[int, int]]  # (row, its identity's first row): same identity, other content
    duplicates: int  # rows with their first's content: re-sends


def _identities(events: _Events) -> _Identities:
    """Sort ``events`` out by identity (event_id, store_id, item_id; the bucket is one topic's)."""
    index: dict[tuple[str, str, str], int] = {}
    keep = index.setdefault
    repeated: dict[tuple[str, str, str], list[int]] = {}
    partitions, offsets = events.partitions, events.offsets
    for row, ident in enumerate(zip(events.ids, events.store_ids, events.item_ids, strict=True)):
        kept = keep(ident, row)
        if kept != row:
            # Most identities occur once; a repeat replaces the kept row only if it is earlier in the log.
            rows = repeated.get(ident)
            if rows is None:
                repeated[ident] = [kept, row]
            else:
                rows.append(row)
            if (partitions[row], offsets[row]) < (partitions[kept], offsets[kept]):
                index[ident] = row
    conflicts = []
    duplicates = 0
    quantities, times = events.quantities, events.event_times
    for ident, rows in repeated.items():
        first = index[ident]
        for row in rows:
            if row == first:
                continue
            if quantities[row] == quantities[first] and times[row] == times[first]:
                duplicates += 1
            else:
                conflicts.append((row, first))
    return _Identities(list(index.values()), conflicts, duplicates)


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
    """One bucket's events -> partial sums per (store_id, item_id), and per window for sales; dead letters tagged.

    The bucket holds every event of its keys of one kind (one topic), so the
    rules need nothing from other buckets.
    """

    def __init__(self, window_size: int, remember_since: int | None = None) -> None:
        self._size = window_size
        self._remember_since = remember_since
        self._applied = Metrics.counter("beamline", "inventory_events_applied")
        self._duplicates = Metrics.counter("beamline", "inventory_duplicates")
        self._conflicts = Metrics.counter("beamline", "inventory_event_ids_reused")
        self._overflows = Metrics.counter("beamline", "inventory_overflows")

    def process(self, element: tuple[tuple[str, EventKind, int], _Events]) -> Iterator[Any]:
        (topic, kind, _bucket), events = element
        found = _identities(events)
        self._duplicates.inc(found.duplicates)
        self._conflicts.inc(len(found.conflicts))
        for row, first in found.conflicts:
            error = conflict_error(
                events.ids[row],
                (events.store_ids[row], events.item_ids[row]),
                (events.event_times[first], events.quantities[first]),
                (events.event_times[row], events.quantities[row]),
            )
            yield beam.pvalue.TaggedOutput(_REFUSED_TAG, _refused(topic, events, row, error))
        rows = found.first
        if self._remember_since is not None:
            yield beam.pvalue.TaggedOutput(_IDS_TAG, _remembered(kind, events, rows, self._remember_since))
        if _could_overflow(events.quantities, rows):
            rows, refused = _within_int64(kind, events, rows)
            self._overflows.inc(len(refused))
            for row, error in refused:
                yield beam.pvalue.TaggedOutput(_REFUSED_TAG, _refused(topic, events, row, error))
        kept = np.array(rows, dtype=np.int64)
        self._applied.inc(len(kept))
        # Keys of kept rows only: a key named only by dropped rows gets no code and no sums.
        code_of: dict[tuple[str, str], int] = {}
        code = code_of.setdefault
        pairs = zip(map(events.store_ids.__getitem__, rows), map(events.item_ids.__getitem__, rows), strict=True)
        codes = np.fromiter((code(key, len(code_of)) for key in pairs), np.int32, len(rows))
        # No key's total passes int64 now, nor any window's (a part of a key's sold).
        quantities = np.frombuffer(events.quantities, dtype=np.int64)[kept]
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


def _remembered(kind: EventKind, events: _Events, rows: list[int], since: int) -> pa.Table:
    """``_inventory_ids`` rows of the identities a streaming step would still remember: event time >= ``since``.

    Every first occurrence counts, applied or refused for overflow, as in streaming.
    """
    times = np.frombuffer(events.event_times, dtype=np.int64)
    picked = [row for row in rows if times[row] >= since]
    ids = [events.ids[row] for row in picked]
    return pa.table(
        {
            "store_id": [events.store_ids[row] for row in picked],
            "item_id": [events.item_ids[row] for row in picked],
            "kind": [kind] * len(picked),
            "event_id": ids,
            "ident_hash": pa.array([ident_hash(kind, event_id) for event_id in ids], pa.int64()),
            "event_time": pa.array(times[picked] if picked else [], pa.int64()),
            "quantity": pa.array([events.quantities[row] for row in picked], pa.int64()),
        }
    )


# A record the rules refused, before its payload is read back: ((topic, partition, offset), error).
_Refused = tuple[tuple[str, int, int], str]


def _refused(topic: str, events: _Events, row: int, error: str) -> _Refused:
    return (topic, events.partitions[row], events.offsets[row]), error


def _refused_letter(found: tuple[KafkaRecord, str]) -> DeadLetter:
    record, error = found
    return DeadLetter(record.topic, record.partition, record.offset, error, record.value or b"")


def _pick_refused(element: KafkaBatch | KafkaRecord, refused: Mapping[tuple[str, int, int], str]) -> Iterator[Any]:
    """The input's records that the rules refused, as dead letters (``refetch=None``)."""
    if not refused:
        return
    records = element.records if isinstance(element, KafkaBatch) else (element,)
    for record in records:
        error = refused.get((record.topic, record.partition, record.offset))
        if error is not None:
            yield _refused_letter((record, error))


def _could_overflow(quantities: array[int], rows: list[int]) -> bool:
    """Whether any key's total over ``rows`` could pass int64 (if not, no event need be checked)."""
    return bool(rows) and max(quantities[row] for row in rows) * len(rows) > MAX_TOTAL


def _within_int64(kind: EventKind, events: _Events, rows: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
    """``rows`` applied in log order, without those that would take their key's total past int64 (with why)."""
    column = "shipped" if kind == "shipment" else "sold"
    totals: dict[tuple[str, str], int] = {}
    kept: list[int] = []
    refused: list[tuple[int, str]] = []
    for row in sorted(rows, key=lambda r: (events.partitions[r], events.offsets[r])):
        key = (events.store_ids[row], events.item_ids[row])
        total, quantity = totals.get(key, 0), events.quantities[row]
        if total + quantity > MAX_TOTAL:
            refused.append((row, overflow_error(column, key, total, quantity)))
        else:
            totals[key] = total + quantity
            kept.append(row)
    return kept, refused


class _MergeSums(beam.CombineFn):
    """Adds partial sums of one (store_id, item_id): its shipments' and its sales'."""

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
    # With ``remember_since``: ``_inventory_ids`` tables, the identities a streaming step would remember.
    ids: beam.PCollection | None = None


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

    ``refetch`` reads back the raw bytes of the records the rules refuse
    (reused identities, totals past int64): a transform from
    ``((topic, partition, offset), error)`` to ``(KafkaRecord, error)``, such
    as ``FetchRecords(connection)``. Without one they are picked out of the
    input, which a runner then keeps until the sums are done.

    ``remember_since`` (epoch micros): also output the identities with event
    time from then on (``ids``), for a streaming run that resumes where this
    backfill ends (a catch-up, ``transforms/checkpoint.py``).
    """

    def __init__(
        self,
        window_size: timedelta = DEFAULT_WINDOW_SIZE,
        buckets: int = BUCKETS,
        *,
        topics: Mapping[str, EventKind] | None = None,
        refetch: beam.PTransform | None = None,
        remember_since: int | None = None,
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
        self._refetch = refetch
        self._remember_since = remember_since

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
            | "SumBuckets"
            >> beam.ParDo(_SumBucket(self._size, self._remember_since)).with_outputs(
                _WINDOWS_TAG, _REFUSED_TAG, _IDS_TAG, main="totals"
            )
        )
        inventory = sums.totals | "MergeSums" >> beam.CombinePerKey(_MergeSums()) | "Rows" >> beam.Map(_inventory_row)
        windows = (
            sums[_WINDOWS_TAG] | "MergeWindows" >> beam.CombineGlobally(_MergeWindows(self._size)).without_defaults()
        )
        refused = sums[_REFUSED_TAG]
        if self._refetch is not None:
            letters = refused | "Refetch" >> self._refetch | "RefusedLetters" >> beam.Map(_refused_letter)
        else:
            inputs = [records] if isinstance(records, beam.PCollection) else list(records)
            found = beam.pvalue.AsDict(refused)
            letters = [
                pcoll | f"PickRefused{n if n else ''}" >> beam.FlatMap(_pick_refused, found)
                for n, pcoll in enumerate(inputs)
            ] | "RefusedFromInputs" >> beam.Flatten()
        dead = [d[DEAD_LETTERS_TAG] for d in decoded] + [letters] | "AllDeadLetters" >> beam.Flatten()
        ids = sums[_IDS_TAG] if self._remember_since is not None else None
        return BackfillResult(inventory, windows, dead, ids)
