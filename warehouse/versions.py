"""Versions of a view and the alias readers follow: promote, roll back, drop, each one ordinary commit.

A version of a view is a table of its own (``inventory@v2``; ``v1`` is the
plain ``inventory``), written by a pipeline run with ``--view-version`` beside
the version readers see. Readers resolve a view's plain name through the
aliases of the snapshot they read, so moving an alias is the whole upgrade:

* :func:`promote` is one commit that changes only aliases, through the same
  lock-free protocol as every commit (:mod:`warehouse.protocol`). A pipeline's
  main view moves its other views with it (``inventory`` moves
  ``sales_by_window`` and ``dead_letters``), so a query joining them sees one
  version. A reader holding a snapshot sees one version of each view for its
  whole query, a later one the new version, time travel to before the commit
  the old one.
* :func:`rollback` moves those aliases back to the versions they named before.
* :func:`drop` takes a version's tables (and its pipeline's resume point) out
  of the next snapshot. Older snapshots still list its files, so time travel
  still reads them, and expiry deletes them when those snapshots expire. The
  promoted version cannot be dropped.

Each alias counts its moves (``generation``): a changes topic orders the rows
it publishes after a move above every row published before it.

Which tables a pipeline run writes is decided once, when it starts
(:func:`run_tables`): all at the version ``--view-version`` names, else each
view the version it shows then, so an unversioned run goes on writing what
readers see (``v1`` in a new warehouse, as before versions existed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from core.errors import ConfigError
from core.views import (
    FIRST_VERSION,
    PIPELINE_STATE,
    PIPELINE_VIEWS,
    RESUME_OFFSETS,
    USER_VIEWS,
    check_version,
    get_view,
    led_by,
    promotion_group,
    split_name,
    table_name,
)
from warehouse import protocol
from warehouse.format import Alias, Snapshot, WarehouseMissing, dedupe_sql, key_columns_sql, load_snapshot
from warehouse.writer import Warehouse

__all__ = [
    "Moved",
    "RunTables",
    "UnknownVersion",
    "check_present",
    "check_view",
    "drop",
    "last_commit",
    "promote",
    "rollback",
    "run_tables",
    "table_rows",
    "version_tables",
]


class UnknownVersion(ConfigError):
    """The warehouse holds no such view or version; the message lists those it does."""


@dataclass(frozen=True)
class Moved:
    """What a promote, rollback or drop did: the snapshot it committed (None: nothing to change) and to what."""

    view: str
    snapshot: Snapshot | None
    # view -> (version before, version after); a drop: the tables it took out.
    aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunTables:
    """The tables one run of a pipeline writes, picked when it starts; small and picklable."""

    pipeline: str  # the name of its resume point: inventory, inventory@v2
    tables: tuple[tuple[str, str], ...]  # each view (and hidden table) the run writes -> its table

    def __getitem__(self, name: str) -> str:
        return dict(self.tables)[name]

    def versioned(self) -> bool:
        """Whether any table is not the plain one (a run beside, or after, a promote)."""
        return any(view != table for view, table in self.tables)

    def describe(self) -> str:
        """One line for the log: what this run writes."""
        return f"{self.pipeline}: writing {', '.join(table for _, table in self.tables if not table.startswith('_'))}"


def run_tables(root: str | os.PathLike[str], pipeline: str, version: str | None) -> RunTables:
    """The tables a run of ``pipeline`` writes: all at ``version``, or each view the version it shows now.

    The pipeline's state and resume point go with its main view's version. In
    a warehouse that does not exist yet, everything is ``v1``: the plain names.
    """
    views = PIPELINE_VIEWS[pipeline]
    try:
        snap: Snapshot | None = None if version is not None else load_snapshot(root)
    except WarehouseMissing:
        snap = None

    def at(view: str) -> str:
        if version is not None:
            return check_version(version)
        return snap.promoted(view) if snap is not None else FIRST_VERSION

    tables = {view: table_name(view, at(view)) for view in views}
    tables |= {hidden: table_name(hidden, at(views[0])) for hidden in PIPELINE_STATE.get(pipeline, ())}
    return RunTables(table_name(pipeline, at(views[0])), tuple(tables.items()))


def check_view(view: str) -> str:
    """``view`` if it names a view users query (by its plain name), else one line listing them."""
    base, version = split_name(view)
    if version is not None:
        raise ConfigError(f"name the view and the version apart: `{base} {version}`, not {view!r}")
    if base not in USER_VIEWS:
        raise UnknownVersion(f"unknown view {view!r}; views: {', '.join(USER_VIEWS)}")
    return base


def check_present(snap: Snapshot, view: str, version: str) -> None:
    """Raise UnknownVersion, listing the versions ``snap`` holds, unless it holds ``version`` of ``view``."""
    held = snap.versions(view)
    if version not in held:
        raise UnknownVersion(
            f"view {view} has no version {version!r} in snapshot {snap.snapshot_id}; its versions: {', '.join(held)} "
            f"(`beamline views list` shows them all)"
        )


def version_tables(view: str, version: str) -> list[str]:
    """The tables a version of ``view``'s pipeline holds: its views and, for a pipeline's main view, its state."""
    tables = [table_name(member, version) for member in promotion_group(view)]
    pipeline = led_by(view)
    if pipeline is not None:
        tables += [table_name(hidden, version) for hidden in PIPELINE_STATE.get(pipeline, ())]
    return tables


def last_commit(snap: Snapshot, table: str) -> int | None:
    """The snapshot id of the newest file of ``table`` (its last commit, or the compaction after it); None: empty."""
    ids = [int(os.path.basename(rel).split("-", 1)[0]) for rel, _ in snap.files.get(table, ())]
    return max(ids, default=None)


def _files(parent: Snapshot) -> dict[str, list[tuple[str, int]]]:
    return {t: list(entries) for t, entries in parent.files.items()}


def _commit(
    root: str | os.PathLike[str], plan: Callable[[Warehouse, Snapshot], protocol.Plan | None], what: str
) -> Snapshot | None:
    """``plan(writer, newest snapshot)`` published as the next snapshot (planned again after a lost race)."""
    load_snapshot(root)  # a missing warehouse is its one-line error, not a new empty warehouse
    warehouse = Warehouse(root)
    try:
        return warehouse.commit_plan(lambda parent: plan(warehouse, parent), what=what)
    finally:
        warehouse.close()


def promote(root: str | os.PathLike[str], view: str, version: str) -> Moved:
    """Make ``version`` the one readers see for ``view`` (and its pipeline's other views), in one commit."""
    view, version = check_view(view), check_version(version)
    moved: dict[str, tuple[str, str]] = {}

    def plan(_: Warehouse, parent: Snapshot) -> protocol.Plan | None:
        check_present(parent, view, version)
        if parent.promoted(view) != version and not parent.files.get(table_name(view, version)):
            # v1 is the plain table, which a drop empties but cannot remove: readers would see nothing.
            raise UnknownVersion(
                f"{view} {version} holds no rows (dropped, or never written): write it first "
                f"(`beamline run ... --view-version {version}`); --force does not promote an empty version"
            )
        aliases = dict(parent.aliases)
        moved.clear()
        for member in promotion_group(view):
            current = parent.alias(member)
            if current.version != version:
                aliases[member] = Alias(version, current.version, current.generation + 1)
                moved[member] = (current.version, version)
        return protocol.Plan(_files(parent), "promote", aliases=aliases) if moved else None

    snap = _commit(root, plan, f"promoting {view} {version}")
    return Moved(view, snap, dict(moved))


def rollback(root: str | os.PathLike[str], view: str) -> Moved:
    """Point ``view`` (and the views promoted with it) back at the version they showed before the last promote."""
    view = check_view(view)
    moved: dict[str, tuple[str, str]] = {}

    def plan(_: Warehouse, parent: Snapshot) -> protocol.Plan | None:
        current = parent.alias(view)
        if current.previous is None:
            raise ConfigError(
                f"view {view} shows {current.version} and has no earlier version to roll back to "
                "(never promoted, or the earlier one was dropped)"
            )
        aliases = dict(parent.aliases)
        moved.clear()
        for member in promotion_group(view):
            alias = parent.alias(member)
            if alias.version == current.version:
                aliases[member] = Alias(current.previous, alias.version, alias.generation + 1)
                moved[member] = (alias.version, current.previous)
        return protocol.Plan(_files(parent), "rollback", aliases=aliases)

    snap = _commit(root, plan, f"rolling back {view}")
    return Moved(view, snap, dict(moved))


def drop(root: str | os.PathLike[str], view: str, version: str) -> Moved:
    """Take ``version`` of ``view`` (and of its pipeline's views and state) out of the next snapshot.

    Refused for the version ``view`` shows; another view of the pipeline that
    shows that version keeps it. The files are deleted by expiry once no kept
    snapshot lists them. An earlier version that is dropped can no longer be
    rolled back to.
    """
    view, version = check_view(view), check_version(version)
    dropped: list[str] = []

    def plan(warehouse: Warehouse, parent: Snapshot) -> protocol.Plan | None:
        check_present(parent, view, version)
        if parent.promoted(view) == version:
            raise ConfigError(
                f"{view} {version} is the version readers see: promote another version (or roll back) before "
                "dropping it"
            )
        files, aliases = _files(parent), dict(parent.aliases)
        dropped.clear()
        for table in version_tables(view, version):
            base = split_name(table)[0]
            if base in USER_VIEWS and parent.promoted(base) == version:
                continue  # another view of the pipeline still shows it
            entries = files.pop(table, None)
            if version == FIRST_VERSION:
                files[table] = []  # the plain table stays, empty
            if entries:
                dropped.append(table)
        for member in promotion_group(view):
            alias = parent.alias(member)
            if alias.previous == version:
                aliases[member] = Alias(alias.version, None, alias.generation)
        pipeline = led_by(view)
        scratch: list[Path] = []
        if pipeline is not None:
            resume = _without_resume_point(warehouse, parent, table_name(pipeline, version))
            if resume is not None:
                files[RESUME_OFFSETS.name] = resume
                scratch = [warehouse.root / rel for rel, _ in resume]
                dropped.append(f"{RESUME_OFFSETS.name} rows of {table_name(pipeline, version)}")
        if not dropped and aliases == dict(parent.aliases):
            return None
        return protocol.Plan(files, "drop", scratch, aliases=aliases)

    snap = _commit(root, plan, f"dropping {view} {version}")
    return Moved(view, snap, dropped=tuple(dropped))


def table_rows(snap: Snapshot, table: str) -> pa.Table:
    """The rows of ``table`` in ``snap`` as readers see them (per key the highest version), hidden columns too."""
    spec = get_view(table)
    paths = snap.paths(table)
    if not paths:
        return spec.storage_schema.empty_table()
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.read_parquet(paths).create_view("_stored")
        sql = f"SELECT * FROM ({dedupe_sql(spec, '_stored', visible_only=False)}) ORDER BY {key_columns_sql(spec)}"
        return con.sql(sql).to_arrow_table().cast(spec.storage_schema)
    finally:
        con.close()


def _without_resume_point(warehouse: Warehouse, parent: Snapshot, pipeline: str) -> list[tuple[str, int]] | None:
    """``_resume_offsets`` without ``pipeline``'s rows, as one new file (None: it holds none of them).

    A version dropped and built again must not resume from the old run's
    offsets, whose state went with the dropped tables.
    """
    paths = parent.paths(RESUME_OFFSETS.name)
    if not paths:
        return None
    spec = RESUME_OFFSETS
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.read_parquet(paths).create_view("_stored")
        current = f"({dedupe_sql(spec, '_stored', visible_only=False)})"
        ((mine,),) = con.sql(f"SELECT count(*) FROM {current} WHERE pipeline = $p", params={"p": pipeline}).fetchall()
        if not mine:
            return None
        kept = con.sql(
            f"SELECT * FROM {current} WHERE pipeline <> $p ORDER BY {key_columns_sql(spec)}", params={"p": pipeline}
        ).to_arrow_table()
    finally:
        con.close()
    if not kept.num_rows:
        return []
    rel = warehouse.write_file(spec.name, parent.snapshot_id + 1, kept)
    protocol.sync_folders([(warehouse.root / rel).parent])
    return [(rel, kept.num_rows)]
