"""The query sandbox's limits, damaged warehouses, `beamline warehouse check`, and values Python cannot hold.

Each test reproduces a finding of the review of issue 21 on a real warehouse
written by :class:`Warehouse` and queried through real DuckDB: the sandbox
read DuckDB's temp folder and showed absolute paths, had no memory or time
limit and ignored Ctrl-C; one damaged file made every view unqueryable and
ended in a traceback; ``'infinity'::TIMESTAMP`` could not be printed.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.main import main
from core.errors import ConfigError
from readside.query import QueryLimits, QueryRefused, QueryTimedOut, Reader, connect, format_result, run_query
from tests.cli_helpers import PROJECT_ROOT, assert_one_line_error, run_cli
from warehouse.format import SnapshotExpired
from warehouse.reader import _HIDDEN_FUNCTIONS, _TABLE_FUNCTIONS, _parse_tree
from warehouse.writer import Warehouse

UTC = dt.timezone.utc
WHEN = dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
# DuckDB 2.0.1 binds range() to BIGINT only (`range(1e12)` is a binder error): the review's endless query.
ENDLESS = "SELECT count(*) FROM range(1000000000000)"


def stock(store: str, item: str, events: int) -> dict:
    return {
        "store_id": store,
        "item_id": item,
        "on_hand": events,
        "shipped": events,
        "sold": 0,
        "events": events,
        "last_event_time": WHEN,
    }


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    """inventory in one file, word_counts in three (one per commit)."""
    wh = Warehouse(tmp_path / "wh")
    wh.commit("inventory", [stock("s1", "apple", 2), stock("s1", "pear", 1), stock("s2", "apple", 3)])
    for word in ("kafka", "beam", "duckdb"):
        wh.commit("word_counts", [{"word": word, "count": 2}])
    wh.close()
    return wh.root


def word_count_files(root: Path) -> list[Path]:
    return [Path(p) for p in Warehouse(root).current().paths("word_counts")]


def beamline(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``beamline ARGV`` in this process, through the real parser and error reporting."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("beamline: error:"), lines[0]
    return lines[0]


# -- the sandbox: no temp folder, no paths, limits on memory and time -----------------------
def test_duckdbs_temp_folder_cannot_be_read(
    warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "x").write_text("secret\n")
    for sql in ("SELECT * FROM read_text('.tmp/x')", f"SELECT * FROM read_text('{tmp_path}/.tmp/x')"):
        code, out, err = beamline(capsys, "query", sql, "--warehouse", str(warehouse))
        assert code != 0 and "secret" not in out
        assert "refused" in one_error_line(err)
    # The notebook connection skips the parse-tree checks: DuckDB itself refuses the file.
    con = connect(warehouse)
    with pytest.raises(duckdb.PermissionException):
        con.sql("SELECT * FROM read_text('.tmp/x')").fetchall()
    assert con.sql("SELECT current_setting('temp_directory')").fetchall() == [("",)]
    con.close()


REVEALING = [
    "SELECT * FROM duckdb_settings()",
    "SELECT name, value FROM duckdb_settings() WHERE value LIKE '%/%'",
    "SELECT current_setting('temp_directory')",
    "SELECT current_setting('allowed_paths')",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM duckdb_temporary_files()",
    "SELECT * FROM duckdb_external_file_cache()",
    "SELECT sql FROM duckdb_views()",
    "SELECT * FROM duckdb_views",
    "SELECT sql FROM sqlite_master",
    "SELECT view_definition FROM information_schema.views",
    "SELECT * FROM pg_catalog.pg_views",
    "SELECT pg_get_viewdef(oid) FROM pg_class",
    "SELECT (SELECT max(value) FROM duckdb_settings()) AS v FROM inventory",
    "WITH sqlite_master AS (SELECT 1) SELECT * FROM (FROM sqlite_master), sqlite_master",
    "SELECT * FROM query('SELECT * FROM duckdb_settings()')",
    "SELECT * FROM query_table('sqlite_master')",
    "SELECT * FROM histogram('sqlite_master', sql)",
    "SELECT * FROM parquet_metadata('x.parquet')",
    "SELECT * FROM 'data/inventory/x.parquet'",
    "SELECT getvariable('x')",
]


@pytest.mark.parametrize("sql", REVEALING)
def test_settings_and_catalog_reveal_no_path(sql: str, warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = beamline(capsys, "query", sql, "--warehouse", str(warehouse))
    assert code != 0 and out == ""
    line = one_error_line(err)
    assert "refused" in line
    for secret in (str(warehouse), os.getcwd(), str(Path.home())):
        assert secret not in line


def test_what_the_views_show_of_themselves_holds_no_path(warehouse: Path) -> None:
    for sql in ("SHOW TABLES", "SHOW ALL TABLES", "DESCRIBE inventory", "SUMMARIZE word_counts", "SHOW DATABASES"):
        answer = format_result(run_query(sql, warehouse), "csv")
        assert str(warehouse) not in answer and os.getcwd() not in answer, sql
    names = run_query("SHOW TABLES", warehouse).column("name").to_pylist()
    assert sorted(names) == ["dead_letters", "inventory", "sales_by_window", "word_counts"]


def test_every_builtin_macro_that_reads_the_catalog_is_refused() -> None:
    """From DuckDB's own catalog: a macro reaching a settings or catalog function is in the refused list."""
    con = duckdb.connect()
    macros = con.sql(
        "SELECT function_name, function_type, macro_definition FROM duckdb_functions() "
        "WHERE macro_definition IS NOT NULL"
    ).fetchall()
    bodies: dict[str, list] = {}
    for name, kind, body in macros:
        bodies.setdefault(name, []).append(_parse_tree(con, ("SELECT " if kind == "macro" else "") + body))
    settings_functions = {"current_setting", "getvariable"}
    reaching = set(settings_functions)
    changed = True
    while changed:  # a macro calling a refused macro is refused too
        changed = False
        for name, trees in bodies.items():
            if name in reaching:
                continue
            for uses in trees:
                outside = uses.table_functions - _TABLE_FUNCTIONS
                tables = {t[2].lower() for t in uses.tables} - uses.ctes
                if outside or tables or uses.functions & reaching:
                    reaching.add(name)
                    changed = True
    table_macros = {name for name, kind, _ in macros if kind == "table_macro"}
    scalar_reaching = reaching - table_macros  # table macros are table functions: refused unless allowed
    assert "pg_get_viewdef" in scalar_reaching  # the check finds what it is there for
    assert scalar_reaching <= _HIDDEN_FUNCTIONS, scalar_reaching - _HIDDEN_FUNCTIONS
    assert not table_macros & _TABLE_FUNCTIONS


