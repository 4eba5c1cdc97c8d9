"""The storage engine: Parquet files plus snapshot manifests, written atomically, read whole.

Three modules, one format: :mod:`warehouse.format` defines the folder layout and
the manifests, :mod:`warehouse.writer` commits to it (group commit, compaction,
expiry), :mod:`warehouse.reader` resolves snapshots and reads them through a
sandboxed, read-only DuckDB. It imports only ``core`` and third-party libraries:
the Beam sink (``transforms.sinks``) and the user verbs (``readside``) build on it.
"""

from warehouse.format import Snapshot, WarehouseMissing, list_snapshots, load_snapshot
from warehouse.reader import QueryFailed, QueryRefused, Reader, connect, parse_as_of
from warehouse.writer import DEFAULT_RETENTION, CommitResult, Warehouse

__all__ = [
    "DEFAULT_RETENTION",
    "CommitResult",
    "QueryFailed",
    "QueryRefused",
    "Reader",
    "Snapshot",
    "Warehouse",
    "WarehouseMissing",
    "connect",
    "list_snapshots",
    "load_snapshot",
    "parse_as_of",
]
