"""The warehouse writer: idempotent, versioned upserts of view rows.

The warehouse is a folder of immutable Parquet files plus one immutable JSON
manifest per snapshot (the format is :mod:`warehouse.format`). Any number of
writers, in any number of processes on one host or several sharing a POSIX
file system, commit to it without a lock: each commit publishes snapshot
``newest + 1`` with a put-if-absent, and a writer that loses the race re-reads
the newest snapshot, re-applies its rows against it and tries again
(:mod:`warehouse.protocol`). Readers take no lock either: a manifest is
complete once it has its name, and nothing is rewritten in place. Compaction
writes a new file and a new snapshot; old files stay until
:meth:`Warehouse.expire_snapshots` (:mod:`warehouse.expiry`) removes
snapshots older than a retention period, which bounds time travel.

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
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import BeamlineError, ConfigError
from core.views import VIEWS, ViewSpec, get_view, split_name, table_name
from warehouse import expiry, protocol
from warehouse.format import (
    CATALOG_SQL,
    CURRENT_FILE,
    DATA_DIR,
    LOCK_FILE,
    MARKER_FILE,
    SNAPSHOTS_DIR,
    Alias,
    Snapshot,
    WarehouseInconsistent,
    WarehouseMissing,
    check_not_ahead,
    check_root,
    data_tables,
    dedupe_sql,
    empty_view_sql,
    key_columns_sql,
    load_snapshot,
    parquet_sql,
    quote_ident,
    read_manifest,
    view_dir,
)

__all__ = [
    "DEFAULT_RETENTION",
    "BackgroundCompactor",
    "CommitResult",
    "GroupCommitter",
    "Held",
    "Warehouse",
    "acquire_shared_writer",
    "release_shared_writer",
]

_LOG = logging.getLogger(__name__)

# A view up to this many rows keeps its key -> version map in the writer's
# memory (some tens of MB at the limit): a commit then finds the newer rows
# without a DuckDB query over the view's files, which was two thirds of a small
# commit (16 ms -> 3 ms for 60 rows into a 250-row view). When other writers
# committed in between, only the files they added are read into the map; after
# a compaction it is read again from the files (a larger view or batch: the
# anti-join decides).
KNOWN_VERSIONS_MAX_ROWS = 50_000
# How long the Beam sink keeps snapshots (time travel) unless told otherwise.
DEFAULT_RETENTION = dt.timedelta(days=7)

Versions = dict[tuple[Any, ...], Any]


@dataclass(frozen=True)
class CommitResult:
    """What a commit did: the snapshot it made (None if nothing changed)."""

    view: str
    snapshot_id: int | None
    rows_in: int
    rows_written: int
    # A snapshot holding these rows or newer ones of their keys: the one made, else the newest they were
    # checked against (None: no rows). Its aliases say whether the table is the version readers see.
    snapshot: Snapshot | None = None


def _coerce_timestamp(value: Any) -> Any:
    # Beam's Timestamp carries its own conversion; datetimes and None pass through.
    to_dt = getattr(value, "to_utc_datetime", None)
    return to_dt(has_tz=True) if to_dt is not None else value


@dataclass
class _Fresh:
    """One view's rows in a commit that keeps losing races: what survived the version rule, and its file."""

    base: frozenset[str]  # the view's files in the snapshot ``table`` was checked against
    table: pa.Table
    versions: Versions | None
    path: str | None = None  # the file written for ``table`` (reused while ``table`` does not change)
    written_at: float = 0.0
    synced: bool = False  # its folder too


