"""The warehouse's on-disk format, as the writer and the readers both see it.

A warehouse folder holds immutable Parquet files and one immutable JSON manifest
per snapshot; ``CURRENT`` names the newest manifest and is replaced atomically.
The layout is defined here once, so :mod:`warehouse.writer` (which makes it)
and :mod:`warehouse.reader` (which only reads it) cannot disagree about it, and
neither needs the other.

Layout::

    beamline-warehouse.json             marks the folder as a warehouse (format version)
    CURRENT                             name of the newest manifest, replaced atomically
    snapshots/snapshot-<id>-<us>.json   id and commit time (µs since epoch) in the name
    data/<view>/<id>-<uuid>.parquet     rows sorted by key, immutable
    catalog.sql                         views of the newest snapshot for the duckdb CLI
    .lock                               writers take an exclusive fcntl lock on it
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from core.errors import BeamlineError, ConfigError
from core.views import VIEWS, ViewSpec

__all__ = [
    "CATALOG_SQL",
    "CURRENT_FILE",
    "DATA_DIR",
    "EPOCH",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MARKER_FILE",
    "SNAPSHOTS_DIR",
    "Snapshot",
    "WarehouseMissing",
    "catalog_sql",
    "check_root",
    "current_manifest",
    "dedupe_sql",
    "empty_view_sql",
    "key_columns_sql",
    "list_snapshots",
    "load_snapshot",
    "manifest_name",
    "quote_ident",
    "read_manifest",
    "view_dir",
]

MARKER_FILE = "beamline-warehouse.json"
FORMAT_NAME = "beamline-warehouse"
FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
CATALOG_SQL = "catalog.sql"
SNAPSHOTS_DIR = "snapshots"
DATA_DIR = "data"
# Commit times are stored as whole microseconds since this instant.
EPOCH = dt.datetime.fromtimestamp(0, dt.timezone.utc)


class WarehouseMissing(BeamlineError):
    """The warehouse folder is absent or is not a Beamline warehouse."""


@dataclass(frozen=True)
class Snapshot:
    """One consistent state of every view: the files that make it up."""

    root: Path
    snapshot_id: int
    committed_at_us: int
    files: Mapping[str, tuple[tuple[str, int], ...]]  # view -> ((relative path, rows), ...)

    @property
    def committed_at(self) -> dt.datetime:
        """Commit time as an aware UTC datetime."""
        return EPOCH + dt.timedelta(microseconds=self.committed_at_us)

    def paths(self, view: str) -> list[str]:
        """Absolute paths of the files of ``view`` in this snapshot."""
        return [str(self.root / rel) for rel, _ in self.files.get(view, ())]


def view_dir(view: str) -> str:
    """The folder of a view's Parquet files, relative to the warehouse root (as manifests list them)."""
    return f"{DATA_DIR}/{view}"


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
    """Raise WarehouseMissing, saying what to run, unless ``root`` is a warehouse of this format."""
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
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise WarehouseMissing(
            f"{root} holds warehouse format {meta.get('format')!r} v{meta.get('format_version')}, this Beamline "
            f"reads {FORMAT_NAME} v{FORMAT_VERSION}; rebuild it with `beamline run ... --warehouse DIR`"
        )


def manifest_name(snapshot_id: int, committed_at_us: int) -> str:
    return f"snapshot-{snapshot_id:012d}-{committed_at_us}.json"


def _parse_manifest_name(name: str) -> tuple[int, int] | None:
    if not (name.startswith("snapshot-") and name.endswith(".json")):
        return None
    try:
        sid, us = name[len("snapshot-") : -len(".json")].split("-")
        return int(sid), int(us)
    except ValueError:
        return None


def current_manifest(root: Path) -> str:
    """The name of the newest manifest, as ``CURRENT`` holds it (raises OSError if it is unreadable)."""
    return (root / CURRENT_FILE).read_text().strip()


def list_snapshots(root: str | os.PathLike[str]) -> list[tuple[int, int, str]]:
    """All snapshots as (id, commit time µs, manifest name), oldest first."""
    out = []
    for name in os.listdir(Path(root) / SNAPSHOTS_DIR):
        parsed = _parse_manifest_name(name)
        if parsed:
            out.append((parsed[0], parsed[1], name))
    return sorted(out)


def read_manifest(root: Path, name: str) -> Snapshot:
    doc = json.loads((root / SNAPSHOTS_DIR / name).read_text())
    files = {view: tuple((f["path"], int(f["rows"])) for f in entries) for view, entries in doc["views"].items()}
    return Snapshot(root, int(doc["snapshot_id"]), int(doc["committed_at_us"]), files)


def load_snapshot(root: str | os.PathLike[str], as_of_us: int | None = None) -> Snapshot:
    """The newest snapshot, or the newest committed at or before ``as_of_us``."""
    path = Path(root).absolute()
    check_root(path)
    if as_of_us is None:
        return read_manifest(path, current_manifest(path))
    snaps = list_snapshots(path)
    eligible = [s for s in snaps if s[1] <= as_of_us]
    if not eligible:
        first = Snapshot(path, snaps[0][0], snaps[0][1], {}).committed_at.isoformat() if snaps else "none"
        raise ConfigError(f"no snapshot at or before the requested time; the oldest kept snapshot is {first}")
    return read_manifest(path, eligible[-1][2])


def catalog_sql(snap: Snapshot) -> str:
    """SQL defining every view of ``snap`` for the duckdb CLI or a notebook (`.read catalog.sql`)."""
    lines = [
        f"-- Beamline warehouse, snapshot {snap.snapshot_id} committed {snap.committed_at.isoformat()}.",
        "-- Regenerated on every commit. In the duckdb CLI: .read catalog.sql",
    ]
    for name, spec in VIEWS.items():
        paths = snap.paths(name)
        if paths:
            listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            source = f"read_parquet([{listed}])"
            body = dedupe_sql(spec, source, visible_only=True)
        else:
            body = empty_view_sql(spec)
        lines.append(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {body};")
    return "\n".join(lines) + "\n"


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
