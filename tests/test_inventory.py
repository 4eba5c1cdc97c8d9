"""Inventory: event identity (topic, store, item, id), order independence, the dedupe horizon, batch = recompute.

Bounded pipelines run on the FnApiRunner (the batch runner, whose state code is
the SDK harness Prism also uses); TestStream pipelines run on the
BundleBasedDirectRunner, which honours TestStream watermarks with user state and
timers; one horizon test also runs on Prism, where streaming pipelines run.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.runner import PRISM_NO_SPLITS
from tests.fake_state import FakeBag, FakeCell, FakeTimer
from transforms.events import DeadLetter, Sale, Shipment
from transforms.inventory import ComputeInventory, InventoryDoFn
from transforms.retail import StreamRetail

HOUR = 3_600 * 1_000_000
DAY = 24 * HOUR
T0 = 1_000 * DAY  # an arbitrary day boundary, in epoch micros


def utc(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def row(store: str, item: str, shipped: int, sold: int, events: int, last: int) -> dict[str, Any]:
    return {
        "store_id": store,
        "item_id": item,
        "on_hand": shipped - sold,
        "shipped": shipped,
        "sold": sold,
        "events": events,
        "last_event_time": utc(last),
    }


def latest_per_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the idempotent sink keeps: per key, the row with the most events."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["store_id"], r["item_id"])
        if key not in best or r["events"] > best[key]["events"]:
            best[key] = r
    return list(best.values())


def latest_is(expected: list[dict[str, Any]]) -> Any:
    """Matcher: the rows the sink would keep equal ``expected``."""

    def match(actual: list[dict[str, Any]]) -> None:
        equal_to(expected)(latest_per_key(actual))

    return match


def run_bounded(
    events: list[Shipment | Sale],
    mode: str,
    *,
    latest: list[dict[str, Any]],
    applied: list[tuple[str, str]],
    rows_per_key: int | None = None,
) -> None:
    """Run ComputeInventory on bounded input and assert on all three outputs."""
    with BeamTestPipeline(runner="FnApiRunner") as p:
        rows, applied_events, dead = p | beam.Create(events) | ComputeInventory(mode=mode)
        assert_that(rows, latest_is(latest), label="LatestRowPerKey")
        assert_that(
            applied_events | "Ids" >> beam.Map(lambda e: (e.kind, e.event_id)), equal_to(applied), label="Applied"
        )
        assert_that(dead, equal_to([]), label="NoDeadLetters")
        if rows_per_key is not None:
            counts = (
                rows | "Key" >> beam.Map(lambda r: (r["store_id"], r["item_id"])) | beam.combiners.Count.PerElement()
            )
            assert_that(counts | "N" >> beam.Values() | beam.Distinct(), equal_to([rows_per_key]), label="RowsPerKey")


@pytest.mark.parametrize("mode", ["streaming", "batch"])
def test_dedupe_is_per_topic_and_out_of_order_is_fine(mode: str) -> None:
    events = [
        Sale("x", "s1", "i1", 4, T0 + 5 * HOUR),
        Shipment("x", "s1", "i1", 10, T0 + 1 * HOUR),  # same id, other topic: applied
        Sale("x", "s1", "i1", 4, T0 + 5 * HOUR),  # duplicate sale: once
        Shipment("x", "s1", "i1", 10, T0 + 1 * HOUR),  # duplicate shipment: once
        Sale("y", "s1", "i1", 9, T0 + 2 * HOUR),  # older than the latest applied
        Sale("z", "s2", "i1", 3, T0),  # never shipped: negative stock
    ]
    expected = [
        row("s1", "i1", shipped=10, sold=13, events=3, last=T0 + 5 * HOUR),
        row("s2", "i1", shipped=0, sold=3, events=1, last=T0),
    ]
    assert [r["on_hand"] for r in expected] == [-3, -3]
    applied = [("sale", "x"), ("shipment", "x"), ("sale", "y"), ("sale", "z")]
    # Streaming emits a row per change (s1 changes 3 times); batch one row per key at the end.
    run_bounded(events, mode, latest=expected, applied=applied, rows_per_key=1 if mode == "batch" else None)


@pytest.mark.parametrize("mode", ["streaming", "batch"])
def test_an_event_is_its_topic_store_item_and_id_and_other_content_is_a_dead_letter(mode: str) -> None:
    big = 2**63 - 1
    events = [
        Shipment("e1", "s", "i", 5, T0, partition=0, offset=0),
        Shipment("e1", "s", "j", 5, T0, partition=0, offset=1),  # another item: another event
        Shipment("e2", "s", "j", 1, T0, partition=0, offset=2),
        Shipment("e2", "s", "j", 1, T0, partition=0, offset=3),  # a re-send
        Shipment("e2", "s", "j", 9, T0, partition=0, offset=4),  # other content
        Sale("e1", "s", "i", big, T0, partition=0, offset=0),  # another topic: another event
        Sale("e3", "s", "i", 1, T0, partition=0, offset=1),  # sold would pass int64
    ]
    with BeamTestPipeline(runner="FnApiRunner") as p:
        rows, _, dead = p | beam.Create(events) | ComputeInventory(mode=mode)
        expected = [row("s", "i", shipped=5, sold=big, events=2, last=T0), row("s", "j", 6, 0, 2, T0)]
        assert_that(rows, latest_is(expected), label="Rows")
        assert_that(
            dead | beam.Map(lambda d: (d.source_topic, d.offset, d.error.split(":")[0])),
            equal_to(
                [
                    ("shipments", 4, "event_id reused with different content"),
                    ("sales", 1, "quantity would overflow sold"),
                ]
            ),
            label="DeadLetters",
        )


def test_streaming_emits_one_row_per_change() -> None:
    events = [Shipment(f"e{i}", "s", "i", 1, T0 + i) for i in range(5)] + [Shipment("e0", "s", "i", 1, T0)]
    with BeamTestPipeline(runner="FnApiRunner") as p:
        rows, _, _ = p | beam.Create(events) | ComputeInventory(mode="streaming")
        assert_that(rows | beam.Map(lambda r: (r["events"], r["on_hand"])), equal_to([(n, n) for n in range(1, 6)]))


def random_log(seed: int, n: int) -> list[Shipment | Sale]:
    rng = random.Random(seed)
    log: list[Shipment | Sale] = []
    for i in range(n):
        if log and rng.random() < 0.2:
            log.append(rng.choice(log))  # a re-sent event, same content
            continue
        # Each id is used once per topic, so "e17" is both a shipment and a sale.
        cls = Shipment if i % 2 == 0 else Sale
        event_id = f"e{i // 2}"
        log.append(
            cls(
                event_id,
                f"s{rng.randrange(4)}",
                f"i{rng.randrange(6)}",
                rng.randint(1, 50),
                T0 + rng.randrange(60 * DAY),  # spread far beyond the default horizon
            )
        )
    rng.shuffle(log)
    return log


def recompute(log: list[Shipment | Sale]) -> list[dict[str, Any]]:
    """The plain answer: each (topic, event_id) once, totals per (store, item)."""
    seen: set[tuple[str, str]] = set()
    shipped: dict[tuple[str, str], int] = defaultdict(int)
    sold: dict[tuple[str, str], int] = defaultdict(int)
    count: dict[tuple[str, str], int] = defaultdict(int)
    last: dict[tuple[str, str], int] = {}
    for e in log:
        topic = "shipments" if type(e) is Shipment else "sales"
        if (topic, e.event_id) in seen:
            continue
        seen.add((topic, e.event_id))
        key = (e.store_id, e.item_id)
        if topic == "shipments":
            shipped[key] += e.quantity
        else:
            sold[key] += e.quantity
        count[key] += 1
        last[key] = max(last.get(key, e.event_time), e.event_time)
    return [row(k[0], k[1], shipped[k], sold[k], count[k], last[k]) for k in count]


# Both in the slow tier: a random log of many events through a whole pipeline (the unit tier keeps the small cases).
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["streaming", "batch"])
def test_random_log_equals_plain_recompute(mode: str) -> None:
    log = random_log(seed=20261126, n=4_000)
    expected = recompute(log)
    assert sum(1 for r in expected if r["on_hand"] < 0) > 0  # the log exercises negative stock
    applied = sorted({("shipment" if type(e) is Shipment else "sale", e.event_id) for e in log})
    assert len(applied) == sum(r["events"] for r in expected)
    assert len(applied) < len(log)  # the log really has duplicates
    run_bounded(log, mode, latest=expected, applied=applied)


def at(event: Shipment | Sale) -> TimestampedValue:
    return TimestampedValue(event, event.event_time / 1e6)


def stream_with_late_arrivals(watermark: int) -> BeamTestStream:
    """Three events for one key, the watermark jumps to ``watermark``, then more arrive.

    With a one-day horizon (expiry buckets of 3 h), a jump to T0+72h fires the
    key's expiry timers at T0+27h and T0+45h: the key then remembers every id
    from T0+21h on and nothing older.
    """
    return (
        BeamTestStream()
        .advance_watermark_to(T0 / 1e6)
        .add_elements(
            [
                at(Shipment("a", "s", "i", 100, T0)),
                at(Sale("b", "s", "i", 7, T0 + HOUR)),
                at(Sale("e", "s", "i", 2, T0 + 20 * HOUR)),
            ]
        )
        .advance_watermark_to(watermark / 1e6)
        .add_elements(
            [
                at(Sale("b", "s", "i", 7, T0 + HOUR)),  # duplicate whose id is forgotten
                at(Sale("c", "s", "i", 5, T0 + 2 * HOUR)),  # new, but nobody can tell
                at(
                    Sale("g", "s", "i", 1, T0 + 46 * HOUR)
                ),  # older than watermark - horizon, newer than what the key forgot
                at(Sale("d", "s", "i", 1, watermark)),  # recent
                at(Sale("d", "s", "i", 1, watermark)),  # recent duplicate: applied once
            ]
        )
        .advance_watermark_to_infinity()
    )


def too_old_summary(dead: DeadLetter) -> tuple[str, bool, bytes]:
    return (dead.source_topic, "dedupe horizon" in dead.error, dead.payload)


def run_stream(
    stream: BeamTestStream,
    mode: str,
    latest: list[dict[str, Any]],
    dead: list[tuple[str, bool, bytes]],
    options: PipelineOptions | None = None,
    *,
    fused: bool = False,
) -> None:
    """ComputeInventory on the stream, or (``fused``) StreamRetail's inventory and its refusals."""
    pipeline = beam.Pipeline(options=options) if options else BeamTestPipeline(runner="BundleBasedDirectRunner")
    with pipeline as p:
        if fused:
            views = p | stream | StreamRetail(horizon=timedelta(days=1))
            rows = views.inventory
            letters = views.dead_letters | beam.Filter(lambda d: "too late for its window" not in d.error)
        else:
            rows, _applied, letters = p | stream | ComputeInventory(mode=mode, horizon=timedelta(days=1))
        assert_that(rows, latest_is(latest), label="LatestRow")
        assert_that(letters | beam.Map(too_old_summary), equal_to(dead), label="DeadLetters")


