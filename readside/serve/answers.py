"""The service's answers: one JSON envelope, one-line errors, and the pagination cursor.

Every answer that comes from the warehouse names its snapshot the same way::

    {"snapshot": {"id": 42, "committed_at": "2026-11-26T10:00:00.123456Z", "age_s": 0.8}, ...}

and carries it in the ``Beamline-Snapshot`` header too (errors included, where
one snapshot was read). An error is ``{"error": "one line"}`` with its status;
the line never holds a traceback or the warehouse's absolute path.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa
from starlette.responses import Response

from core.errors import BeamlineError, ConfigError
from core.views import ViewSpec
from warehouse.format import EPOCH, Snapshot, SnapshotExpired, WarehouseInconsistent, WarehouseMissing
from warehouse.reader import QueryFailed, QueryRefused, QueryTimedOut

__all__ = [
    "SNAPSHOT_HEADER",
    "HTTPError",
    "JSONAnswer",
    "answer",
    "decode_cursor",
    "dumps",
    "encode_cursor",
    "error_answer",
    "invalid_cursor",
    "one_line",
    "snapshot_info",
    "status_of",
    "time_text",
]

SNAPSHOT_HEADER = "Beamline-Snapshot"
_CURSOR_VERSION = 1


class HTTPError(Exception):
    """An answer other than 200: raised anywhere below a route, written as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class JSONAnswer(Response):
    media_type = "application/json"


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def one_line(text: object) -> str:
    """The first line of ``text``, whitespace squeezed (what an error body may hold)."""
    lines = str(text).strip().splitlines()
    return " ".join(lines[0].split()) if lines else "error"


@functools.lru_cache(maxsize=256)
def time_text(micros: int) -> str:
    """A commit time as RFC 3339 in UTC with microseconds (``as_of=`` takes it back unchanged)."""
    when = EPOCH + dt.timedelta(microseconds=micros)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def snapshot_info(snap: Snapshot) -> dict[str, Any]:
    age = max(0.0, time.time() - snap.committed_at_us / 1e6)
    return {"id": snap.snapshot_id, "committed_at": time_text(snap.committed_at_us), "age_s": round(age, 3)}


def answer(content: Mapping[str, Any], snap: Snapshot | None = None, status: int = 200) -> Response:
    """A JSON answer; with ``snap``, the envelope's ``snapshot`` comes first and the header is set."""
    headers = {}
    if snap is not None:
        content = {"snapshot": snapshot_info(snap), **content}
        headers[SNAPSHOT_HEADER] = str(snap.snapshot_id)
    return JSONAnswer(dumps(content), status_code=status, headers=headers)


def error_answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONAnswer(dumps({"error": one_line(message)}), status_code=status, headers=dict(headers or {}))


def status_of(exc: BeamlineError) -> int:
    """The HTTP status of a Beamline error met while answering."""
    if isinstance(exc, QueryRefused):
        return 403
    if isinstance(exc, QueryTimedOut):
        return 408
    if isinstance(exc, SnapshotExpired):
        return 410
    if isinstance(exc, (QueryFailed, ConfigError)):
        return 400
    if isinstance(exc, WarehouseMissing):
        return 503
    if isinstance(exc, WarehouseInconsistent):
        return 500
    return 500


# -- the pagination cursor -----------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_cursor(spec: ViewSpec, snap: Snapshot, key: Sequence[Any]) -> str:
    """An opaque token for "the rows after ``key`` in ``snap``": the next page reads the same snapshot."""
    return _b64(dumps([_CURSOR_VERSION, spec.name, snap.snapshot_id, snap.committed_at_us, list(key)]))


def key_values(spec: ViewSpec, table: pa.Table, row: int) -> list[Any]:
    """The key of row ``row`` of a page as the cursor stores it (timestamps as µs)."""
    out = []
    for name in spec.key:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        out.append(column[row].as_py())
    return out


def invalid_cursor(spec: ViewSpec) -> str:
    return f"after= is not a valid cursor of view {spec.name}; pass the `next` value of the page before"


def decode_cursor(text: str, spec: ViewSpec) -> tuple[int, int, list[Any]]:
    """(snapshot id, its commit time µs, key values) from ``after=``; HTTPError 400 if it is not this view's."""
    bad = HTTPError(400, invalid_cursor(spec))
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, view, sid, committed, key = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if version != _CURSOR_VERSION or view != spec.name or type(sid) is not int or type(committed) is not int:
        raise bad
    if not (0 <= sid < 2**63 and 0 <= committed < 2**63):
        raise bad
    if not isinstance(key, list) or len(key) != len(spec.key):
        raise bad
    types = dict(spec.columns)
    values: list[Any] = []
    for name, value in zip(spec.key, key, strict=True):
        kind = types[name]
        if pa.types.is_string(kind) and isinstance(value, str):
            values.append(value)
        elif (pa.types.is_integer(kind) or pa.types.is_timestamp(kind)) and type(value) is int:
            if not -(2**63) <= value < 2**63:
                raise bad
            values.append(value)  # a timestamp stays µs: the page's SQL turns it back into a time
        else:
            raise bad
    return sid, committed, values
