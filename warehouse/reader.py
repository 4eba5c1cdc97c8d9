"""Reading the warehouse: snapshot resolution and a sandboxed, read-only DuckDB over it.

Each reader builds its own in-memory DuckDB database whose views cover exactly
the Parquet files of one snapshot, so readers take no lock on anything the
writer touches. The database is read-only by construction, not by matching
strings:

* DuckDB's own parser classifies the statement; only a single SELECT runs
  (DDL, DML, COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA, CALL, EXPLAIN are refused);
* the parser's tree of that SELECT (``json_serialize_sql``) names every table
  and function it uses: a table must be one of the views (or the query's own
  CTE), a table function must make rows from values (``range``, ``unnest``...),
  and the functions that read the connection's settings or catalog
  (``current_setting``, ``duckdb_settings()``, ``pg_get_viewdef``...) are
  refused, so no absolute path is revealed;
* ``enable_external_access=false`` with ``allowed_paths`` set to the snapshot's
  files: no other file can be read or written, no extension loaded or installed;
  spilling is off (``temp_directory=''``), so there is no temp folder to read;
* ``memory_limit`` and ``threads`` bound what one query may take, and a query
  runs in a worker thread that ``con.interrupt()`` stops at the time limit or
  on Ctrl-C;
* ``lock_configuration=true``: the query cannot turn those settings back;
* the warehouse itself is never opened for writing, and user values are bound
  as parameters, never formatted into SQL.

A view's files are opened only when a query uses the view, so a damaged file
of one view leaves the others queryable; a damaged or vanished file is one
line naming the file and its view (or saying that the snapshot expired).

It lives beside the writer, on the same format (:mod:`warehouse.format`), and
never imports it; the user-facing verbs on top of it are in :mod:`readside`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import ColumnExpression, ConstantExpression

from core.errors import BeamlineError, ConfigError
from core.settings import warehouse_dir
from core.views import INVENTORY, USER_VIEWS, split_name
from warehouse.format import (
    EPOCH,
    SNAPSHOTS_DIR,
    Snapshot,
    SnapshotExpired,
    WarehouseInconsistent,
    check_root,
    current_manifest,
    dedupe_sql,
    empty_view_sql,
    expired_error,
    load_snapshot,
    manifest_id,
    user_tables,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_TIMEOUT_S",
    "QueryFailed",
    "QueryLimits",
    "QueryRefused",
    "QueryTimedOut",
    "Reader",
    "connect",
    "parse_as_of",
    "parse_memory_limit",
]

T = TypeVar("T")

# Sized for the 2-core, 24 GiB machines Beamline runs on; `beamline query` can raise each.
DEFAULT_MEMORY_LIMIT = "4GB"
DEFAULT_THREADS = 2
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 7 * 24 * 3600
# How long an interrupted query may take to stop before its connection is given up.
_STOP_GRACE_S = 3.0
_BATCH_ROWS = 65_536
VIEW_LIST = ", ".join(USER_VIEWS)
_TRY_QUERY = "run `beamline query 'SELECT * FROM inventory LIMIT 5'`"

# Table functions a query may call: each makes rows from values, never from a file or the catalog.
_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
# Scalar functions and macros that read the connection's settings or its catalog (whose view SQL and
# settings hold the warehouse's absolute paths). tests/test_query_limits.py checks, from DuckDB's own
# catalog, that no other built-in macro reaches a settings or catalog function.
_HIDDEN_FUNCTIONS = frozenset(
    {"current_setting", "getvariable", "format_type", "get_block_size", "pg_get_constraintdef", "pg_get_viewdef"}
)
# SHOW forms that list the views' names and types, nothing else.
_SHOW_SPECIAL = frozenset({'"tables"', "__show_tables_expanded", '"databases"'})
_SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog"})
_SYSTEM_CATALOGS = frozenset({"system", "temp"})
# How a query may qualify a view: inventory, main.inventory, memory.inventory, memory.main.inventory.
_VIEW_QUALIFIERS = frozenset({("", ""), ("", "main"), ("", "memory"), ("memory", "main")})
_MEMORY_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)


class QueryRefused(BeamlineError):
    """The query would change something or reach outside the warehouse."""


class QueryFailed(BeamlineError):
    """The query is read-only but DuckDB could not run it (syntax, unknown name, types, memory)."""


class QueryTimedOut(QueryFailed):
    """The query ran past its time limit and was stopped."""


def parse_memory_limit(text: str, option: str = "--memory-limit") -> str:
    """A memory size such as ``4GB``, ``512MB`` or ``2GiB``, checked and written as DuckDB reads it."""
    match = _MEMORY_TEXT.match(str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _MEMORY_UNITS:
        raise ConfigError(f"{option} must be a size such as 4GB, 512MB or 2GiB; got {text!r}")
    if not 2**20 <= _memory_bytes(match.group(1) + unit) <= 2**50:
        raise ConfigError(f"{option} must be at least 1MiB and at most 1024TiB; got {text!r}")
    return match.group(1) + {"b": "B"}.get(unit, unit[0].upper() + unit[1:-1] + "B")


def _memory_bytes(size: str) -> int:
    """Bytes in a size ``parse_memory_limit`` accepted."""
    match = _MEMORY_TEXT.match(size)
    assert match is not None
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class QueryLimits:
    """What one query may take: DuckDB's memory and threads, and the time before it is stopped.

    ``timeout`` in seconds; None (or 0) lets a query run until it ends.
    """

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    threads: int = DEFAULT_THREADS
    timeout: float | None = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_limit", parse_memory_limit(self.memory_limit))
        if not 1 <= self.threads <= 1024:
            raise ConfigError(f"threads must be between 1 and 1024; got {self.threads}")
        if self.timeout is not None and not 0 <= self.timeout <= MAX_TIMEOUT_S:
            raise ConfigError(f"--timeout must be 0 (none) to {MAX_TIMEOUT_S:,} seconds; got {self.timeout}")

    @property
    def answer_bytes(self) -> int:
        """The most an answer may hold in Arrow: a quarter of the memory limit, as rendering it as text
        (or as Python values) takes several times that, and DuckDB's limit does not count it."""
        return _memory_bytes(self.memory_limit) // 4