LATE_WM = T0 + 3 * DAY
REFUSED = [
    ("sales", True, b'{"event_id":"b","store_id":"s","item_id":"i","quantity":7,"event_time":"1972-09-27T01:00:00Z"}'),
    ("sales", True, b'{"event_id":"c","store_id":"s","item_id":"i","quantity":5,"event_time":"1972-09-27T02:00:00Z"}'),
]


@pytest.mark.parametrize("fused", [False, True], ids=["ComputeInventory", "StreamRetail"])
def test_streaming_refuses_records_older_than_what_the_key_forgot(fused: bool) -> None:
    # Applied: a, b, e, then g (T0+46h: the key still remembers everything after T0+44h) and d.
    latest = [row("s", "i", shipped=100, sold=7 + 2 + 1 + 1, events=5, last=LATE_WM)]
    run_stream(stream_with_late_arrivals(LATE_WM), "streaming", latest, REFUSED, fused=fused)


def test_streaming_keeps_checking_within_the_horizon() -> None:
    # Watermark only 12 h on: nothing is forgotten, the duplicate is caught, c applies.
    latest = [row("s", "i", shipped=100, sold=7 + 2 + 5 + 1 + 1, events=6, last=T0 + 46 * HOUR)]
    run_stream(stream_with_late_arrivals(T0 + 12 * HOUR), "streaming", latest, [])


