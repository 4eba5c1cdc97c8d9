"""The warehouse's on-disk format, as the writer and the readers both see it.

A warehouse folder holds immutable Parquet files and one immutable JSON manifest
per snapshot. The layout is defined here once, so :mod:`warehouse.writer`
(which makes it) and :mod:`warehouse.reader` (which only reads it) cannot
disagree about it, and neither needs the other.

Layout::

    beamline-warehouse.json             marks the folder as a warehouse (format version)
    snapshots/snapshot-<id>.json        manifest of snapshot <id> (12 digits), created once, never changed
    snapshots/snapshot-<id>-<us>.json   the same, as format 1 named it (read, never written)
    data/<table>/<id>-<uuid>.parquet    rows sorted by key, immutable (a table: a view, inventory@v2, a hidden one)
    CURRENT                             a hint: the name of a recent manifest
    catalog.sql                         views of a recent snapshot for the duckdb CLI

The manifests are the truth. Snapshot ids have no gaps, so the newest manifest
is found from ``CURRENT`` by probing the ids after it (one ``stat`` each), or
by listing ``snapshots/`` when ``CURRENT`` is missing, unreadable or names no
manifest. Every manifest records up to which id snapshots have expired
(``expired_through``); older manifests may linger a while, and count as gone.
The commit protocol that keeps these promises is :mod:`warehouse.protocol`.

A manifest lists every table the snapshot holds, and the *aliases*: which
version of each view readers see under its plain name (absent: ``v1``, the
plain table). A promote is a commit that changes only the aliases, so a reader
holding one snapshot sees one version of each view, and time travel sees the
alias as it was (:mod:`warehouse.versions`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.errors import BeamlineError, ConfigError
from core.views import FIRST_VERSION, USER_VIEWS, ViewSpec, check_version, split_name, table_name

__all__ = [
    "ALIASED_FORMAT_VERSION",
    "CATALOG_SQL",
    "CURRENT_FILE",
    "DATA_DIR",
    "EPOCH",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MARKER_FILE",
    "READABLE_FORMAT_VERSIONS",
    "RUN_LOCK_PREFIX",
    "SNAPSHOTS_DIR",
    "Alias",
    "Snapshot",
    "SnapshotExpired",
    "WarehouseInconsistent",
    "WarehouseMissing",
    "catalog_sql",
    "check_not_ahead",
    "check_root",
    "current_manifest",
    "data_tables",
    "dedupe_sql",
    "empty_view_sql",
    "expired_error",
    "key_columns_sql",
    "list_snapshots",
    "load_snapshot",
    "manifest_id",
    "manifest_name",
    "oldest_snapshot",
    "parquet_sql",
    "quote_ident",
    "read_manifest",
    "user_tables",
    "verify_snapshots",
    "view_dir",
]

MARKER_FILE = "beamline-warehouse.json"
FORMAT_NAME = "beamline-warehouse"
# 2: manifests are created with put-if-absent under names that hold only the id; no lock file.
FORMAT_VERSION = 2
# 3: manifests may hold versioned tables and aliases. The first commit of either marks the folder so,
# first: Beamline from before versions refuses it rather than answer from v1 or drop the versions.
ALIASED_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
CURRENT_FILE = "CURRENT"
# Format 1 writers serialised on an fcntl lock of this file; only the upgrade to format 2 takes it now.
LOCK_FILE = ".lock"
# A streaming run holds ``.run-<pipeline>.lock`` while it writes its resume point (warehouse.resume).
RUN_LOCK_PREFIX = ".run-"
CATALOG_SQL = "catalog.sql"
SNAPSHOTS_DIR = "snapshots"
DATA_DIR = "data"
# Commit times are stored as whole microseconds since this instant.
EPOCH = dt.datetime.fromtimestamp(0, dt.timezone.utc)
# CURRENT lags the newest manifest by at most the commits in flight; past this many ids, list instead.
_PROBE_LIMIT = 64
# A resolution that races an expiry (the manifest it found is deleted) starts again this often.
_RESOLVE_TRIES = 3


class WarehouseMissing(BeamlineError):
    """The warehouse folder is absent or is not a Beamline warehouse."""


class WarehouseInconsistent(BeamlineError):
    """The warehouse's manifests or files contradict each other; nothing destructive runs on it."""


class SnapshotExpired(ConfigError):
    """The snapshot asked for (pinned, or as of a time) has expired; ask for a newer one."""


