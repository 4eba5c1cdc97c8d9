"""Versions of a view on real warehouse folders: tables beside the view, the alias, promote, rollback, drop.

Each test writes rows whose numbers say which version they belong to (v1
rows hold 1s, v2 rows 2s), so an answer shows which version it came from.
No broker: the lag check is the end-to-end test's (tests/test_upgrades.py);
here promotes pass ``--force`` or call :mod:`warehouse.versions` directly.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest
from starlette.testclient import TestClient

from cli.main import main as beamline
from core.errors import ConfigError
from core.views import get_view, table_name
from readside.query import connect, run_query
from readside.serve import ServeConfig, create_app
from readside.versions import list_versions
from tests.cli_helpers import assert_one_line_error, run_cli
from warehouse.check import check_warehouse
from warehouse.format import MARKER_FILE, SNAPSHOTS_DIR, load_snapshot, manifest_name
from warehouse.reader import QueryFailed, Reader
from warehouse.resume import begin_run, recorded_run
from warehouse.versions import UnknownVersion, drop, promote, rollback, run_tables
from warehouse.writer import Warehouse

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def stock(version: int, keys: int = 10) -> list[dict[str, Any]]:
    """Inventory rows whose numbers all equal ``version``."""
    return [
        {
            "store_id": "s1",
            "item_id": f"i{k:03d}",
            "on_hand": version,
            "shipped": version,
            "sold": 0,
            "events": version,
            "last_event_time": T0,
        }
        for k in range(keys)
    ]


def windows(minutes: int, keys: int = 4) -> list[dict[str, Any]]:
    """Sales windows ``minutes`` long (v1: 60, v2: 30): each version's windows tell it apart."""
    return [
        {
            "window_start": T0,
            "window_end": T0 + dt.timedelta(minutes=minutes),
            "store_id": "s1",
            "item_id": f"i{k:03d}",
            "units": 1,
            "sales": 1,
        }
        for k in range(keys)
    ]


def letters(topic: str) -> list[dict[str, Any]]:
    return [{"source_topic": topic, "partition": 0, "offset": 7, "error": "not JSON", "payload": b"x"}]


def two_versions(root: Path) -> Path:
    """A warehouse whose inventory pipeline has v1 (plain tables) and v2 beside it, and a word count."""
    wh = Warehouse(root)
    try:
        wh.commit_many({"inventory": stock(1), "sales_by_window": windows(60), "dead_letters": letters("v1")})
        wh.commit_many({"inventory@v2": stock(2), "sales_by_window@v2": windows(30), "dead_letters@v2": letters("v2")})
        wh.commit("word_counts", [{"word": "kafka", "count": 3}])
    finally:
        wh.close()
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return two_versions(tmp_path / "wh")


def shown(root: Path, as_of: Any = None) -> tuple[int, int, str]:
    """(inventory's on_hand, sales windows' minutes, dead letters' topic) as one query of the plain names sees them."""
    sql = """SELECT (SELECT min(on_hand) FROM inventory) AS stock,
                    (SELECT min(epoch(window_end) - epoch(window_start)) // 60 FROM sales_by_window) AS minutes,
                    (SELECT min(source_topic) FROM dead_letters) AS topic"""
    row = run_query(sql, root, as_of).to_pylist()[0]
    return row["stock"], row["minutes"], row["topic"]


