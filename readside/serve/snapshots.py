"""Following the warehouse: the snapshot the service answers from, and its inventory index.

A :class:`SnapshotWatcher` thread asks every ``poll_interval_s`` (50 ms by
default) which manifest is the newest: :func:`warehouse.format.current_manifest`
reads ``CURRENT`` and probes the ids after it, a read and a ``stat`` or two. When
a new snapshot appears it walks the snapshots since the one it holds, one
manifest each, and makes the next :class:`Published` state:

* a commit only adds files, so the index gains a layer with the added files'
  rows (:meth:`InventoryIndex.with_rows`): milliseconds, whatever the view's size;
* a promote or a rollback points ``inventory`` at another version's table: its
  files are all others, so the index is built again from them (the views it
  moved are published at once, from the same snapshot, as every other state);
* a compaction (``"operation": "compact"`` in its manifest) replaces files by one
  holding the same rows, so the index stays as it is;
* anything else that removes files, a gap in the manifests (expired, or
  format-1 names) or a large added file: the index is built again from the
  newest snapshot's files.

The new state is published with one reference assignment, so a request that
took the previous one keeps a whole snapshot; then the event loop's waiters
(``min_snapshot``, the events stream) are woken. Problems reading the warehouse
are kept as :attr:`SnapshotWatcher.error` (``/v1/health`` shows it) while the
service keeps answering from the last good snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import BeamlineError
from core.views import INVENTORY
from readside.serve.index import InventoryIndex
from warehouse.format import (
    SNAPSHOTS_DIR,
    Snapshot,
    WarehouseInconsistent,
    current_manifest,
    load_snapshot,
    manifest_id,
    manifest_name,
    read_manifest,
)

__all__ = ["Published", "SnapshotSignal", "SnapshotWatcher"]

log = logging.getLogger("beamline.serve")

# Past this many snapshots behind, the index is built again from the newest rather than walked forward.
_MAX_STEPS = 256
# Added rows past this many (or a quarter of the view) are read by a full build, which is vectorised.
_MIN_REBUILD_ROWS = 100_000


@dataclass(frozen=True)
class Published:
    """One snapshot as the service answers from it."""

    snapshot: Snapshot
    index: InventoryIndex
    files: frozenset[str]  # the inventory view's files in ``snapshot``
    seen_at: float  # wall-clock time the service could first answer from it

    @property
    def snapshot_id(self) -> int:
        return self.snapshot.snapshot_id


@dataclass
class WatchStats:
    """What the watcher did, for ``/v1/health``."""

    polls: int = 0
    full_builds: int = 0
    incremental: int = 0
    compactions: int = 0
    last_update_ms: float = 0.0
    max_update_ms: float = 0.0
    last_full_build_ms: float = 0.0


def _inventory_files(snap: Snapshot) -> frozenset[str]:
    """The files of the inventory version ``snap``'s alias names: what the index holds."""
    return frozenset(rel for rel, _ in snap.files.get(snap.table_of(INVENTORY.name), ()))


def _operation(root: Path, name: str) -> str | None:
    """What made a snapshot: the ``operation`` its manifest records (``warehouse.protocol.manifest_document``)."""
    try:
        doc = json.loads((root / SNAPSHOTS_DIR / name).read_bytes())
    except (OSError, ValueError):
        return None
    operation = doc.get("operation") if isinstance(doc, dict) else None
    return operation if isinstance(operation, str) else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read(root: Path, rels: list[str]) -> list[pa.Table]:
    return [pq.read_table(root / rel, columns=list(INVENTORY.column_names)) for rel in sorted(rels)]