DEFAULT_LIMITS = QueryLimits()


def parse_as_of(text: str | dt.datetime | None) -> int | None:
    """An RFC 3339 / ISO 8601 time (naive means UTC) as µs since the epoch."""
    if text is None:
        return None
    if isinstance(text, dt.datetime):
        when = text
    else:
        raw = text.strip()
        if raw.endswith(("Z", "z")):
            raw = raw[:-1] + "+00:00"
        try:
            when = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ConfigError(f"--as-of {text!r} is not a time; use RFC 3339, e.g. 2026-11-26T10:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - EPOCH) // dt.timedelta(microseconds=1)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- the sandbox ---------------------------------------------------------------------------
def _sandboxed(snapshot: Snapshot, limits: QueryLimits) -> duckdb.DuckDBPyConnection:
    """An in-memory database whose only reachable files are the snapshot's; it defines no view yet."""
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_unsigned_extensions": False,
        },
    )
    all_paths = [p for table in sorted(set(user_tables(snapshot).values())) for p in snapshot.paths(table)]
    con.execute("SET allowed_paths = $paths", {"paths": all_paths})
    con.execute("SET TimeZone = 'UTC'")
    # Files are immutable, so footers and pages can be cached safely for repeated lookups.
    con.execute("SET parquet_metadata_cache = true")
    con.execute("SET cache_local_files = true")
    # No spilling: DuckDB would otherwise allow the query its temp folder (`.tmp` under the working
    # directory), files and all. A query that needs more than memory_limit fails instead.
    con.execute("SET temp_directory = ''")
    try:
        con.execute("SET memory_limit = $limit", {"limit": limits.memory_limit})
        con.execute("SET threads = $threads", {"threads": limits.threads})
    except duckdb.Error as e:
        con.close()
        raise ConfigError(f"DuckDB refused the query limits {limits}: {_one_line(e)}") from None
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