def manifest(root: Path, snapshot_id: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((root / SNAPSHOTS_DIR / manifest_name(snapshot_id)).read_text())
    return doc


def test_a_version_is_a_table_beside_the_view_queryable_by_its_name(root: Path) -> None:
    assert shown(root) == (1, 60, "v1")  # nothing promoted: the plain tables are v1
    assert run_query('SELECT min(on_hand) AS n FROM "inventory@v2"', root).to_pylist() == [{"n": 2}]
    assert run_query('SELECT min(on_hand) AS n FROM "inventory@v1"', root).to_pylist() == [{"n": 1}]
    with pytest.raises(QueryFailed, match="no version 'v3' here; its versions: inventory@v1, inventory@v2"):
        run_query('SELECT * FROM "inventory@v3"', root)
    doc = manifest(root, load_snapshot(root).snapshot_id)
    assert {"inventory", "inventory@v2", "sales_by_window@v2", "dead_letters@v2"} <= set(doc["views"])
    # Beamline from before versions would drop them from its next manifest: the folder says format 3.
    assert json.loads((root / MARKER_FILE).read_text())["format_version"] == 3
    assert (root / "data" / "inventory@v2").is_dir()
    assert get_view("inventory@v2").name == "inventory@v2" and get_view("inventory@v1").name == "inventory"
    assert check_warehouse(root).ok


def test_promote_is_one_commit_that_moves_the_pipelines_views_together(root: Path) -> None:
    before = load_snapshot(root)
    moved = promote(root, "inventory", "v2")
    assert moved.snapshot is not None and moved.snapshot.snapshot_id == before.snapshot_id + 1
    assert moved.aliases == {v: ("v1", "v2") for v in ("inventory", "sales_by_window", "dead_letters")}
    assert shown(root) == (2, 30, "v2")
    assert run_query("SELECT count(*) AS n FROM word_counts", root).to_pylist() == [{"n": 1}]  # another pipeline's
    doc = manifest(root, moved.snapshot.snapshot_id)
    assert doc["operation"] == "promote"
    files = {t: [(f["path"], f["rows"]) for f in v] for t, v in doc["views"].items()}
    assert files == {t: list(v) for t, v in before.files.items()}  # the parent's files: only the aliases moved
    assert doc["aliases"]["inventory"] == {"version": "v2", "previous": "v1", "generation": 1}
    assert promote(root, "inventory", "v2").snapshot is None  # already shown: nothing to commit


def test_time_travel_answers_with_the_version_promoted_then(root: Path) -> None:
    first = load_snapshot(root)
    promoted = promote(root, "inventory", "v2").snapshot
    rolled = rollback(root, "inventory").snapshot
    assert promoted is not None and rolled is not None
    assert shown(root) == (1, 60, "v1")
    assert shown(root, first.committed_at) == (1, 60, "v1")
    assert shown(root, promoted.committed_at) == (2, 30, "v2")
    assert shown(root, rolled.committed_at) == (1, 60, "v1")
    # A second rollback goes forward again: the previous version of v1 is now v2.
    assert rollback(root, "inventory").aliases["inventory"] == ("v1", "v2")
    assert load_snapshot(root).alias("inventory").generation == 3


def test_commits_compaction_and_expiry_carry_the_aliases_and_every_table_on(root: Path) -> None:
    promote(root, "inventory", "v2")
    wh = Warehouse(root, max_files_per_view=2)
    try:
        for n in range(3, 7):
            wh.commit("inventory@v2", stock(n))  # past the file limit: the writer compacts the version
        wh.commit("inventory", stock(9))  # v1 goes on beside it, unseen
        wh.compact()
        wh.expire_snapshots(dt.timedelta(0))
    finally:
        wh.close()
    snap = load_snapshot(root)
    assert snap.promoted("inventory") == "v2" and snap.promoted("sales_by_window") == "v2"
    assert len(snap.files["inventory@v2"]) == 1
    assert shown(root) == (6, 30, "v2")
    assert run_query('SELECT min(on_hand) AS n FROM "inventory@v1"', root).to_pylist() == [{"n": 9}]
    assert check_warehouse(root, all_snapshots=True).ok


def test_drop_refuses_the_promoted_version_and_expiry_frees_the_dropped_files(root: Path) -> None:
    promote(root, "inventory", "v2")
    with pytest.raises(Exception, match="is the version readers see"):
        drop(root, "inventory", "v2")
    v1_files = [root / rel for table in ("inventory", "sales_by_window") for rel, _ in load_snapshot(root).files[table]]
    dropped = drop(root, "inventory", "v1")
    assert dropped.snapshot is not None and set(dropped.dropped) >= {"inventory", "sales_by_window", "dead_letters"}
    assert run_query('SELECT count(*) AS n FROM "inventory@v1"', root).to_pylist() == [{"n": 0}]
    assert shown(root) == (2, 30, "v2")
    assert all(f.exists() for f in v1_files)  # older snapshots still list them: time travel reads them
    with pytest.raises(Exception, match="no earlier version to roll back to"):
        rollback(root, "inventory")
    for view in ("inventory", "sales_by_window"):  # the emptied v1 is not a version readers can be moved to
        with pytest.raises(Exception, match="holds no rows"):
            promote(root, view, "v1")
    assert shown(root) == (2, 30, "v2")
    wh = Warehouse(root)
    try:
        wh.expire_snapshots(dt.timedelta(0))
    finally:
        wh.close()
    assert not any(f.exists() for f in v1_files)
    assert shown(root) == (2, 30, "v2")


def test_dropping_a_version_drops_its_resume_point(root: Path) -> None:
    starts = {("sales", 0): 5}
    begin_run(root, "inventory", starts, 1)
    begin_run(root, "inventory@v2", starts, 1)
    wh = Warehouse(root)
    try:
        wh.commit("_inventory_state@v2", [{"store_id": "s1", "item_id": "i1", "expired_before": 0, "state": "{}",
                                           "version": 1}])  # fmt: skip
    finally:
        wh.close()
    moved = drop(root, "inventory", "v2")
    assert "_inventory_state@v2" in moved.dropped
    assert recorded_run(root, "inventory@v2") is None  # built again, v2 would start from the log, not resume
    recorded = recorded_run(root, "inventory")
    assert recorded is not None and dict(recorded.offsets) == starts
    assert "_inventory_state@v2" not in load_snapshot(root).files
    with pytest.raises(UnknownVersion, match="no version 'v2'"):
        promote(root, "inventory", "v2")


def test_readers_see_one_version_whole_while_the_alias_moves(root: Path) -> None:
    """Four readers query both views in one statement while a writer promotes and rolls back, over and over."""
    answers: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        reader = Reader(root)
        try:
            while not done.is_set():
                row = reader.query(
                    "SELECT (SELECT min(on_hand) FROM inventory) AS s, (SELECT max(on_hand) FROM inventory) AS t, "
                    "(SELECT min(source_topic) FROM dead_letters) AS d"
                ).to_pylist()[0]
                answers.append((row["s"], row["t"], row["d"]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            reader.close()

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        moves = 0
        while len(answers) < 40 and moves < 400 and not errors:
            promote(root, "inventory", "v2")
            rollback(root, "inventory")
            moves += 2
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]
    assert set(answers) == {(1, 1, "v1"), (2, 2, "v2")}, set(answers)  # each whole, and both seen


def test_catalog_sql_and_connect_follow_the_alias(root: Path) -> None:
    promote(root, "inventory", "v2")
    con = duckdb.connect()
    con.execute((root / "catalog.sql").read_text())
    assert con.sql('SELECT min(on_hand), (SELECT min(on_hand) FROM "inventory@v1") FROM inventory').fetchall() == [
        (2, 1)
    ]
    notebook = connect(root)
    assert notebook.sql("SELECT min(on_hand) FROM inventory").fetchall() == [(2,)]
    assert notebook.sql('SELECT min(on_hand) FROM "inventory@v1"').fetchall() == [(1,)]
    notebook.close()


def test_a_warehouse_from_before_versions_is_its_v1(tmp_path: Path) -> None:
    """Manifests without aliases and a format-2 marker: read as v1, promoted without a migration."""
    root = tmp_path / "old"
    wh = Warehouse(root)
    try:
        wh.commit("inventory", stock(1))
    finally:
        wh.close()
    for path in (root / SNAPSHOTS_DIR).glob("snapshot-*.json"):
        doc = json.loads(path.read_text())
        doc.pop("aliases")
        doc["views"] = {t: v for t, v in doc["views"].items() if "@" not in t}
        path.write_text(json.dumps(doc))
    assert json.loads((root / MARKER_FILE).read_text())["format_version"] == 2
    assert shown(root)[0] == 1
    wh = Warehouse(root)
    try:
        wh.commit("inventory@v2", stock(2))
    finally:
        wh.close()
    promote(root, "inventory", "v2")
    assert shown(root)[0] == 2
    assert json.loads((root / MARKER_FILE).read_text())["format_version"] == 3


def test_the_read_service_follows_a_promote_index_and_all(root: Path) -> None:
    with TestClient(create_app(ServeConfig(root, rate_limit=0)), base_url="http://127.0.0.1") as client:
        assert client.get("/v1/inventory/s1/i001").json()["row"]["on_hand"] == 1
        moved = promote(root, "inventory", "v2")
        assert moved.snapshot is not None
        sid = moved.snapshot.snapshot_id
        looked = client.get(f"/v1/inventory/s1/i001?min_snapshot={sid}&wait=10").json()
        assert looked["row"]["on_hand"] == 2
        assert client.get("/v1/inventory/s1/i001").json()["snapshot"]["id"] == sid  # the index was rebuilt from v2
        listed = {v["name"]: v for v in client.get("/v1/views").json()["views"]}
        assert listed["inventory"]["version"] == "v2" and listed["inventory"]["versions"] == ["v1", "v2"]
        assert listed["word_counts"]["version"] == "v1"
        page = client.get("/v1/views/inventory@v1?limit=2").json()
        assert [r["on_hand"] for r in page["rows"]] == [1, 1] and page["next"] is not None
        assert client.get(page["next_url"]).json()["rows"][0]["item_id"] == "i002"
        missing = client.get("/v1/views/inventory@v9")
        assert missing.status_code == 404 and "no version 'v9'" in missing.json()["error"]
        query = client.post("/v1/query", json={"sql": 'SELECT min(on_hand) AS n FROM "inventory@v1"'})
        assert query.json()["rows"] == [{"n": 1}]


def test_the_views_verbs_list_promote_roll_back_and_drop(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wh = ["--warehouse", str(root)]
    assert beamline(["views", "list", *wh, "--no-broker"]) == 0
    listing = capsys.readouterr().out
    assert "inventory        v2" in listing and "word_counts      v1       *" in listing
    assert beamline(["views", "promote", "inventory", "v2", "--force", *wh]) == 0
    assert "inventory v1 -> v2, sales_by_window v1 -> v2, dead_letters v1 -> v2" in capsys.readouterr().out
    assert beamline(["views", "list", *wh, "--no-broker", "--format", "json"]) == 0
    promoted = {(v["view"], v["version"]) for v in json.loads(capsys.readouterr().out)["versions"] if v["promoted"]}
    assert promoted == {("inventory", "v2"), ("sales_by_window", "v2"), ("dead_letters", "v2"), ("word_counts", "v1")}
    for argv, needle in (
        (["views", "promote", "inventory", "v3", "--force"], "no version 'v3'"),
        (["views", "promote", "stock", "v2", "--force"], "unknown view 'stock'"),
        (["views", "drop", "inventory", "v2"], "is the version readers see"),
        (["views", "rollback", "word_counts"], "no earlier version"),
        # No resume point: a version built in batch has no lag to check.
        (["views", "promote", "inventory", "v1", "--bootstrap-servers", "127.0.0.1:1"], "has no resume point"),
    ):
        assert beamline([*argv, *wh]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert beamline(["views", "rollback", "inventory", *wh]) == 0
    assert "inventory v2 -> v1" in capsys.readouterr().out
    assert beamline(["views", "drop", "inventory", "v2", *wh]) == 0
    assert "inventory@v2" in capsys.readouterr().out
    assert [s.version for s in list_versions(root, None)[1] if s.view == "inventory"] == ["v1"]


@pytest.mark.processes
def test_an_unknown_version_is_one_line_from_the_command(root: Path) -> None:
    result = run_cli("views", "promote", "inventory", "v7", "--warehouse", str(root))
    assert_one_line_error(result, "no version 'v7'", "v1, v2")
    assert result.returncode == 1
    assert table_name("inventory", "v7") == "inventory@v7"


def test_a_run_writes_the_version_it_names_else_what_each_view_shows(tmp_path: Path, root: Path) -> None:
    fresh = run_tables(tmp_path / "new", "inventory", None)
    assert fresh.pipeline == "inventory" and not fresh.versioned()
    assert dict(fresh.tables) == {
        "inventory": "inventory",
        "sales_by_window": "sales_by_window",
        "dead_letters": "dead_letters",
        "_inventory_state": "_inventory_state",
        "_inventory_ids": "_inventory_ids",
    }
    beside = run_tables(root, "inventory", "v2")
    assert beside.pipeline == "inventory@v2"
    assert beside["sales_by_window"] == "sales_by_window@v2" and beside["_inventory_ids"] == "_inventory_ids@v2"
    promote(root, "inventory", "v2")
    after = run_tables(root, "inventory", None)  # an unversioned run goes on writing what readers see
    assert after == beside
    words = run_tables(root, "wordcount", None)  # its own view stays at v1; the shared dead letters follow theirs
    assert dict(words.tables) == {"word_counts": "word_counts", "dead_letters": "dead_letters@v2"}
    assert words.pipeline == "wordcount"
    with pytest.raises(ConfigError, match="cannot name a view version"):
        run_tables(root, "inventory", "V2/..")


def test_a_bad_view_version_or_max_lag_is_one_line() -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    from core.arguments import duration
    from pipelines.options import WarehouseOptions

    with pytest.raises(ConfigError, match=re.escape("--view_version: 'v2/../x' cannot name a view version")):
        PipelineOptions(["--view-version=v2/../x"]).view_as(WarehouseOptions)
    assert PipelineOptions(["--view-version=v2"]).view_as(WarehouseOptions).view_version == "v2"
    parse = duration("--max-lag")
    assert [parse(t) for t in ("1s", "500ms", "2m", "1h", "3")] == [1.0, 0.5, 120.0, 3600.0, 3.0]
    for bad in ("soon", "-1s", "nan"):
        with pytest.raises(ConfigError, match="--max-lag"):
            parse(bad)
