"""Batch backfill of the retail views: the plain recompute of the log, as two combines.

A backfill has the whole log, so nothing is late and nothing expires: the views
are exactly "drop invalid records, keep each event_id once per topic, sum". The
streaming DoFns would pay a state read and write per event, and grouping the
raw events would push every event through a shuffle. Instead:

1. the read hands over whole polls (``ReadFromKafka(batched=True)``), and each
   record is decoded straight to a small tuple (an invalid one becomes a dead
   letter) into a dict per (kind, bucket of its event_id): one element per
   poll and bucket, not per event, crosses Beam's machinery;
2. a CombinePerKey merges those dicts, keeping per event_id the occurrence
   first in the log (lowest partition, then offset), as the recompute does.
   Beam runs the combine on each worker before the shuffle, so a worker ships
   one dict per bucket. Dedupe is per topic whatever store or item a repeated
   event_id names;
3. each bucket's survivors are summed per (store_id, item_id): totals, events,
   last event time, and units and sales per event-time window;
4. a second CombinePerKey merges the buckets' sums per (store_id, item_id);
5. the ``inventory`` rows are built from the merged sums by the function the
   streaming path uses; the ``sales_by_window`` rows of a key come as one Arrow
   table with the same columns (``window_table``, held equal to ``window_row``
   by a test), as a backfill writes hundreds of thousands of them.

Buckets (a CRC of the event_id, stable across processes) let the dedupe run on
several workers at once; their count barely matters on one machine.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.coders import EstimatedPickleCoder
from transforms.counts import DEFAULT_WINDOW_SIZE, window_table
from transforms.events import DEAD_LETTERS_TAG, DeadLetter, EventKind, decode_fields
from transforms.inventory import inventory_row
from transforms.kafka import KafkaBatch, KafkaRecord

__all__ = ["BUCKETS", "BackfillResult", "BackfillRetail"]

BUCKETS = 16
_WINDOWS_TAG = "windows"
_NO_TIME = -(2**63)


# Accumulators cross the shuffle whole: one pickle per bucket shares every
# repeated store and item name, where Beam's default coder writes each string
# out again. Their sizes for Beam's counters, in pickled bytes per item measured
# on generated retail events: ~70 per kept event, ~25 per window in a key's sums.
def _first_in_log_size(acc: list[Any]) -> int:
    return 16 + 70 * len(acc[0])


def _sums_size(acc: list[Any]) -> int:
    return 40 + 25 * len(acc[4])


# A decoded event as the backfill carries it: small, and cheap to pickle.
# (event_id, partition, offset, store_id, item_id, quantity, event_time micros)
_Compact = tuple[str, int, int, str, str, int, int]
# Sums of one (store_id, item_id): [shipped, sold, events, last event time, {window start: [units, sales]}]
_Sums = list[Any]


class _DecodeCompact(beam.DoFn):
    """Records -> ((kind, bucket), [{event_id: compact event}, occurrences]), or dead letters.

    Takes a :class:`KafkaBatch` (the backfill reads batched) or a single
    :class:`KafkaRecord`, of one kind or of several (``kinds``: topic -> kind).
    A batch is one partition's records in offset order, so within it the
    first occurrence of an event_id is the one to keep; each bucket's part
    leaves as one element, ready for ``_FirstInLog`` to merge.
    """

    def __init__(self, kinds: EventKind | Mapping[str, EventKind], buckets: int) -> None:
        self._kinds = kinds
        self._buckets = buckets
        kind_names = {kinds} if isinstance(kinds, str) else set(kinds.values())
        self._dead_counters = {kind: Metrics.counter("beamline", f"{kind}_dead_letters") for kind in kind_names}
        self._names: dict[str, str] = {}

    def setup(self) -> None:
        # One string object per store and item name, however many events repeat
        # it: the dedupe dicts hold every event until the shuffle.
        self._names = {}

    def process(self, element: KafkaBatch | KafkaRecord) -> Iterator[Any]:  # type: ignore[override]
        records = element.records if type(element) is KafkaBatch else (element,)
        names = self._names
        buckets = self._buckets
        kinds = self._kinds
        kind = kinds if isinstance(kinds, str) else kinds[element.topic]
        parts: dict[int, list[Any]] = {}
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
                part = parts[bucket] = [{}, 0]
            part[1] += 1
            first = part[0]
            if event_id not in first:
                first[event_id] = (
                    event_id,
                    record.partition,
                    record.offset,
                    names.setdefault(store_id, store_id),
                    names.setdefault(item_id, item_id),
                    quantity,
                    event_time,
                )
        if dead:
            self._dead_counters[kind].inc(dead)
        for bucket, part in parts.items():
            yield (kind, bucket), part


def _keep_first(first: dict[str, _Compact], other: dict[str, _Compact]) -> None:
    """Add ``other``'s events to ``first``, keeping per event_id the lowest (partition, offset).

    Most event_ids are new: the dicts merge in C, and only the few ids both
    hold are compared one by one.
    """
    both = other.keys() & first.keys()  # iterates the smaller of the two
    earlier = {event_id: first[event_id] for event_id in both}
    first.update(other)
    for event_id, event in earlier.items():
        if event[1:3] < first[event_id][1:3]:
            first[event_id] = event


class _FirstInLog(beam.CombineFn):
    """Merges decoded parts: per event_id the occurrence first in the log, and every occurrence counted.

    Input and accumulator alike: ``[{event_id: compact event}, occurrences]``.
    """

    def create_accumulator(self) -> list[Any]:
        return [{}, 0]

    def add_input(self, acc: list[Any], part: list[Any]) -> list[Any]:
        if not acc[0]:
            # The first part of a bucket becomes its accumulator (parts are never reused).
            return [part[0], acc[1] + part[1]]
        _keep_first(acc[0], part[0])
        acc[1] += part[1]
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[Any]]) -> list[Any]:
        accs = sorted(accumulators, key=lambda a: len(a[0]), reverse=True)
        merged = accs[0]
        for other in accs[1:]:
            _keep_first(merged[0], other[0])
            merged[1] += other[1]
        return merged

    def extract_output(self, acc: list[Any]) -> list[Any]:
        return acc

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return EstimatedPickleCoder(_first_in_log_size)


class _SumBucket(beam.DoFn):
    """One bucket's surviving events -> partial sums per (store_id, item_id)."""

    def __init__(self, window_size: int) -> None:
        self._size = window_size
        self._applied = Metrics.counter("beamline", "inventory_events_applied")
        self._duplicates = Metrics.counter("beamline", "inventory_duplicates")

    def process(self, element: tuple[tuple[str, int], list[Any]]) -> Iterator[tuple[tuple[str, str], _Sums]]:  # type: ignore[override]
        (kind, _bucket), (first, occurrences) = element
        self._applied.inc(len(first))
        self._duplicates.inc(occurrences - len(first))
        sale = kind == "sale"
        size = self._size
        sums: dict[tuple[str, str], _Sums] = {}
        for _, _, _, store_id, item_id, quantity, event_time in first.values():
            key = (store_id, item_id)
            s = sums.get(key)
            if s is None:
                s = sums[key] = [0, 0, 0, _NO_TIME, {}]
            if sale:
                s[1] += quantity
                start = event_time - event_time % size
                window = s[4].get(start)
                if window is None:
                    s[4][start] = [quantity, 1]
                else:
                    window[0] += quantity
                    window[1] += 1
            else:
                s[0] += quantity
            s[2] += 1
            if event_time > s[3]:
                s[3] = event_time
        yield from sums.items()