class Warehouse:
    """Writer of one warehouse folder; any number may commit to one folder at once, from any process or host."""

    def __init__(self, root: str | os.PathLike[str], *, max_files_per_view: int = 16) -> None:
        self.root = Path(root).absolute()
        self.max_files_per_view = max_files_per_view
        # Commits of one Warehouse object run one at a time (its DuckDB and version maps are not shared).
        self._thread_lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        # view -> (its files in the snapshot the map describes, key -> highest stored version)
        self._known: dict[str, tuple[tuple[str, ...], Versions]] = {}
        # How often another writer published the id a commit of this one aimed at (each retried).
        self.lost_races = 0
        # Where a commit that takes views past the file limit sends them (None: it compacts them itself).
        self.compact_later: Callable[[list[str]], None] | None = None
        self._init_layout()

    # layout
    def _init_layout(self) -> None:
        # Several writers may create the same new warehouse at once: snapshot 0
        # is put-if-absent like any other, and the marker comes after it, so a
        # warehouse with a marker always has a manifest.
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseMissing(f"cannot create warehouse {self.root}: {exc.strerror or exc}") from None
        self._refuse_foreign_folder()
        for sub in (SNAPSHOTS_DIR, DATA_DIR, *(view_dir(v) for v in VIEWS)):
            (self.root / sub).mkdir(exist_ok=True)
        protocol.sync_folders([self.root, self.root / DATA_DIR])
        has_marker = (self.root / MARKER_FILE).exists()
        if not any(n.startswith("snapshot-") for n in os.listdir(self.root / SNAPSHOTS_DIR)):
            self._refuse_lost_manifests(has_marker)
            with contextlib.suppress(protocol.CommitConflict):  # another writer made it first: the same empty state
                protocol.publish(self.root, 0, time.time_ns() // 1000, {}, operation="create")
        if not has_marker:
            protocol.write_marker(self.root)
        elif _marker_version(self.root) == 1:
            protocol.upgrade_format(self.root)
        check_root(self.root)
        self._recover_hints()

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

    def _refuse_lost_manifests(self, has_marker: bool) -> None:
        """A warehouse whose manifests are gone is not new: starting again at snapshot 0 would reuse ids."""
        data = [f for t in data_tables(self.root) for f in os.listdir(self.root / view_dir(t)) if not f.startswith(".")]
        if has_marker or data:
            raise WarehouseInconsistent(
                f"{self.root / SNAPSHOTS_DIR} holds no manifest although the warehouse exists "
                f"({len(data)} data files); restore snapshots/ from a backup, or rebuild into a new folder"
            )

    def _recover_hints(self) -> None:
        """Point CURRENT and catalog.sql at the newest snapshot if they are missing, garbage or behind.

        A CURRENT *ahead* of the newest manifest is no stale hint but evidence of lost manifests: refused
        (WarehouseInconsistent), and left as it is, before anything is rewritten.
        """
        newest = check_not_ahead(self.root)
        try:
            hint = (self.root / CURRENT_FILE).read_text().strip()
        except (OSError, UnicodeDecodeError):
            hint = None
        if hint != newest or not (self.root / CATALOG_SQL).exists():
            protocol.write_pointer(self.root, read_manifest(self.root, newest), newest)

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
    def _publish(
        self,
        snapshot_id: int,
        committed_at_us: int,
        files: Mapping[str, Sequence[tuple[str, int]]],
        *,
        operation: str = "commit",
        expired_through: int = -1,
        aliases: Mapping[str, Alias] | None = None,
    ) -> Snapshot:
        """Publish the snapshot whose files are written and synced; CommitConflict if another writer has its id."""
        try:
            return protocol.publish(
                self.root,
                snapshot_id,
                committed_at_us,
                files,
                operation=operation,
                expired_through=expired_through,
                aliases=aliases,
            )
        except protocol.CommitConflict:
            self.lost_races += 1
            raise

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
        with self._thread_lock:
            fresh: dict[str, _Fresh] = {}
            checked: list[Snapshot] = []  # the parents the rows were checked against, the last one newest

            def plan(parent: Snapshot) -> protocol.Plan | None:
                sid = parent.snapshot_id + 1
                checked.append(parent)
                files = {t: list(entries) for t, entries in parent.files.items()}
                for view, batch in tables.items():
                    spec = get_view(view)
                    now = self._fresh_rows(spec, batch, parent, fresh.get(view))
                    fresh[view] = now
                    if now.table.num_rows:
                        files.setdefault(view, []).append((self._fresh_file(spec, sid, now), now.table.num_rows))
                if not any(f.table.num_rows for f in fresh.values()):
                    return None
                # A file reused from a lost attempt had its folder synced then.
                protocol.sync_folders(
                    (self.root / f.path).parent for f in fresh.values() if f.path is not None and not f.synced
                )
                for f in fresh.values():
                    f.synced = f.path is not None
                return protocol.Plan(files, "commit")

            try:
                snap = protocol.commit_with_retries(self.root, plan, self._publish, what=f"committing {list(tables)}")
            except protocol.CommitGaveUp:
                self._discard(f.path for f in fresh.values())
                raise
            if snap is None:  # other writers' commits made every row stale while this one retried
                self._discard(f.path for f in fresh.values())
            holding = snap if snap is not None else checked[-1]
            for view, f in fresh.items():
                written = f.table.num_rows if snap is not None else 0
                sid = snap.snapshot_id if snap is not None and written else None
                results[view] = CommitResult(view, sid, tables[view].num_rows, written, holding)
                if snap is not None:
                    self._remember(view, snap, f)
            if snap is not None:
                # The writer whose commit took a view past the limit (and each limit more) compacts it, alone.
                limit = max(1, self.max_files_per_view)
                over = [v for v, f in fresh.items() if f.table.num_rows and len(snap.files[v]) % limit == 1 % limit]
                over = [v for v in over if len(snap.files[v]) > limit]
                if over and self.compact_later is not None:
                    self.compact_later(over)
                elif over:
                    with contextlib.suppress(protocol.CommitGaveUp):  # the rows are in; the next crossing compacts
                        self._compact_commit(over, full=False)
            return results

    def _fresh_rows(self, spec: ViewSpec, batch: pa.Table, parent: Snapshot, before: _Fresh | None) -> _Fresh:
        """The rows of ``batch`` newer than ``parent`` holds, by the version map or by the files.

        After a lost race ``before`` holds what survived against an older
        snapshot: only the files added since then can make more rows stale
        (stored versions only grow), so only they are read.
        """
        entries = parent.files.get(spec.name, ())
        stored = frozenset(rel for rel, _ in entries)
        if spec.append_only:
            # Appended as they come: a lost race re-uses the file it wrote.
            if before is not None:
                return _Fresh(stored, before.table, None, before.path, before.written_at, before.synced)
            return _Fresh(stored, batch, None)
        versions = self._versions(spec, parent) if batch.num_rows <= KNOWN_VERSIONS_MAX_ROWS else None
        if versions is not None:
            table = _newer_than(spec, batch, versions)
        elif before is not None:
            added = [str(self.root / rel) for rel, _ in entries if rel not in before.base]
            table = self._newer_rows(spec, before.table, added) if added and before.table.num_rows else before.table
        else:
            table = self._newer_rows(spec, batch, parent.paths(spec.name))
        if before is not None and before.path is not None:
            # Stored versions only grow, so these rows are a subset of the earlier ones: the same count, the same rows.
            young = time.monotonic() - before.written_at < expiry.ORPHAN_GRACE.total_seconds() / 2
            if table.num_rows == before.table.num_rows and young:
                return _Fresh(stored, table, versions, before.path, before.written_at, before.synced)
            self._discard([before.path])
        return _Fresh(stored, table, versions)

    def _fresh_file(self, spec: ViewSpec, sid: int, fresh: _Fresh) -> str:
        if fresh.path is None:
            fresh.path = self._write_file(spec, sid, fresh.table)
            fresh.written_at = time.monotonic()
        return fresh.path

    def _discard(self, paths: Iterable[str | None]) -> None:
        """Delete files of this writer that no manifest names (a lost race's, or a commit that made nothing)."""
        for rel in paths:
            if rel is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / rel).unlink()

    def _versions(self, spec: ViewSpec, snap: Snapshot) -> Versions | None:
        """The key -> version map of a small view in ``snap`` (None for a large one: the files decide)."""
        entries = snap.files.get(spec.name, ())
        if sum(n for _, n in entries) > KNOWN_VERSIONS_MAX_ROWS:
            return None
        stored = tuple(rel for rel, _ in entries)
        known = self._known.get(spec.name)
        if known is not None and known[0] == stored:
            return known[1]
        if known is not None and set(known[0]) <= set(stored):
            versions = known[1]  # other writers added files since: read only those
            self._read_versions(spec, [rel for rel in stored if rel not in set(known[0])], versions)
        else:
            versions = {}
            self._read_versions(spec, list(stored), versions)
        self._known[spec.name] = (stored, versions)
        return versions

    def _read_versions(self, spec: ViewSpec, rels: list[str], versions: Versions) -> None:
        """Merge the highest version of each key in the files ``rels`` into ``versions``."""
        if not rels:
            return
        columns = [*spec.key, *([spec.version_column] if spec.version_column else [])]
        # Through Arrow, as the incoming rows are read, so both sides hold equal Python values.
        # (pyarrow, not DuckDB: for the few small files other writers add, a query costs ten times more.)
        table = pa.concat_tables(pq.ParquetFile(self.root / rel).read(columns=columns) for rel in rels)
        if spec.version_column is None:
            for key in _keys_of(spec, table):
                versions.setdefault(key, None)
            return
        highest = table.group_by(list(spec.key), use_threads=False).aggregate([(spec.version_column, "max")])
        found = highest.column(f"{spec.version_column}_max").to_pylist()
        for key, version in zip(_keys_of(spec, highest), found, strict=True):
            old = versions.get(key)
            if old is None or old < version:
                versions[key] = version

    def _remember(self, view: str, snap: Snapshot, fresh: _Fresh) -> None:
        """After a commit: the view's files and versions as they now stand (forgotten if too large)."""
        versions = fresh.versions
        if versions is None or len(versions) + fresh.table.num_rows > KNOWN_VERSIONS_MAX_ROWS:
            self._known.pop(view, None)
            return
        spec = get_view(view)
        keys = _keys_of(spec, fresh.table)
        if spec.version_column is None:
            versions.update(dict.fromkeys(keys))
        else:
            versions.update(zip(keys, fresh.table.column(spec.version_column).to_pylist(), strict=True))
        self._known[view] = (tuple(rel for rel, _ in snap.files.get(view, ())), versions)

    def _newer_rows(self, spec: ViewSpec, batch: pa.Table, paths: list[str]) -> pa.Table:
        con = self._connection()
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
        folder = self.root / view_dir(spec.name)
        if not folder.is_dir():  # a table's first file (a new version): its folder's name durable first
            folder.mkdir(exist_ok=True)
            protocol.fsync_dir(self.root / DATA_DIR)
        rel = f"{view_dir(spec.name)}/{sid:012d}-{uuid.uuid4().hex}.parquet"
        protocol.write_data_file(self.root / rel, table.cast(spec.storage_schema))
        return rel

    def _merge(self, spec: ViewSpec, chosen: list[tuple[str, int]], parent: Snapshot) -> tuple[str, int]:
        """One sorted file holding, per key, the highest-version row of the files ``chosen``.

        Rows a ``retain_sql`` condition refuses (judged against ``parent``'s tables) are left out.
        """
        con = self._connection()
        con.read_parquet([str(self.root / p) for p, _ in chosen]).create_view("_compact", replace=True)
        order = key_columns_sql(spec)
        deduped = dedupe_sql(spec, "_compact", visible_only=False)
        if spec.retain_sql:
            version = split_name(spec.name)[1]
            for name in spec.needs:
                # The same version's table: ``_inventory_ids@v2`` keeps what ``_inventory_state@v2`` needs.
                needed = get_view(table_name(name, version))
                paths = parent.paths(needed.name)
                body = dedupe_sql(needed, parquet_sql(paths), visible_only=False) if paths else empty_view_sql(needed)
                con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS {body}")
            deduped = f"SELECT * FROM ({deduped}) t WHERE {spec.retain_sql}"
        merged = con.sql(f"SELECT * FROM ({deduped}) ORDER BY {order}")
        table = merged.to_arrow_table()
        return self._write_file(spec, parent.snapshot_id + 1, table), table.num_rows

    def _compact_commit(self, views: Sequence[str], *, full: bool) -> Snapshot | None:
        """Compaction, a commit of its own: merge small files into one (every file if ``full``).

        Past the limit the small files are merged; once they hold a quarter of
        the rows of the largest, everything is. A merge stays valid while the
        files it merged are in the newest snapshot (commits only add files), so
        after a lost race it is reused, not made again.
        """
        merged: dict[str, tuple[frozenset[str], tuple[str, int]]] = {}

        def plan(parent: Snapshot) -> protocol.Plan | None:
            files = {t: list(entries) for t, entries in parent.files.items()}
            made: list[Path] = []
            for view in views:
                files.setdefault(view, [])
                present = {rel for rel, _ in files[view]}
                prior = merged.pop(view, None)
                if prior is not None and prior[0] <= present:
                    files[view] = [f for f in files[view] if f[0] not in prior[0]] + [prior[1]]
                    merged[view] = prior
                    continue
                if prior is not None:  # another writer compacted those files first
                    (self.root / prior[1][0]).unlink(missing_ok=True)
                if len(files[view]) < 2 or not (full or len(files[view]) > self.max_files_per_view):
                    continue
                largest = max(files[view], key=lambda f: f[1])
                small = [f for f in files[view] if f is not largest]
                chosen = files[view] if full or sum(n for _, n in small) * 4 >= largest[1] else small
                out = self._merge(get_view(view), chosen, parent)
                made.append(self.root / out[0])
                merged[view] = (frozenset(rel for rel, _ in chosen), out)
                files[view] = [f for f in files[view] if f not in chosen] + [out]
            if not merged:
                return None
            protocol.sync_folders(path.parent for path in made)
            return protocol.Plan(files, "compact", [self.root / out[0] for _, out in merged.values()])

        return protocol.commit_with_retries(self.root, plan, self._publish, what="compacting")

    def compact(self, view: str | None = None) -> int | None:
        """Merge every table's files into one per table now (a commit like any other); returns the new snapshot id."""
        views = [get_view(view).name] if view else sorted(self.current().files)
        with self._thread_lock:
            snap = self._compact_commit(views, full=True)
            return snap.snapshot_id if snap is not None else None

    def commit_plan(self, plan: Callable[[Snapshot], protocol.Plan | None], *, what: str) -> Snapshot | None:
        """Publish ``plan(newest snapshot)`` as the next snapshot, planned again on the newest after a lost race.

        For commits that are no upsert (a promote, a rollback, a drop: :mod:`warehouse.versions`);
        None when the plan says there is nothing to publish.
        """
        with self._thread_lock:
            return protocol.commit_with_retries(self.root, plan, self._publish, what=what)

    def write_file(self, table: str, snapshot_id: int, rows: pa.Table) -> str:
        """A new data file of ``table`` for the commit of ``snapshot_id``, fsynced; its path as manifests list it."""
        spec = get_view(table)
        return self._write_file(spec, snapshot_id, rows.select(spec.storage_schema.names))

    def expire_snapshots(self, retain: dt.timedelta, *, orphan_grace: dt.timedelta | None = None) -> int:
        """Expire snapshots superseded more than ``retain`` ago and delete what only they used; bounds time travel.

        Refuses (WarehouseInconsistent, nothing deleted) on a warehouse whose
        manifests or files contradict each other. Returns how many snapshots expired.
        """
        with self._thread_lock:
            return expiry.expire(self.root, retain, self._publish, orphan_grace=orphan_grace)


