"""What users run against the warehouse: one SELECT, a point lookup, answers rendered as text.

The command line (``beamline query`` / ``beamline lookup``), the tests and
notebooks call these. The sandboxed, read-only DuckDB they run on, its limits
(memory, threads, time), and the snapshot resolution behind ``as_of``, are
:mod:`warehouse.reader`; the names it defines that users need (``Reader``,
``connect``, ``QueryLimits``, the query errors) are importable from here as well.

Any value DuckDB can return renders in every format, including those Python
cannot hold (``'infinity'::TIMESTAMP``, dates past year 9999): they print as
DuckDB writes them.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import os
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.errors import ConfigError
from core.settings import warehouse_dir
from warehouse.reader import (
    DEFAULT_LIMITS,
    QueryFailed,
    QueryLimits,
    QueryRefused,
    QueryTimedOut,
    Reader,
    connect,
    parse_as_of,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_ROWS",
    "FORMATS",
    "QueryFailed",
    "QueryLimits",
    "QueryRefused",
    "QueryTimedOut",
    "Reader",
    "connect",
    "default_warehouse_dir",
    "format_result",
    "lookup_inventory",
    "parse_as_of",
    "run_query",
]

FORMATS = ("table", "csv", "json")
# Control characters in a value would break the table format's one line per row: written as escapes.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}
# The table format is for people: past this many rows it says how many more there are.
DEFAULT_MAX_ROWS = 10_000


def default_warehouse_dir() -> Path:
    """Where pipelines write and readers read unless ``--warehouse`` says otherwise."""
    return warehouse_dir()


def run_query(
    sql: str,
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    limits: QueryLimits | None = None,
) -> pa.Table:
    """Run one read-only SELECT against the warehouse (optionally as it was at ``as_of``)."""
    with closing(Reader(warehouse, as_of, limits=limits)) as reader:
        return reader.query(sql, params)


def lookup_inventory(
    store_id: str,
    item_id: str,
    warehouse: str | os.PathLike[str] | None = None,
    as_of: str | dt.datetime | None = None,
    *,
    limits: QueryLimits | None = None,
) -> dict[str, Any] | None:
    """Stock of one item at one store (optionally as it was at ``as_of``)."""
    with closing(Reader(warehouse, as_of, limits=limits)) as reader:
        return reader.lookup_inventory(store_id, item_id)


# -- rendering -----------------------------------------------------------------------------
def format_result(table: pa.Table, fmt: str = "table", *, left_out: int = 0) -> str:
    """Render an answer as an aligned text table, CSV with a header, or a JSON array.

    ``left_out`` is how many rows of the answer ``table`` does not hold (the
    table format's row cap); the table format says so under the rows.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    names = table.column_names
    columns = [_column_values(table.column(i)) for i in range(table.num_columns)]
    rows = list(zip(*columns, strict=True)) if columns else [() for _ in range(table.num_rows)]
    if fmt == "json":
        items = [{n: _json_value(v) for n, v in zip(names, r, strict=True)} for r in rows]
        return json.dumps(items, ensure_ascii=False, allow_nan=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_text(v) for v in r] for r in rows])
        return buf.getvalue()
    cells = [[("NULL" if v is None else _text(v).translate(_CONTROL)) for v in r] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(names), line(["-" * w for w in widths]), *(line(c) for c in cells)]
    shown = len(rows)
    if left_out:
        out.append(
            f"({shown:,} row{'s' if shown != 1 else ''} shown; {left_out:,} more row{'s' if left_out != 1 else ''} "
            "not shown; use --format csv/json or LIMIT, or raise --max-rows)"
        )
    else:
        out.append(f"({shown} row{'s' if shown != 1 else ''})")
    return "\n".join(out) + "\n"


