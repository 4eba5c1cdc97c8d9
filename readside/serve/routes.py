"""The JSON API: one handler per route, all reading through :class:`Service`.

Which snapshot a request reads is decided once, at its start
(:meth:`Routes._snapshot`): the one the watcher published last, or the one
``as_of=`` names (resolved as ``beamline query --as-of`` resolves it), after
``min_snapshot=N&wait=S`` has waited for snapshot N to be visible. Everything
the request answers then comes from that snapshot: the in-memory inventory
index when it is the published one, else a sandboxed reader pinned to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode

import anyio.to_thread
import orjson
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core.errors import ConfigError
from core.views import USER_VIEWS, ViewSpec, is_version, split_name
from readside.query import format_result
from readside.serve.answers import (
    SNAPSHOT_HEADER,
    HTTPError,
    JSONAnswer,
    answer,
    decode_cursor,
    dumps,
    encode_cursor,
    invalid_cursor,
    key_values,
    snapshot_info,
)
from readside.serve.config import ServeConfig
from readside.serve.index import row_dict
from readside.serve.readers import ReaderPool
from readside.serve.snapshots import Published, SnapshotSignal, SnapshotWatcher
from readside.status import PIPELINE_VIEWS
from warehouse.format import Snapshot, SnapshotExpired, load_snapshot, quote_ident
from warehouse.reader import QueryTimedOut, Reader, parse_as_of
from warehouse.resume import recorded_run

__all__ = ["READ_PARAMS", "Routes", "Service", "lookup_ids"]

T = TypeVar("T")

# Parameters every read takes; a view's page also takes PAGE_PARAMS and its columns as filters.
READ_PARAMS = ("as_of", "min_snapshot", "wait")
PAGE_PARAMS = ("limit", "after")
# Seconds between comments on a quiet events stream (proxies close idle connections).
_KEEP_ALIVE_S = 15.0
_INT64 = (-(2**63), 2**63 - 1)
_WHOLE = re.compile(r"-?[0-9]{1,40}")


class Service:
    """The state behind the routes: the watcher (snapshot + index), the readers, the query slots."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.root = config.warehouse.absolute()
        self.signal = SnapshotSignal()
        self.watcher = SnapshotWatcher(self.root, config.poll_interval_s, on_publish=self.signal.fire)
        self.readers = ReaderPool(self.root, config.limits)
        # /v1/query's slots, and the slots of the service's own bounded reads (pages, counts, lookups
        # as_of another snapshot): long queries cannot starve paging.
        self.slots = asyncio.Semaphore(config.query_slots)
        self.read_slots = asyncio.Semaphore(config.query_slots)
        self.streams = 0
        self.closing = False  # the server is stopping: event streams end
        self.started_at = time.time()
        self.row_counts: OrderedDict[int, dict[str, int]] = OrderedDict()
        self.source_offsets: OrderedDict[int, dict[str, dict[str, dict[str, int]]]] = OrderedDict()

    def start(self) -> None:
        """Build the index of the newest snapshot and follow the warehouse (raises one line if it cannot)."""
        self.closing = False
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.readers.close()

    def close_streams(self) -> None:
        """End every open event stream (called in the event loop when the server stops)."""
        self.closing = True
        self.signal.fire()

    def public(self, text: str) -> str:
        """A message without the warehouse's absolute path (clients need not know where it lives)."""
        return text.replace(str(self.root), "<warehouse>")


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"{name}= was given {len(values)} times; give it once")
    return values[0]


