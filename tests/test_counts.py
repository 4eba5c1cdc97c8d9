"""Windowed sales (early, on-time, late-allowed, too-late) and word counts.

TestStream pipelines run on the BundleBasedDirectRunner: it drives TestStream
watermarks and processing time (its test clock starts at 0) through user state
and both timer domains. Bounded pipelines run on the FnApiRunner.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from core.errors import ConfigError
from pipelines.runner import PRISM_NO_SPLITS
from transforms.counts import (
    CountTooLate,
    CountWords,
    SalesByWindow,
    tokenize,
    window_row,
    windows_table,
    word_count_to_kafka,
)
from transforms.events import MAX_MICROS, DeadLetter, Sale, Shipment
from transforms.inventory import ComputeInventory
from transforms.kafka import KafkaRecord
from transforms.retail import StreamRetail

MINUTE = 60 * 1_000_000
HOUR = 60 * MINUTE
T0 = 1_000 * 24 * HOUR  # a day boundary, so hour windows start at T0, T0+1h, ...


def utc(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def frozen_clock() -> float:
    """Processing time as the DoFn reads it: the runner's test clock starts at 0.

    Early timers are therefore set for 0 + delay; TestStream's
    advance_processing_time moves the runner's clock past them.
    """
    return 0.0


def sale(event_id: str, quantity: int, at: int, store: str = "s", item: str = "i") -> TimestampedValue:
    return TimestampedValue(Sale(event_id, store, item, quantity, at), at / 1e6)


def pane(start: int, units: int, sales: int, index: int, timing: str) -> dict[str, Any]:
    return {
        "window_start": utc(start),
        "window_end": utc(start + HOUR),
        "store_id": "s",
        "item_id": "i",
        "units": units,
        "sales": sales,
        "pane": index,
        "timing": timing,
    }


def window_stream(processing_time: bool = True) -> BeamTestStream:
    """Window W0 = [T0, T0+1h) gets early, on-time, late and too-late data; W1 early + on-time.

    Without ``processing_time`` (for Prism, whose processing time is its own) the
    steps that advance the test clock are left out.
    """
    stream = BeamTestStream()

    def tick() -> None:
        if processing_time:
            # Past the 10 s early delay, and past StreamRetail's timer half a delay later.
            stream.advance_processing_time(16)

    stream.advance_watermark_to(T0 / 1e6)
    stream.add_elements([sale("a", 2, T0 + 10 * MINUTE), sale("b", 3, T0 + 20 * MINUTE)])
    tick()
    stream.add_elements([sale("c", 4, T0 + 30 * MINUTE)])
    tick()
    stream.advance_watermark_to((T0 + HOUR) / 1e6)  # W0 on time
    stream.add_elements([sale("d", 1, T0 + 40 * MINUTE), sale("e", 7, T0 + 65 * MINUTE)])  # d: late, allowed
    tick()  # W1 early pane
    stream.advance_watermark_to((T0 + 2 * HOUR) / 1e6)  # W0 closes (lateness 30 min); W1 on time
    stream.add_elements([sale("f", 100, T0 + 50 * MINUTE)])  # too late for W0
    stream.advance_watermark_to_infinity()
    return stream


def run_windows(
    mode: str,
    expected_rows: list[dict[str, Any]],
    expected_dead: list[tuple[str, bool]],
    options: PipelineOptions | None = None,
    *,
    fused: bool = False,
) -> None:
    """SalesByWindow on the stream, or (``fused``) StreamRetail, which must give the same panes."""
    p = beam.Pipeline(options=options) if options else BeamTestPipeline(runner="BundleBasedDirectRunner")
    settings: dict[str, Any] = {
        "window_size": timedelta(hours=1),
        "allowed_lateness": timedelta(minutes=30),
        "early_delay": None if options else timedelta(seconds=10),
        "clock": frozen_clock,
    }
    sales = p | window_stream(processing_time=options is None)
    if fused:
        views = sales | StreamRetail(**settings)
        rows, dead = views.windows, views.dead_letters
    else:
        rows, dead = sales | SalesByWindow(mode=mode, **settings)
    assert_that(rows, equal_to(expected_rows), label="Panes")
    assert_that(
        dead | beam.Map(lambda d: (d.payload.decode(), "applied to inventory but too late for its window" in d.error)),
        equal_to(expected_dead),
        label="TooLate",
    )
    p.run().wait_until_finish()


TOO_LATE_PAYLOAD = json.dumps(
    {"event_id": "f", "store_id": "s", "item_id": "i", "quantity": 100, "event_time": "1972-09-27T00:50:00Z"},
    separators=(",", ":"),
)


@pytest.mark.parametrize("fused", [False, True], ids=["SalesByWindow", "StreamRetail"])
def test_streaming_panes_early_on_time_late_and_too_late(fused: bool) -> None:
    expected = [
        pane(T0, units=5, sales=2, index=0, timing="early"),
        pane(T0, units=9, sales=3, index=1, timing="early"),
        pane(T0, units=9, sales=3, index=2, timing="on_time"),
        pane(T0, units=10, sales=4, index=3, timing="late"),
        pane(T0 + HOUR, units=7, sales=1, index=0, timing="early"),
        pane(T0 + HOUR, units=7, sales=1, index=1, timing="on_time"),
    ]
    run_windows("streaming", expected, [(TOO_LATE_PAYLOAD, True)], fused=fused)


@pytest.mark.parametrize("fused", [False, True], ids=["SalesByWindow", "StreamRetail"])
def test_on_time_late_and_too_late_on_prism(prism_location: str, fused: bool) -> None:
    # No early panes here (Prism's processing time is its own); the rest as above.
    expected = [
        pane(T0, units=9, sales=3, index=0, timing="on_time"),
        pane(T0, units=10, sales=4, index=1, timing="late"),
        pane(T0 + HOUR, units=7, sales=1, index=0, timing="on_time"),
    ]
    options = PipelineOptions(
        runner="PrismRunner", prism_location=prism_location, streaming=True, experiments=[PRISM_NO_SPLITS]
    )
    run_windows("streaming", expected, [(TOO_LATE_PAYLOAD, True)], options, fused=fused)


def test_too_late_metric_counts_each_dead_letter() -> None:
    letters = [DeadLetter("sales", 0, n, "applied to inventory but too late for its window", b"") for n in range(3)]
    p = BeamTestPipeline(runner="FnApiRunner")
    _ = p | beam.Create(letters) | beam.ParDo(CountTooLate())
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("sales_too_late_for_window"))["counters"]
    assert sum(c.committed for c in counters) == 3


def test_batch_mode_never_closes_a_window_nor_fires_early() -> None:
    # Same stream: panes only when the watermark passes a window end, and f still counts.
    expected = [
        pane(T0, units=9, sales=3, index=0, timing="on_time"),
        pane(T0, units=10, sales=4, index=1, timing="late"),
        pane(T0, units=110, sales=5, index=2, timing="late"),
        pane(T0 + HOUR, units=7, sales=1, index=0, timing="on_time"),
    ]
    run_windows("batch", expected, [])


def random_sales(seed: int, n: int) -> list[Sale | Shipment]:
    rng = random.Random(seed)
    log: list[Sale | Shipment] = []
    for i in range(n):
        if log and rng.random() < 0.2:
            log.append(rng.choice(log))
            continue
        cls = Sale if i % 3 else Shipment
        log.append(
            cls(
                f"e{i}",
                f"s{rng.randrange(3)}",
                f"i{rng.randrange(3)}",
                rng.randint(1, 9),
                T0 + rng.randrange(48 * HOUR),
            )
        )
    rng.shuffle(log)
    return log


def final_panes(rows: list[dict[str, Any]]) -> list[tuple]:
    """What the sink keeps: per (window, store, item), the row with the largest (sales, pane)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["window_start"], r["store_id"], r["item_id"])
        if key not in best or (r["sales"], r["pane"]) > (best[key]["sales"], best[key]["pane"]):
            best[key] = r
    return [(k[0], k[1], k[2], r["window_end"], r["units"]) for k, r in best.items()]


