"""Snapshot expiry: bounded history, deleting only what no kept snapshot can need.

Expiry is a commit like any other: it publishes the next snapshot (the same
files as the newest) through the same put-if-absent, recording in it up to
which id snapshots have expired. Only then does it delete, and only:

* data files that no kept snapshot lists and that an expired manifest lists
  (no future commit can name them: a commit names its parent's files and files
  it wrote itself), or that no manifest lists and are older than the orphan
  grace (a crashed commit's leftovers; younger ones may belong to a commit in
  flight on another host);
* expired manifests, oldest first, once ``MANIFEST_MIN_AGE`` old: a writer
  re-checks a parent older than ``protocol.PARENT_FRESHNESS_S`` before its
  link, so it can never re-create an id an expiry just freed;
* temporary files older than the orphan grace.

Before any of that it checks that neither ``CURRENT`` nor a data file is
ahead of the newest manifest (:func:`warehouse.format.check_not_ahead`, run by
every commit: lost manifests would make their files look like orphans), and
reads every manifest and checks them against each other and against
``CURRENT`` (:func:`warehouse.format.verify_snapshots`): on a
warehouse it cannot read consistently it refuses in one line and deletes
nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from warehouse import protocol
from warehouse.format import (
    LOCK_FILE,
    RUN_LOCK_PREFIX,
    SNAPSHOTS_DIR,
    Snapshot,
    data_tables,
    manifest_id,
    verify_snapshots,
    view_dir,
)

__all__ = ["MANIFEST_MIN_AGE", "ORPHAN_GRACE", "expire"]

# Files no manifest names are deleted only this long after they were written.
ORPHAN_GRACE = dt.timedelta(hours=1)
# Expired manifests are deleted only this long after they were published.
MANIFEST_MIN_AGE = dt.timedelta(minutes=15)


def expire(
    root: Path, retain: dt.timedelta, publisher: protocol.Publisher, *, orphan_grace: dt.timedelta | None = None
) -> int:
    """Expire the snapshots superseded more than ``retain`` ago; returns how many expired.

    Time travel to any time within ``retain`` still works afterwards: the
    snapshot that was newest at that time is kept.
    """
    if retain < dt.timedelta(0):
        raise ConfigError(f"a retention must not be negative; got {retain}")
    grace = (orphan_grace if orphan_grace is not None else ORPHAN_GRACE).total_seconds()
    # Listed before any manifest is read: a file written later is never a candidate.
    data = {rel: mtime for rel, mtime in _data_files(root)}
    temps = list(_temp_files(root))
    seen: dict[str, Any] = {}

    def plan(parent: Snapshot) -> protocol.Plan | None:
        snaps = [s for s in verify_snapshots(root) if s.snapshot_id <= parent.snapshot_id]
        at = max(time.time_ns() // 1000, parent.committed_at_us + 1)
        cutoff = at - retain // dt.timedelta(microseconds=1)
        through = parent.expired_through
        # Snapshot i was the answer until i + 1 was committed (the newest: until this expiry).
        superseded = [s.committed_at_us for s in snaps[1:]] + [at]
        for snap, until in zip(snaps, superseded, strict=True):
            if until > cutoff:
                break
            through = max(through, snap.snapshot_id)
        seen.update(snaps=snaps, parent=parent, through=through)
        if through <= parent.expired_through:
            return None
        return protocol.Plan(parent.files, "expire", expired_through=through, committed_at_us=at)

    published = protocol.commit_with_retries(root, plan, publisher, what="expiring snapshots")
    snaps: list[Snapshot] = seen["snaps"]
    parent: Snapshot = seen["parent"]
    through = published.expired_through if published is not None else parent.expired_through
    _delete(root, snaps, parent, through, data, temps, grace)
    return sum(1 for s in snaps if parent.expired_through < s.snapshot_id <= through) if published else 0


def _delete(
    root: Path,
    snaps: list[Snapshot],
    newest: Snapshot,
    through: int,
    data: dict[str, float],
    temps: list[tuple[Path, float]],
    grace: float,
) -> None:
    def files(of: list[Snapshot]) -> set[str]:
        return {rel for s in of for entries in s.files.values() for rel, _ in entries}

    kept = files([s for s in snaps if s.snapshot_id > through] + [newest])
    expired = files([s for s in snaps if s.snapshot_id <= through])
    now = time.time()
    for rel, mtime in data.items():
        if rel not in kept and (rel in expired or now - mtime > grace):
            with contextlib.suppress(FileNotFoundError):
                (root / rel).unlink()
    names = {manifest_id(n): n for n in os.listdir(root / SNAPSHOTS_DIR) if manifest_id(n) is not None}
    for snap in snaps:  # oldest first, so the manifests left are always a run of ids
        name = names.get(snap.snapshot_id)
        if snap.snapshot_id > through or name is None:
            break
        path = root / SNAPSHOTS_DIR / name
        try:
            if now - path.stat().st_ctime < MANIFEST_MIN_AGE.total_seconds():
                break
            path.unlink()
        except FileNotFoundError:
            continue
    for path, mtime in temps:
        if now - mtime > grace:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _data_files(root: Path) -> list[tuple[str, float]]:
    out = []
    for table in data_tables(root):  # every table's folder: views, their versions (a dropped one's too), hidden ones
        folder = view_dir(table)
        with os.scandir(root / folder) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    out.append((f"{folder}/{entry.name}", entry.stat().st_mtime))
    return out


def _temp_files(root: Path) -> list[tuple[Path, float]]:
    """Temporary files of writers (hidden names): in flight, or left by a crash."""
    out = []
    for folder in (root, root / SNAPSHOTS_DIR):
        with os.scandir(folder) as entries:
            for entry in entries:
                if (
                    entry.name.startswith(".")
                    and entry.name != LOCK_FILE
                    and not entry.name.startswith(RUN_LOCK_PREFIX)
                    and entry.is_file()
                ):
                    with contextlib.suppress(FileNotFoundError):
                        out.append((Path(entry.path), entry.stat().st_mtime))
    return out
