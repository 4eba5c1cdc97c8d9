"""Read-only SQL, point lookups and time travel over a warehouse snapshot.

Each reader builds its own in-memory DuckDB database whose views cover exactly
the Parquet files of one snapshot, so readers take no lock on anything the
writer touches. The database is read-only by construction, not by matching
strings:

* DuckDB's own parser classifies the statement; only a single SELECT runs
  (DDL, DML, COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA, CALL, EXPLAIN are refused);
* ``enable_external_access=false`` with ``allowed_paths`` set to the snapshot's
  files: no other file can be read or written, no extension loaded or installed;
* ``lock_configuration=true``: the query cannot turn those settings back;
* the warehouse itself is never opened for writing, and user values are bound
  as parameters, never formatted into SQL.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from duckdb import ColumnExpression, ConstantExpression

from core.errors import BeamlineError, ConfigError
from core.settings import warehouse_dir
from core.views import INVENTORY, VIEWS
from readside.snapshots import (
    CURRENT_FILE,
    Snapshot,
    check_root,
    dedupe_sql,
    empty_view_sql,
    load_snapshot,
    read_manifest,
)

__all__ = [
    "FORMATS",
    "QueryFailed",
    "QueryRefused",
    "Reader",
    "connect",
    "default_warehouse_dir",
    "format_result",
    "lookup_inventory",
    "parse_as_of",
    "run_query",
]

FORMATS = ("table", "csv", "json")


class QueryRefused(BeamlineError):
    """The query would change something or reach outside the warehouse."""


class QueryFailed(BeamlineError):
    """The query is read-only but DuckDB could not run it (syntax, unknown name, types)."""


def default_warehouse_dir() -> Path:
    """Where pipelines write and readers read unless ``--warehouse`` says otherwise."""
    return warehouse_dir()


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
    return (when - dt.datetime.fromtimestamp(0, dt.timezone.utc)) // dt.timedelta(microseconds=1)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _sandboxed(snapshot: Snapshot) -> tuple[duckdb.DuckDBPyConnection, dict[str, duckdb.DuckDBPyRelation]]:
    """An in-memory database whose only reachable files are the snapshot's."""
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_unsigned_extensions": False,
        },
    )
    all_paths = [p for name in VIEWS for p in snapshot.paths(name)]
    raw: dict[str, duckdb.DuckDBPyRelation] = {}
    con.execute("SET allowed_paths = $paths", {"paths": all_paths})
    con.execute("SET TimeZone = 'UTC'")
    # Files are immutable, so footers and pages can be cached safely for repeated lookups.
    con.execute("SET parquet_metadata_cache = true")
    con.execute("SET cache_local_files = true")
    for name, spec in VIEWS.items():
        paths = snapshot.paths(name)
        if paths:
            raw[name] = con.read_parquet(paths)
            rel = raw[name].query("_files", dedupe_sql(spec, "_files", visible_only=True))
        else:
            rel = con.sql(empty_view_sql(spec))
        rel.create_view(name)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, raw


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


class Reader:
    """Runs read-only queries; follows new snapshots unless pinned with ``as_of``."""

    def __init__(self, warehouse: str | os.PathLike[str] | None = None, as_of: str | dt.datetime | None = None):
        self.root = Path(warehouse) if warehouse is not None else default_warehouse_dir()
        self.as_of_us = parse_as_of(as_of)
        self._pointer: str | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._raw: dict[str, duckdb.DuckDBPyRelation] = {}
        self._snapshot: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """The snapshot answers come from, refreshed when the writer publishes a newer one."""
        if self.as_of_us is not None:
            if self._snapshot is None:
                self._open(load_snapshot(self.root, self.as_of_us))
        else:
            try:
                pointer = (self.root / CURRENT_FILE).read_text().strip()
            except OSError:
                load_snapshot(self.root)  # raises the one-line "missing or foreign warehouse" error
                raise
            if pointer != self._pointer or self._snapshot is None:
                check_root(self.root)
                # The manifest CURRENT named is immutable: this snapshot stays whole however many commits follow.
                self._open(read_manifest(self.root.absolute(), pointer))
                self._pointer = pointer
        assert self._snapshot is not None
        return self._snapshot

    def _open(self, snap: Snapshot) -> None:
        self.close()
        self._con, self._raw = _sandboxed(snap)
        self._snapshot = snap

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The sandboxed DuckDB connection of the current snapshot (for notebooks)."""
        self.snapshot()
        assert self._con is not None
        return self._con

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Run one SELECT with bound parameters; returns an Arrow table."""
        con = self.connection()
        _check_read_only(con, sql)
        try:
            return con.sql(sql, params=params).to_arrow_table()
        except duckdb.PermissionException as e:
            raise QueryRefused(f"refused: the query reaches outside the warehouse ({_one_line(e)})") from None
        except duckdb.CatalogException as e:
            raise QueryFailed(
                f"{_one_line(e)}; views: {', '.join(VIEWS)}; run `beamline query 'SELECT * FROM inventory LIMIT 5'`"
            ) from None
        except duckdb.Error as e:
            raise QueryFailed(f"query failed: {_one_line(e)}") from None

    def lookup_inventory(self, store_id: str, item_id: str) -> dict[str, Any] | None:
        """The inventory row of one store and item, or None if it has no events."""
        self.snapshot()
        files = self._raw.get(INVENTORY.name)
        if files is None:
            return None
        # Filter the snapshot's files directly (values bound as constants, no SQL text) and keep the
        # highest version: half the cost of planning the deduplicating view for one key.
        match = (ColumnExpression("store_id") == ConstantExpression(store_id)) & (
            ColumnExpression("item_id") == ConstantExpression(item_id)
        )
        found = files.filter(match)
        names = found.columns
        rows = [dict(zip(names, r, strict=True)) for r in found.fetchall()]
        if not rows:
            return None
        best = max(rows, key=lambda r: r[INVENTORY.version_column])
        return {c: best[c] for c in INVENTORY.column_names}

    def close(self) -> None:
        """Drop the in-memory database."""
        if self._con is not None:
            self._con.close()
        self._con, self._raw, self._snapshot = None, {}, None


def connect(
    warehouse: str | os.PathLike[str] | None = None, as_of: str | dt.datetime | None = None
) -> duckdb.DuckDBPyConnection:
    """A locked-down DuckDB connection with every view defined, for notebooks."""
    return Reader(warehouse, as_of).connection()


def run_query(
    sql: str,
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
) -> pa.Table:
    """Run one read-only SELECT against the warehouse (optionally as it was at ``as_of``)."""
    reader = Reader(warehouse, as_of)
    try:
        return reader.query(sql, params)
    finally:
        reader.close()


def lookup_inventory(
    store_id: str,
    item_id: str,
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
) -> dict[str, Any] | None:
    """Stock of one item at one store (optionally as it was at ``as_of``)."""
    reader = Reader(warehouse, as_of)
    try:
        return reader.lookup_inventory(store_id, item_id)
    finally:
        reader.close()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def format_result(table: pa.Table, fmt: str = "table") -> str:
    """Render an answer as an aligned text table, CSV with a header, or a JSON array."""
    rows = table.to_pylist()
    names = table.column_names
    if fmt == "json":
        return json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows], ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_text(r[n]) for n in names] for r in rows])
        return buf.getvalue()
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    cells = [[("NULL" if r[n] is None else _text(r[n])) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(names), line(["-" * w for w in widths]), *(line(c) for c in cells)]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _text(value)
