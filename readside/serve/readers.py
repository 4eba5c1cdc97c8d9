"""Sandboxed DuckDB readers pinned to snapshots, kept between requests.

Every SQL answer of the service (``/v1/views/{view}``, ``/v1/query``, lookups
``as_of`` another snapshot) runs on :class:`warehouse.reader.Reader`, the
read-only sandbox ``beamline query`` uses, with its memory, thread and time
limits. A reader is pinned with ``as_of`` to the commit time of the snapshot
the request answers from, so a query sees that snapshot whole even when newer
ones commit meanwhile (commit times grow with snapshot ids, so that time
resolves to exactly that snapshot). Opening one costs a DuckDB database and
the views' file footers, so idle readers are kept for the few snapshots asked
for last; one reader serves one query at a time.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from warehouse.format import Snapshot, WarehouseInconsistent
from warehouse.reader import QueryLimits, Reader

__all__ = ["ReaderPool"]


class ReaderPool:
    """Idle readers by snapshot id, for the ``keep`` snapshots used last."""

    def __init__(self, root: Path, limits: QueryLimits, *, keep: int = 4, per_snapshot: int = 4) -> None:
        self.root = root
        self.limits = limits
        self.keep = keep
        self.per_snapshot = per_snapshot
        self._idle: OrderedDict[int, list[Reader]] = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self, snap: Snapshot) -> Iterator[Reader]:
        """A reader of ``snap`` for one query; it goes back to the pool unless the query failed."""
        reader = self._take(snap)
        try:
            yield reader
        except BaseException:
            reader.close()  # a stopped or failed query may leave its connection in any state
            raise
        self._give_back(snap.snapshot_id, reader)

    def _take(self, snap: Snapshot) -> Reader:
        with self._lock:
            idle = self._idle.get(snap.snapshot_id)
            if idle:
                self._idle.move_to_end(snap.snapshot_id)
                return idle.pop()
        reader = Reader(self.root, snap.committed_at, limits=self.limits)
        found = reader.snapshot().snapshot_id
        if found != snap.snapshot_id:
            reader.close()
            raise WarehouseInconsistent(
                f"snapshot {snap.snapshot_id}'s commit time resolves to snapshot {found}; "
                f"run `beamline warehouse check --warehouse {self.root}`"
            )
        return reader

    def _give_back(self, snapshot_id: int, reader: Reader) -> None:
        dropped: list[Reader] = []
        with self._lock:
            idle = self._idle.setdefault(snapshot_id, [])
            self._idle.move_to_end(snapshot_id)
            if len(idle) < self.per_snapshot:
                idle.append(reader)
            else:
                dropped.append(reader)
            while len(self._idle) > self.keep:
                _, old = self._idle.popitem(last=False)
                dropped.extend(old)
        for extra in dropped:
            extra.close()

    def close(self) -> None:
        with self._lock:
            readers = [r for idle in self._idle.values() for r in idle]
            self._idle.clear()
        for reader in readers:
            reader.close()