def test_batch_mode_ignores_the_watermark_and_applies_everything_once() -> None:
    latest = [row("s", "i", shipped=100, sold=7 + 2 + 5 + 1 + 1, events=6, last=LATE_WM)]
    run_stream(stream_with_late_arrivals(LATE_WM), "batch", latest, [])


@pytest.mark.parametrize("fused", [False, True], ids=["ComputeInventory", "StreamRetail"])
def test_streaming_horizon_on_prism(prism_location: str, fused: bool) -> None:
    options = PipelineOptions(
        runner="PrismRunner", prism_location=prism_location, streaming=True, experiments=[PRISM_NO_SPLITS]
    )
    latest = [row("s", "i", shipped=100, sold=7 + 2 + 1 + 1, events=5, last=LATE_WM)]
    run_stream(stream_with_late_arrivals(LATE_WM), "streaming", latest, REFUSED, options, fused=fused)


# -- the in-memory id cache: a failed bundle's ids never count as committed ----------
def _bundle(fn: Any, key_cell: FakeCell, bag: FakeBag, events: list[Shipment | Sale], *, commit: bool) -> list[Any]:
    """One bundle of ``events`` for one key; the runner keeps its state only if ``commit``."""
    cell, seen = FakeCell(copy.deepcopy(key_cell.committed)), FakeBag(bag.committed)
    fn.start_bundle()
    out = [o for e in events for o in fn.process((e.key, e), seen, cell, FakeTimer(), FakeTimer())]
    if commit:
        cell.commit()
        seen.commit()
        key_cell.committed, bag.committed = copy.deepcopy(cell.committed), seen.committed
    bag.reads += seen.reads
    return [o.value for o in out if getattr(o, "tag", None) == "applied"]


def test_a_failed_bundle_leaves_no_remembered_ids() -> None:
    fn = InventoryDoFn("streaming")
    key_cell, bag = FakeCell(), FakeBag()
    a = Shipment("a", "s", "i", 1, T0)
    b = Shipment("b", "s", "i", 2, T0)
    assert _bundle(fn, key_cell, bag, [a], commit=True) == [a]
    assert bag.reads == 0  # a new key has nothing to read
    # This bundle fails: b must not be remembered by anyone.
    assert _bundle(fn, key_cell, bag, [b], commit=False) == [b]
    # The retry applies b again (the failed attempt's version never reached state),
    # reading the committed ids once, and still drops a re-sent a.
    assert _bundle(fn, key_cell, bag, [b, a], commit=True) == [b]
    assert bag.reads == 1
    # A later bundle finds its own version in the cell: no read, dedupe still holds.
    assert _bundle(fn, key_cell, bag, [a, b, Sale("a", "s", "i", 1, T0)], commit=True) == [Sale("a", "s", "i", 1, T0)]
    assert bag.reads == 1
    assert (key_cell.committed.shipped, key_cell.committed.sold, key_cell.committed.events) == (3, 1, 3)
