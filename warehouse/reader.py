"""Reading the warehouse: snapshot resolution and a sandboxed, read-only DuckDB over it.

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

It lives beside the writer, on the same format (:mod:`warehouse.format`), and
never imports it; the user-facing verbs on top of it are in :mod:`readside`.
"""

from __future__ import annotations

import datetime as dt
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
from warehouse.format import (
    EPOCH,
    Snapshot,
    check_root,
    current_manifest,
    dedupe_sql,
    empty_view_sql,
    load_snapshot,
    read_manifest,
)

__all__ = [
    "QueryFailed",
    "QueryRefused",
    "Reader",
    "connect",
    "parse_as_of",
]


class QueryRefused(BeamlineError):
    """The query would change something or reach outside the warehouse."""


class QueryFailed(BeamlineError):
    """The query is read-only but DuckDB could not run it (syntax, unknown name, types)."""


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
        assert rel is not None  # a relation's query() gives None only for a statement that is not a SELECT
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
        self.root = Path(warehouse) if warehouse is not None else warehouse_dir()
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
                pointer = current_manifest(self.root)
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
        version = INVENTORY.version_column
        assert version is not None  # inventory is versioned by its events count
        best = max(rows, key=lambda r: r[version])
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