@dataclass(frozen=True)
class Alias:
    """Which version of a view readers see under its plain name, the one before it, and how often it moved."""

    version: str
    previous: str | None = None
    # Grows with every promote and rollback: a changes topic orders the rows of each promotion after the last's.
    generation: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "previous": self.previous, "generation": self.generation}


NO_ALIAS = Alias(FIRST_VERSION)


@dataclass(frozen=True)
class Snapshot:
    """One consistent state of every table: the files that make it up, and which version each view shows."""

    root: Path
    snapshot_id: int
    committed_at_us: int
    files: Mapping[str, tuple[tuple[str, int], ...]]  # table -> ((relative path, rows), ...)
    # Snapshots with an id up to this one have expired (-1: none), as of this snapshot.
    expired_through: int = -1
    aliases: Mapping[str, Alias] = field(default_factory=dict)  # view -> its promoted version (absent: v1)

    @property
    def committed_at(self) -> dt.datetime:
        """Commit time as an aware UTC datetime."""
        return EPOCH + dt.timedelta(microseconds=self.committed_at_us)

    def paths(self, table: str) -> list[str]:
        """Absolute paths of the files of ``table`` in this snapshot."""
        root = str(self.root)
        return [os.path.join(root, rel) for rel, _ in self.files.get(table, ())]

    def alias(self, view: str) -> Alias:
        """The alias of ``view`` (``v1`` when it was never promoted)."""
        return self.aliases.get(view, NO_ALIAS)

    def promoted(self, view: str) -> str:
        """The version of ``view`` readers see under its plain name."""
        return self.alias(view).version

    def table_of(self, name: str) -> str:
        """The table a reader's name stands for: a plain view's promoted version, or the version it names."""
        base, version = split_name(name)
        return table_name(base, version if version is not None else self.promoted(base))

    def versions(self, view: str) -> list[str]:
        """The versions of ``view`` this snapshot holds (``v1`` always, empty or not), first version first."""
        found = {FIRST_VERSION, self.promoted(view)}
        for table in self.files:
            base, version = split_name(table)
            if base == view and version is not None:
                found.add(version)
        return sorted(found, key=lambda v: (v != FIRST_VERSION, len(v), v))


def user_tables(snap: Snapshot) -> dict[str, str]:
    """Every name a reader may query in ``snap`` -> its table.

    The plain views (their promoted version) and, for a view with more than
    one version, each version by name, ``inventory@v1`` included (a warehouse
    that never had a second version lists its views as it always did);
    hidden tables never.
    """
    names: dict[str, str] = {}
    for view in USER_VIEWS:
        names[view] = snap.table_of(view)
        versions = snap.versions(view)
        for version in versions if len(versions) > 1 else ():
            names[f"{view}@{version}"] = table_name(view, version)
    return names


def data_tables(root: Path) -> list[str]:
    """The tables with a folder under ``data/`` (each view's, versioned and hidden ones too)."""
    try:
        entries = os.listdir(root / DATA_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in entries if not name.startswith(".") and (root / DATA_DIR / name).is_dir())


def view_dir(table: str) -> str:
    """The folder of a table's Parquet files, relative to the warehouse root (as manifests list them)."""
    return f"{DATA_DIR}/{table}"


def quote_ident(name: str) -> str:
    """A SQL identifier for a registry column name (never for user input)."""
    return '"' + name.replace('"', '""') + '"'


def key_columns_sql(spec: ViewSpec) -> str:
    """The view's key columns, quoted and comma-separated (for PARTITION BY, GROUP BY, ORDER BY)."""
    return ", ".join(quote_ident(k) for k in spec.key)


def dedupe_sql(spec: ViewSpec, source: str, visible_only: bool) -> str:
    """SQL keeping, per key, the row with the highest version from ``source``."""
    cols = spec.column_names if visible_only else tuple(spec.storage_schema.names)
    select = ", ".join(quote_ident(c) for c in cols)
    if spec.version_column is None:
        # Insert-once: a key is written by one commit only, no duplicates to drop.
        return f"SELECT {select} FROM {source}"
    keys = key_columns_sql(spec)
    ver = quote_ident(spec.version_column)
    return f"SELECT {select} FROM {source} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {ver} DESC) = 1"