class _MergeSums(beam.CombineFn):
    """Adds partial sums of one (store_id, item_id)."""

    def create_accumulator(self) -> _Sums:
        return [0, 0, 0, _NO_TIME, {}]

    def add_input(self, acc: _Sums, part: _Sums) -> _Sums:
        acc[0] += part[0]
        acc[1] += part[1]
        acc[2] += part[2]
        if part[3] > acc[3]:
            acc[3] = part[3]
        windows = acc[4]
        for start, (units, sales) in part[4].items():
            window = windows.get(start)
            if window is None:
                windows[start] = [units, sales]
            else:
                window[0] += units
                window[1] += sales
        return acc

    def merge_accumulators(self, accumulators: Iterable[_Sums]) -> _Sums:
        merged = self.create_accumulator()
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: _Sums) -> _Sums:
        return acc

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return EstimatedPickleCoder(_sums_size)


class _Rows(beam.DoFn):
    """Merged sums of one key -> its inventory row and a table of its window rows."""

    def __init__(self, window_size: int) -> None:
        self._size = window_size

    def process(self, element: tuple[tuple[str, str], _Sums]) -> Iterator[Any]:  # type: ignore[override]
        key, (shipped, sold, events, last_event_time, windows) = element
        yield inventory_row(key, shipped, sold, events, last_event_time)
        if windows:
            yield beam.pvalue.TaggedOutput(_WINDOWS_TAG, window_table(key, windows, self._size))


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
        if window_size <= timedelta(0):
            raise ValueError("window_size must be positive")
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        if topics is not None and sorted(set(topics.values())) != ["sale", "shipment"]:
            raise ValueError(f"topics must name a shipment topic and a sale topic, got {dict(topics)}")
        self._size = window_size // timedelta(microseconds=1)
        self._buckets = buckets
        self._topics = dict(topics) if topics is not None else None

    def expand(self, records: beam.PCollection | tuple[beam.PCollection, beam.PCollection]) -> BackfillResult:
        if isinstance(records, beam.PCollection):
            if self._topics is None:
                raise ValueError("one input collection needs topics={topic: kind} to tell shipments from sales")
            decoded = [
                records
                | "Decode"
                >> beam.ParDo(_DecodeCompact(self._topics, self._buckets)).with_outputs(DEAD_LETTERS_TAG, main="events")
            ]
            events = decoded[0].events
        else:
            shipments, sales = records
            decoded = [
                pcoll
                | f"Decode{kind.title()}s"
                >> beam.ParDo(_DecodeCompact(kind, self._buckets)).with_outputs(DEAD_LETTERS_TAG, main="events")
                for kind, pcoll in (("shipment", shipments), ("sale", sales))
            ]
            events = [d.events for d in decoded] | "AllEvents" >> beam.Flatten()
        sums = (
            events
            | "FirstInLog" >> beam.CombinePerKey(_FirstInLog())
            | "SumBuckets" >> beam.ParDo(_SumBucket(self._size))
            | "MergeSums" >> beam.CombinePerKey(_MergeSums())
        )
        rows = sums | "Rows" >> beam.ParDo(_Rows(self._size)).with_outputs(_WINDOWS_TAG, main="inventory")
        dead = (
            decoded[0][DEAD_LETTERS_TAG]
            if len(decoded) == 1
            else [d[DEAD_LETTERS_TAG] for d in decoded] | "AllDeadLetters" >> beam.Flatten()
        )
        return BackfillResult(rows.inventory, rows[_WINDOWS_TAG], dead)
