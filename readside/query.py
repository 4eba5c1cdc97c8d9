"""What users run against the warehouse: one SELECT, a point lookup, answers rendered as text.

The command line (``beamline query`` / ``beamline lookup``), the tests and
notebooks call these. The sandboxed, read-only DuckDB they run on, and the
snapshot resolution behind ``as_of``, are :mod:`warehouse.reader`; the names it
defines that users need (``Reader``, ``connect``, the query errors) are
importable from here as well.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.errors import ConfigError
from core.settings import warehouse_dir
from warehouse.reader import QueryFailed, QueryRefused, Reader, connect, parse_as_of

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


def default_warehouse_dir() -> Path:
    """Where pipelines write and readers read unless ``--warehouse`` says otherwise."""
    return warehouse_dir()


def run_query(
    sql: str,
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
) -> pa.Table:
    """Run one read-only SELECT against the warehouse (optionally as it was at ``as_of``)."""
    with closing(Reader(warehouse, as_of)) as reader:
        return reader.query(sql, params)


def lookup_inventory(
    store_id: str,
    item_id: str,
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
) -> dict[str, Any] | None:
    """Stock of one item at one store (optionally as it was at ``as_of``)."""
    with closing(Reader(warehouse, as_of)) as reader:
        return reader.lookup_inventory(store_id, item_id)


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