def check_root(root: Path) -> None:
    """Raise WarehouseMissing, saying what to run, unless ``root`` is a warehouse of a format this reads."""
    if root.exists() and not root.is_dir():
        raise WarehouseMissing(f"{root} is a file, not a warehouse folder; pass --warehouse DIR")
    if not root.is_dir():
        raise WarehouseMissing(
            f"warehouse {root} does not exist; run `beamline run inventory --mode batch --warehouse {root}` "
            "to build it, or pass --warehouse DIR"
        )
    marker = root / MARKER_FILE
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise WarehouseMissing(
            f"{root} is not a Beamline warehouse (no valid {MARKER_FILE}); pass --warehouse with the folder "
            "a pipeline wrote to, or run `beamline run inventory --warehouse DIR` to create one"
        ) from None
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise WarehouseMissing(
            f"{root} holds warehouse format {meta.get('format')!r} v{meta.get('format_version')}, this Beamline "
            f"reads {FORMAT_NAME} v{READABLE_FORMAT_VERSIONS[-1]}; rebuild it with `beamline run ... --warehouse DIR`"
        )


# -- manifest names --------------------------------------------------------------------
def manifest_name(snapshot_id: int) -> str:
    """The name of snapshot ``snapshot_id``'s manifest: fixed width, so names sort as ids do."""
    return f"snapshot-{snapshot_id:012d}.json"


def _parse_manifest_name(name: str) -> tuple[int, int | None] | None:
    """(id, commit time µs for a format-1 name, else None), or None if ``name`` is no manifest name."""
    if not (name.startswith("snapshot-") and name.endswith(".json")):
        return None
    parts = name[len("snapshot-") : -len(".json")].split("-")
    if not all(p.isdigit() for p in parts):
        return None
    if len(parts) == 1:
        return int(parts[0]), None
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    return None


def manifest_id(name: str) -> int | None:
    """The snapshot id a manifest name holds, or None if ``name`` is not a manifest name."""
    parsed = _parse_manifest_name(name)
    return parsed[0] if parsed else None


def _listed(root: Path) -> dict[int, str]:
    """Manifest names in ``snapshots/`` by id (a format-2 name wins over a format-1 name of the same id)."""
    out: dict[int, str] = {}
    for name in os.listdir(root / SNAPSHOTS_DIR):
        parsed = _parse_manifest_name(name)
        if parsed and (parsed[0] not in out or parsed[1] is None):
            out[parsed[0]] = name
    return out