def _whole(text: str, name: str, low: int, high: int) -> int:
    if _WHOLE.fullmatch(text.strip()) is None:
        raise HTTPError(400, f"{name}= must be a whole number; got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise HTTPError(400, f"{name}= must be {low:,} to {high:,}; got {text[:40]}")
    return value


def lookup_ids(raw_path: bytes) -> tuple[str, str] | None:
    """(store, item) of ``/v1/inventory/{store}/{item}`` from the raw, still percent-encoded path; None if not one.

    The raw path is split first and each part decoded after, so an id holding ``/`` (sent as ``%2F``) works.
    """
    rest = raw_path.partition(b"?")[0][len(_LOOKUP) :]
    parts = rest.split(b"/")
    if len(parts) != 2:
        return None
    store, item = (unquote(part.decode("latin-1")) for part in parts)
    return (store, item) if store and item else None


_LOOKUP = b"/v1/inventory/"


def _as_of_us(text: str) -> int:
    try:
        value = parse_as_of(text)
    except ConfigError:
        raise HTTPError(400, f"as_of={text[:60]!r} is not a time; use RFC 3339, e.g. 2026-11-26T10:00:00Z") from None
    except (OverflowError, ValueError):
        raise HTTPError(400, f"as_of={text[:60]!r} is out of range") from None
    assert value is not None
    return value


def _grouped(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def _columns_of(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


_PLAIN_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_integer,
    pa.types.is_boolean,
    pa.types.is_timestamp,
    pa.types.is_date32,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_null,
)


def _bytes_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(type(value).__name__)


def _rows_json(table: pa.Table) -> bytes:
    """Rows as ``beamline query --format json`` writes them: the same values, the same text for times and bytes.

    Columns of plain types (the views' own: strings, integers, times, bytes) go straight from Arrow
    to orjson, which writes times as ``datetime.isoformat`` does; anything else (decimals, floats,
    intervals, nested values, times past year 9999) takes the command line's own conversion.
    """
    if all(any(plain(f.type) for plain in _PLAIN_TYPES) for f in table.schema):
        try:
            return orjson.dumps(table.to_pylist(), default=_bytes_text)
        except (OverflowError, ValueError, TypeError, pa.ArrowException):
            pass  # a value Python cannot hold: the command line's text for it
    return orjson.dumps(orjson.loads(format_result(table, "json")))


def _with_rows(envelope: dict[str, Any], rows: bytes, snap: Snapshot) -> Response:
    """The envelope with ``rows`` (already JSON) as its last field."""
    head = dumps({"snapshot": snapshot_info(snap), **envelope})
    body = head[:-1] + b',"rows":' + rows + b"}"
    return JSONAnswer(body, headers={SNAPSHOT_HEADER: str(snap.snapshot_id)})


class Routes:
    """The handlers; each takes a Starlette request and returns a response or raises HTTPError."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config

    # -- which snapshot ------------------------------------------------------------------------
    def _params(self, request: Request, allowed: tuple[str, ...]) -> dict[str, list[str]]:
        params = _grouped(request)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            takes = ", ".join(f"{p}=" for p in allowed) or "no parameters"
            raise HTTPError(400, f"unknown parameter {unknown[0]!r}; this endpoint takes {takes}")
        return params

    async def _visible(self, params: Mapping[str, list[str]]) -> Published:
        """The published state, once it holds snapshot ``min_snapshot`` (waiting up to ``wait`` seconds)."""
        watcher = self.service.watcher
        current = watcher.current
        wanted = _single(params, "min_snapshot")
        if wanted is not None and _single(params, "as_of") is not None:
            raise HTTPError(400, "as_of= and min_snapshot= contradict: as_of= names a past snapshot; give one of them")
        wait_text = _single(params, "wait")
        wait = 0.0
        if wait_text is not None:
            try:
                wait = float(wait_text)
            except ValueError:
                raise HTTPError(400, f"wait= must be a number of seconds; got {wait_text[:40]!r}") from None
            if not 0 <= wait < float("inf"):
                raise HTTPError(400, f"wait= must be 0 or more seconds; got {wait_text[:40]!r}")
            wait = min(wait, self.config.max_wait_s)
        if wanted is None:
            return current
        target = _whole(wanted, "min_snapshot", 0, _INT64[1])
        if current.snapshot_id >= target:
            return current
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        watcher.poke()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HTTPError(
                    503,
                    f"snapshot {target} is not visible after {wait:g} s (the newest is {current.snapshot_id}); "
                    f"retry, or wait longer with wait= (at most {self.config.max_wait_s:g})",
                    {"Retry-After": "1", SNAPSHOT_HEADER: str(current.snapshot_id)},
                )
            await self.service.signal.wait(min(remaining, self.config.poll_interval_s))
            current = watcher.current
            if current.snapshot_id >= target:
                return current

    async def _snapshot(self, params: Mapping[str, list[str]]) -> tuple[Snapshot, Published]:
        """The snapshot a read answers from, and the published state (the same snapshot unless ``as_of``)."""
        published = await self._visible(params)
        as_of = _single(params, "as_of")
        if as_of is None:
            return published.snapshot, published
        snap = await self._resolve(_as_of_us(as_of))
        return (published.snapshot if snap.snapshot_id == published.snapshot_id else snap), published

    async def _resolve(self, as_of_us: int) -> Snapshot:
        snap: Snapshot = await anyio.to_thread.run_sync(load_snapshot, self.service.root, as_of_us)
        return snap

    async def _on_reader(self, snap: Snapshot, work: Callable[[Reader], T], *, query: bool = False) -> T:
        """``work(reader)`` on a sandboxed reader of ``snap``, in a worker thread, once a slot is free.

        ``query`` takes one of /v1/query's slots, else one of the service's own reads' (pages, counts):
        the two never wait for each other. The slot is given back when the query's time limit
        fires, not when its interrupted thread ends.
        """
        service = self.service
        slots = service.slots if query else service.read_slots
        limit = self.config.limits.timeout or None
        patience = (limit or 30.0) + 1.0  # a slot frees at the latest when its query's limit fires
        try:
            await asyncio.wait_for(slots.acquire(), patience)
        except TimeoutError:
            kind = "query" if query else "read"
            raise HTTPError(
                503,
                f"busy: all {self.config.query_slots} {kind} slots stayed taken for {patience:g} s; try again",
                {"Retry-After": "1"},
            ) from None
        held = True
        task: asyncio.Future[T] | None = None
        try:

            def run() -> T:
                with service.readers.borrow(snap) as reader:
                    return work(reader)

            task = asyncio.ensure_future(anyio.to_thread.run_sync(run))
            if limit is not None:
                await asyncio.wait({task}, timeout=limit)
                if not task.done():  # the reader is stopping it: its slot is free from now
                    slots.release()
                    held = False
            try:
                result: T = await task
            except QueryTimedOut:
                raise HTTPError(
                    408,
                    f"query stopped after {limit or 0:g} s, this server's --query-timeout; narrow it with WHERE "
                    "or LIMIT (only the server's operator can raise the limit)",
                ) from None
            return result
        finally:
            if held and task is not None and not task.done():
                # The client went while its query runs on in its thread: the slot stays taken until it ends.
                def done(ended: asyncio.Future[T]) -> None:
                    slots.release()
                    if not ended.cancelled():
                        ended.exception()  # retrieved: nobody waits for it any more

                task.add_done_callback(done)
            elif held:
                slots.release()

    # -- routes --------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        self._params(request, ())
        watcher = self.service.watcher
        current = watcher.current
        stats = watcher.stats
        return answer(
            {
                "status": "degraded" if watcher.error else "ok",
                "warehouse_error": self.service.public(watcher.error) if watcher.error else None,
                "index": {
                    "rows": len(current.index),
                    # How long after its commit this snapshot became visible here (the service's freshness).
                    "visible_after_commit_ms": round(
                        current.seen_at * 1000 - current.snapshot.committed_at_us / 1000, 1
                    ),
                    "layers": current.index.layers,
                    "full_builds": stats.full_builds,
                    "incremental_updates": stats.incremental,
                    "compactions_skipped": stats.compactions,
                    "last_update_ms": round(stats.last_update_ms, 2),
                    "max_update_ms": round(stats.max_update_ms, 2),
                    "last_full_build_ms": round(stats.last_full_build_ms, 2),
                },
                "uptime_s": round(time.time() - self.service.started_at, 3),
            },
            current.snapshot,
        )

    async def views(self, request: Request) -> Response:
        params = self._params(request, READ_PARAMS)
        snap, published = await self._snapshot(params)
        counts = await self._row_counts(snap, published)
        offsets = await self._source_offsets(snap)
        listed = []
        for name, spec in USER_VIEWS.items():
            listed.append(
                {
                    "name": name,
                    # The version the name shows in this snapshot, and every version queryable as "name@version".
                    "version": snap.promoted(name),
                    "versions": snap.versions(name),
                    "columns": _columns_of(spec.schema),
                    "key": list(spec.key),
                    "rows": counts[name],
                    "files": len(snap.files.get(snap.table_of(name), ())),
                    # What a streaming run's resume point covers (null for a view no streaming run wrote);
                    # lag against the log needs the broker: `beamline status`.
                    "source_offsets": offsets.get(name),
                    "lag_s": None,
                }
            )
        return answer({"views": listed}, snap)

    async def _source_offsets(self, snap: Snapshot) -> dict[str, dict[str, dict[str, int]]]:
        """Per view a streaming pipeline writes: the offsets its snapshot covers, per topic and partition."""

        def read() -> dict[str, dict[str, dict[str, int]]]:
            found: dict[str, dict[str, dict[str, int]]] = {}
            for pipeline, views in PIPELINE_VIEWS.items():
                recorded = recorded_run(self.service.root, pipeline, snap)
                if recorded is None:
                    continue
                covered: dict[str, dict[str, int]] = {}
                for (topic, partition), offset in sorted(recorded.offsets.items()):
                    covered.setdefault(topic, {})[str(partition)] = offset
                found.update(dict.fromkeys(views, covered))
            return found

        cache = self.service.source_offsets
        if snap.snapshot_id not in cache:
            cache[snap.snapshot_id] = await anyio.to_thread.run_sync(read)
            while len(cache) > 8:
                cache.popitem(last=False)
        return cache[snap.snapshot_id]

    async def _row_counts(self, snap: Snapshot, published: Published) -> dict[str, int]:
        """Rows per view: the index's count, a manifest's for insert-once views, else one COUNT per snapshot."""
        cache = self.service.row_counts
        counts = cache.get(snap.snapshot_id)
        if counts is None:
            queried = [name for name, spec in USER_VIEWS.items() if spec.version_column is not None]
            if snap is published.snapshot:
                queried.remove("inventory")
            sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {quote_ident(v)}) AS {quote_ident(v)}" for v in queried)
            counts = (await self._on_reader(snap, lambda r: r.query(sql).to_pylist()))[0] if queried else {}
            counts |= {
                n: sum(k for _, k in snap.files.get(snap.table_of(n), ()))
                for n, s in USER_VIEWS.items()
                if s.version_column is None
            }
            if snap is published.snapshot:
                counts["inventory"] = len(published.index)
            cache[snap.snapshot_id] = counts
            while len(cache) > 8:
                cache.popitem(last=False)
        return counts

    def lookup_now(self, store: str, item: str) -> tuple[int, bytes, int]:
        """A lookup in the published index: (status, JSON body, snapshot id). The hot path: no await, no query."""
        published = self.service.watcher.current
        snap = published.snapshot
        row = published.index.get((store, item))
        if row is None:
            return 404, dumps({"error": _no_row(store, item, snap)}), snap.snapshot_id
        return 200, dumps({"snapshot": snapshot_info(snap), "row": row_dict((store, item), row)}), snap.snapshot_id

    async def inventory(self, request: Request) -> Response:
        ids = lookup_ids(request.scope.get("raw_path") or request.scope["path"].encode("utf-8"))
        if ids is None:
            raise HTTPError(404, f"no route {request.url.path[:80]!r}; the API is described at /docs")
        store, item = ids
        if not request.scope["query_string"]:
            status, body, sid = self.lookup_now(store, item)
            return JSONAnswer(body, status_code=status, headers={SNAPSHOT_HEADER: str(sid)})
        params = self._params(request, READ_PARAMS)
        snap, published = await self._snapshot(params)
        if snap is published.snapshot:
            row = published.index.get((store, item))
            found = None if row is None else row_dict((store, item), row)
        else:
            found = await self._on_reader(snap, lambda r: r.lookup_inventory(store, item))
            if found is not None:  # times as `beamline query --format json` writes them
                found = {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in found.items()}
        if found is None:
            raise HTTPError(404, _no_row(store, item, snap), {SNAPSHOT_HEADER: str(snap.snapshot_id)})
        return answer({"row": found}, snap)

    async def view_rows(self, request: Request) -> Response:
        name = request.path_params["view"]
        spec = _page_spec(name)
        if spec is None:
            raise HTTPError(404, f"no view {name[:80]!r}; views: {', '.join(USER_VIEWS)} (or one's version: view@v2)")
        params = _grouped(request)
        limit_text = _single(params, "limit")
        limit = self.config.page_size if limit_text is None else _whole(limit_text, "limit", 1, self.config.max_rows)
        filters = self._filters(spec, params)
        after = _single(params, "after")
        if after is None:
            snap, _ = await self._snapshot(params)
            key: list[Any] = []
        else:
            snap, key = await self._cursor_snapshot(spec, after, params)
        base, version = split_name(name)
        if version is not None and version not in snap.versions(base):
            raise HTTPError(
                404,
                f"view {base} has no version {version!r} in snapshot {snap.snapshot_id}; its versions: "
                f"{', '.join(snap.versions(base))}",
                {SNAPSHOT_HEADER: str(snap.snapshot_id)},
            )
        sql, args = _page_sql(spec, filters, key, limit + 1)
        table: pa.Table = await self._on_reader(snap, lambda r: r.query(sql, args))
        more = table.num_rows > limit
        page = table.slice(0, limit)
        cursor = encode_cursor(spec, snap, key_values(spec, page, limit - 1)) if more else None
        next_url = None
        if cursor is not None:
            kept = [(k, v) for k, values in params.items() if k in spec.column_names for v in values]
            next_url = f"/v1/views/{spec.name}?" + urlencode([*kept, ("limit", str(limit)), ("after", cursor)])
        envelope = {"view": spec.name, "columns": _columns_of(spec.schema), "next": cursor, "next_url": next_url}
        return _with_rows(envelope, _rows_json(page), snap)

    async def _cursor_snapshot(
        self, spec: ViewSpec, after: str, params: Mapping[str, list[str]]
    ) -> tuple[Snapshot, list[Any]]:
        """The snapshot a cursor's first page read (every page of a walk reads it), and the key to start after."""
        sid, committed_us, key = decode_cursor(after, spec)
        await self._visible(params)
        try:
            snap = await self._resolve(committed_us)
        except SnapshotExpired:
            raise HTTPError(
                410, f"this page's snapshot {sid} has expired; start the walk again without after="
            ) from None
        except ConfigError:  # before the warehouse's first snapshot: no page ever read it
            raise HTTPError(400, invalid_cursor(spec)) from None
        if snap.snapshot_id != sid:  # commit times grow with ids: this id was not committed then
            raise HTTPError(400, invalid_cursor(spec))
        as_of = _single(params, "as_of")
        if as_of is not None and (await self._resolve(_as_of_us(as_of))).snapshot_id != sid:
            raise HTTPError(400, f"after= reads snapshot {sid}, which as_of= does not name; drop as_of= when paging")
        return snap, key

    def _filters(self, spec: ViewSpec, params: Mapping[str, list[str]]) -> dict[str, list[Any]]:
        types = dict(spec.columns)
        filters: dict[str, list[Any]] = {}
        for name, values in params.items():
            if name in READ_PARAMS or name in PAGE_PARAMS:
                continue
            if name not in types:
                raise HTTPError(
                    400, f"unknown column {name[:80]!r} of view {spec.name}; columns: {', '.join(spec.column_names)}"
                )
            filters[name] = [_typed(name, types[name], v) for v in values]
        return filters

    async def query(self, request: Request) -> Response:
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            # Also what keeps a web page from posting here: a JSON POST from another site needs CORS's consent.
            raise HTTPError(415, f"the body must be sent as Content-Type: application/json; got {kind[:60]!r}")
        params = self._params(request, READ_PARAMS)
        sql, args = _query_body(await request.body())
        snap, _ = await self._snapshot(params)
        cap = self.config.max_rows
        table, left_out = await self._on_reader(snap, lambda r: r.query_capped(sql, args, cap), query=True)
        envelope = {"columns": _columns_of(table.schema), "rows_left_out": left_out, "truncated": left_out > 0}
        return _with_rows(envelope, _rows_json(table), snap)

    async def events(self, request: Request) -> Response:
        self._params(request, ())
        service = self.service
        if service.streams >= self.config.max_event_streams:
            raise HTTPError(503, f"{service.streams} event streams are open, the most allowed; try again later")

        async def stream() -> AsyncIterator[bytes]:
            service.streams += 1
            try:
                shown = -1
                quiet_since = time.monotonic()
                while not service.closing:
                    current = service.watcher.current
                    if current.snapshot_id != shown:
                        shown = current.snapshot_id
                        quiet_since = time.monotonic()
                        data = dumps(
                            {"snapshot": snapshot_info(current.snapshot), "inventory_rows": len(current.index)}
                        )
                        yield b"id: %d\nevent: snapshot\ndata: %s\n\n" % (shown, data)
                    elif time.monotonic() - quiet_since >= _KEEP_ALIVE_S:
                        quiet_since = time.monotonic()
                        yield b": keep-alive\n\n"
                    await service.signal.wait(_KEEP_ALIVE_S)
            finally:
                service.streams -= 1

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"}
        )


def _page_spec(name: str) -> ViewSpec | None:
    """The spec of a view page's name: a view, or a version of one (``inventory@v2``) under that name."""
    base, version = split_name(name)
    spec = USER_VIEWS.get(base)
    if spec is None or (version is not None and not is_version(version)):
        return None
    return spec if version is None else replace(spec, name=name)


def _no_row(store: str, item: str, snap: Snapshot) -> str:
    return f"no inventory row for store {store[:80]!r} item {item[:80]!r} in snapshot {snap.snapshot_id}"


def _typed(name: str, kind: pa.DataType, text: str) -> Any:
    """A filter's value as its column's type (HTTPError 400 if it is not one)."""
    if pa.types.is_string(kind):
        return text
    if pa.types.is_integer(kind):
        bits = kind.bit_width
        return _whole(text, name, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if pa.types.is_timestamp(kind):
        try:
            return parse_as_of(text)
        except (ConfigError, OverflowError, ValueError):
            raise HTTPError(
                400, f"{name}={text[:60]!r} is not a time; use RFC 3339, e.g. 2026-11-26T10:00:00Z"
            ) from None
    if pa.types.is_binary(kind):
        return text.encode("utf-8", "surrogateescape")
    raise HTTPError(400, f"column {name} cannot be filtered on")


def _placeholder(kind: pa.DataType, n: int) -> str:
    # Times travel as µs since the epoch (any time DuckDB holds, past Python's year 9999 too).
    return f"make_timestamp(CAST(${n} AS BIGINT))::TIMESTAMPTZ" if pa.types.is_timestamp(kind) else f"${n}"


def _page_sql(spec: ViewSpec, filters: Mapping[str, list[Any]], after: list[Any], limit: int) -> tuple[str, list[Any]]:
    """One page of ``spec`` in key order: the filters, the rows after key ``after``, at most ``limit`` rows.

    Keyset pagination: ``(k1, k2) > (a1, a2)`` is written out as
    ``k1 >= a1 AND (k1 > a1 OR (k1 = a1 AND k2 > a2))`` so DuckDB can skip the
    files' row groups before the cursor. Values are bound, never formatted in.
    """
    types = dict(spec.columns)
    args: list[Any] = []

    def bind(name: str, value: Any) -> str:
        args.append(value)
        return _placeholder(types[name], len(args))

    where = []
    for name, values in filters.items():
        column = quote_ident(name)
        if len(values) == 1:
            where.append(f"{column} = {bind(name, values[0])}")
        else:
            where.append(f"{column} IN ({', '.join(bind(name, v) for v in values)})")
    if after:
        first = quote_ident(spec.key[0])
        where.append(f"{first} >= {bind(spec.key[0], after[0])}")
        tail = ""
        for name, value in reversed(list(zip(spec.key, after, strict=True))):
            column, placeholder = quote_ident(name), bind(name, value)
            tail = (
                f"{column} > {placeholder}"
                if not tail
                else f"{column} > {placeholder} OR ({column} = {placeholder} AND ({tail}))"
            )
        where.append(f"({tail})")
    columns = ", ".join(quote_ident(c) for c in spec.column_names)
    order = ", ".join(quote_ident(k) for k in spec.key)
    sql = f"SELECT {columns} FROM {quote_ident(spec.name)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    args.append(limit)
    return f"{sql} ORDER BY {order} LIMIT ${len(args)}", args


def _query_body(body: bytes) -> tuple[str, list[Any] | None]:
    """``{"sql": "...", "params": [...]}`` checked: HTTPError 400 saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(400, 'the body must be JSON: {"sql": "SELECT ...", "params": [...]}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sql"), str):
        raise HTTPError(400, 'the body must be a JSON object with "sql", a string (and "params", a list)')
    unknown = sorted(set(doc) - {"sql", "params"})
    if unknown:
        raise HTTPError(400, f'unknown field {unknown[0][:40]!r} in the body; it takes "sql" and "params"')
    params = doc.get("params")
    if params is None:
        return doc["sql"], None
    if isinstance(params, list) and any(type(p) is float for p in params):
        # orjson reads an integer past 64 bits as a float: read the list again, exactly, to refuse it.
        exact = json.loads(body).get("params")
        if isinstance(exact, list) and len(exact) == len(params):
            params = exact
    if not isinstance(params, list) or not all(p is None or isinstance(p, (str, int, float, bool)) for p in params):
        raise HTTPError(400, '"params" must be a list of strings, numbers, booleans or nulls (bound to $1, $2, ...)')
    if any(isinstance(p, int) and not isinstance(p, bool) and not _INT64[0] <= p <= _INT64[1] for p in params):
        raise HTTPError(400, '"params" holds an integer outside 64 bits; send it as a string and CAST it in the SQL')
    return doc["sql"], params or None