@pytest.mark.processes
def test_the_endless_query_stops_at_the_timeout(warehouse: Path) -> None:
    started = time.monotonic()
    result = run_cli("query", ENDLESS, "--timeout", "1", "--warehouse", str(warehouse))
    elapsed = time.monotonic() - started
    assert_one_line_error(result, "query stopped after 1 s", "--timeout")
    assert result.stdout == ""
    assert elapsed < 1 + 8, elapsed  # start-up, the 1 s, and the interrupt


def test_a_reader_answers_again_after_a_query_timed_out(warehouse: Path) -> None:
    reader = Reader(warehouse, limits=QueryLimits(timeout=1))
    started = time.monotonic()
    with pytest.raises(QueryTimedOut, match=r"^query stopped after 1 s; raise --timeout"):
        reader.query(ENDLESS)
    assert time.monotonic() - started < 1 + 4
    assert reader.query("SELECT count(*) AS n FROM inventory").to_pylist() == [{"n": 3}]
    assert reader.lookup_inventory("s2", "apple") == stock("s2", "apple", 3)
    reader.close()


def test_a_memory_bomb_fails_with_duckdbs_out_of_memory_error(
    warehouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = "SELECT list(range) FROM range(300000000)"  # a 2.4 GB list, built inside DuckDB's memory manager
    started = time.monotonic()
    code, out, err = beamline(capsys, "query", sql, "--memory-limit", "200MB", "--warehouse", str(warehouse))
    assert code != 0 and out == ""
    line = one_error_line(err)
    assert "Out of Memory" in line and "--memory-limit 200MB" in line
    assert time.monotonic() - started < 20


def test_an_answer_larger_than_a_quarter_of_the_memory_limit_is_refused(warehouse: Path) -> None:
    limits = QueryLimits(memory_limit="64MB")
    with pytest.raises(Exception, match=r"more than a quarter of --memory-limit 64MB"):
        run_query("SELECT range, range::VARCHAR AS s FROM range(3000000)", warehouse, limits=limits)
    assert run_query("SELECT count(*) AS n FROM range(3000000)", warehouse, limits=limits).to_pylist() == [
        {"n": 3000000}
    ]


def test_the_sandbox_settings_are_the_limits(warehouse: Path) -> None:
    con = connect(warehouse, limits=QueryLimits(memory_limit="512MB", threads=1))
    settings = dict(
        con.sql(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('memory_limit', 'threads', 'temp_directory', 'enable_external_access', 'lock_configuration')"
        ).fetchall()
    )
    assert settings == {
        "memory_limit": "488.2 MiB",
        "threads": "1",
        "temp_directory": "",
        "enable_external_access": "false",
        "lock_configuration": "true",
    }
    with pytest.raises(duckdb.Error, match="locked"):
        con.sql("SET memory_limit = '20GB'").fetchall()
    con.close()


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--memory-limit", "lots", "--memory-limit must be a size"),
        ("--memory-limit", "12", "--memory-limit must be a size"),
        ("--memory-limit", "10KB", "at least 1MiB"),
        ("--memory-limit", "100000000TB", "at most 1024TiB"),
        ("--timeout", "-1", "--timeout must be at least 0"),
        ("--timeout", "1.5h", "--timeout must be a whole number; got '1.5h'"),
        ("--timeout", "100000000000", "--timeout must be at most 604,800"),
        ("--max-rows", "many", "--max-rows must be a whole number"),
    ],
)
def test_bad_limits_are_one_line(
    option: str, value: str, needle: str, warehouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for verb in (["query", "SELECT 1"], ["lookup", "inventory", "--store", "s1", "--item", "apple"]):
        code, out, err = beamline(capsys, *verb, option, value, "--warehouse", str(warehouse))
        assert code != 0 and out == ""
        assert needle in one_error_line(err)


def test_limits_of_the_python_api_are_checked() -> None:
    with pytest.raises(ConfigError, match="must be a size"):
        QueryLimits(memory_limit="a lot")
    with pytest.raises(ConfigError, match="threads"):
        QueryLimits(threads=0)
    assert QueryLimits(memory_limit="2gib").memory_limit == "2GiB"


def test_table_output_is_capped_and_says_how_many_rows_are_left_out(
    warehouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = "SELECT range AS n FROM range(25)"
    code, out, _ = beamline(capsys, "query", sql, "--max-rows", "10", "--warehouse", str(warehouse))
    lines = out.splitlines()
    assert code == 0 and lines[2:12] == [str(i) for i in range(10)]
    assert lines[-1] == "(10 rows shown; 15 more rows not shown; use --format csv/json or LIMIT, or raise --max-rows)"
    for fmt in ("csv", "json"):
        code, out, _ = beamline(
            capsys, "query", sql, "--max-rows", "10", "--format", fmt, "--warehouse", str(warehouse)
        )
        assert code == 0 and out.count("24") == 1
    code, out, _ = beamline(capsys, "query", sql, "--max-rows", "0", "--warehouse", str(warehouse))
    assert out.splitlines()[-1] == "(25 rows)"
    table, left_out = Reader(warehouse).query_capped("SELECT * FROM range(200000)", max_rows=70000)
    assert (table.num_rows, left_out) == (70000, 130000)
    assert table.column(0).to_pylist()[-1] == 69999


def _query_is_running(pid: int) -> bool:
    """A thread other than the main one has used 0.2 s of CPU: DuckDB is executing the query."""
    ticks = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) == pid:
            continue
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        if int(fields[11]) + int(fields[12]) >= 0.2 * ticks:  # utime + stime
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread CPU times from /proc")
def test_ctrl_c_stops_a_running_query_with_one_line(warehouse: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "cli", "query", ENDLESS, "--timeout", "60", "--warehouse", str(warehouse)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _query_is_running(child.pid):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the query never started"
            time.sleep(0.05)
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert time.monotonic() - interrupted < 5
    assert child.returncode == 130
    assert out == ""
    assert err.splitlines() == ["beamline: interrupted"]


# -- damaged warehouses: one line, and the intact views stay queryable ------------------------
@pytest.mark.processes
def test_a_deleted_file_breaks_only_its_view(warehouse: Path) -> None:
    gone = word_count_files(warehouse)[1]
    gone.unlink()
    rel = str(gone.relative_to(warehouse))
    fine = run_cli("query", "SELECT count(*) AS n FROM inventory", "--format", "csv", "--warehouse", str(warehouse))
    assert fine.returncode == 0, fine.stderr
    assert fine.stdout.split() == ["n", "3"]
    broken = run_cli("query", "SELECT * FROM word_counts", "--warehouse", str(warehouse))
    assert_one_line_error(broken, rel, "view word_counts", "missing", "beamline warehouse check")
    lookup = run_cli("lookup", "inventory", "--store", "s1", "--item", "apple", "--warehouse", str(warehouse))
    assert lookup.returncode == 0, lookup.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign_schema", "wrong_types", "foreign_first"])
def test_a_damaged_file_is_one_line_naming_it(damage: str, warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = word_count_files(warehouse)
    target = files[0] if damage == "foreign_first" else files[2]
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not parquet at all" * 10)
    elif damage == "wrong_types":
        pq.write_table(pa.table({"word": [1], "count": ["x"]}), target)
    else:
        pq.write_table(pa.table({"a": [1, 2]}), target)
    rel = str(target.relative_to(warehouse))
    code, out, err = beamline(capsys, "query", "SELECT sum(count) FROM word_counts", "--warehouse", str(warehouse))
    assert code != 0 and out == ""
    line = one_error_line(err)
    assert rel in line and "view word_counts" in line, line
    code, out, err = beamline(capsys, "query", "SELECT count(*) AS n FROM inventory", "--warehouse", str(warehouse))
    assert code == 0 and err == ""


@pytest.mark.parametrize("which", [0, 2])
@pytest.mark.parametrize("sql", ["SELECT * FROM word_counts", "SELECT count(*) FROM word_counts"])
def test_a_file_rewritten_with_other_types_is_not_served(
    which: int, sql: str, warehouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = word_count_files(warehouse)[which]
    pq.write_table(pa.table({"word": [7], "count": ["2"]}), target)  # same names, castable values
    rel = str(target.relative_to(warehouse))
    code, out, err = beamline(capsys, "query", sql, "--warehouse", str(warehouse))
    assert code != 0 and out == ""
    line = one_error_line(err)
    assert rel in line and "view word_counts" in line and "word int64, count string" in line, line
    code, out, err = beamline(capsys, "query", "SELECT count(*) AS n FROM inventory", "--warehouse", str(warehouse))
    assert code == 0 and err == ""


def test_file_schemas_are_read_from_the_footer_once_per_file(warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = pq.read_schema

    def counting(path: str, *args: object, **kwargs: object) -> pa.Schema:
        read.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_schema", counting)
    reader = Reader(warehouse)
    for _ in range(3):
        assert reader.query("SELECT count(*) AS n FROM word_counts").to_pylist() == [{"n": 3}]
    wh = Warehouse(warehouse)
    wh.commit("word_counts", [{"word": "arrow", "count": 1}])
    wh.close()
    assert reader.query("SELECT count(*) AS n FROM word_counts").to_pylist() == [{"n": 4}]
    reader.close()
    assert sorted(read) == sorted(str(p) for p in word_count_files(warehouse))  # each file once, new snapshot too


def test_the_notebook_connection_keeps_the_intact_views(warehouse: Path) -> None:
    word_count_files(warehouse)[0].unlink()
    con = connect(warehouse)
    assert con.sql("SELECT count(*) FROM inventory").fetchall() == [(3,)]
    with pytest.raises(duckdb.Error, match=r"view word_counts .* is missing"):
        con.sql("SELECT * FROM word_counts").fetchall()
    con.close()


def _manifests(root: Path) -> list[Path]:
    return sorted((root / "snapshots").iterdir())


@pytest.mark.parametrize(
    "damage", ["garbage_current", "empty_current", "no_current", "corrupt_manifest", "manifest_not_json_object"]
)
def test_damaged_pointers_and_manifests_never_end_in_a_traceback(
    damage: str, warehouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if damage == "garbage_current":
        (warehouse / "CURRENT").write_bytes(b"\xff\xfe garbage \x00")
    elif damage == "empty_current":
        (warehouse / "CURRENT").write_text("")
    elif damage == "no_current":
        (warehouse / "CURRENT").unlink()
    elif damage == "corrupt_manifest":
        _manifests(warehouse)[-1].write_text('{"snapshot_id": ')
    else:
        _manifests(warehouse)[-1].write_text("[1, 2, 3]")
    for argv in (
        ["query", "SELECT count(*) AS n FROM word_counts", "--format", "csv"],
        ["lookup", "inventory", "--store", "s1", "--item", "apple", "--format", "csv"],
    ):
        code, _, err = beamline(capsys, *argv, "--warehouse", str(warehouse))
        assert "Traceback" not in err
        if code == 0:  # CURRENT is only a hint: the newest manifest is found without it
            assert damage.endswith("current") and err == ""
        else:
            line = one_error_line(err)
            assert "manifest" in line and "snapshot" in line, line


def test_a_pinned_reader_whose_snapshot_expired_says_which_is_the_oldest_kept(warehouse: Path) -> None:
    pinned_at = dt.datetime.now(UTC)
    reader = Reader(warehouse, as_of=pinned_at)
    assert reader.query("SELECT count(*) AS n FROM word_counts").to_pylist() == [{"n": 3}]
    wh = Warehouse(warehouse)
    wh.commit("word_counts", [{"word": "flink", "count": 1}])
    wh.compact()
    wh.expire_snapshots(dt.timedelta(0))  # the pinned snapshot and its files are gone
    newest = wh.current()
    wh.close()
    with pytest.raises(SnapshotExpired) as caught:
        reader.query("SELECT count(*) AS n FROM word_counts")
    message = str(caught.value)
    assert "expired" in message and f"oldest kept snapshot is {newest.snapshot_id}" in message
    assert len(message.splitlines()) == 1
    reader.close()
    # An unpinned reader simply moves on to the newest snapshot.
    assert run_query("SELECT count(*) AS n FROM word_counts", warehouse).to_pylist() == [{"n": 4}]


# -- beamline warehouse check -------------------------------------------------------------------
@pytest.mark.processes
def test_check_passes_a_clean_warehouse(warehouse: Path) -> None:
    result = run_cli("warehouse", "check", "--warehouse", str(warehouse))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"checked 1 snapshot and 4 Parquet files of {warehouse}: no problems"]
    assert result.stderr == ""


@pytest.mark.processes
def test_check_finds_deleted_truncated_and_foreign_files(warehouse: Path) -> None:
    deleted, truncated, foreign = word_count_files(warehouse)
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[:100])
    pq.write_table(pa.table({"word": ["x"], "count": pa.array([1], pa.int32()), "extra": [1]}), foreign)
    result = run_cli("warehouse", "check", "--warehouse", str(warehouse))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    by_file = {ln.split(" ", 1)[0]: ln for ln in lines[:-1]}
    assert set(by_file) == {str(p.relative_to(warehouse)) for p in (deleted, truncated, foreign)}
    assert all("(view word_counts, snapshot 4)" in ln for ln in by_file.values())
    assert by_file[str(deleted.relative_to(warehouse))].endswith(": missing")
    assert "not a readable Parquet file" in by_file[str(truncated.relative_to(warehouse))]
    assert "schema is (word string, count int32, extra int64)" in by_file[str(foreign.relative_to(warehouse))]
    assert lines[-1].startswith(f"checked 1 snapshot and 4 Parquet files of {warehouse}: 3 problems")
    assert "Traceback" not in result.stderr


@pytest.mark.processes
def test_check_compares_row_counts_and_all_checks_every_kept_snapshot(warehouse: Path) -> None:
    first = word_count_files(warehouse)[0]
    wh = Warehouse(warehouse)
    wh.compact()  # the newest snapshot no longer lists the first file; older ones still do
    wh.close()
    pq.write_table(pa.table({"word": ["a", "b"], "count": [1, 2]}), first)  # 2 rows where the manifest says 1
    assert run_cli("warehouse", "check", "--warehouse", str(warehouse)).returncode == 0
    result = run_cli("warehouse", "check", "--all", "--warehouse", str(warehouse))
    assert result.returncode == 1
    problem, summary = result.stdout.splitlines()
    assert problem.startswith(f"{first.relative_to(warehouse)} (view word_counts, snapshot 2): holds 2 rows")
    assert summary.startswith("checked 6 snapshots")


@pytest.mark.processes
def test_check_reports_a_corrupt_manifest_and_a_missing_folder(warehouse: Path, tmp_path: Path) -> None:
    newest = _manifests(warehouse)[-1]
    newest.write_text("{")
    result = run_cli("warehouse", "check", "--all", "--warehouse", str(warehouse))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert any(ln.startswith(f"snapshots/{newest.name}: ") for ln in result.stdout.splitlines())
    assert_one_line_error(run_cli("warehouse", "check", "--warehouse", str(tmp_path / "none")), "does not exist")


# -- values Python cannot hold ----------------------------------------------------------------
EXTREMES = (
    "SELECT 'infinity'::TIMESTAMP AS ts, '-infinity'::DATE AS d, '-infinity'::TIMESTAMPTZ AS tz, "
    "'294247-01-10 04:00:54'::TIMESTAMP AS far, '0044-03-15 (BC)'::DATE AS bc, "
    "170141183460469231731687303715884105727::HUGEINT AS huge, 1234567890123456789.123456789::DECIMAL(38, 9) AS dec, "
    "INTERVAL '1 year 2 months 3 days 04:05:06' AS iv, [[1, 2], [3]] AS nested, "
    "{'at': 'infinity'::TIMESTAMP, 'xs': ['a\nb']} AS st, MAP {'k': 1} AS m, '\\x00\\xff'::BLOB AS blob, "
    "'nan'::DOUBLE AS nan, sum(5) AS total"
)


def test_values_python_cannot_hold_print_in_every_format(warehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = {}
    for fmt in ("table", "csv", "json"):
        code, out, err = beamline(capsys, "query", EXTREMES, "--format", fmt, "--warehouse", str(warehouse))
        assert code == 0 and err == "", err
        outputs[fmt] = out
    row = json.loads(outputs["json"])[0]
    assert row["ts"] == "infinity" and row["d"] == "-infinity" and row["tz"] == "-infinity"
    assert row["far"] == "294247-01-10 04:00:54" and row["bc"] == "0044-03-15 (BC)"
    assert row["huge"] == 170141183460469231731687303715884105727 and row["total"] == 5
    assert row["dec"] == "1234567890123456789.123456789"  # more digits than a double holds: text
    assert row["iv"] == "1 year 2 months 3 days 04:05:06"
    assert row["nested"] == [[1, 2], [3]] and row["st"] == {"at": "infinity", "xs": ["a\nb"]}
    assert row["m"] == {"k": 1} and row["blob"] == "\x00\\xff" and row["nan"] == "nan"  # UTF-8 where valid
    header, values = list(csv.reader(io.StringIO(outputs["csv"])))
    assert dict(zip(header, values, strict=True))["ts"] == "infinity"
    assert dict(zip(header, values, strict=True))["st"] == '{"at": "infinity", "xs": ["a\\nb"]}'
    table = outputs["table"].splitlines()
    assert len(table) == 4 and table[-1] == "(1 row)"  # the newline in a value is escaped
    assert table[2].split()[:2] == ["infinity", "-infinity"]


def test_every_duckdb_type_renders() -> None:
    """DuckDB's test_all_types(): minimum, maximum and NULL of every type, in every format."""
    answer = duckdb.connect().sql("SELECT * FROM test_all_types()").to_arrow_table()
    for fmt in ("table", "csv", "json"):
        text = format_result(answer, fmt)
        assert text
    rows = json.loads(format_result(answer, "json"))
    assert rows[0]["timestamp"] == "290309-12-22 00:00:00 (BC)" and rows[0]["date"] == "5877642-06-25 (BC)"
    assert rows[1]["date"] == "5881580-07-10" and rows[2]["timestamp"] is None


def test_refusals_of_the_python_api_are_one_line(warehouse: Path) -> None:
    with pytest.raises(QueryRefused) as caught:
        Reader(warehouse).query("SELECT * FROM duckdb_settings()")
    assert len(str(caught.value).splitlines()) == 1