def _exists(path: str | Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def _hint(root: Path) -> tuple[int, str] | None:
    """The manifest ``CURRENT`` names, if it names one that exists."""
    try:
        with open(os.path.join(root, CURRENT_FILE), "rb") as f:
            name = f.read(256).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    sid = manifest_id(name)
    if sid is None or not _exists(os.path.join(root, SNAPSHOTS_DIR, name)):
        return None
    return sid, name


def current_manifest(root: Path) -> str:
    """The name of the newest manifest: ``CURRENT`` as a hint, then the ids after it, else a listing.

    Raises OSError if ``snapshots/`` cannot be listed, WarehouseInconsistent if it holds no manifest.
    """
    hint = _hint(root)
    if hint is not None:
        sid, name = hint
        folder = os.path.join(root, SNAPSHOTS_DIR)
        for _ in range(_PROBE_LIMIT):
            after = manifest_name(sid + 1)
            if not _exists(os.path.join(folder, after)):
                return name
            sid, name = sid + 1, after
    listed = _listed(root)
    if not listed:
        raise WarehouseInconsistent(
            f"{root / SNAPSHOTS_DIR} holds no manifest, so no snapshot can be read; restore the folder from a "
            "backup or rebuild the warehouse with `beamline run ... --mode batch`"
        )
    return listed[max(listed)]


def _pointer(root: Path) -> tuple[str | None, bool]:
    """What ``CURRENT`` says (None: missing or unreadable), and whether it is a folder instead of a file."""
    path = root / CURRENT_FILE
    try:
        with open(path, "rb") as f:
            return f.read(256).decode(errors="replace").strip(), False
    except IsADirectoryError:
        return None, True
    except OSError:
        return None, path.is_dir()


def _data_file_id(name: str) -> int | None:
    """The snapshot id a data file's name starts with (``<id>-<uuid>.parquet``), or None."""
    head = name.split("-", 1)[0]
    return int(head) if not name.startswith(".") and head.isdigit() and "-" in name else None


def check_not_ahead(root: Path) -> str:
    """The newest manifest's name, after checking that nothing in ``root`` is newer than it.

    Raises WarehouseInconsistent if ``CURRENT`` is a folder, names a snapshot
    newer than the newest manifest, or if a data file's id (its name's prefix)
    is above the newest manifest's id plus one. ``CURRENT`` is written only
    after its manifest is linked, and a writer names its files ``parent + 1``
    with a parent that was the newest when it looked; so ``CURRENT`` is read
    first, the data folders listed next and the manifests last, and either is
    ahead only if manifests were lost (e.g. ``snapshots/`` restored from an
    older backup). A commit on such a warehouse would reuse the lost ids and
    an expiry would delete the lost snapshots' files, so both refuse.
    Files with id ``newest + 1`` are the normal leftovers of a commit that
    crashed (or is in flight) on the newest snapshot, and are not refused.
    """
    pointer, is_dir = _pointer(root)
    if is_dir:
        raise WarehouseInconsistent(
            f"{root / CURRENT_FILE} is a folder, not the file naming the newest manifest; remove it "
            f"(`rm -r {root / CURRENT_FILE}`), it is only a hint and is written again on the next open"
        )
    ahead: list[tuple[int, str]] = []
    for view in data_tables(root):
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(root / view_dir(view)):
                sid = _data_file_id(name)
                if sid is not None:
                    ahead.append((sid, f"{view_dir(view)}/{name}"))
    newest = current_manifest(root)
    newest_id = manifest_id(newest)
    assert newest_id is not None
    lost = (
        f"snapshots after {newest_id} were lost (snapshots/ restored from an older backup?); nothing was changed; "
        f"restore the missing manifests into {root / SNAPSHOTS_DIR}, or, to give up the snapshots after {newest_id} "
        'for good, see docs/warehouse.md ("Lost manifests")'
    )
    named = manifest_id(pointer) if pointer else None
    if named is not None and named > newest_id:
        raise WarehouseInconsistent(
            f"CURRENT of {root} names snapshot {named}, but the newest manifest is {newest_id}: {lost}"
        )
    above = sorted((sid, rel) for sid, rel in ahead if sid > newest_id + 1)
    if above:
        raise WarehouseInconsistent(
            f"{len(above)} data files of {root} belong to snapshots up to {above[-1][0]} (e.g. {above[-1][1]}), "
            f"but the newest manifest is {newest_id}: {lost}"
        )
    return newest


# -- manifests -------------------------------------------------------------------------
def read_manifest(root: Path, name: str) -> Snapshot:
    """The snapshot a manifest describes (FileNotFoundError if it is gone, WarehouseInconsistent if invalid)."""
    raw = (root / SNAPSHOTS_DIR / name).read_bytes()
    try:
        doc = json.loads(raw)
        files = {
            view: tuple((str(f["path"]), int(f["rows"])) for f in entries) for view, entries in doc["views"].items()
        }
        aliases = {
            str(view): Alias(
                check_version(str(a["version"])),
                None if a.get("previous") is None else check_version(str(a["previous"])),
                int(a.get("generation", 0)),
            )
            for view, a in (doc.get("aliases") or {}).items()
        }
        snap = Snapshot(
            root,
            int(doc["snapshot_id"]),
            int(doc["committed_at_us"]),
            files,
            int(doc.get("expired_through", -1)),
            aliases,
        )
    except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as exc:
        raise WarehouseInconsistent(
            f"manifest {name} of {root} is not a valid manifest ({type(exc).__name__}: {exc}); "
            "restore it from a backup, nothing was changed"
        ) from None
    if manifest_id(name) not in (None, snap.snapshot_id):
        raise WarehouseInconsistent(f"manifest {name} of {root} holds snapshot {snap.snapshot_id}, not its own id")
    return snap


def _read_id(root: Path, listed: Mapping[int, str], sid: int) -> Snapshot:
    name = listed.get(sid, manifest_name(sid))
    return read_manifest(root, name)


def _kept_ids(root: Path, newest: Snapshot) -> tuple[dict[int, str], int]:
    """The listing and the oldest kept id: the first present above the newest's ``expired_through``."""
    listed = _listed(root)
    kept = [sid for sid in listed if newest.expired_through < sid <= newest.snapshot_id]
    return listed, min(kept, default=newest.snapshot_id)


def _retrying(root: Path, resolve: Any) -> Any:
    """Run ``resolve`` again when an expiry deleted a manifest it had found (it then finds newer ones)."""
    for _ in range(_RESOLVE_TRIES - 1):
        try:
            return resolve()
        except FileNotFoundError:
            time.sleep(0.001)
    try:
        return resolve()
    except FileNotFoundError as exc:
        raise WarehouseInconsistent(
            f"a manifest of {root} vanished while it was read ({exc.filename}); run `beamline warehouse check`"
        ) from None


def load_snapshot(root: str | os.PathLike[str], as_of_us: int | None = None) -> Snapshot:
    """The newest snapshot, or the newest committed at or before ``as_of_us``.

    Raises SnapshotExpired if the snapshot for ``as_of_us`` has expired, naming the oldest kept one.
    """
    path = Path(root).absolute()
    check_root(path)

    def resolve() -> Snapshot:
        newest = read_manifest(path, current_manifest(path))
        if as_of_us is None or newest.committed_at_us <= as_of_us:
            return newest
        listed, lo = _kept_ids(path, newest)
        oldest = _read_id(path, listed, lo)
        if as_of_us < oldest.committed_at_us:
            raise _before_history(path, oldest, as_of_us)
        # Commit times grow with ids: t(lo) <= as_of < t(hi).
        found, hi = oldest, newest.snapshot_id
        while hi - found.snapshot_id > 1:
            mid = _read_id(path, listed, (found.snapshot_id + hi) // 2)
            if mid.committed_at_us <= as_of_us:
                found = mid
            else:
                hi = mid.snapshot_id
        return found

    snap: Snapshot = _retrying(path, resolve)
    return snap


def _before_history(root: Path, oldest: Snapshot, as_of_us: int) -> ConfigError:
    asked = (EPOCH + dt.timedelta(microseconds=as_of_us)).isoformat()
    kept = f"the oldest kept snapshot is {oldest.snapshot_id}, committed {oldest.committed_at.isoformat()}"
    if oldest.snapshot_id > 0:
        return SnapshotExpired(f"no snapshot at or before {asked} is kept (older ones have expired); {kept}")
    return ConfigError(f"no snapshot at or before {asked}: the warehouse did not exist yet; {kept}")


def oldest_snapshot(root: str | os.PathLike[str]) -> Snapshot:
    """The oldest snapshot not expired: the earliest a pinned reader or ``--as-of`` can still get."""
    path = Path(root).absolute()
    check_root(path)

    def resolve() -> Snapshot:
        newest = read_manifest(path, current_manifest(path))
        listed, lo = _kept_ids(path, newest)
        return newest if lo == newest.snapshot_id else _read_id(path, listed, lo)

    snap: Snapshot = _retrying(path, resolve)
    return snap


def expired_error(root: str | os.PathLike[str], snapshot_id: int) -> SnapshotExpired | None:
    """A SnapshotExpired naming the oldest kept snapshot if ``snapshot_id`` has expired, else None.

    For a reader whose snapshot's file or manifest vanished under it: if this
    gives None, the snapshot is still kept and the file is missing for another
    reason (see ``verify_snapshots``).
    """
    oldest = oldest_snapshot(root)
    if snapshot_id >= oldest.snapshot_id:
        return None
    return SnapshotExpired(
        f"snapshot {snapshot_id} has expired (its files were deleted by snapshot expiry); the oldest kept "
        f"snapshot is {oldest.snapshot_id}, committed {oldest.committed_at.isoformat()}; query again, or pass "
        "a later --as-of"
    )


def list_snapshots(root: str | os.PathLike[str]) -> list[tuple[int, int, str]]:
    """All kept snapshots as (id, commit time µs, manifest name), oldest first."""
    path = Path(root).absolute()

    def resolve() -> list[tuple[int, int, str]]:
        newest = read_manifest(path, current_manifest(path))
        listed, lo = _kept_ids(path, newest)
        out = []
        for sid in range(lo, newest.snapshot_id + 1):
            name = listed.get(sid, manifest_name(sid))
            parsed = _parse_manifest_name(name)
            us = parsed[1] if parsed and parsed[1] is not None else read_manifest(path, name).committed_at_us
            out.append((sid, us, name))
        return out

    snaps: list[tuple[int, int, str]] = _retrying(path, resolve)
    return snaps


def verify_snapshots(root: str | os.PathLike[str]) -> list[Snapshot]:
    """Every manifest present, oldest first, after checking that they and ``CURRENT`` agree.

    Raises WarehouseInconsistent (one line) on the first problem: a file in
    ``snapshots/`` that is not a valid manifest, a missing id among the kept
    snapshots, commit times that do not grow with ids, ``CURRENT`` naming a
    snapshot that is not there, or a data file of a kept snapshot missing. A
    missing or unreadable ``CURRENT`` is no problem: it is only a hint.
    """
    path = Path(root).absolute()
    check_root(path)
    snaps: list[Snapshot] = _retrying(path, lambda: _verify(path))
    return snaps


def _verify(root: Path) -> list[Snapshot]:
    try:
        pointer: str | None = (root / CURRENT_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        pointer = None  # read before the listing: it can only name what the listing holds, or older
    names = sorted(n for n in os.listdir(root / SNAPSHOTS_DIR) if not n.startswith("."))
    snaps: dict[int, Snapshot] = {}
    names_by_id: dict[int, str] = {}
    for name in names:
        sid = manifest_id(name)
        if sid is None:
            raise WarehouseInconsistent(f"{root / SNAPSHOTS_DIR} holds {name!r}, which is not a manifest")
        if sid in snaps:
            raise WarehouseInconsistent(f"{root / SNAPSHOTS_DIR} holds two manifests of snapshot {sid}")
        snaps[sid] = read_manifest(root, name)
        names_by_id[sid] = name
    if not snaps:
        raise WarehouseInconsistent(f"{root / SNAPSHOTS_DIR} holds no manifest")
    newest = snaps[max(snaps)]
    kept = [sid for sid in snaps if sid > newest.expired_through]
    missing = sorted(set(range(min(kept), newest.snapshot_id + 1)) - set(kept))
    if missing:
        raise WarehouseInconsistent(
            f"snapshot {missing[0]} of {root} has no manifest, yet snapshots {min(kept)} to "
            f"{newest.snapshot_id} are kept; restore it from a backup"
        )
    ordered = [snaps[sid] for sid in sorted(snaps)]
    for before, after in itertools.pairwise(ordered):
        if after.committed_at_us <= before.committed_at_us:
            raise WarehouseInconsistent(
                f"snapshot {after.snapshot_id} of {root} is not committed after snapshot {before.snapshot_id}"
            )
    named = manifest_id(pointer) if pointer else None
    if named is not None and named > newest.snapshot_id:
        raise WarehouseInconsistent(
            f"CURRENT of {root} names snapshot {named}, but the newest manifest is {newest.snapshot_id}: "
            "a manifest was lost; restore it from a backup"
        )
    used = {rel: sid for sid in sorted(kept) for entries in snaps[sid].files.values() for rel, _ in entries}
    for rel, sid in used.items():
        if _exists(root / rel):
            continue
        if current_manifest(root) != names_by_id[newest.snapshot_id]:
            # A newer snapshot (an expiry running beside this check?) may have expired it: look again.
            raise FileNotFoundError(errno.ENOENT, "expired while checked", str(root / rel))
        raise WarehouseInconsistent(f"{rel}, a file of kept snapshot {sid} of {root}, is missing")
    return ordered


# -- SQL for the views -----------------------------------------------------------------
def catalog_sql(snap: Snapshot) -> str:
    """SQL defining every view of ``snap`` for the duckdb CLI or a notebook (`.read catalog.sql`).

    Each view under its plain name is its promoted version; each version is there by name too (``"inventory@v2"``).
    """
    lines = [
        f"-- Beamline warehouse, snapshot {snap.snapshot_id} committed {snap.committed_at.isoformat()}.",
        "-- Regenerated on every commit. In the duckdb CLI: .read catalog.sql",
    ]
    for name, table in user_tables(snap).items():
        spec = USER_VIEWS[split_name(name)[0]]
        paths = snap.paths(table)
        if paths:
            body = dedupe_sql(spec, parquet_sql(paths), visible_only=True)
        else:
            body = empty_view_sql(spec)
        lines.append(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {body};")
    return "\n".join(lines) + "\n"


def parquet_sql(paths: list[str]) -> str:
    """``read_parquet([...])`` of ``paths`` as SQL literals (a view's definition takes no parameters)."""
    listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{listed}])"


def empty_view_sql(spec: ViewSpec) -> str:
    """A SELECT with the view's contract columns and no rows (a view nothing was written to)."""
    cols = ", ".join(f"CAST(NULL AS {_duck_type(t)}) AS {quote_ident(c)}" for c, t in spec.columns)
    return f"SELECT {cols} WHERE false"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_binary(t):
        return "BLOB"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    raise TypeError(f"no DuckDB type for {t}")