class SnapshotWatcher:
    """Polls the warehouse for new snapshots and keeps :attr:`current` (and its index) up to date."""

    def __init__(
        self,
        root: Path,
        poll_interval_s: float = 0.05,
        on_publish: Callable[[Published], None] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.poll_interval_s = poll_interval_s
        self.on_publish = on_publish
        self.error: str | None = None
        self.stats = WatchStats()
        self._current: Published | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Published:
        """The newest state published (start() made the first)."""
        current = self._current
        assert current is not None, "SnapshotWatcher.start() was not called"
        return current

    @property
    def started(self) -> bool:
        return self._current is not None

    def start(self) -> None:
        """Build the newest snapshot's index (errors raise, one line), then follow the warehouse in a thread."""
        if self._current is None:
            try:
                self._publish(self._full(load_snapshot(self.root)))
            except (OSError, pa.ArrowException) as exc:
                raise WarehouseInconsistent(
                    f"cannot read the inventory view of {self.root}: {_one_line(exc)}; "
                    f"run `beamline warehouse check --warehouse {self.root}`"
                ) from None
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="beamline-serve-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def poke(self) -> None:
        """Look for a new snapshot now rather than at the next poll (a reader is waiting for one)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # a bug: logged with its traceback, and the service keeps its last state
                self._failed(exc, unexpected=True)

    # one poll
    def refresh(self) -> bool:
        """Publish the newest snapshot if it is not the current one; True if it published."""
        self.stats.polls += 1
        current = self.current
        try:
            name = current_manifest(self.root)
            sid = manifest_id(name)
            if sid is None or sid == current.snapshot_id:
                self.error = None
                return False
            started = time.perf_counter()
            published = self._advance(current, sid, name)
        except (OSError, BeamlineError, pa.ArrowException, ValueError) as exc:
            self._failed(exc)
            return False
        self.stats.last_update_ms = (time.perf_counter() - started) * 1000
        self.stats.max_update_ms = max(self.stats.max_update_ms, self.stats.last_update_ms)
        self.error = None
        self._publish(published)
        tidy = published.index.tidied()
        if tidy is not None:  # the same rows in fewer layers: not a new snapshot, nobody is woken
            self._current = replace(published, index=tidy)
        return True

    def _advance(self, current: Published, sid: int, name: str) -> Published:
        if not 0 < sid - current.snapshot_id <= _MAX_STEPS:
            return self._full(read_manifest(self.root, name))
        index, files = current.index, current.files
        snap = current.snapshot
        table = snap.table_of(INVENTORY.name)
        for step in range(current.snapshot_id + 1, sid + 1):
            step_name = name if step == sid else manifest_name(step)
            try:
                snap = read_manifest(self.root, step_name)
            except FileNotFoundError:  # expired meanwhile, or a format-1 name: start from the newest
                return self._full(read_manifest(self.root, name))
            now = _inventory_files(snap)
            added, removed = now - files, files - now
            if snap.table_of(INVENTORY.name) != table:
                return self._full(read_manifest(self.root, name))  # promoted or rolled back: another table
            if removed:
                if _operation(self.root, step_name) != "compact":
                    return self._full(read_manifest(self.root, name))
                self.stats.compactions += 1  # the same rows in other files: the index stands
            elif added:
                sizes = dict(snap.files.get(snap.table_of(INVENTORY.name), ()))
                if sum(sizes[rel] for rel in added) > max(_MIN_REBUILD_ROWS, len(index) // 4):
                    return self._full(read_manifest(self.root, name))
                index = index.with_rows(_read(self.root, list(added)))
                self.stats.incremental += 1
            files = now
        return Published(snap, index, files, time.time())

    def _full(self, snap: Snapshot) -> Published:
        started = time.perf_counter()
        files = _inventory_files(snap)
        index = InventoryIndex.build(_read(self.root, list(files)))
        self.stats.full_builds += 1
        self.stats.last_full_build_ms = (time.perf_counter() - started) * 1000
        return Published(snap, index, files, time.time())

    def _publish(self, published: Published) -> None:
        self._current = published
        if self.on_publish is not None:
            self.on_publish(published)

    def _failed(self, exc: BaseException, unexpected: bool = False) -> None:
        message = _one_line(exc)
        if message != self.error:  # each new problem once in the log, not every poll
            if unexpected:
                log.error("following the warehouse failed; answering from snapshot %s", self._held(), exc_info=exc)
            else:
                log.warning(
                    "cannot read the warehouse's newest snapshot (answering from %s): %s", self._held(), message
                )
        self.error = message

    def _held(self) -> int | None:
        return self._current.snapshot_id if self._current is not None else None


class SnapshotSignal:
    """Wakes the coroutines of one event loop waiting for a new snapshot; :meth:`fire` is called from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def fire(self, _published: object = None) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    async def wait(self, timeout: float) -> None:
        """Return at the next publish, or after ``timeout`` seconds."""
        if self._event is None:
            self.bind(asyncio.get_running_loop())
        event = self._event
        assert event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
