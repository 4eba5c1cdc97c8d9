"""The read side: read-only SQL, refusals, lookups, time travel and one-line errors.

The verbs are driven through ``add_commands`` on a real argparse parser and
their handlers, against a real warehouse written by :class:`Warehouse`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from cli.read import add_commands
from readside.query import QueryRefused, Reader, connect, run_query
from warehouse.writer import Warehouse

UTC = dt.timezone.utc
WHEN = dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
VIEW_NAMES = "inventory, sales_by_window, word_counts, dead_letters"


def stock(store: str, item: str, shipped: int, sold: int, events: int) -> dict:
    return {
        "store_id": store,
        "item_id": item,
        "on_hand": shipped - sold,
        "shipped": shipped,
        "sold": sold,
        "events": events,
        "last_event_time": WHEN,
    }


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    wh = Warehouse(tmp_path / "wh")
    wh.commit(
        "inventory", [stock("s1", "apple", 10, 3, 2), stock("s1", "pear", 4, 0, 1), stock("s2", "apple", 1, 2, 2)]
    )
    wh.commit("word_counts", [{"word": "kafka", "count": 2}])
    wh.close()
    return wh.root


def beamline(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="beamline")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# -- answers and formats -----------------------------------------------------------
def test_query_csv_and_json_give_the_stored_rows(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT store_id, item_id, on_hand FROM inventory ORDER BY store_id, item_id"
    assert beamline(["query", sql, "--warehouse", str(warehouse), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["store_id", "item_id", "on_hand"],
        ["s1", "apple", "7"],
        ["s1", "pear", "4"],
        ["s2", "apple", "-1"],
    ]
    assert beamline(["query", sql, "--warehouse", str(warehouse), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[2] == {"store_id": "s2", "item_id": "apple", "on_hand": -1}
    assert beamline(["query", "SELECT word, count FROM word_counts", "--warehouse", str(warehouse)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["word", "count"] and out[2].split() == ["kafka", "2"] and out[-1] == "(1 row)"


def test_parameters_are_bound_not_formatted(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT item_id FROM inventory WHERE store_id = $1 ORDER BY item_id"
    assert beamline(["query", sql, "--param", "s1", "--warehouse", str(warehouse), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["item_id", "apple", "pear"]
    injection = "s1' OR '1'='1"
    assert beamline(["query", sql, "--param", injection, "--warehouse", str(warehouse), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["item_id"]


def test_users_see_only_contract_columns(warehouse: Path) -> None:
    cols = run_query("SELECT * FROM inventory LIMIT 1", warehouse).column_names
    assert cols == ["store_id", "item_id", "on_hand", "shipped", "sold", "events", "last_event_time"]
    assert run_query("SELECT * FROM sales_by_window", warehouse).column_names == [
        "window_start",
        "window_end",
        "store_id",
        "item_id",
        "units",
    ]


# -- refused queries: one line, non-zero, warehouse unchanged ------------------------
REFUSED = {
    "insert": "INSERT INTO inventory VALUES ('s', 'i', 1, 1, 0, 1, now())",
    "update": "UPDATE inventory SET on_hand = 0",
    "delete": "DELETE FROM inventory",
    "create": "CREATE TABLE t AS SELECT * FROM inventory",
    "drop": "DROP VIEW inventory",
    "attach": "ATTACH '{tmp}/other.duckdb' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "read_csv_passwd": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text_passwd": "SELECT content FROM read_text('/etc/passwd')",
    "read_blob_passwd": "SELECT content FROM read_blob('/etc/passwd')",
    "glob_etc": "SELECT * FROM glob('/etc/*')",
    "copy_to_outside": "COPY inventory TO '{tmp}/stolen.csv'",
    "copy_into_warehouse": "COPY (SELECT 1 AS a) TO '{wh}/data/inventory/evil.parquet'",
    "copy_select_to": "COPY (SELECT * FROM inventory) TO '{tmp}/stolen.parquet' (FORMAT parquet)",
    "set_external_access": "SET enable_external_access = true",
    "pragma": "PRAGMA enable_profiling",
    "call": "CALL checkpoint()",
    "explain_analyze_copy": "EXPLAIN ANALYZE COPY inventory TO '{tmp}/stolen.csv'",
    "two_statements": "SELECT 1; DROP VIEW inventory",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_queries(case: str, warehouse: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = REFUSED[case].format(tmp=tmp_path, wh=warehouse)
    before = tree(warehouse)
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    code = beamline(["query", sql, "--warehouse", str(warehouse)])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in captured.err
    assert tree(warehouse) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
    answer = run_query("SELECT store_id, item_id, on_hand FROM inventory ORDER BY 1, 2", warehouse).to_pylist()
    assert [r["on_hand"] for r in answer] == [7, 4, -1]


@pytest.mark.parametrize(
    "sql",
    [
        "WITH gone AS (DELETE FROM inventory RETURNING *) SELECT * FROM gone",
        "SELECT * FROM query('DROP VIEW inventory')",
        "SELECT * FROM query('COPY inventory TO ''/tmp/beamline-stolen.csv''')",
    ],
)
def test_writes_hidden_inside_a_select_fail_and_change_nothing(
    sql: str, warehouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(warehouse)
    assert beamline(["query", sql, "--warehouse", str(warehouse)]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert tree(warehouse) == before
    assert not Path("/tmp/beamline-stolen.csv").exists()
    assert run_query("SELECT count(*) AS n FROM inventory", warehouse).to_pylist() == [{"n": 3}]


def test_notebook_connection_is_locked_down_too(warehouse: Path) -> None:
    con = connect(warehouse)
    assert con.sql("SELECT count(*) FROM inventory").fetchall() == [(3,)]
    for sql in ("SET enable_external_access = true", "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(Exception, match=r"locked|disabled"):
            con.sql(sql).fetchall()
    con.close()


def test_reader_refuses_writes_through_the_python_api(warehouse: Path) -> None:
    with pytest.raises(QueryRefused):
        Reader(warehouse).query("DELETE FROM inventory")


# -- errors that say what exists and what to run -------------------------------------
def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_missing_warehouse_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert beamline(["query", "SELECT 1", "--warehouse", str(missing)]) != 0
    line = _one_error_line(capsys)
    assert "does not exist" in line and "beamline run" in line and str(missing) in line
    assert not missing.exists()


def test_a_file_given_as_the_warehouse_is_named_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a warehouse\n")
    assert beamline(["query", "SELECT 1", "--warehouse", str(a_file)]) != 0
    line = _one_error_line(capsys)
    assert "is a file, not a warehouse folder" in line and str(a_file) in line and "does not exist" not in line
    assert a_file.read_text() == "not a warehouse\n"


def test_foreign_folder_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    assert beamline(["query", "SELECT 1", "--warehouse", str(tmp_path)]) != 0
    line = _one_error_line(capsys)
    assert "not a Beamline warehouse" in line and "--warehouse" in line


def test_unknown_view_lists_the_views(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert beamline(["query", "SELECT * FROM stock_levels", "--warehouse", str(warehouse)]) != 0
    line = _one_error_line(capsys)
    assert "stock_levels" in line and VIEW_NAMES in line and "beamline query" in line


def test_bad_as_of_is_one_line(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert beamline(["query", "SELECT 1", "--warehouse", str(warehouse), "--as-of", "last monday"]) != 0
    assert "RFC 3339" in _one_error_line(capsys)


# -- lookup and time travel ----------------------------------------------------------
def test_lookup_and_as_of(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    between = dt.datetime.now(UTC).isoformat()
    wh = Warehouse(warehouse)
    wh.commit("inventory", [stock("s1", "apple", 10, 8, 3)])
    wh.close()
    base = ["lookup", "inventory", "--store", "s1", "--item", "apple", "--warehouse", str(warehouse)]
    assert beamline([*base, "--format", "json"]) == 0
    now = json.loads(capsys.readouterr().out)[0]
    assert (now["on_hand"], now["sold"], now["events"]) == (2, 8, 3)
    assert beamline([*base, "--format", "json", "--as-of", between]) == 0
    then = json.loads(capsys.readouterr().out)[0]
    assert (then["on_hand"], then["sold"], then["events"]) == (7, 3, 2)
    sql = "SELECT on_hand FROM inventory WHERE store_id = 's1' AND item_id = 'apple'"
    assert beamline(["query", sql, "--warehouse", str(warehouse), "--as-of", between, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["on_hand", "7"]


def test_lookup_of_an_unknown_key_is_one_line_and_non_zero(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = beamline(["lookup", "inventory", "--store", "s9", "--item", "kiwi", "--warehouse", str(warehouse)])
    assert code != 0
    assert "no inventory row" in _one_error_line(capsys)