_INTERNAL_NAMES: frozenset[str] | None = None


def _internal_names(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """DuckDB's own catalog views (``sqlite_master``, ``duckdb_views``, ``pg_class``...), lower case."""
    global _INTERNAL_NAMES
    if _INTERNAL_NAMES is None:
        rows = con.sql("SELECT DISTINCT lower(view_name) FROM duckdb_views() WHERE internal").fetchall()
        _INTERNAL_NAMES = frozenset(r[0] for r in rows)
    return _INTERNAL_NAMES


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryFailed(f"SQL error: {_one_line(e)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"refused: {len(statements)} statements given; run exactly one SELECT per query")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(
            f"refused: {kind.name} statements are not allowed; the warehouse is read-only, only SELECT runs"
        )


@dataclass
class _Uses:
    """What a SELECT's parse tree names."""

    tables: list[tuple[str, str, str]]  # (catalog, schema, name) as written
    ctes: set[str]
    functions: set[str]
    table_functions: set[str]
    shows: set[str]


def _parse_tree(con: duckdb.DuckDBPyConnection, sql: str) -> _Uses:
    """Every table, CTE and function the SELECT ``sql`` names, read from DuckDB's parse tree."""
    try:
        text = con.sql("SELECT json_serialize_sql($1)", params=[sql]).fetchall()[0][0]
        tree = json.loads(text)
    except RecursionError:
        raise QueryRefused("refused: the query is nested too deeply to be checked") from None
    except (duckdb.Error, ValueError) as e:
        raise QueryFailed(f"SQL error: {_one_line(e)}") from None
    if tree.get("error"):
        raise QueryRefused(f"refused: {tree.get('error_message')}; write it as one plain SELECT")
    uses = _Uses([], set(), set(), set(), set())
    stack: list[Any] = [tree.get("statements", [])]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "BASE_TABLE":
            uses.tables.append((node.get("catalog_name", ""), node.get("schema_name", ""), node.get("table_name", "")))
        elif kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            uses.table_functions.add(str(function.get("function_name", function.get("type", "?"))).lower())
        elif kind == "SHOW_REF" and node.get("table_name"):
            if node.get("show_type") == "SHOW_SPECIAL":
                uses.shows.add(node["table_name"])
            else:  # SHOW x / DESCRIBE x: the columns of table x
                uses.tables.append((node.get("catalog_name", ""), node.get("schema_name", ""), node["table_name"]))
        if "function_name" in node:
            uses.functions.add(str(node["function_name"]).lower())
        for entry in (node.get("cte_map") or {}).get("map", []):
            uses.ctes.add(str(entry.get("key", "")).lower())
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return uses


def _views_used(con: duckdb.DuckDBPyConnection, sql: str, names: Collection[str]) -> set[str]:
    """The views of ``names`` the SELECT ``sql`` reads; refuses any other table and the functions that reveal paths."""
    uses = _parse_tree(con, sql)
    functions = sorted(uses.table_functions - _TABLE_FUNCTIONS)
    if functions:
        raise QueryRefused(
            f"refused: {functions[0]}() is not available, the query may read only the views {VIEW_LIST} "
            f"(table functions allowed: {', '.join(sorted(_TABLE_FUNCTIONS))})"
        )
    functions = sorted(uses.functions & _HIDDEN_FUNCTIONS)
    if functions:
        raise QueryRefused(f"refused: {functions[0]}() reads the reader's settings or catalog, which are not shown")
    shows = sorted(uses.shows - _SHOW_SPECIAL)
    if shows:
        raise QueryRefused(f"refused: SHOW {shows[0]} is not available; SHOW TABLES and DESCRIBE <view> are")
    internal = _internal_names(con)
    used: set[str] = set(names) if uses.shows & {'"tables"', "__show_tables_expanded"} else set()
    for catalog, schema, name in uses.tables:
        low, cat, sch = name.lower(), catalog.lower(), schema.lower()
        if not cat and not sch and low in uses.ctes:
            if low in internal:  # out of the CTE's scope the name would read DuckDB's catalog
                raise QueryRefused(f"refused: {name!r} names one of DuckDB's catalog views; rename the CTE")
            continue
        if low in names and (cat, sch) in _VIEW_QUALIFIERS:
            used.add(low)
            continue
        written = ".".join(part for part in (catalog, schema, name) if part)
        if low in internal or sch in _SYSTEM_SCHEMAS or cat in _SYSTEM_CATALOGS or "/" in name or "." in name:
            raise QueryRefused(f"refused: {written!r} is not a view; the query may read only the views {VIEW_LIST}")
        base, version = split_name(low)
        if version is not None and base in USER_VIEWS:
            held = [n for n in names if n.startswith(f"{base}@")]
            raise QueryFailed(
                f"view {base} has no version {version!r} here; "
                + (f"its versions: {', '.join(held)}" if held else f"it has one version, queried as {base}")
            )
        raise QueryFailed(f"no view named {written!r}; views: {VIEW_LIST}; {_TRY_QUERY}")
    return used


# -- the reader ----------------------------------------------------------------------------
class Reader:
    """Runs read-only queries; follows new snapshots unless pinned with ``as_of``."""

    def __init__(
        self,
        warehouse: str | os.PathLike[str] | None = None,
        as_of: str | dt.datetime | None = None,
        *,
        limits: QueryLimits | None = None,
    ):
        self.root = Path(warehouse) if warehouse is not None else warehouse_dir()
        self.as_of_us = parse_as_of(as_of)
        self.limits = limits or DEFAULT_LIMITS
        self._con: duckdb.DuckDBPyConnection | None = None
        self._raw: dict[str, duckdb.DuckDBPyRelation | None] = {}  # defined views: their files (None: no file)
        self._snapshot: Snapshot | None = None
        self._names: dict[str, str] = {}  # what a query may name in the snapshot -> its table (aliases resolved)
        self._schema_ok: set[str] = set()  # files whose footer holds the view's schema (files never change)

    # snapshots
    def snapshot(self) -> Snapshot:
        """The snapshot answers come from, refreshed when the writer publishes a newer one."""
        if self.as_of_us is not None:
            if self._snapshot is None:
                self._open(self._resolve(self.as_of_us))
        else:
            newest = self._newest_id()
            if self._snapshot is None or newest != self._snapshot.snapshot_id:
                self._open(self._resolve(None))
        assert self._snapshot is not None
        return self._snapshot

    def _newest_id(self) -> int | None:
        """The newest snapshot's id, found from ``CURRENT`` with a few `stat` calls."""
        try:
            return manifest_id(current_manifest(self.root.absolute()))
        except OSError as e:
            check_root(self.root.absolute())  # the one-line "missing or foreign warehouse" error
            raise WarehouseInconsistent(
                f"{self.root.absolute() / SNAPSHOTS_DIR} cannot be listed ({e.strerror or e}); "
                f"run `beamline warehouse check --warehouse {self.root}`"
            ) from None

    def _resolve(self, as_of_us: int | None) -> Snapshot:
        try:
            return load_snapshot(self.root, as_of_us)
        except OSError as e:
            raise WarehouseInconsistent(
                f"a manifest of {self.root.absolute()} cannot be read ({e.strerror or e}: {e.filename}); "
                f"run `beamline warehouse check --warehouse {self.root}`"
            ) from None

    def _open(self, snap: Snapshot) -> None:
        self.close()
        self._con = _sandboxed(snap, self.limits)
        self._snapshot = snap
        self._names = user_tables(snap)

    def _abandon(self) -> None:
        """Forget a connection a stuck query still holds (closing it would wait for the query)."""
        self._con, self._raw, self._snapshot, self._names = None, {}, None, {}

    # views, opened when a query first uses them
    def _define(self, name: str) -> duckdb.DuckDBPyRelation | None:
        """Create view ``name`` over its table's files; raises one line naming a file that is missing or unreadable.

        ``name`` is a view (its table: the version the snapshot's alias names) or a version by name.
        """
        if name in self._raw:
            return self._raw[name]
        con, snap = self._con, self._snapshot
        assert con is not None and snap is not None
        spec = USER_VIEWS[split_name(name)[0]]
        paths = snap.paths(self._names[name])
        raw: duckdb.DuckDBPyRelation | None = None
        rel: duckdb.DuckDBPyRelation | None
        if not paths:
            rel = con.sql(empty_view_sql(spec))
        else:
            for path in paths:
                if not os.path.exists(path):
                    raise self._file_problem(name, path, "")
                self._check_schema(name, path)
            try:
                raw = con.read_parquet(paths)
                # DuckDB takes the columns from the first file (the others must match it, or it names them).
                if raw.columns != spec.storage_schema.names:
                    found = ", ".join(f"{c} {t}" for c, t in zip(raw.columns, raw.types, strict=True))
                    raise self._file_problem(name, paths[0], f"its columns are ({found}), not the view's")
                rel = raw.query("_files", dedupe_sql(spec, "_files", visible_only=True))
            except duckdb.Error as e:
                raise self._translated(e) from None
        assert rel is not None  # a relation's query() gives None only for a statement that is not a SELECT
        rel.create_view(name)
        self._raw[name] = raw
        return raw

    def _check_schema(self, view: str, path: str) -> None:
        """Raise the file's one-line error unless its footer's schema is the view's storage schema.

        DuckDB would cast a file with other column types to the first file's
        (or serve the first file's types), so a rewritten file is caught here.
        Only the footer is read, once per file: files are immutable.
        """
        if path in self._schema_ok:
            return
        try:
            found = [(f.name, f.type) for f in pq.read_schema(path)]
        except (OSError, pa.ArrowException) as e:
            raise self._file_problem(view, path, _one_line(e)) from None
        expected = [(f.name, f.type) for f in USER_VIEWS[split_name(view)[0]].storage_schema]
        if found != expected:
            columns = ", ".join(f"{n} {t}" for n, t in found)
            raise self._file_problem(view, path, f"its schema is ({columns}), not the view's")
        self._schema_ok.add(path)

    def _define_all(self) -> None:
        """Every view; a view whose files are damaged raises its one-line error when queried."""
        con = self._con
        assert con is not None
        for name in self._names:
            spec = USER_VIEWS[split_name(name)[0]]
            try:
                self._define(name)
            except BeamlineError as e:
                row = ", ".join("NULL" for _ in spec.columns)
                broken = (
                    f"SELECT * FROM ({empty_view_sql(spec)} UNION ALL SELECT {row}) WHERE error({_sql_text(str(e))})"
                )
                rel = con.sql(broken)
                assert rel is not None
                rel.create_view(name)

    def _file_problem(self, view: str, path: str, detail: str) -> BeamlineError:
        """The one-line error for a file of ``view`` that is missing (maybe expired) or unreadable."""
        snap = self._snapshot
        assert snap is not None
        rel = os.path.relpath(path, snap.root)
        check = f"run `beamline warehouse check --warehouse {self.root}`"
        if not os.path.exists(path):
            try:
                expired = expired_error(self.root, snap.snapshot_id)
            except OSError:
                expired = None  # the manifests cannot tell: the file is reported as missing
            if expired is not None:
                return expired
            return WarehouseInconsistent(
                f"{rel}, a file of view {view} in snapshot {snap.snapshot_id}, is missing; "
                f"the other views can still be queried; {check}"
            )
        return WarehouseInconsistent(
            f"{rel}, a file of view {view} in snapshot {snap.snapshot_id}, cannot be read "
            f"({detail.replace(path, rel)}); the other views can still be queried; {check}"
        )

    def _damaged(self, err: duckdb.Error) -> BeamlineError | None:
        """The file error if DuckDB's error names a file of the snapshot."""
        snap, text = self._snapshot, str(err)
        if snap is None or str(snap.root) not in text:
            return None
        # The file DuckDB names first is the one it failed on ("... file A: column x was read from file B").
        named = [
            (text.index(path), name, path)
            for name, table in self._names.items()
            for path in snap.paths(table)
            if path in text
        ]
        if not named:
            return None
        _, view, path = min(named)
        return self._file_problem(view, path, _one_line(err))

    def _translated(self, err: BaseException) -> BaseException:
        """DuckDB's error as one Beamline line (anything else is a bug and keeps its traceback)."""
        if isinstance(err, duckdb.Error):
            damaged = self._damaged(err)
            if damaged is not None:
                return damaged
            if isinstance(err, duckdb.PermissionException):
                return QueryRefused(f"refused: the query reaches outside the warehouse ({_one_line(err)})")
            if isinstance(err, duckdb.OutOfMemoryException):
                return QueryFailed(
                    f"query failed: {_one_line(err)}; the limit is --memory-limit {self.limits.memory_limit}: "
                    "raise it, or narrow the query with WHERE or LIMIT"
                )
            if isinstance(err, duckdb.CatalogException):
                return QueryFailed(f"{_one_line(err)}; views: {VIEW_LIST}; {_TRY_QUERY}")
            if isinstance(err, duckdb.InterruptException):
                return QueryFailed("query interrupted")
            return QueryFailed(f"query failed: {_one_line(err)}")
        if isinstance(err, pa.ArrowException):
            return QueryFailed(f"query failed: the answer cannot be converted ({_one_line(err)})")
        if isinstance(err, MemoryError):
            return QueryFailed("query failed: out of memory holding the answer; narrow the query with WHERE or LIMIT")
        return err

    # running
    def _run(self, work: Callable[[], T]) -> T:
        """``work()`` in a worker thread: stopped with ``con.interrupt()`` at the time limit or on Ctrl-C."""
        con = self._con
        assert con is not None
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # handed to the waiting thread, which reports it
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name="beamline-query", daemon=True).start()
        timeout = self.limits.timeout or None
        try:
            finished = done.wait(timeout)  # Ctrl-C wakes this wait on POSIX
        except BaseException:  # KeyboardInterrupt
            self._stop(con, done)
            raise
        if not finished:
            self._stop(con, done)
            raise QueryTimedOut(
                f"query stopped after {timeout:g} s; raise --timeout (now {timeout:g}) or narrow the query "
                "with WHERE or LIMIT"
            )
        if "error" in outcome:
            raise self._translated(outcome["error"]) from None
        value: T = outcome["value"]
        return value

    def _stop(self, con: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
        """Interrupt the running query until its thread ends (again and again: it may not have started)."""
        for _ in range(int(_STOP_GRACE_S / 0.05)):
            con.interrupt()
            if done.wait(0.05):
                return
        self._abandon()

    def _following_expiry(self, attempt: Callable[[], T]) -> T:
        """``attempt()``; once more on the newest snapshot if an unpinned reader's snapshot expired under it.

        Compaction and expiry between reading a manifest and its files remove a snapshot an unpinned
        reader was about to read: it answers from the newest instead. A pinned reader (``as_of``) says so.
        """
        try:
            return attempt()
        except SnapshotExpired:
            if self.as_of_us is not None:
                raise
            self.close()
            return attempt()

    def _answer(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None, max_rows: int | None
    ) -> tuple[pa.Table, int]:
        def attempt() -> tuple[pa.Table, int]:
            self.snapshot()
            con = self._con
            assert con is not None
            _check_read_only(con, sql)
            for view in sorted(_views_used(con, sql, self._names)):
                self._define(view)
            return self._run(lambda: _fetch(con, sql, params, max_rows, self.limits))

        return self._following_expiry(attempt)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Run one SELECT with bound parameters; returns an Arrow table."""
        return self._answer(sql, params, None)[0]

    def query_capped(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None, max_rows: int | None = None
    ) -> tuple[pa.Table, int]:
        """``query``, keeping the first ``max_rows`` rows (None: all) and counting the rest."""
        return self._answer(sql, params, max_rows)

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The sandboxed DuckDB connection of the current snapshot with every view defined (for notebooks).

        Its memory and threads are limited; queries on it have no time limit, and
        it runs any SELECT DuckDB's sandbox settings allow (the checks of
        :meth:`query` on the parse tree are not applied).
        """
        self.snapshot()
        self._define_all()
        assert self._con is not None
        return self._con

    def lookup_inventory(self, store_id: str, item_id: str) -> dict[str, Any] | None:
        """The inventory row of one store and item, or None if it has no events."""

        def attempt() -> list[dict[str, Any]]:
            self.snapshot()
            files = self._define(INVENTORY.name)
            return [] if files is None else self._run(lambda: _lookup(files, store_id, item_id))

        rows = self._following_expiry(attempt)
        if not rows:
            return None
        version = INVENTORY.version_column
        assert version is not None  # inventory is versioned by its events count
        best = max(rows, key=lambda r: r[version])
        return {c: best[c] for c in INVENTORY.column_names}

    def close(self) -> None:
        """Drop the in-memory database."""
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):  # still held by a stopped query's thread: freed with it
                self._con.close()
        self._con, self._raw, self._snapshot, self._names = None, {}, None, {}


