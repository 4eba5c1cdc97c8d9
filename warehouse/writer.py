"""The warehouse writer: idempotent, versioned upserts of view rows.

The warehouse is a folder of immutable Parquet files plus one immutable JSON
manifest per snapshot (the format is :mod:`warehouse.format`). A commit writes
new files, then a new manifest, then atomically replaces ``CURRENT`` (a
one-line pointer to the newest manifest). Readers read ``CURRENT`` once and see
exactly the files of that snapshot, so they never see half a commit and never
take a lock. Writers in several processes serialise their commits with an
exclusive ``fcntl`` lock on ``.lock`` (one host, local file system). Nothing is
rewritten in place: compaction writes a new file and a new snapshot; old files
stay until :meth:`Warehouse.expire_snapshots` removes snapshots older than a
retention period, which bounds time travel.

Merge on read: a view is, per key, the stored row with the highest version. A
commit keeps only the incoming rows whose version is higher than every stored
version of their key, so a replayed or duplicated batch writes nothing and a
lower version never hides a higher one.

The Beam sink (:mod:`transforms.sinks`) shares one writer per folder and
process through :func:`acquire_shared_writer`, and its steps commit together
(:class:`GroupCommitter`). Nothing here imports Beam.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import BeamlineError, ConfigError
from core.views import VIEWS, ViewSpec, get_view
from warehouse.format import (
    CATALOG_SQL,
    CURRENT_FILE,
    DATA_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_FILE,
    MARKER_FILE,
    SNAPSHOTS_DIR,
    Snapshot,
    WarehouseMissing,
    catalog_sql,
    check_root,
    current_manifest,
    dedupe_sql,
    key_columns_sql,
    list_snapshots,
    load_snapshot,
    manifest_name,
    quote_ident,
    read_manifest,
    view_dir,
)

__all__ = [
    "DEFAULT_RETENTION",
    "CommitResult",
    "GroupCommitter",
    "Warehouse",
    "acquire_shared_writer",
    "release_shared_writer",
]

ROW_GROUP_SIZE = 32_768
# A view up to this many rows keeps its key -> version map in the writer's
# memory (some tens of MB at the limit): a commit then finds the newer rows
# without a DuckDB query over the view's files, which was two thirds of a small
# commit (16 ms -> 3 ms for 60 rows into a 250-row view). The map is used only
# while the view's files are those this writer last saw; otherwise it is read
# again from the files (a larger view or batch: the anti-join decides).
KNOWN_VERSIONS_MAX_ROWS = 50_000
# How long the Beam sink keeps snapshots (time travel) unless told otherwise.
DEFAULT_RETENTION = dt.timedelta(days=7)


@dataclass(frozen=True)
class CommitResult:
    """What a commit did: the snapshot it made (None if nothing changed)."""

    view: str
    snapshot_id: int | None
    rows_in: int
    rows_written: int


def _now_us() -> int:
    return time.time_ns() // 1000


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_file(root: Path, name: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``root/name`` by way of a temporary file and a rename: a reader sees the old file or the new one."""
    tmp = root / f".{name}.{uuid.uuid4().hex}"
    if durable:
        _fsync_write(tmp, data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, root / name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _coerce_timestamp(value: Any) -> Any:
    # Beam's Timestamp carries its own conversion; datetimes and None pass through.
    to_dt = getattr(value, "to_utc_datetime", None)
    return to_dt(has_tz=True) if to_dt is not None else value


class Warehouse:
    """Writer of one warehouse folder; safe to use from several processes at once."""

    def __init__(self, root: str | os.PathLike[str], *, max_files_per_view: int = 16) -> None:
        self.root = Path(root).absolute()
        self.max_files_per_view = max_files_per_view
        self._thread_lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        # view -> (its files as this writer last saw them, key -> highest stored version)
        self._known: dict[str, tuple[tuple[str, ...], dict[tuple[Any, ...], Any]]] = {}
        self._init_layout()

    # layout and locking
    def _init_layout(self) -> None:
        # Several workers may create the same new warehouse at once: the folder
        # check and the layout happen under the lock, and the marker comes last,
        # so a second writer sees either nothing of ours or a whole warehouse.
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseMissing(f"cannot create warehouse {self.root}: {exc.strerror or exc}") from None
        self._refuse_foreign_folder()  # before the lock file, which would litter it
        with self._locked():
            self._refuse_foreign_folder()
            for sub in (SNAPSHOTS_DIR, *(view_dir(v) for v in VIEWS)):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if not (self.root / CURRENT_FILE).exists():
                self._publish(0, _now_us(), {v: () for v in VIEWS})
            if not (self.root / MARKER_FILE).exists():
                meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
                _replace_file(self.root, MARKER_FILE, json.dumps(meta).encode())
        check_root(self.root)

    def _refuse_foreign_folder(self) -> None:
        if (self.root / MARKER_FILE).exists():
            return
        ours = {LOCK_FILE, CURRENT_FILE, CATALOG_SQL, SNAPSHOTS_DIR, DATA_DIR}
        foreign = sorted(p.name for p in self.root.iterdir() if p.name not in ours and p.name[0] != ".")
        if foreign:
            raise WarehouseMissing(
                f"{self.root} is not empty and is not a Beamline warehouse (it holds {foreign[0]!r}); "
                "pass an empty or new folder as --warehouse"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self.root / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = duckdb.connect(
                config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
            )
        return self._con

    def close(self) -> None:
        """Release the in-memory DuckDB connection used for merges."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def current(self) -> Snapshot:
        """The newest committed snapshot."""
        return load_snapshot(self.root)

    # publishing
    def _publish(self, snapshot_id: int, committed_at_us: int, files: Mapping[str, Sequence[tuple[str, int]]]) -> None:
        doc = {
            "snapshot_id": snapshot_id,
            "committed_at_us": committed_at_us,
            "views": {v: [{"path": p, "rows": n} for p, n in files.get(v, ())] for v in VIEWS},
        }
        name = manifest_name(snapshot_id, committed_at_us)
        _fsync_write(self.root / SNAPSHOTS_DIR / name, json.dumps(doc).encode())
        snap = Snapshot(self.root, snapshot_id, committed_at_us, {v: tuple(files.get(v, ())) for v in VIEWS})
        _replace_file(self.root, CATALOG_SQL, catalog_sql(snap).encode(), durable=False)
        # The atomic step: readers see the old snapshot or the new one, never a mix.
        _replace_file(self.root, CURRENT_FILE, name.encode())
        _fsync_dir(self.root)

    # committing
    def to_arrow(self, view: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
        """Rows (dicts or an Arrow table) as a table with the view's storage schema."""
        spec = get_view(view)
        schema = spec.storage_schema
        if isinstance(rows, pa.Table):
            missing = [n for n in schema.names if n not in rows.column_names]
            if missing:
                raise ConfigError(f"rows for view {view!r} lack columns {missing}; expected {schema.names}")
            return rows.select(schema.names).cast(schema)
        ts_cols = [f.name for f in schema if pa.types.is_timestamp(f.type)]
        columns: dict[str, list[Any]] = {n: [] for n in schema.names}
        try:
            for row in rows:
                for n in schema.names:
                    columns[n].append(row[n])
        except KeyError as e:
            raise ConfigError(f"a row for view {view!r} lacks column {e}; expected {schema.names}") from None
        for n in ts_cols:
            columns[n] = [_coerce_timestamp(v) for v in columns[n]]
        return pa.table(columns, schema=schema)

    def prepare(self, view: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
        """Rows as a table ready to commit to ``view``; raises ConfigError for rows the view cannot take."""
        spec = get_view(view)
        batch = self.to_arrow(view, rows)
        for k in (*spec.key, *([spec.version_column] if spec.version_column else [])):
            if batch.column(k).null_count:
                raise ConfigError(f"rows for view {view!r} have nulls in {k!r}; key and version columns are required")
        return batch

    def commit(self, view: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> CommitResult:
        """Upsert rows into ``view`` as one snapshot; rows not newer than stored are dropped."""
        return self.commit_many({view: rows})[view]

    def commit_many(self, batches: Mapping[str, pa.Table | Iterable[Mapping[str, Any]]]) -> dict[str, CommitResult]:
        """Upsert rows into several views as one snapshot: one manifest and one publish for all.

        Each view's rows are treated as ``commit`` treats them. A view whose
        rows are all stale gets no file; if no view gets one, no snapshot is made.
        """
        return self._commit_tables({view: self.prepare(view, rows) for view, rows in batches.items()})

    def _commit_tables(self, tables: Mapping[str, pa.Table]) -> dict[str, CommitResult]:
        """``commit_many`` for tables ``prepare`` already made."""
        results = {view: CommitResult(view, None, 0, 0) for view, t in tables.items() if t.num_rows == 0}
        tables = {view: t for view, t in tables.items() if t.num_rows}
        if not tables:
            return results
        with self._locked():
            parent = self.current()
            con = self._connection()
            sid = parent.snapshot_id + 1
            files = {v: list(parent.files.get(v, ())) for v in VIEWS}
            learned = []
            for view, batch in tables.items():
                spec = get_view(view)
                stored = tuple(rel for rel, _ in files[view])
                versions: dict[tuple[Any, ...], Any] | None = None
                if batch.num_rows <= KNOWN_VERSIONS_MAX_ROWS:
                    known = self._known.get(view)
                    versions = (
                        known[1]
                        if known is not None and known[0] == stored
                        else self._load_versions(con, spec, parent, view)
                    )
                if versions is not None:
                    fresh = _newer_than(spec, batch, versions)
                else:
                    fresh = self._newer_rows(con, spec, batch, parent.paths(view))
                if fresh.num_rows:
                    files[view].append((self._write_file(spec, sid, fresh), fresh.num_rows))
                    if len(files[view]) > self.max_files_per_view:
                        files[view] = self._compact(con, spec, sid, files[view])
                learned.append((view, tuple(rel for rel, _ in files[view]), versions, spec, fresh))
                results[view] = CommitResult(view, sid if fresh.num_rows else None, batch.num_rows, fresh.num_rows)
            if any(r.snapshot_id is not None for r in results.values()):
                self._publish(sid, max(_now_us(), parent.committed_at_us + 1), files)
            for view, view_files, versions, spec, fresh in learned:
                self._remember(view, view_files, versions, spec, fresh)
            return results

    def _load_versions(
        self, con: duckdb.DuckDBPyConnection, spec: ViewSpec, parent: Snapshot, view: str
    ) -> dict[tuple[Any, ...], Any] | None:
        """The stored key -> version map of a small view (None for a large one: the files decide)."""
        if sum(n for _, n in parent.files.get(view, ())) > KNOWN_VERSIONS_MAX_ROWS:
            return None
        paths = parent.paths(view)
        if not paths:
            return {}
        con.read_parquet(paths).create_view("_known", replace=True)
        keys = key_columns_sql(spec)
        version = f"max({quote_ident(spec.version_column)})" if spec.version_column else "NULL"
        # Through Arrow, as the incoming rows are read, so both sides hold equal Python values.
        table = con.sql(f"SELECT {keys}, {version} AS _version FROM _known GROUP BY {keys}").to_arrow_table()
        return dict(zip(_keys_of(spec, table), table.column("_version").to_pylist(), strict=True))

    def _remember(
        self,
        view: str,
        files: tuple[str, ...],
        versions: dict[tuple[Any, ...], Any] | None,
        spec: ViewSpec,
        fresh: pa.Table,
    ) -> None:
        """After a commit: the view's files and versions as they now stand (forgotten if too large)."""
        if versions is None or len(versions) + fresh.num_rows > KNOWN_VERSIONS_MAX_ROWS:
            self._known.pop(view, None)
            return
        keys = _keys_of(spec, fresh)
        if spec.version_column is None:
            versions.update(dict.fromkeys(keys))
        else:
            versions.update(zip(keys, fresh.column(spec.version_column).to_pylist(), strict=True))
        self._known[view] = (files, versions)

    def _newer_rows(
        self, con: duckdb.DuckDBPyConnection, spec: ViewSpec, batch: pa.Table, paths: list[str]
    ) -> pa.Table:
        ordered = _strictly_ordered(batch, spec.key)
        if ordered and not paths:
            return batch  # one row per key, in key order: nothing to drop or sort
        con.register("_batch", batch)
        try:
            deduped = "SELECT * FROM _batch" if ordered else dedupe_sql(spec, "_batch", visible_only=False)
            order = key_columns_sql(spec)
            if not paths:
                return con.sql(f"SELECT * FROM ({deduped}) ORDER BY {order}").to_arrow_table()
            con.read_parquet(paths).create_view("_stored", replace=True)
            match = " AND ".join(f"s.{quote_ident(k)} = b.{quote_ident(k)}" for k in spec.key)
            if spec.version_column is not None:
                ver = quote_ident(spec.version_column)
                match += f" AND s.{ver} >= b.{ver}"
            newer = f"SELECT b.* FROM ({deduped}) b WHERE NOT EXISTS (SELECT 1 FROM _stored s WHERE {match})"
            return con.sql(f"{newer} ORDER BY {order}").to_arrow_table()
        finally:
            con.unregister("_batch")

    def _write_file(self, spec: ViewSpec, sid: int, table: pa.Table) -> str:
        rel = f"{view_dir(spec.name)}/{sid:012d}-{uuid.uuid4().hex}.parquet"
        path = self.root / rel
        pq.write_table(table.cast(spec.storage_schema), path, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return rel

    def _compact(
        self, con: duckdb.DuckDBPyConnection, spec: ViewSpec, sid: int, files: list[tuple[str, int]]
    ) -> list[tuple[str, int]]:
        """Merge small files into one; merge everything once the small ones are a quarter of the largest."""
        largest = max(files, key=lambda f: f[1])
        small = [f for f in files if f is not largest]
        chosen = files if sum(n for _, n in small) * 4 >= largest[1] else small
        con.read_parquet([str(self.root / p) for p, _ in chosen]).create_view("_compact", replace=True)
        order = key_columns_sql(spec)
        merged = con.sql(f"SELECT * FROM ({dedupe_sql(spec, '_compact', visible_only=False)}) ORDER BY {order}")
        table = merged.to_arrow_table()
        kept = [f for f in files if f not in chosen]
        return [*kept, (self._write_file(spec, sid, table), table.num_rows)]

    def compact(self, view: str | None = None) -> int | None:
        """Merge every view's files into one per view now; returns the new snapshot id."""
        with self._locked():
            parent = self.current()
            files = {v: list(parent.files.get(v, ())) for v in VIEWS}
            changed = False
            for v in [view] if view else list(VIEWS):
                if len(files[v]) > 1:
                    keep_limit, self.max_files_per_view = self.max_files_per_view, 0
                    try:
                        files[v] = self._compact(self._connection(), get_view(v), parent.snapshot_id + 1, files[v])
                    finally:
                        self.max_files_per_view = keep_limit
                    changed = True
            if not changed:
                return None
            sid = parent.snapshot_id + 1
            self._publish(sid, max(_now_us(), parent.committed_at_us + 1), files)
            return sid

    def expire_snapshots(self, retain: dt.timedelta) -> int:
        """Delete snapshots older than ``retain`` and files no kept snapshot uses; bounds time travel."""
        cutoff = _now_us() - int(retain.total_seconds() * 1_000_000)
        removed = 0
        with self._locked():
            snaps = list_snapshots(self.root)
            current = current_manifest(self.root)
            keep = [s for s in snaps if s[1] >= cutoff or s[2] == current]
            for s in snaps:
                if s not in keep:
                    (self.root / SNAPSHOTS_DIR / s[2]).unlink()
                    removed += 1
            used = {
                rel for s in keep for entries in read_manifest(self.root, s[2]).files.values() for rel, _ in entries
            }
            # Under the lock no commit is half done, so an unlisted file is garbage.
            for v in VIEWS:
                for f in (self.root / view_dir(v)).iterdir():
                    if f"{view_dir(v)}/{f.name}" not in used:
                        f.unlink()
        return removed


def _keys_of(spec: ViewSpec, table: pa.Table) -> list[tuple[Any, ...]]:
    """The rows' keys as tuples of Python values (Arrow's conversion, whichever side they come from)."""
    return list(zip(*(table.column(k).to_pylist() for k in spec.key), strict=True))


def _strictly_ordered(table: pa.Table, key: Sequence[str]) -> bool:
    """Whether each row's key is greater than the one before: then no key repeats and no sort is needed.

    A writer that builds a large batch in key order (a backfill's windows)
    skips the dedupe and the sort; the check costs a few vector compares.
    """
    rows = table.num_rows
    if rows < 2:
        return True

    def compared(name: str) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        column = table.column(name)
        this, after = column.slice(0, rows - 1), column.slice(1)
        return pc.less(this, after), pc.equal(this, after)

    # Row i's key < row i + 1's key, on the columns seen so far (and equal on them).
    before, same = compared(key[0])
    for name in key[1:]:
        less, equal = compared(name)
        before = pc.or_(before, pc.and_(same, less))
        same = pc.and_(same, equal)
    return pc.all(pc.fill_null(before, False)).as_py() is True


def _newer_than(spec: ViewSpec, batch: pa.Table, versions: dict[tuple[Any, ...], Any]) -> pa.Table:
    """``_newer_rows`` from a known key -> version map instead of the stored files (same rows, same order)."""
    keyed = _keys_of(spec, batch)
    if spec.version_column is None:
        keep = [i for i, key in enumerate(keyed) if key not in versions]
    else:
        incoming = batch.column(spec.version_column).to_pylist()
        best: dict[tuple[Any, ...], int] = {}
        for i, key in enumerate(keyed):
            j = best.get(key)
            if j is None or incoming[j] < incoming[i]:
                best[key] = i
        keep = [i for key, i in best.items() if key not in versions or versions[key] < incoming[i]]
    keep.sort(key=keyed.__getitem__)
    return batch.take(pa.array(keep, type=pa.int64()))


# -- group commit: one writer per folder and process, shared by its sink steps -------
class _Waiting:
    """One caller's rows in a group commit, and how that commit went."""

    __slots__ = ("done", "error", "table", "view")

    def __init__(self, view: str, table: pa.Table) -> None:
        self.view = view
        self.table = table
        self.done = False
        self.error: BaseException | None = None


class GroupCommitter:
    """A process's commits to one warehouse, gathered into as few snapshots as possible.

    A streaming runner runs several bundles at once, and each sink step
    commits its bundle's rows before the bundle may end. A small commit's cost
    is nearly all fixed (a Parquet file, a manifest, the catalog, fsyncs), and
    in a busy worker every file operation also waits for the GIL, so under
    load commits took 50-250 ms, one after another on the writer's lock, and
    that lock was held nearly all the time. Here a caller leaves its rows in a
    queue and takes the lock; whoever holds it commits every queued batch, of
    every view, as one snapshot. A caller whose rows went out with someone
    else's commit finds them done when it gets the lock. Every caller still
    returns only once its rows are durable, and raises if their commit failed:
    the caller that committed with the error itself, the others with a
    BeamlineError that names it.
    """

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Waiting] = []

    def commit(self, view: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> None:
        # Checked here, in the caller's thread: rows a view refuses fail their own bundle only.
        waiting = _Waiting(view, self.warehouse.prepare(view, rows))
        with self._queue_lock:
            self._queue.append(waiting)
        with self._commit_lock:
            if not waiting.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        if waiting.error is not None:
            raise BeamlineError(f"committing {view!r} rows to {self.warehouse.root} failed: {waiting.error!r}") from (
                waiting.error
            )

    def _commit_group(self, group: list[_Waiting]) -> None:
        tables: dict[str, list[pa.Table]] = {}
        for waiting in group:
            tables.setdefault(waiting.view, []).append(waiting.table)
        try:
            # Prepared in each caller's thread already: straight to the commit.
            self.warehouse._commit_tables({v: t[0] if len(t) == 1 else pa.concat_tables(t) for v, t in tables.items()})
        except BaseException as exc:
            for waiting in group:
                waiting.error = exc
            raise  # the committing caller fails with the error itself
        finally:
            for waiting in group:
                waiting.done = True


# One writer per warehouse folder and worker process, shared by every sink step
# in it: each writer holds an in-memory DuckDB for its merges, a pipeline has a
# sink step per view and per source of dead letters, and their commits go out
# together (see GroupCommitter).
_SHARED_WRITERS: dict[Path, tuple[GroupCommitter, int]] = {}
_SHARED_WRITERS_LOCK = threading.Lock()


def acquire_shared_writer(root: str) -> GroupCommitter:
    """The process's writer for the warehouse at ``root``, made on first use; pair with ``release_shared_writer``."""
    with _SHARED_WRITERS_LOCK:
        key = Path(root).absolute()
        writer, users = _SHARED_WRITERS.get(key) or (GroupCommitter(Warehouse(key)), 0)
        _SHARED_WRITERS[key] = (writer, users + 1)
        return writer


def release_shared_writer(writer: GroupCommitter) -> None:
    """Give back a writer ``acquire_shared_writer`` gave; the last user closes it."""
    root = writer.warehouse.root
    with _SHARED_WRITERS_LOCK:
        _, users = _SHARED_WRITERS[root]
        if users > 1:
            _SHARED_WRITERS[root] = (writer, users - 1)
            return
        del _SHARED_WRITERS[root]
    writer.warehouse.close()
