"""The warehouse write side: versioned upserts, snapshots, time travel, the Beam sink.

Everything runs on real Parquet files and DuckDB; concurrency tests use real
processes. Expected values come from the rows each test writes, not from the
code under test.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import random
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from core.errors import BeamlineError
from readside.query import run_query
from transforms.sinks import _CommitBatchesFn
from warehouse.format import list_snapshots
from warehouse.reader import Reader
from warehouse.writer import GroupCommitter, Warehouse, _strictly_ordered

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def inventory_rows(version: int, keys: int = 20, store: str = "s1") -> list[dict[str, Any]]:
    """Rows whose every number equals ``version``, so an answer shows which commit it came from."""
    return [
        {
            "store_id": store,
            "item_id": f"i{k:03d}",
            "on_hand": version,
            "shipped": version,
            "sold": 0,
            "events": version,
            "last_event_time": T0 + dt.timedelta(seconds=version),
        }
        for k in range(keys)
    ]


def all_views_answer(root: Path) -> dict[str, list[dict[str, Any]]]:
    order = {
        "inventory": "store_id, item_id",
        "sales_by_window": "window_start, store_id, item_id",
        "word_counts": "word",
        "dead_letters": 'source_topic, partition, "offset"',
    }
    return {v: run_query(f"SELECT * FROM {v} ORDER BY {o}", root).to_pylist() for v, o in order.items()}


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    wh = Warehouse(tmp_path / "wh")
    yield wh
    wh.close()


def sample_batch() -> dict[str, list[dict[str, Any]]]:
    return {
        "inventory": inventory_rows(3, keys=5),
        "sales_by_window": [
            {
                "window_start": T0,
                "window_end": T0 + dt.timedelta(hours=1),
                "store_id": "s1",
                "item_id": f"i{k}",
                "units": 10 + k,
                "sales": 1,
            }
            for k in range(3)
        ],
        "word_counts": [{"word": w, "count": n} for w, n in (("kafka", 3), ("beam", 2))],
        "dead_letters": [
            {"source_topic": "sales", "partition": 1, "offset": 42, "error": "quantity must be > 0", "payload": b"{}"}
        ],
    }


# -- versioned upserts ---------------------------------------------------------------
def test_replayed_and_duplicated_batches_leave_every_view_unchanged(warehouse: Warehouse) -> None:
    batch = sample_batch()
    for view, rows in batch.items():
        assert warehouse.commit(view, rows).rows_written == len(rows)
    before = all_views_answer(warehouse.root)
    files_before = tree(warehouse.root)
    for view, rows in batch.items():
        replay = warehouse.commit(view, rows)
        duplicated = warehouse.commit(view, rows + rows)
        assert replay.snapshot_id is None and replay.rows_written == 0
        assert duplicated.snapshot_id is None and duplicated.rows_written == 0
    assert all_views_answer(warehouse.root) == before
    assert tree(warehouse.root) == files_before
    assert before["inventory"][0]["on_hand"] == 3
    assert [r["word"] for r in before["word_counts"]] == ["beam", "kafka"]


def test_lower_version_never_overwrites_higher(warehouse: Warehouse) -> None:
    warehouse.commit("inventory", inventory_rows(5, keys=3))
    result = warehouse.commit("inventory", inventory_rows(4, keys=3) + inventory_rows(2, keys=3))
    assert result.rows_written == 0
    answer = run_query("SELECT DISTINCT on_hand, events FROM inventory", warehouse.root).to_pylist()
    assert answer == [{"on_hand": 5, "events": 5}]
    warehouse.commit("inventory", inventory_rows(6, keys=1))
    answer = run_query("SELECT item_id, events FROM inventory ORDER BY item_id", warehouse.root).to_pylist()
    assert [r["events"] for r in answer] == [6, 5, 5]


def test_highest_version_in_one_batch_wins_whatever_the_order(warehouse: Warehouse) -> None:
    warehouse.commit("word_counts", [{"word": "a", "count": 7}, {"word": "a", "count": 9}, {"word": "a", "count": 8}])
    assert run_query("SELECT * FROM word_counts", warehouse.root).to_pylist() == [{"word": "a", "count": 9}]


def test_hidden_sales_version_orders_windows_and_stays_hidden(warehouse: Warehouse) -> None:
    row = sample_batch()["sales_by_window"][0]
    warehouse.commit("sales_by_window", [{**row, "units": 5, "sales": 2}])
    warehouse.commit("sales_by_window", [{**row, "units": 99, "sales": 1}])  # a stale replay with fewer sales
    answer = run_query("SELECT * FROM sales_by_window", warehouse.root)
    assert answer.column_names == ["window_start", "window_end", "store_id", "item_id", "units"]
    assert answer.column("units").to_pylist() == [5]


def test_strictly_ordered_means_each_key_once_in_key_order() -> None:
    def table(*rows: tuple[Any, ...]) -> pa.Table:
        return pa.table({"a": [r[0] for r in rows], "b": [r[1] for r in rows]})

    assert _strictly_ordered(table((1, "x"), (1, "y"), (2, "a")), ["a", "b"])
    assert _strictly_ordered(table((1, "x")), ["a", "b"])
    assert not _strictly_ordered(table((1, "x"), (1, "x")), ["a", "b"])  # a key twice
    assert not _strictly_ordered(table((1, "y"), (1, "x")), ["a", "b"])  # out of order on the second column
    assert not _strictly_ordered(table((2, "a"), (1, "b")), ["a", "b"])
    assert not _strictly_ordered(table((1, "x"), (None, "y")), ["a", "b"])  # unknown: take the slow way


@pytest.mark.parametrize("max_known_rows", [0, 50_000])
def test_batches_already_in_key_order_are_stored_as_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_known_rows: int
) -> None:
    # In key order, each key once: the writer skips its dedupe and sort, with or without stored files.
    monkeypatch.setattr("warehouse.writer.KNOWN_VERSIONS_MAX_ROWS", max_known_rows)
    ordered, shuffled = Warehouse(tmp_path / "ordered"), Warehouse(tmp_path / "shuffled")
    rng = random.Random(5)
    written = []
    for version in (3, 2, 7):
        rows = [{**row, "events": version + k % 3} for k, row in enumerate(inventory_rows(version))]
        written.append(ordered.commit("inventory", rows).rows_written)
        assert shuffled.commit("inventory", rng.sample(rows, len(rows))).rows_written == written[-1]
    assert written == [20, 0, 20]  # the stale commit writes nothing
    assert all_views_answer(tmp_path / "ordered") == all_views_answer(tmp_path / "shuffled")
    assert {r["events"] for r in run_query("SELECT events FROM inventory", tmp_path / "ordered").to_pylist()} == {
        7,
        8,
        9,
    }
    ordered.close()
    shuffled.close()


def test_dead_letters_are_written_once(warehouse: Warehouse) -> None:
    first = {"source_topic": "sales", "partition": 0, "offset": 7, "error": "bad json", "payload": b"\xff"}
    warehouse.commit("dead_letters", [first])
    warehouse.commit("dead_letters", [{**first, "error": "other"}])
    rows = run_query("SELECT * FROM dead_letters", warehouse.root).to_pylist()
    assert rows == [first]


def test_rows_without_key_or_contract_columns_are_refused(warehouse: Warehouse) -> None:
    bad = inventory_rows(1, keys=1)
    bad[0]["store_id"] = None
    with pytest.raises(BeamlineError, match="null"):
        warehouse.commit("inventory", bad)
    with pytest.raises(BeamlineError, match="lacks column"):
        warehouse.commit("word_counts", [{"word": "x"}])
    with pytest.raises(BeamlineError, match="unknown view"):
        warehouse.commit("nope", [])


def test_a_non_empty_foreign_folder_is_not_turned_into_a_warehouse(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BeamlineError, match="not a Beamline warehouse"):
        Warehouse(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


# -- snapshots, time travel, compaction ----------------------------------------------
def test_as_of_returns_the_earlier_state_after_later_commits(warehouse: Warehouse) -> None:
    before_any = dt.datetime.now(UTC)
    warehouse.commit("inventory", inventory_rows(1))
    between = dt.datetime.now(UTC)
    warehouse.commit("inventory", inventory_rows(2))
    warehouse.commit("word_counts", [{"word": "late", "count": 1}])
    sql = "SELECT DISTINCT on_hand FROM inventory"
    assert run_query(sql, warehouse.root).to_pylist() == [{"on_hand": 2}]
    assert run_query(sql, warehouse.root, as_of=between).to_pylist() == [{"on_hand": 1}]
    assert run_query(sql, warehouse.root, as_of=between.isoformat()).to_pylist() == [{"on_hand": 1}]
    assert run_query("SELECT count(*) AS n FROM word_counts", warehouse.root, as_of=between).to_pylist() == [{"n": 0}]
    assert run_query("SELECT count(*) AS n FROM inventory", warehouse.root, as_of=before_any).to_pylist() == [{"n": 0}]
    with pytest.raises(BeamlineError, match="no snapshot at or before"):
        run_query(sql, warehouse.root, as_of="2000-01-01T00:00:00Z")


def test_compaction_bounds_files_and_keeps_answers_and_history(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh", max_files_per_view=4)
    marks = {}
    for version in range(1, 21):
        wh.commit("inventory", inventory_rows(version, keys=10))
        marks[version] = dt.datetime.now(UTC)
    assert len(wh.current().files["inventory"]) <= 5
    assert run_query("SELECT DISTINCT events FROM inventory", wh.root).to_pylist() == [{"events": 20}]
    assert run_query("SELECT count(*) AS n FROM inventory", wh.root).to_pylist() == [{"n": 10}]
    old = run_query("SELECT DISTINCT events FROM inventory", wh.root, as_of=marks[3]).to_pylist()
    assert old == [{"events": 3}]
    wh.compact()
    assert len(wh.current().files["inventory"]) == 1
    assert run_query("SELECT DISTINCT events FROM inventory", wh.root).to_pylist() == [{"events": 20}]
    wh.close()


def test_expire_snapshots_drops_old_history_but_not_the_present(warehouse: Warehouse) -> None:
    for version in (1, 2, 3):
        warehouse.commit("word_counts", [{"word": "w", "count": version}])
    middle = dt.datetime.now(UTC)
    warehouse.commit("word_counts", [{"word": "w", "count": 4}])
    warehouse.compact()
    removed = warehouse.expire_snapshots(dt.timedelta(0))
    assert removed >= 5
    assert len(list_snapshots(warehouse.root)) == 1
    assert len(list(warehouse.root.glob("data/word_counts/*.parquet"))) == 1
    assert run_query("SELECT * FROM word_counts", warehouse.root).to_pylist() == [{"word": "w", "count": 4}]
    with pytest.raises(BeamlineError, match="oldest kept snapshot"):
        run_query("SELECT * FROM word_counts", warehouse.root, as_of=middle)


def test_catalog_sql_opens_the_views_in_a_plain_duckdb_session(warehouse: Warehouse) -> None:
    for view, rows in sample_batch().items():
        warehouse.commit(view, rows)
    warehouse.commit("inventory", inventory_rows(4, keys=2))
    con = duckdb.connect()
    con.execute((warehouse.root / "catalog.sql").read_text())
    got = con.sql("SELECT item_id, on_hand FROM inventory ORDER BY item_id").fetchall()
    assert got == [("i000", 4), ("i001", 4), ("i002", 3), ("i003", 3), ("i004", 3)]
    assert con.sql("SELECT count(*) FROM word_counts").fetchall() == [(2,)]
    con.close()


# -- concurrency: real processes -------------------------------------------------------
WORDS = 50


def _reader_process(root: str, ready: Any, done: Any, out: Any) -> None:
    """Query in a loop until the writer is done; report errors and torn answers."""
    queries = errors = torn = 0
    seen: set[int] = set()
    first_error = ""
    reader = Reader(root)
    ready.wait()
    finished = False
    while not finished:
        finished = done.is_set()  # one more query after the last commit
        try:
            n, lo, hi = reader.query("SELECT count(*), min(count), max(count) FROM word_counts").to_pylist()[0].values()
            queries += 1
            if n == 0:
                continue
            if n != WORDS or lo != hi:
                torn += 1
            seen.add(lo)
        except Exception as e:
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
    reader.close()
    out.put({"queries": queries, "errors": errors, "torn": torn, "seen": sorted(seen), "first_error": first_error})


@pytest.mark.processes
def test_four_reader_processes_see_whole_versions_while_a_writer_commits_100(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh", max_files_per_view=8)  # compaction happens during the run too
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(5)
    done = ctx.Event()
    out = ctx.Queue()
    readers = [ctx.Process(target=_reader_process, args=(str(wh.root), ready, done, out)) for _ in range(4)]
    for p in readers:
        p.start()
    ready.wait(timeout=60)  # every reader has its snapshot open and is about to query
    for version in range(1, 101):
        result = wh.commit("word_counts", [{"word": f"w{i:02d}", "count": version} for i in range(WORDS)])
        assert result.rows_written == WORDS
    done.set()
    reports = [out.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(timeout=60)
        assert p.exitcode == 0
    wh.close()
    assert [r["errors"] for r in reports] == [0, 0, 0, 0], [r["first_error"] for r in reports]
    assert [r["torn"] for r in reports] == [0, 0, 0, 0]
    assert all(r["queries"] > 0 for r in reports)
    assert all(r["seen"][-1] == 100 for r in reports)  # the query after the last commit sees it whole
    assert len({v for r in reports for v in r["seen"]}) > 1  # readers really overlapped with commits


def _writer_process(root: str, parity: int, ready: Any, out: Any) -> None:
    wh = Warehouse(root)
    ready.wait()
    written = 0
    for version in range(parity, 60, 2):
        written += wh.commit("inventory", inventory_rows(version, keys=30)).rows_written
    wh.close()
    out.put(written)


@pytest.mark.processes
def test_two_writer_processes_commit_to_one_warehouse(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    Warehouse(root).close()
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(2)
    out = ctx.Queue()
    writers = [ctx.Process(target=_writer_process, args=(str(root), parity, ready, out)) for parity in (1, 2)]
    for p in writers:
        p.start()
    written = [out.get(timeout=120) for _ in writers]
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(written) > 0
    ids = [s[0] for s in list_snapshots(root)]
    assert ids == list(range(len(ids)))  # one snapshot per commit, none lost or reused
    times = [s[1] for s in list_snapshots(root)]
    assert times == sorted(set(times))
    assert run_query("SELECT DISTINCT events FROM inventory", root).to_pylist() == [{"events": 59}]
    assert run_query("SELECT count(*) AS n FROM inventory", root).to_pylist() == [{"n": 30}]


# -- the Beam sink -------------------------------------------------------------------
def test_write_to_warehouse_in_a_pipeline_is_idempotent_on_rerun(tmp_path: Path) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from transforms.sinks import WriteToWarehouse

    root = tmp_path / "wh"
    rows = [
        {**r, "item_id": f"{r['item_id']}-{v}"} for v in (1, 2) for r in inventory_rows(v, keys=50, store="s9")
    ] + inventory_rows(7, keys=3, store="s9")

    def run_once() -> None:
        options = PipelineOptions(flags=[], runner="FnApiRunner")
        with TestPipeline(options=options) as p:
            _ = p | beam.Create(rows) | WriteToWarehouse(str(root), "inventory", max_batch_rows=40)
        with TestPipeline(options=options) as p:  # the same kind of rows as beam.Row objects
            _ = p | beam.Create(rows[:5]) | beam.Map(lambda r: beam.Row(**r)) | WriteToWarehouse(str(root), "inventory")

    run_once()
    snapshots_after_first = list_snapshots(root)
    answer = run_query("SELECT item_id, events FROM inventory ORDER BY item_id", root).to_pylist()
    assert len(answer) == 103
    assert {r["events"] for r in answer if r["item_id"] in ("i000", "i001", "i002")} == {7}
    run_once()  # a replay of the same input: no new snapshot, same answer
    assert list_snapshots(root) == snapshots_after_first
    assert run_query("SELECT item_id, events FROM inventory ORDER BY item_id", root).to_pylist() == answer


@pytest.mark.parametrize("max_known_rows", [50_000, 25], ids=["remembered", "too-large-to-remember"])
def test_writers_that_remember_versions_give_the_answers_the_files_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_known_rows: int
) -> None:
    """Random replays, reorders and duplicates from two writers (two processes): every view is the truth."""
    monkeypatch.setattr("warehouse.writer.KNOWN_VERSIONS_MAX_ROWS", max_known_rows)
    rng = random.Random(11)
    first, second = Warehouse(tmp_path / "wh", max_files_per_view=4), Warehouse(tmp_path / "wh")
    newest: dict[str, int] = {}
    letters: set[int] = set()
    for n in range(80):
        writer = second if n % 9 == 4 else first  # the other writer's commits change the files under the first
        versions = [(f"i{rng.randrange(40):03d}", rng.randrange(1, 500)) for _ in range(rng.randint(0, 25))]
        rows = [
            {**inventory_rows(v, keys=1)[0], "item_id": item, "on_hand": v - 1}
            for item, v in versions + versions[: rng.randint(0, 3)]  # some rows twice in one batch
        ]
        writer.commit("inventory", rows)
        for item, v in versions:
            newest[item] = max(newest.get(item, 0), v)
        offsets = rng.sample(range(300), rng.randint(0, 6))  # a record is one dead letter in its batch
        writer.commit(
            "dead_letters",
            [{"source_topic": "t", "partition": 0, "offset": o, "error": "e", "payload": b"x"} for o in offsets],
        )
        letters.update(offsets)
    rows = run_query("SELECT item_id, events, on_hand FROM inventory", tmp_path / "wh").to_pylist()
    assert {r["item_id"]: r["events"] for r in rows} == newest
    assert all(r["on_hand"] == r["events"] - 1 for r in rows)  # the newest row, whole
    dead = run_query('SELECT "offset" FROM dead_letters', tmp_path / "wh").to_pylist()
    assert sorted(r["offset"] for r in dead) == sorted(letters)  # each once
    # Nothing older or equal is written again, whichever way the writer decides.
    stale = [{**inventory_rows(v, keys=1)[0], "item_id": item} for item, v in newest.items()]
    assert first.commit("inventory", stale).rows_written == 0
    assert ("inventory" in first._known) == (len(newest) <= max_known_rows)
    first.close()
    second.close()


def test_sink_steps_of_one_process_share_one_writer_per_warehouse(tmp_path: Path) -> None:
    # Each writer holds an in-memory DuckDB: one per folder and process, however many sink steps.
    steps = [
        _CommitBatchesFn(str(tmp_path / name), view, 100, None, 1)
        for name, view in (("wh", "inventory"), ("wh", "dead_letters"), ("other", "inventory"))
    ]
    for step in steps:
        step.setup()
    inventory, dead, elsewhere = steps
    assert inventory._outlet._writer is dead._outlet._writer is not elsewhere._outlet._writer
    inventory.teardown()
    # The other step still commits through the shared writer after one step went away.
    dead.start_bundle()
    dead.process({"source_topic": "s", "partition": 0, "offset": 1, "error": "bad", "payload": b"x"})
    dead.finish_bundle()
    assert run_query("SELECT count(*) AS n FROM dead_letters", tmp_path / "wh").to_pylist() == [{"n": 1}]
    shared = dead._outlet._writer
    dead.teardown()
    elsewhere.teardown()
    assert shared is not None and shared.warehouse._con is None  # closed with its last user
    again = _CommitBatchesFn(str(tmp_path / "wh"), "inventory", 100, None, 1)
    again.setup()
    assert again._outlet._writer is not shared  # a fresh writer after the last one closed
    again.teardown()


def test_warehouse_accepts_an_arrow_table(warehouse: Warehouse) -> None:
    table = pa.Table.from_pylist(inventory_rows(2, keys=4))
    assert warehouse.commit("inventory", table).rows_written == 4
    assert run_query("SELECT sum(on_hand) AS s FROM inventory", warehouse.root).to_pylist() == [{"s": 8}]


def test_sink_step_commits_tables_and_rows_of_one_bundle_together(tmp_path: Path) -> None:
    step = _CommitBatchesFn(str(tmp_path / "wh"), "inventory", 10, None, 1)
    step.setup()
    step.start_bundle()
    step.process(pa.Table.from_pylist(inventory_rows(1, keys=4)))
    step.process(inventory_rows(2, keys=5)[4])
    step.process(pa.Table.from_pylist(inventory_rows(3, keys=12)[5:]))  # 12 rows pending: flushed here
    step.process(inventory_rows(4, keys=13)[12])
    step.finish_bundle()
    step.teardown()
    # The empty first snapshot, one commit at the row limit, one at the bundle's end.
    assert [s[0] for s in list_snapshots(tmp_path / "wh")] == [0, 1, 2]
    got = run_query("SELECT item_id, on_hand FROM inventory ORDER BY item_id", tmp_path / "wh").to_pylist()
    version = [1] * 4 + [2] + [3] * 7 + [4]
    assert got == [{"item_id": f"i{k:03d}", "on_hand": version[k]} for k in range(13)]


# -- several views in one snapshot, and group commits --------------------------------
def dead_letter(offset: int) -> dict[str, Any]:
    return {"source_topic": "sales", "partition": 0, "offset": offset, "error": "bad", "payload": b"x"}


def test_commit_many_puts_several_views_in_one_snapshot(warehouse: Warehouse) -> None:
    results = warehouse.commit_many({"inventory": inventory_rows(2, keys=3), "dead_letters": [dead_letter(7)]})
    assert {v: (r.snapshot_id, r.rows_written) for v, r in results.items()} == {
        "inventory": (1, 3),
        "dead_letters": (1, 1),
    }
    # One view's rows all stale: the other still commits, and only it gets a file.
    again = warehouse.commit_many({"inventory": inventory_rows(1, keys=3), "dead_letters": [dead_letter(8)]})
    assert (again["inventory"].snapshot_id, again["inventory"].rows_written) == (None, 0)
    assert (again["dead_letters"].snapshot_id, again["dead_letters"].rows_written) == (2, 1)
    # Nothing new anywhere: no snapshot at all.
    stale = warehouse.commit_many({"inventory": inventory_rows(2, keys=3), "dead_letters": [dead_letter(7)]})
    assert all(r.snapshot_id is None for r in stale.values())
    assert [s[0] for s in list_snapshots(warehouse.root)] == [0, 1, 2]
    answer = all_views_answer(warehouse.root)
    assert [r["on_hand"] for r in answer["inventory"]] == [2, 2, 2]
    assert [r["offset"] for r in answer["dead_letters"]] == [7, 8]


def _committers(writer: GroupCommitter, calls: list[tuple[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Start one thread per (view, rows) while the test holds the commit lock; return threads and their errors."""
    import threading

    errors: list[Any] = [None] * len(calls)

    def call(i: int, view: str, rows: Any) -> None:
        try:
            writer.commit(view, rows)
        except BaseException as exc:  # handed to the test
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i, v, r)) for i, (v, r) in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, errors