def _fetch(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None,
    max_rows: int | None,
    limits: QueryLimits,
) -> tuple[pa.Table, int]:
    """The answer (its first ``max_rows`` rows) and how many rows were left out, streamed batch by batch."""
    reader = con.sql(sql, params=params).to_arrow_reader(_BATCH_ROWS)
    schema = reader.schema
    kept: list[pa.RecordBatch] = []
    held = left_out = size = 0
    try:
        for batch in reader:
            room = batch.num_rows if max_rows is None else max(0, min(batch.num_rows, max_rows - held))
            if room:
                part = batch if room == batch.num_rows else batch.slice(0, room)
                size += part.nbytes
                if size > limits.answer_bytes:
                    raise QueryFailed(
                        f"query failed: the answer holds more than a quarter of --memory-limit "
                        f"{limits.memory_limit}; narrow the query with WHERE or LIMIT, or raise --memory-limit"
                    )
                kept.append(part)
                held += room
            left_out += batch.num_rows - room
    finally:
        reader.close()
    return pa.Table.from_batches(kept, schema=schema), left_out


def _lookup(files: duckdb.DuckDBPyRelation, store_id: str, item_id: str) -> list[dict[str, Any]]:
    # Filter the snapshot's files directly (values bound as constants, no SQL text) and keep the
    # highest version: half the cost of planning the deduplicating view for one key.
    match = (ColumnExpression("store_id") == ConstantExpression(store_id)) & (
        ColumnExpression("item_id") == ConstantExpression(item_id)
    )
    found = files.filter(match)
    names = found.columns
    return [dict(zip(names, r, strict=True)) for r in found.fetchall()]


def connect(
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
    *,
    limits: QueryLimits | None = None,
) -> duckdb.DuckDBPyConnection:
    """A locked-down DuckDB connection with every view defined, for notebooks."""
    return Reader(warehouse, as_of, limits=limits).connection()