def latest_is(expected: list[tuple]) -> Any:
    def match(actual: list[dict[str, Any]]) -> None:
        equal_to(expected)(final_panes(actual))

    return match


def test_batch_windows_equal_a_plain_recompute_of_deduped_sales() -> None:
    log = random_sales(seed=7, n=2_000)
    seen: set[str] = set()
    units: dict[tuple, int] = defaultdict(int)
    for e in log:
        if type(e) is not Sale or e.event_id in seen:
            continue
        seen.add(e.event_id)
        hour = (e.event_time - T0) // HOUR
        units[(utc(T0 + hour * HOUR), e.store_id, e.item_id, utc(T0 + (hour + 1) * HOUR))] += e.quantity
    expected = [(*k[:3], k[3], v) for k, v in units.items()]
    assert len(seen) < sum(1 for e in log if type(e) is Sale)  # duplicates present
    with BeamTestPipeline(runner="FnApiRunner") as p:
        _rows, applied, _dead = p | beam.Create(log) | ComputeInventory(mode="batch")
        rows, dead = applied | SalesByWindow(mode="batch")
        assert_that(rows, latest_is(expected), label="Windows")
        assert_that(dead, equal_to([]), label="NoDead")


def test_tokenize_lowercases_unicode_word_runs() -> None:
    text = "Hello, WORLD! hello_world 42 naïve Straße İstanbul 日本語 café-au-lait ÆØÅ\tx²"
    assert tokenize(text) == [
        "hello",
        "world",
        "hello_world",
        "42",
        "naïve",
        "straße",
        "i\u0307stanbul",  # İ lower-cases to i + combining dot, kept inside the word
        "日本語",
        "café",
        "au",
        "lait",
        "æøå",
        "x²",
    ]
    assert tokenize("  ...  ") == []


