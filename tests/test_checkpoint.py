"""The resume point's pure logic and its tables in a real warehouse (no broker, no runner)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import BeamlineError
from core.views import INVENTORY_IDS
from transforms.checkpoint import (
    Checkpoint,
    IdColumns,
    Progress,
    claims_of,
    decode_state,
    encode_state,
    id_row,
    restore,
    restored_progress,
    state_row,
)
from transforms.counts import SalesKeyState, WindowState
from transforms.events import Sale
from transforms.inventory import InventoryDoFn, KeyState
from transforms.seen_ids import RestoredSeen, SeenBase, ident_hash
from warehouse.resume import begin_run, progress_version, query_tables, recorded_run
from warehouse.writer import GroupCommitter, Warehouse


def test_claims_are_runs_of_consecutive_offsets_per_partition():
    positions = [("a", 0, 5), ("a", 0, 3), ("a", 0, 4), ("b", 1, 9), ("a", 0, 8), ("a", 0, 8)]
    assert claims_of(positions) == ((("a", 0), ((3, 5), (8, 8))), (("b", 1), ((9, 9),)))


def test_progress_moves_its_floor_only_over_offsets_claimed():
    progress = Progress(10)
    progress.claim(15, 19)
    assert (progress.floor, progress.pending) == (10, [(15, 19)])
    progress.claim(10, 12)
    assert (progress.floor, progress.pending) == (13, [(15, 19)])
    progress.claim(3, 8)  # below the floor: done long ago
    assert (progress.floor, progress.pending) == (13, [(15, 19)])
    progress.claim(13, 14)
    assert (progress.floor, progress.pending) == (20, [])


def test_progress_knows_which_offsets_are_done():
    progress = Progress(10)
    progress.claim(15, 19)
    assert [o for o in range(8, 22) if progress.done(o)] == [8, 9, 15, 16, 17, 18, 19]
    again = Progress.from_row(progress.row("wordcount", ("t", 0), 0, 1, 3, 1))
    assert (again.floor, again.pending, again.start) == (10, [(15, 19)], 10)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 50), st.lists(st.integers(1, 7), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_progress_floor_is_the_first_offset_not_claimed_whatever_the_order(start, sizes, rnd):
    chunks, at = [], start
    for size in sizes:
        chunks.append((at, at + size - 1))
        at += size
    rnd.shuffle(chunks)
    progress, claimed = Progress(start), set()
    for first, last in chunks:
        progress.claim(first, last)
        claimed.update(range(first, last + 1))
        first_missing = next(o for o in range(start, at + 1) if o not in claimed)
        assert progress.floor == first_missing
        assert all(lo > progress.floor for lo, _ in progress.pending)
    assert (progress.floor, progress.pending) == (at, [])


def test_a_keys_state_round_trips_through_json():
    inventory = KeyState(shipped=5, sold=2, events=3, last_event_time=77, expired_before=-5, expiry_at=99)
    sales = SalesKeyState(
        closed_until=10, timer_at=20, early_pending=True, windows={3600: WindowState(4, 2, 0, True, True)}
    )
    assert decode_state(encode_state(inventory, sales)) == (inventory, sales)


def test_restored_ids_are_found_by_identity_and_forgotten_by_time():
    idents = [("sale", f"e{n}") for n in range(100)]
    hashes = np.array(sorted(ident_hash(k, e) for k, e in idents), dtype=np.int64)
    by_hash = {ident_hash(k, e): n for n, (k, e) in enumerate(idents)}
    times = np.array([by_hash[int(h)] * 10 for h in hashes], dtype=np.int64)
    quantities = np.array([by_hash[int(h)] + 1 for h in hashes], dtype=np.int64)
    base = SeenBase(hashes, times, quantities)
    seen = RestoredSeen({("sale", "new"): (5, 5)}, base)
    assert seen.get(("sale", "e7")) == (70, 8)
    assert seen[("sale", "e7")] == (70, 8)
    assert seen.get(("shipment", "e7")) is None  # another kind is another event
    assert seen.get(("sale", "new")) == (5, 5)
    with pytest.raises(KeyError):
        _ = seen[("sale", "nope")]
    kept = base.kept(500)
    assert kept is not None and len(kept) == 50 and kept.lookup("sale", "e49") is None
    assert kept.lookup("sale", "e50") == (500, 51)
    assert base.kept(10_000) is None


def test_dedupe_expiry_forgets_restored_ids_like_the_others():
    logic = InventoryDoFn("streaming", timedelta(microseconds=100_000))
    hashes = np.array(sorted([ident_hash("sale", "old"), ident_hash("sale", "young")]), dtype=np.int64)
    times = np.array([1_000 if int(h) == ident_hash("sale", "old") else 900_000 for h in hashes], dtype=np.int64)
    seen = RestoredSeen({}, SeenBase(hashes, times, np.ones(2, dtype=np.int64)))
    state = KeyState()
    kept = logic.forget(state, seen, 500_000)  # forgets ids before 400_000
    assert isinstance(kept, RestoredSeen) and kept
    assert kept.get(("sale", "old")) is None and kept.get(("sale", "young")) == (900_000, 1)
    assert state.expiry_at is not None and state.expiry_at > 900_000
    sale = Sale("young", "s", "i", 1, 900_000)
    assert logic.admit(state, kept, sale)[0] == "duplicate"


def test_runs_are_numbered_and_the_resume_point_is_the_lowest_floor(tmp_path: Path):
    root = str(tmp_path / "wh")
    assert recorded_run(root, "inventory") is None  # no warehouse yet
    starts = {("t", 0): 5, ("t", 1): 0}
    assert begin_run(root, "inventory", starts, shards=2) == 1
    first = recorded_run(root, "inventory")
    assert first is not None and (first.run, first.shards, dict(first.offsets)) == (1, 2, starts)
    # Shard 0 of partition 0 moves on, shard 1 does not: the partition resumes at shard 1's floor.
    moved = Progress(5)
    moved.claim(5, 40)
    writer = Warehouse(root)
    writer.commit("_resume_offsets", [moved.row("inventory", ("t", 0), 0, 2, 1, 1)])
    assert dict(recorded_run(root, "inventory").offsets)[("t", 0)] == 5
    behind = Progress(5)
    behind.claim(5, 20)
    writer.commit("_resume_offsets", [behind.row("inventory", ("t", 0), 1, 2, 1, 1)])
    writer.close()
    assert dict(recorded_run(root, "inventory").offsets)[("t", 0)] == 21
    assert recorded_run(root, "wordcount") is None  # another pipeline's point is its own
    # The next run starts with every shard at the recorded floors; four shards now.
    assert begin_run(root, "inventory", dict(recorded_run(root, "inventory").offsets), shards=4) == 2
    second = recorded_run(root, "inventory")
    assert (second.run, second.shards, dict(second.offsets)) == (2, 4, {("t", 0): 21, ("t", 1): 0})


def test_restore_reads_the_newest_state_ids_and_this_runs_offsets(tmp_path: Path):
    root = str(tmp_path / "wh")
    run = begin_run(root, "inventory", {("sales", 0): 0}, shards=1)
    key = ("s1", "i1")
    inventory = KeyState(shipped=9, sold=4, events=3, expired_before=1_000)
    writer = Warehouse(root)
    writer.commit_many(
        {
            "_inventory_state": [state_row(key, KeyState(), SalesKeyState(), 1)],
            "_inventory_ids": [id_row(key, "sale", "gone", 10, 1), id_row(key, "sale", "kept", 2_000, 4)],
        }
    )
    progress = Progress(0)
    progress.claim(0, 41)
    writer.commit_many(
        {
            "_inventory_state": [state_row(key, inventory, SalesKeyState(), 2)],
            # A retried bundle appends its ids again: harmless.
            "_inventory_ids": [id_row(key, "sale", "kept", 2_000, 4), id_row(key, "shipment", "kept", 3_000, 9)],
            "_resume_offsets": [progress.row("inventory", ("sales", 0), 0, 1, run, 1)],
        }
    )
    writer.close()
    restored = restore(Checkpoint(root, "inventory", run, ((("sales", 0), 0),)))
    text, version = restored.keys[key]
    assert version == 2 and decode_state(text)[0] == inventory
    base = restored.ids[key]
    assert len(base) == 2  # "gone" is older than what the key forgot; "kept" once
    seen = RestoredSeen({}, base)
    assert seen.get(("sale", "kept")) == (2_000, 4) and seen.get(("shipment", "kept")) == (3_000, 9)
    assert seen.get(("sale", "gone")) is None
    floors, newest = restored_progress(restored, Checkpoint(root, "inventory", run, ((("sales", 0), 0),)), 0)
    assert floors[("sales", 0)].floor == 42 and newest == progress_version(run, 1)


def test_hidden_tables_are_not_shown_to_readers(tmp_path: Path):
    from warehouse.reader import Reader

    root = str(tmp_path / "wh")
    begin_run(root, "inventory", {("t", 0): 0}, shards=1)
    reader = Reader(root)
    try:
        tables = {row["name"] for row in reader.query("SHOW TABLES").to_pylist()}
        assert "_resume_offsets" not in tables and "inventory" in tables
        with pytest.raises(BeamlineError):
            reader.query("SELECT * FROM _resume_offsets")
    finally:
        reader.close()
    _, (rows,) = query_tables(root, "SELECT count(*) AS n FROM _resume_offsets", ["_resume_offsets"])
    assert rows.to_pylist() == [{"n": 1}]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["s1", "s2"]),
            st.text(min_size=1, max_size=4),
            st.sampled_from(["sale", "shipment"]),
            st.text(min_size=1, max_size=8),
            st.integers(-(2**63), 2**63 - 1),
            st.integers(1, 10**6),
        ),
        max_size=30,
    )
)
@settings(max_examples=40, deadline=None)
def test_id_columns_make_the_table_the_id_rows_make(ids):
    columns = IdColumns()
    for store, item, kind, event_id, event_time, quantity in ids:
        columns.add((store, item), kind, event_id, event_time, quantity)
    rows = [id_row((store, item), kind, e, t, q) for store, item, kind, e, t, q in ids]
    assert len(columns) == len(ids)
    assert columns.table().equals(pa.Table.from_pylist(rows, schema=INVENTORY_IDS.storage_schema))


def test_a_group_commit_of_several_views_is_one_snapshot(tmp_path: Path):
    warehouse = Warehouse(tmp_path / "wh")
    writer = GroupCommitter(warehouse)
    before = warehouse.current().snapshot_id
    rng = random.Random(3)
    ids = [id_row(("s", "i"), "sale", f"e{n}", rng.randrange(10**6), 1) for n in range(20)]
    writer.commit_many(
        {"_inventory_ids": ids, "_inventory_state": [state_row(("s", "i"), KeyState(), SalesKeyState(), 1)]}
    )
    snap = warehouse.current()
    assert snap.snapshot_id == before + 1
    assert sum(n for _, n in snap.files["_inventory_ids"]) == 20 and snap.files["_inventory_state"]
    warehouse.close()


def test_compaction_drops_the_ids_their_key_forgot(tmp_path: Path):
    """The ids table stays the size of the dedupe horizon: compaction leaves out what keys forgot."""
    warehouse = Warehouse(tmp_path / "wh", max_files_per_view=2)
    key, other = ("s", "i"), ("s", "j")
    warehouse.commit("_inventory_state", [state_row(key, KeyState(expired_before=500), SalesKeyState(), 1)])
    for n in range(3):  # three commits: past the limit of two files, a compaction follows
        warehouse.commit(
            "_inventory_ids",
            [
                id_row(key, "sale", f"old{n}", 100, 1),
                id_row(key, "sale", f"new{n}", 900, 1),
                id_row(other, "sale", f"x{n}", 1, 1),  # a key with no state row keeps its ids
            ],
        )
    _, (rows,) = query_tables(
        warehouse.root, "SELECT item_id, event_id FROM _inventory_ids ORDER BY ALL", ["_inventory_ids"]
    )
    warehouse.close()
    assert [(r["item_id"], r["event_id"]) for r in rows.to_pylist()] == [
        ("i", "new0"), ("i", "new1"), ("i", "new2"), ("j", "x0"), ("j", "x1"), ("j", "x2"),
    ]  # fmt: skip


def test_a_resume_with_other_state_settings_is_refused_in_one_line(tmp_path: Path):
    from core.errors import ConfigError
    from transforms.checkpoint import start_run
    from transforms.kafka import KafkaConnection
    from warehouse.versions import run_tables

    root = str(tmp_path / "wh")
    settings = {"window_size": 3600, "allowed_lateness": 3600, "dedupe_horizon": 604800}
    begin_run(root, "inventory", {("sales", 0): 0}, shards=1, settings=settings)
    recorded = recorded_run(root, "inventory")
    assert recorded is not None and dict(recorded.settings) == settings
    nowhere = KafkaConnection("127.0.0.1:1")  # refused before any broker is asked
    with pytest.raises(ConfigError, match=r"computed with --window_size=3600; this run asks --window_size=1800"):
        start_run(nowhere, root, run_tables(root, "inventory", None), ["sales"], 1, {**settings, "window_size": 1800})


def test_a_damaged_resume_table_or_a_file_for_a_warehouse_is_one_clear_error(tmp_path: Path):
    from core.errors import ConfigError
    from warehouse.format import WarehouseInconsistent
    from warehouse.resume import check_readable, hold_run_lock

    root = tmp_path / "wh"
    begin_run(root, "inventory", {("sales", 0): 0}, shards=1)
    writer = Warehouse(root)
    writer.commit("_inventory_state", [state_row(("s", "i"), KeyState(), SalesKeyState(), 1)])
    (path,) = writer.current().paths("_inventory_state")
    writer.close()
    check_readable(root, ["_inventory_state", "_inventory_ids"])  # whole: nothing to say
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # a file cut short
    with pytest.raises(WarehouseInconsistent, match="beamline warehouse check") as caught:
        check_readable(root, ["_inventory_state"])
    assert "\n" not in str(caught.value) and "_inventory_state" in str(caught.value)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        hold_run_lock(a_file, "inventory")


def test_a_catch_up_keeps_open_the_windows_a_stream_would_when_the_log_holds_future_event_times(tmp_path: Path):
    """The catch-up's state is a caught-up stream's, whose watermark never passes the wall clock.

    Events dated two hours ahead must not close a window that ended 20 minutes
    ago: a stream accepts its sales for an hour more (the allowed lateness),
    so the catch-up's version must too, or it refuses as too late what every
    stream of the same log counts.
    """
    import time

    from transforms.checkpoint import commit_catch_up
    from transforms.counts import window_row
    from transforms.inventory import inventory_row
    from warehouse.versions import run_tables

    root = str(tmp_path / "wh")
    hour, half = 3_600_000_000, 1_800_000_000
    now = time.time_ns() // 1_000
    ended = now - now % half - half  # a 30-minute window that ended less than 30 minutes ago
    future = now + 2 * hour
    key = ("s1", "i1")
    writer = Warehouse(root)
    windows = [window_row(key, ended, half, 3, 2), window_row(key, future - future % half, half, 0, 0)]
    writer.commit_many({"inventory": [inventory_row(key, 9, 3, 3, future)], "sales_by_window": windows})
    writer.close()
    commit_catch_up(
        root, run_tables(root, "inventory", None), {("sales", 0): 5}, 1, remember_since=now - 24 * hour,
        horizon=timedelta(days=7), window_size=timedelta(minutes=30), allowed_lateness=timedelta(hours=1),
    )  # fmt: skip
    _, (states,) = query_tables(root, "SELECT state FROM _inventory_state", ["_inventory_state"])
    (state,) = states.column("state").to_pylist()
    _, sales = decode_state(state)
    assert sales.closed_until <= now + 1_000 - hour < ended + half  # the window is still open to late sales
    assert sales.windows[ended] == WindowState(units=3, sales=2, pane=0, on_time_fired=True, dirty=False)
    assert sales.closed_until > now - 2 * hour  # and no later than a stream's: windows an hour past lateness closed
