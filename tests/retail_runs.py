"""A log's retail views computed in process, in batch and in streaming, with the pipeline's own transforms.

Batch: ``BackfillRetail`` over the records on the FnApiRunner. Streaming: a
TestStream that plays the records as the event-time read hands them over (a
poll of one partition at a time, each record stamped and the watermark moved
by :func:`transforms.kafka.event_time_step`, an idle partition at the wall
clock) through ``DecodeEvents`` and ``StreamRetail`` on the
BundleBasedDirectRunner, which honours TestStream watermarks with user state
and timers. The views are what the warehouse keeps of the rows (per key the
row with the highest version) and the dead letters, collected in process: a
warehouse commit per streaming bundle cost most of a run.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from transforms.backfill import BackfillRetail
from transforms.events import DecodeEvents, event_time_of
from transforms.kafka import KafkaRecord, event_time_step
from transforms.retail import DEFAULT_HISTORY_GRID, StreamRetail

__all__ = ["SALES", "SHIPMENTS", "Poll", "Views", "batch_views", "streaming_views"]

SHIPMENTS, SALES = "ships", "sales"
SKEW = 5_000_000  # the read's default out-of-orderness, in micros

# A view as comparable values: inventory by (store, item); windows by (start micros, store, item);
# dead letters by (topic, partition, offset) -> error.
Views = dict[str, dict[Any, Any]]


@dataclass(frozen=True)
class Poll:
    """What one poll of one partition hands over: consecutive records, in offset order."""

    records: tuple[KafkaRecord, ...]


# What the runs' last steps collected, per run: (view, row) pairs. In process only: both runners run here.
_COLLECTED: dict[str, list[tuple[str, Any]]] = {}


class _Collect(beam.DoFn):
    """Keeps each row (or Arrow table of rows) of ``view`` in :data:`_COLLECTED` under ``run``."""

    def __init__(self, run: str, view: str) -> None:
        self._run = run
        self._view = view

    def process(self, row: Any) -> None:
        rows = row.to_pylist() if isinstance(row, pa.Table) else [row]
        _COLLECTED.setdefault(self._run, []).extend((self._view, r) for r in rows)


def _collect(run: str, inventory: Any, windows: Any, dead_letters: Sequence[Any]) -> None:
    _ = inventory | "CollectInventory" >> beam.ParDo(_Collect(run, "inventory"))
    _ = windows | "CollectWindows" >> beam.ParDo(_Collect(run, "windows"))
    for n, letters in enumerate(dead_letters):
        _ = letters | f"CollectDeadLetters{n}" >> beam.ParDo(_Collect(run, "dead"))


def _views(run: str) -> Views:
    """The views as the warehouse keeps them: per key, the row with the highest version (events; sales)."""
    best: dict[str, dict[Any, Any]] = {"inventory": {}, "windows": {}, "dead": {}}
    for view, row in _COLLECTED.pop(run, []):
        if view == "dead":
            best["dead"][(row.source_topic, row.partition, row.offset)] = row.error
        elif view == "inventory":
            key = (row["store_id"], row["item_id"])
            if key not in best[view] or row["events"] > best[view][key]["events"]:
                best[view][key] = row
        else:
            key = (row["window_start"], row["store_id"], row["item_id"])
            if key not in best[view] or row["sales"] > best[view][key]["sales"]:
                best[view][key] = row
    return {
        "inventory": {
            key: (r["on_hand"], r["shipped"], r["sold"], r["events"], r["last_event_time"])
            for key, r in best["inventory"].items()
        },
        "windows": {key: r["units"] for key, r in best["windows"].items()},
        "dead": best["dead"],
    }


def batch_views(records: Sequence[KafkaRecord], window: timedelta = timedelta(hours=1)) -> Views:
    """The views a backfill of ``records`` (both topics) gives."""
    run = uuid.uuid4().hex
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        log = pipeline | "Log" >> beam.Create(list(records))
        out = log | BackfillRetail(window_size=window, topics={SHIPMENTS: "shipment", SALES: "sale"})
        _collect(run, out.inventory, out.windows, [out.dead_letters])
    return _views(run)


def _ms(micros: int) -> int:
    """Down to a whole millisecond, as a portable runner keeps timestamps (the minimum stays)."""
    return max(micros - micros % 1_000, MIN_TIMESTAMP.micros)


def _play(polls: Sequence[Poll], now: int) -> tuple[BeamTestStream, list[int]]:
    """The polls as a TestStream, as the event-time read emits them; and the watermark after each poll."""
    stream = BeamTestStream()
    partitions = {(r.topic, r.partition) for poll in polls for r in poll.records}
    left = {
        tp: sum(1 for poll in polls if (poll.records[0].topic, poll.records[0].partition) == tp) for tp in partitions
    }
    marks: dict[tuple[str, int], int] = dict.fromkeys(partitions, MIN_TIMESTAMP.micros)
    shown = MIN_TIMESTAMP.micros
    after_each = []
    pending: list[TimestampedValue] = []  # polls that moved no watermark go in one step
    for poll in polls:
        tp = (poll.records[0].topic, poll.records[0].partition)
        times = [event_time_of(r.value) for r in poll.records]
        marks[tp], stamps = event_time_step(times, marks[tp], now, SKEW)
        pending += [TimestampedValue(r, Timestamp(micros=_ms(s))) for r, s in zip(poll.records, stamps, strict=True)]
        left[tp] -= 1
        if not left[tp]:
            marks[tp] = max(marks[tp], now - SKEW)  # caught up and idle: the wall clock
        low = _ms(min(marks.values()))
        if low > shown:
            stream = stream.add_elements(pending).advance_watermark_to(Timestamp(micros=low))
            pending = []
            shown = low
        after_each.append(shown)
    if pending:
        stream = stream.add_elements(pending)
    return stream.advance_watermark_to_infinity(), after_each


def streaming_views(
    polls: Sequence[Poll],
    *,
    horizon: timedelta,
    now: int,
    window: timedelta = timedelta(hours=1),
    lateness: timedelta = timedelta(hours=1),
    history_grid: timedelta | None = DEFAULT_HISTORY_GRID,
) -> tuple[Views, list[int]]:
    """The views a streaming run gives when the read hands ``polls`` over in that order; and each poll's watermark.

    ``now`` is the wall clock (epoch micros) the read and the state step see.
    """
    stream, marks = _play(polls, now)
    run = uuid.uuid4().hex
    with BeamTestPipeline(runner="BundleBasedDirectRunner") as pipeline:
        records = pipeline | stream
        ships = records | "Ships" >> beam.Filter(lambda r: r.topic == SHIPMENTS)
        sold = records | "Sold" >> beam.Filter(lambda r: r.topic == SALES)
        shipments = ships | "DecodeShipments" >> DecodeEvents("shipment", stamped_by_read=True)
        sales = sold | "DecodeSales" >> DecodeEvents("sale", stamped_by_read=True)
        out = (shipments.events, sales.events) | StreamRetail(
            horizon=horizon,
            window_size=window,
            allowed_lateness=lateness,
            early_delay=None,
            clock=lambda: now / 1e6,
            history_grid=history_grid,
        )
        _collect(run, out.inventory, out.windows, [shipments.dead_letters, sales.dead_letters, *out.dead_letter_parts])
    return _views(run), marks