def line(value: bytes | None, offset: int) -> KafkaRecord:
    return KafkaRecord("text-lines", 0, offset, 0, None, value)


LINES = [
    line(b"The cat and the hat", 0),
    line(b"THE END, the end.", 1),
    line("Ünïcode ünïcode".encode(), 2),
    line(b"\x80bad", 3),
    line(None, 4),
    line(b"", 5),
]


def test_word_count_batch_totals_and_dead_letters() -> None:
    with BeamTestPipeline(runner="FnApiRunner") as p:
        rows, dead = p | beam.Create(LINES) | CountWords(mode="batch")
        assert_that(
            rows | beam.Map(lambda r: (r["word"], r["count"])),
            equal_to([("the", 4), ("cat", 1), ("and", 1), ("hat", 1), ("end", 2), ("ünïcode", 2)]),
            label="Totals",
        )
        assert_that(
            dead | beam.Map(lambda d: (d.offset, d.error.split(" ")[0], d.payload)),
            equal_to([(3, "invalid", b"\x80bad"), (4, "null", b"")]),
            label="Dead",
        )


def test_word_count_streaming_emits_running_totals() -> None:
    stream = (
        BeamTestStream()
        .add_elements([line(b"a b a", 0)])
        .advance_watermark_to(10)
        .add_elements([line(b"b", 1)])
        .add_elements([line(b"A", 2)])
        .advance_watermark_to_infinity()
    )
    with BeamTestPipeline(runner="BundleBasedDirectRunner") as p:
        rows, _dead = p | stream | CountWords(mode="streaming")
        assert_that(
            rows | beam.Map(lambda r: (r["word"], r["count"])),
            equal_to([("a", 2), ("b", 1), ("b", 2), ("a", 3)]),
        )


def test_word_count_kafka_pair() -> None:
    assert word_count_to_kafka({"word": "straße", "count": 3}) == (
        "straße".encode(),
        '{"word": "straße", "count": 3}'.encode(),
    )


def test_sales_by_window_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        SalesByWindow(window_size=timedelta(0))
    with pytest.raises(ConfigError):
        SalesByWindow(allowed_lateness=timedelta(seconds=-1))


def test_windows_table_holds_the_rows_window_row_builds() -> None:
    hour = 3_600_000_000
    keys = [("s1", "i1"), ("s2", "i9")]
    # (key, start, units, sales); the last one's end is clamped, and units may be Python ints.
    rows = [(0, 0, 3, 1), (1, 2 * hour, 5, 2), (0, -hour, 2, 2), (1, MAX_MICROS - 10, 1, 1)]
    codes, starts, units, sales = (np.array(column) for column in zip(*rows, strict=True))
    for units_column in (units, units.astype(object)):
        table = windows_table(keys, codes.astype(np.int32), starts, units_column, sales, hour)
        assert table.column_names == ["window_start", "window_end", "store_id", "item_id", "units", "sales"]
        want = [window_row(keys[code], start, hour, units, sales) for code, start, units, sales in rows]
        assert table.to_pylist() == [{name: row[name] for name in table.column_names} for row in want]
    empty = np.empty(0, np.int64)
    assert windows_table([], empty.astype(np.int32), empty, empty, empty, hour).num_rows == 0
    with pytest.raises(OverflowError):  # as the sink refuses such a row
        windows_table(keys, codes[:1].astype(np.int32), starts[:1], np.array([2**63], dtype=object), sales[:1], hour)
