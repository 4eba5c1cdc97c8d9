"""BackfillRetail alone, on records given in memory, against the independent recompute."""

from __future__ import annotations

import json
import random
from array import array
from datetime import timedelta
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from core.errors import ConfigError
from core.views import SALES_BY_WINDOW
from tests.e2e_helpers import describe_diff, expected_views, views
from tests.truth import recompute_retail
from transforms.backfill import (
    BackfillRetail,
    _Events,
    _GatherEvents,
    _identities,
    _joined_windows,
    _MergeWindows,
    _WindowSums,
)
from transforms.kafka import KafkaBatch, KafkaRecord
from transforms.sinks import WriteToWarehouse
from warehouse.writer import _strictly_ordered


def _value(event_id: str, store: str, item: str, quantity: int, minute: int) -> bytes:
    when = f"2026-11-26T{10 + minute // 60:02d}:{minute % 60:02d}:00Z"
    body = {"event_id": event_id, "store_id": store, "item_id": item, "quantity": quantity, "event_time": when}
    return json.dumps(body).encode()


def _log(topic: str, values: list[tuple[int, bytes | None]]) -> list[KafkaRecord]:
    """Records with offsets counted per partition, in the order given."""
    offsets: dict[int, int] = {}
    records = []
    for partition, value in values:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        records.append(KafkaRecord(topic, partition, offset, 0, None, value))
    return records


def _batches(records: list[KafkaRecord], size: int) -> list[KafkaBatch]:
    """The records as a batched read hands them over: runs of one partition, in offset order."""
    by_partition: dict[int, list[KafkaRecord]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)
    return [
        KafkaBatch(run[0].topic, partition, tuple(run))
        for partition, ordered in by_partition.items()
        for run in (ordered[i : i + size] for i in range(0, len(ordered), size))
    ]


def _run(
    tmp_path: Path,
    shipments: list[KafkaRecord],
    sales: list[KafkaRecord],
    buckets: int,
    batch: int = 0,
    one_input: bool = False,
) -> dict[str, object]:
    """The views BackfillRetail writes; ``batch`` > 0 feeds KafkaBatch elements of that many records.

    ``one_input`` feeds both topics as one collection, as one read of both does.
    """
    warehouse = str(tmp_path / f"warehouse-{buckets}-{batch}-{one_input}")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        elements = [_batches(records, batch) if batch else records for records in (shipments, sales)]
        if one_input:
            both = pipeline | "Both" >> beam.Create([*elements[0], *elements[1]])
            topics = {shipments[0].topic: "shipment", sales[0].topic: "sale"}
            out = both | BackfillRetail(window_size=timedelta(hours=1), buckets=buckets, topics=topics)
        else:
            ships = pipeline | "Ships" >> beam.Create(elements[0])
            sold = pipeline | "Sales" >> beam.Create(elements[1])
            out = (ships, sold) | BackfillRetail(window_size=timedelta(hours=1), buckets=buckets)
        _ = out.inventory | "WriteInventory" >> WriteToWarehouse(warehouse, "inventory")
        _ = out.windows | "WriteWindows" >> WriteToWarehouse(warehouse, "sales_by_window")
        _ = (
            out.dead_letters
            | beam.Map(lambda d: {"source_topic": d.source_topic, "partition": d.partition, "offset": d.offset,
                                  "error": d.error, "payload": d.payload})
            | "WriteDead" >> WriteToWarehouse(warehouse, "dead_letters")
        )  # fmt: skip
    return views(Path(warehouse))


def _as_truth_input(records: list[KafkaRecord]) -> list[tuple[str, int, int, bytes | None]]:
    # The recompute reads a topic partition by partition, in offset order.
    return sorted((r.topic, r.partition, r.offset, r.value) for r in records)


