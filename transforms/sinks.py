"""The Beam sink into the warehouse: each bundle's rows of one view, committed as a snapshot.

:class:`WriteToWarehouse` is the public transform; its DoFn buffers a bundle's
rows and commits them through the process's shared writer
(:func:`warehouse.writer.acquire_shared_writer`), so every sink step of a worker
commits together. The storage engine itself (format, commit, compaction,
expiry) is the :mod:`warehouse` package, which knows nothing of Beam.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa

from core.views import get_view
from transforms.changes import ChangesPublisher, ChangesTopics
from warehouse.writer import (
    DEFAULT_RETENTION,
    GroupCommitter,
    Warehouse,
    acquire_shared_writer,
    release_shared_writer,
)

__all__ = ["WarehouseOutlet", "WriteToWarehouse"]


class WarehouseOutlet:
    """A worker's way into the warehouse: the process's shared writer, a changes publisher, expiry.

    Built with the DoFn (small and picklable), opened in its ``setup`` and
    closed in its ``teardown``. Each :meth:`commit` is one snapshot; once it
    is durable its rows go to the changes topics (a retried bundle publishes
    the same versions again), and every ``expire_every`` commits old
    snapshots expire: a stream commits every bundle, and without expiry
    manifests and superseded files would pile up for ever.
    """

    def __init__(
        self,
        warehouse_dir: str,
        changes: ChangesTopics | None = None,
        retain: dt.timedelta | None = DEFAULT_RETENTION,
        expire_every: int = 500,
    ) -> None:
        self._dir = warehouse_dir
        self._changes = changes
        self._retain = retain
        self._expire_every = max(1, expire_every)
        self._commits = 0
        self._writer: GroupCommitter | None = None
        self._publisher: ChangesPublisher | None = None

    def open(self) -> None:
        self._writer = acquire_shared_writer(self._dir)
        if self._changes is not None:
            self._publisher = ChangesPublisher(self._changes)

    @property
    def warehouse(self) -> Warehouse:
        assert self._writer is not None, "open the outlet first (in the DoFn's setup)"
        return self._writer.warehouse

    def commit(self, batches: Mapping[str, pa.Table | Iterable[Mapping[str, Any]]]) -> None:
        """Rows of several tables in one snapshot; then publish them, and now and then expire."""
        assert self._writer is not None, "open the outlet first (in the DoFn's setup)"
        held = self._writer.commit_many(batches)
        if self._publisher is not None:
            self._publisher.publish(held)
        self._commits += 1
        if self._retain is not None and self._commits % self._expire_every == 0:
            self._writer.warehouse.expire_snapshots(self._retain)

    def close(self) -> None:
        if self._writer is not None:
            release_shared_writer(self._writer)
            self._writer = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None


class _CommitBatchesFn(beam.DoFn):
    """Buffers a bundle's rows and commits them as one snapshot (or several if large)."""

    def __init__(
        self,
        warehouse_dir: str,
        view: str,
        max_batch_rows: int,
        retain: dt.timedelta | None,
        expire_every: int,
        changes: ChangesTopics | None = None,
    ) -> None:
        self._outlet = WarehouseOutlet(warehouse_dir, changes, retain, expire_every)
        self._view = view
        self._max = max_batch_rows
        self._rows: list[Mapping[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._pending = 0

    def setup(self) -> None:
        self._outlet.open()

    def start_bundle(self) -> None:
        self._rows = []
        self._tables = []
        self._pending = 0

    def process(self, row: Mapping[str, Any] | pa.Table) -> None:
        if isinstance(row, pa.Table):
            self._tables.append(row)
            self._pending += row.num_rows
        else:
            # beam.Row and NamedTuples arrive as objects; the writer wants mappings.
            self._rows.append(row if isinstance(row, Mapping) else row._asdict())
            self._pending += 1
        if self._pending >= self._max:
            self._flush()

    def finish_bundle(self) -> None:
        # A retried bundle commits the same rows again: versions make that a no-op.
        self._flush()

    def _flush(self) -> None:
        if self._pending:
            batch: pa.Table | list[Mapping[str, Any]] = self._rows
            if self._tables:
                warehouse = self._outlet.warehouse
                parts = [warehouse.to_arrow(self._view, t) for t in self._tables]
                if self._rows:
                    parts.append(warehouse.to_arrow(self._view, self._rows))
                batch = pa.concat_tables(parts)
            self._outlet.commit({self._view: batch})
        self._rows = []
        self._tables = []
        self._pending = 0

    def teardown(self) -> None:
        self._outlet.close()


class WriteToWarehouse(beam.PTransform):
    """Upsert rows of one view (dicts, or Arrow tables of them) into a warehouse folder, one snapshot per bundle.

    ``retain`` bounds time travel: every ``expire_every`` commits a worker
    deletes snapshots older than that (None keeps every snapshot).
    ``changes``: each commit's rows also go to the view's changes topic once
    durable (:mod:`transforms.changes`).
    """

    def __init__(
        self,
        warehouse_dir: str,
        view: str,
        max_batch_rows: int = 100_000,
        *,
        retain: dt.timedelta | None = DEFAULT_RETENTION,
        expire_every: int = 500,
        changes: ChangesTopics | None = None,
    ) -> None:
        super().__init__()
        get_view(view)
        self._changes = changes
        self._dir = str(warehouse_dir)
        self._view = view
        self._max = max_batch_rows
        self._retain = retain
        self._expire_every = max(1, expire_every)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        fn = _CommitBatchesFn(self._dir, self._view, self._max, self._retain, self._expire_every, self._changes)
        return pcoll | f"Commit[{self._view}]" >> beam.ParDo(fn)