class _Interval:
    """An interval as DuckDB prints it (``1 year 2 months 3 days 04:05:06``)."""

    __slots__ = ("days", "months", "nanoseconds")

    def __init__(self, months: int, days: int, nanoseconds: int) -> None:
        self.months, self.days, self.nanoseconds = months, days, nanoseconds

    def __str__(self) -> str:
        parts = []
        years, months = divmod(abs(self.months), 12)
        sign = "-" if self.months < 0 else ""
        if years:
            parts.append(f"{sign}{years} year{'s' if years != 1 else ''}")
        if months:
            parts.append(f"{sign}{months} month{'s' if months != 1 else ''}")
        if self.days:
            parts.append(f"{self.days} day{'s' if abs(self.days) != 1 else ''}")
        if self.nanoseconds or not parts:
            micros = abs(self.nanoseconds) // 1000
            seconds, frac = divmod(micros, 1_000_000)
            minutes, sec = divmod(seconds, 60)
            hours, mins = divmod(minutes, 60)
            clock = f"{'-' if self.nanoseconds < 0 else ''}{hours:02d}:{mins:02d}:{sec:02d}"
            parts.append(clock + (f".{frac:06d}" if frac else ""))
        return " ".join(parts)


def _column_values(column: pa.ChunkedArray) -> list[Any]:
    """A column as plain Python values; values Python cannot hold become DuckDB's text for them."""
    try:
        values = column.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException):
        return [_scalar_value(s) for s in column]
    if not (pa.types.is_nested(column.type) or pa.types.is_interval(column.type)):
        return values
    return [_plain(v, column.type) for v in values]


def _plain(value: Any, t: pa.DataType) -> Any:
    """``to_pylist``'s value with maps as dicts and intervals as text, nested types included."""
    if value is None:
        return None
    if pa.types.is_map(t):
        return {_key(k): _plain(v, t.item_type) for k, v in value}
    if pa.types.is_struct(t):
        return {t.field(i).name: _plain(value.get(t.field(i).name), t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [_plain(v, t.value_type) for v in value]
    if pa.types.is_interval(t):
        return _Interval(value.months, value.days, value.nanoseconds)
    return value


def _scalar_value(s: pa.Scalar) -> Any:
    """One value the slow way, for a column ``to_pylist`` cannot convert (an infinite or far time)."""
    t = s.type
    if not s.is_valid:
        return None
    if pa.types.is_map(t):
        return {_key(_scalar_value(e["key"])): _scalar_value(e["value"]) for e in s.values}
    if pa.types.is_struct(t):
        return {t.field(i).name: _scalar_value(s[t.field(i).name]) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [_scalar_value(v) for v in s.values]
    try:
        return _plain(s.as_py(), t)
    except (OverflowError, ValueError, pa.ArrowException):
        pass
    if pa.types.is_timestamp(t):
        return _timestamp_text(s.value, t.unit, t.tz is not None)
    if pa.types.is_date32(t):
        return _date_text(s.cast(pa.int32()).as_py())
    return str(s)


_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian calendar, any year (H. Hinnant's algorithm)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _date_text(days: int) -> str:
    """A date as DuckDB writes it: ``infinity``, ``5881580-07-11``, ``0044-03-15 (BC)``."""
    if abs(days) == _INT32_MAX:
        return "infinity" if days > 0 else "-infinity"
    year, month, day = _civil(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} (BC)"
    return f"{year:04d}-{month:02d}-{day:02d}"


def _timestamp_text(value: int, unit: str, utc: bool) -> str:
    """A timestamp Python's datetime cannot hold, as DuckDB writes it."""
    if abs(value) == _INT64_MAX:
        return "infinity" if value > 0 else "-infinity"
    per = _PER_SECOND[unit]
    days, rest = divmod(value, 86_400 * per)
    seconds, frac = divmod(rest, per)
    minutes, sec = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    date = _date_text(days)
    bc = date.endswith(" (BC)")
    text = f"{date.removesuffix(' (BC)')} {hours:02d}:{mins:02d}:{sec:02d}"
    if frac:
        text += f".{frac:0{len(str(per)) - 1}d}".rstrip("0")
    return text + ("+00" if utc else "") + (" (BC)" if bc else "")


def _key(value: Any) -> str:
    return value if isinstance(value, str) else _text(value)


def _text(value: Any) -> str:
    """A value as text for the table and CSV formats (nested values as JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(_json_value(value), ensure_ascii=False, allow_nan=False)
    return str(value)


def _json_value(value: Any) -> Any:
    """A value as JSON: numbers stay numbers where JSON can hold them exactly, others become text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if decimal.Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dict):
        return {_key(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return _text(value)