@pytest.mark.parametrize(
    ("buckets", "batch", "one_input"),
    [
        (1, 0, False),
        pytest.param(16, 0, False, marks=pytest.mark.slow),  # the unit tier keeps one case of each kind
        pytest.param(16, 2, False, marks=pytest.mark.slow),
        (1, 100, False),
        (16, 2, True),
    ],
)
def test_backfill_equals_the_recompute_on_a_tricky_log(
    tmp_path: Path, buckets: int, batch: int, one_input: bool
) -> None:
    shipments = _log(
        "ships",
        [
            (0, _value("s1", "a", "x", 10, 0)),
            (1, _value("s2", "a", "y", 7, 5)),
            (1, b"not json"),
            (0, _value("s1", "a", "x", 10, 0)),  # a re-sent shipment
            (1, None),  # a tombstone
        ],
    )
    sales = _log(
        "sales",
        [
            # The same id for two items: two events.
            (1, _value("t1", "a", "y", 2, 61)),
            (0, _value("t1", "a", "x", 3, 59)),
            # The same event with another quantity, in partition 1 before partition 0's:
            # across partitions the lower one comes first, so this one is the dead letter.
            (1, _value("t2", "a", "x", 5, 59)),
            (0, _value("t2", "a", "x", 1, 59)),
            (0, _value("t3", "a", "x", 4, 120)),
            (1, _value("t4", "a", "y", 1, 30)),
            (1, _value("t5", "a", "x", 1, 0).replace(b'"quantity": 1', b'"quantity": 2.5')),
        ],
    )  # fmt: skip
    truth = recompute_retail(_as_truth_input(shipments), _as_truth_input(sales))
    got = _run(tmp_path, shipments, sales, buckets, batch, one_input)
    want = expected_views(truth)
    for name in want:
        assert got[name] == want[name], f"view {name}: {describe_diff(got[name], want[name])}"
    # The log holds what this test is about.
    assert truth.duplicates == 1 and len(truth.dead_letters) == 4
    assert truth.refused == {("sales", 1, 1): "reused"}
    assert (got["inventory"][("a", "x")][2], got["inventory"][("a", "y")][2]) == (8, 3)  # t1 for both items


@pytest.mark.parametrize(
    ("batch", "one_input"), [(0, False), pytest.param(37, False, marks=pytest.mark.slow), (37, True)]
)
def test_backfill_equals_the_recompute_on_a_random_log(tmp_path: Path, batch: int, one_input: bool) -> None:
    rng = random.Random(11)
    stores, items = ["a", "b", "c"], ["x", "y"]

    def values(prefix: str, count: int) -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        for _ in range(count):
            if out and rng.random() < 0.15:
                out.append(rng.choice(out))  # a re-send (maybe to another partition)
                continue
            ident = f"{prefix}{rng.randrange(count // 4)}"  # ids repeat, for the same key or another
            value = _value(ident, rng.choice(stores), rng.choice(items), rng.randint(1, 9), rng.randrange(600))
            out.append((rng.randrange(3), value if rng.random() > 0.05 else b"[]"))
        return out

    shipments, sales = _log("ships", values("s", 400)), _log("sales", values("t", 1200))
    truth = recompute_retail(_as_truth_input(shipments), _as_truth_input(sales))
    got = _run(tmp_path, shipments, sales, buckets=16, batch=batch, one_input=one_input)
    for name, want in expected_views(truth).items():
        assert got[name] == want, f"view {name}: {describe_diff(got[name], want)}"
    assert truth.duplicates > 100 and sum(why == "reused" for why in truth.refused.values()) > 100


def test_backfill_refuses_nonsense_settings() -> None:
    with pytest.raises(ConfigError, match="window_size"):
        BackfillRetail(window_size=timedelta(0))
    with pytest.raises(ConfigError, match="buckets"):
        BackfillRetail(buckets=0)
    with pytest.raises(ConfigError, match="a shipment topic and a sale topic"):
        BackfillRetail(topics={"a": "sale", "b": "sale"})
    with pytest.raises(ConfigError, match="needs topics"), beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = pipeline | beam.Create([b""]) | BackfillRetail()


def _window_sums(keys: list[tuple[str, str]], rows: list[tuple[int, int, int, int]]) -> _WindowSums:
    codes, starts, units, sales = (list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [], [])
    big = any(abs(u) >= 2**63 for u in units)
    return _WindowSums(
        keys,
        np.array(codes, dtype=np.int32),
        np.array(starts, dtype=np.int64),
        np.array(units, dtype=object if big else np.int64),
        np.array(sales, dtype=np.int64),
    )


def _as_dict(windows: _WindowSums) -> dict[tuple[tuple[str, str], int], tuple[int, int]]:
    columns = (windows.codes.tolist(), windows.starts.tolist(), windows.units.tolist(), windows.sales.tolist())
    found = {(windows.keys[c], s): (int(u), n) for c, s, u, n in zip(*columns, strict=True)}
    assert len(found) == len(windows.codes), "a (key, window) appears twice"
    return found