def _wait_for_queue(writer: GroupCommitter, n: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while len(writer._queue) < n:  # every caller has left its rows and waits for the lock
        assert time.monotonic() < deadline, f"only {len(writer._queue)} of {n} callers queued"
        time.sleep(0.001)


def test_group_commit_writes_waiting_callers_rows_as_one_snapshot(warehouse: Warehouse) -> None:
    writer = GroupCommitter(warehouse)
    calls = [
        ("inventory", inventory_rows(3, keys=4)),
        ("inventory", inventory_rows(5, keys=2)),  # newer rows for two of the same keys
        ("dead_letters", [dead_letter(1)]),
        ("dead_letters", [dead_letter(2)]),
    ]
    with writer._commit_lock:
        threads, errors = _committers(writer, calls)
        _wait_for_queue(writer, len(calls))
    for t in threads:
        t.join(timeout=60)
    assert errors == [None] * len(calls)
    assert [s[0] for s in list_snapshots(warehouse.root)] == [0, 1]  # four commits, one snapshot
    answer = all_views_answer(warehouse.root)
    assert [r["on_hand"] for r in answer["inventory"]] == [5, 5, 3, 3]
    assert [r["offset"] for r in answer["dead_letters"]] == [1, 2]


def test_a_commit_past_the_file_limit_returns_while_the_views_are_compacted_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    warehouse = Warehouse(tmp_path / "wh", max_files_per_view=3)
    writer = GroupCommitter(warehouse)
    merging, release = threading.Event(), threading.Event()
    compact = Warehouse._compact_commit

    def held(self: Warehouse, views: list[str], *, full: bool) -> Any:
        merging.set()
        assert release.wait(60)
        return compact(self, views, full=full)

    monkeypatch.setattr(Warehouse, "_compact_commit", held)
    for version in (1, 2, 3, 4):  # the fourth file takes the view past the limit of three
        writer.commit("inventory", inventory_rows(version, keys=4))
    assert merging.wait(60)
    writer.commit("inventory", inventory_rows(5, keys=4))  # while the merge is held: commits go on
    assert len(warehouse.current().files["inventory"]) == 5
    release.set()
    writer.close()  # waits for the merge
    assert len(warehouse.current().files["inventory"]) <= 3
    assert writer.compactor.failures == 0
    assert [r["on_hand"] for r in all_views_answer(warehouse.root)["inventory"]] == [5, 5, 5, 5]


def test_a_failed_background_compaction_is_a_warning_and_loses_no_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse = Warehouse(tmp_path / "wh", max_files_per_view=2)
    writer = GroupCommitter(warehouse)

    def disk_full(self: Warehouse, views: list[str], *, full: bool) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Warehouse, "_compact_commit", disk_full)
    for version in (1, 2, 3):
        writer.commit("inventory", inventory_rows(version, keys=2))
    writer.close()
    assert writer.compactor.failures == 1
    assert "No space left" in caplog.text and "the next commit past the limit asks again" in caplog.text
    assert len(warehouse.current().files["inventory"]) == 3
    assert [r["on_hand"] for r in all_views_answer(warehouse.root)["inventory"]] == [3, 3]


def test_a_failed_group_commit_fails_every_caller_in_it_and_publishes_nothing(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = GroupCommitter(warehouse)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(warehouse, "_publish", disk_full)
    calls = [("inventory", inventory_rows(1, keys=2)), ("dead_letters", [dead_letter(1)])]
    with writer._commit_lock:
        threads, errors = _committers(writer, calls)
        _wait_for_queue(writer, len(calls))
    for t in threads:
        t.join(timeout=60)
    # The caller that committed fails with the error itself, the other with one that names it.
    assert sorted(type(e).__name__ for e in errors) == ["BeamlineError", "OSError"], errors
    assert all("No space left" in str(e) for e in errors), errors
    assert [s[0] for s in list_snapshots(warehouse.root)] == [0]
    # Rows a view refuses fail their own caller, before they could spoil a group.
    monkeypatch.undo()
    with pytest.raises(BeamlineError, match="nulls in 'store_id'"):
        writer.commit("inventory", [{**inventory_rows(1, keys=1)[0], "store_id": None}])
    assert writer._queue == []
    writer.commit("inventory", inventory_rows(1, keys=2))
    assert [r["on_hand"] for r in all_views_answer(warehouse.root)["inventory"]] == [1, 1]