def _marker_version(root: Path) -> Any:
    try:
        return json.loads((root / MARKER_FILE).read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None  # check_root says what is wrong with it


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

    __slots__ = ("done", "error", "snapshot", "table", "view")

    def __init__(self, view: str, table: pa.Table) -> None:
        self.view = view
        self.table = table
        self.done = False
        self.error: BaseException | None = None
        self.snapshot: Snapshot | None = None  # holds the rows (or newer ones of their keys) once done


@dataclass(frozen=True)
class Held:
    """A caller's rows once durable: as committed (the tables' storage schema) and a snapshot holding them.

    The snapshot is the one their commit made, or, when every row was stale,
    the newest they were checked against (it holds them or newer rows of their
    keys); its aliases say which of the tables readers see.
    """

    snapshot: Snapshot
    tables: Mapping[str, pa.Table]


class BackgroundCompactor:
    """Compacts a warehouse's views in a thread of its own, so the commit that crossed the file limit returns at once.

    A stream commits every bundle, and every ``max_files_per_view`` commits
    each view crosses the limit; merged inline, that commit (and the bundle
    waiting on it) took several times as long as the others, which is what
    set the stream's worst latencies. Here the merge is a commit of a second
    writer, with its own DuckDB and lock: the protocol lets writers race, and
    a merge that loses to new commits is planned again on the newest
    snapshot. Requests that arrive while a merge runs are gathered into the
    next one. :meth:`close` waits for the merge in progress.
    """

    def __init__(self, root: str | os.PathLike[str], max_files_per_view: int) -> None:
        self._root = root
        self._max_files = max_files_per_view
        self._warehouse: Warehouse | None = None  # made by the thread, on first use
        self._wanted: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failures = 0

    def request(self, views: Iterable[str]) -> None:
        """Compact ``views`` soon (a no-op once closed: the next commit past the limit asks again)."""
        with self._cond:
            if self._closed:
                return
            self._wanted.update(views)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="beamline-compactor", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if not self._wanted:
                    return
                views, self._wanted = sorted(self._wanted), set()
            try:
                if self._warehouse is None:
                    self._warehouse = Warehouse(self._root, max_files_per_view=self._max_files)
                with self._warehouse._thread_lock:
                    self._warehouse._compact_commit(views, full=False)
            except Exception as exc:  # the rows are committed; the next commit past the limit asks again
                self.failures += 1
                _LOG.warning(
                    "compacting %s in %s failed; the next commit past the limit asks again: %r", views, self._root, exc
                )

    def close(self) -> None:
        """Finish the merge in progress and any asked for, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._warehouse is not None:
            self._warehouse.close()


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
        self.compactor = BackgroundCompactor(warehouse.root, warehouse.max_files_per_view)
        warehouse.compact_later = self.compactor.request
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Waiting] = []

    def commit(self, view: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> Held | None:
        return self.commit_many({view: rows})

    def commit_many(self, batches: Mapping[str, pa.Table | Iterable[Mapping[str, Any]]]) -> Held | None:
        """Rows of several views, in one snapshot together (never split between two commits); None: no rows."""
        # Checked here, in the caller's thread: rows a view refuses fail their own bundle only.
        mine = [_Waiting(view, self.warehouse.prepare(view, rows)) for view, rows in batches.items()]
        mine = [waiting for waiting in mine if waiting.table.num_rows]
        if not mine:
            return None
        with self._queue_lock:
            self._queue.extend(mine)  # queued together, so taken into one group together
        with self._commit_lock:
            if not mine[0].done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        error = mine[0].error
        if error is not None:
            views = ", ".join(repr(w.view) for w in mine)
            raise BeamlineError(f"committing {views} rows to {self.warehouse.root} failed: {error!r}") from error
        snapshot = mine[0].snapshot
        assert snapshot is not None  # set by the group commit that took these rows
        return Held(snapshot, {waiting.view: waiting.table for waiting in mine})

    def close(self) -> None:
        """Wait for a compaction in progress; release the DuckDB connections."""
        self.compactor.close()
        self.warehouse.close()

    def _commit_group(self, group: list[_Waiting]) -> None:
        tables: dict[str, list[pa.Table]] = {}
        for waiting in group:
            tables.setdefault(waiting.view, []).append(waiting.table)
        try:
            # Prepared in each caller's thread already: straight to the commit.
            results = self.warehouse._commit_tables(
                {v: t[0] if len(t) == 1 else pa.concat_tables(t) for v, t in tables.items()}
            )
            for waiting in group:
                waiting.snapshot = results[waiting.view].snapshot
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
    writer.close()