def test_accumulator_coders_round_trip_and_size_without_pickling(monkeypatch: pytest.MonkeyPatch) -> None:
    events_coder, windows_coder = _GatherEvents().get_accumulator_coder(), _MergeWindows(1).get_accumulator_coder()
    assert events_coder != windows_coder  # Beam shares equal coders between steps: each keeps its own estimate
    events = _Events.empty()
    events.extend(_Events(["e1"], array("i", [0]), array("q", [5]), ["s"], ["i"], array("q", [2]), array("q", [7])))
    with_nul = _Events.empty()
    with_nul.extend(events)
    with_nul.ids[0] = "e\x001"  # any id may hold a NUL: those pickle as a list
    for acc in (events, with_nul, _Events.empty()):
        decoded = events_coder.decode(events_coder.encode(acc))
        assert decoded == acc and type(decoded) is type(acc)
    windows = [_window_sums([("s", "i"), ("t", "j")], [(0, 0, 4, 1), (1, -3_600, 2**63 + 1, 2)])]
    assert [_as_dict(w) for w in windows_coder.decode(windows_coder.encode(windows))] == [_as_dict(windows[0])]
    # Beam sizes sampled elements for its counters: that must not pickle a whole bucket again.
    monkeypatch.setattr("transforms.coders.pickle_whole", lambda value: pytest.fail("pickled to size"))
    assert events_coder.get_impl().estimate_size(events) > 0
    assert windows_coder.get_impl().estimate_size(windows) > 0


@pytest.mark.parametrize("largest", [9, 2**62, 2**63 - 1])
def test_window_sums_add_up_as_python_ints_do(largest: int) -> None:
    # Parts as buckets and workers make them: each with its own key codes, repeats across parts.
    rng = random.Random(largest)
    keys = [("s1", "i1"), ("s1", "i2"), ("s2", "i1")]
    hour = 3_600_000_000
    want: dict[tuple[tuple[str, str], int], list[int]] = {}
    combine = _MergeWindows(hour)
    accumulators = []
    for _worker in range(2):
        acc = combine.create_accumulator()
        for _bucket in range(3):
            part_keys = rng.sample(keys, 2)
            rows = [
                (rng.randrange(2), rng.randrange(-3, 3) * hour, rng.randint(-largest, largest), 1) for _ in range(40)
            ]
            for code, start, units, sales in rows:
                total = want.setdefault((part_keys[code], start), [0, 0])
                total[0] += units
                total[1] += sales
            acc = combine.add_input(acc, _window_sums(part_keys, rows).grouped())
        accumulators.append(combine.compact(acc))
    final = combine.merge_accumulators(accumulators)
    merged = _joined_windows(final).grouped()
    assert _as_dict(merged) == {key: tuple(sums) for key, sums in want.items()}
    assert merged.units.dtype == (np.int64 if largest == 9 else object)  # int64 only where no sum can pass it
    if any(not -(2**63) <= units < 2**63 for units, _ in want.values()):
        with pytest.raises(OverflowError):
            combine.extract_output(final)
    else:
        table = combine.extract_output(final)
        assert table.num_rows == len(want)
        assert _strictly_ordered(table, SALES_BY_WINDOW.key)  # so the sink need not sort it


def test_the_first_occurrence_of_each_identity_in_the_log_wins() -> None:
    # Rows as parts from several workers join them: not in log order. An
    # identity is (event_id, store, item) within a bucket's topic.
    rows = [
        ("a", "i", 1, 4, 1),
        ("b", "i", 0, 9, 1),
        ("a", "i", 0, 7, 1),
        ("c", "i", 2, 0, 1),
        ("a", "i", 0, 3, 1),  # the first "a" of item i in the log
        ("b", "i", 0, 2, 5),  # the first "b": its re-send above has another quantity
        ("a", "i", 1, 0, 2),  # another quantity than the first "a"
        ("a", "j", 0, 1, 9),  # "a" again, for another item: another event
    ]
    events = _Events.empty()
    for event_id, item, partition, offset, quantity in rows:
        events.extend(
            _Events([event_id], array("i", [partition]), array("q", [offset]), ["s"], [item], array("q", [quantity]),
                    array("q", [0]))
        )  # fmt: skip
    found = _identities(events)
    assert sorted(rows[row][:4] for row in found.first) == [
        ("a", "i", 0, 3),
        ("a", "j", 0, 1),
        ("b", "i", 0, 2),
        ("c", "i", 2, 0),
    ]
    assert sorted((rows[row][2:4], rows[first][2:4]) for row, first in found.conflicts) == [
        ((0, 9), (0, 2)),  # b: quantity 1 against the first's 5
        ((1, 0), (0, 3)),  # a: quantity 2 against 1
    ]
    assert found.duplicates == 2  # the two other "a" of item i with quantity 1
