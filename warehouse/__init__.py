"""The storage engine: Parquet files plus snapshot manifests, committed without a lock, read whole.

One format, its commit protocol, and both halves: :mod:`warehouse.format`
defines the folder layout, the manifests and how the newest snapshot is found;
:mod:`warehouse.protocol` is how a commit becomes visible (put-if-absent of
the next manifest, retried against the newest on a lost race);
:mod:`warehouse.writer` commits to it (group commit, compaction) and
:mod:`warehouse.expiry` bounds its history; :mod:`warehouse.reader` resolves
snapshots and reads them through a sandboxed, read-only DuckDB. It imports
only ``core`` and third-party libraries: the Beam sink (``transforms.sinks``)
and the user verbs (``readside``) build on it.
"""

from warehouse.format import (
    Snapshot,
    SnapshotExpired,
    WarehouseInconsistent,
    WarehouseMissing,
    expired_error,
    list_snapshots,
    load_snapshot,
    oldest_snapshot,
)
from warehouse.protocol import CommitGaveUp
from warehouse.reader import QueryFailed, QueryRefused, Reader, connect, parse_as_of
from warehouse.writer import DEFAULT_RETENTION, CommitResult, Warehouse

__all__ = [
    "DEFAULT_RETENTION",
    "CommitGaveUp",
    "CommitResult",
    "QueryFailed",
    "QueryRefused",
    "Reader",
    "Snapshot",
    "SnapshotExpired",
    "Warehouse",
    "WarehouseInconsistent",
    "WarehouseMissing",
    "connect",
    "expired_error",
    "list_snapshots",
    "load_snapshot",
    "oldest_snapshot",
    "parse_as_of",
]
