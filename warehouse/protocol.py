"""The commit protocol: many writers, one warehouse, no lock service.

Writers coordinate only through the file system, as Delta Lake and Iceberg do
on one. A commit reads the newest snapshot (its *parent*), writes what it adds,
and publishes the manifest of snapshot ``parent + 1`` with a put-if-absent: of
two writers aiming at one id, exactly one wins; the other re-reads the newest
snapshot, re-applies its rows against it, and tries the next id after a
jittered pause. So ids are unique and gapless, each snapshot is its parent
plus one commit, and no commit is lost. The steps, each a function here so a
test can stop a writer between any two of them:

1. :func:`write_data_file`: every new Parquet file (a unique name), fsynced;
2. :func:`sync_folders`: every ``data/<view>/`` folder that got a file, fsynced
   (if another writer published meanwhile, the plan is made again on the
   newest snapshot first, see :func:`commit_with_retries`);
3. :func:`put_manifest`: the manifest goes to a temporary file, is fsynced, and
   is hard-linked to its final name; ``link`` fails if that name exists, so a
   reader never sees a partial manifest and a loser never overwrites a winner.
   This is the commit point;
4. :func:`sync_manifest`: ``snapshots/`` fsynced, so the new name is durable;
5. :func:`write_pointer`: the hints ``CURRENT`` and ``catalog.sql`` replaced
   atomically, fsynced with the root folder. A writer returns only after this.

Why each crash point is safe, and the few time bounds the protocol relies on,
is written down in ``docs/warehouse.md`` ("Crash safety").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import BeamlineError
from core.views import VIEWS
from warehouse.format import (
    ALIASED_FORMAT_VERSION,
    CATALOG_SQL,
    CURRENT_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_FILE,
    MARKER_FILE,
    SNAPSHOTS_DIR,
    Alias,
    Snapshot,
    WarehouseInconsistent,
    catalog_sql,
    check_not_ahead,
    current_manifest,
    manifest_id,
    manifest_name,
    read_manifest,
)

__all__ = [
    "COMMIT_ATTEMPTS",
    "CommitConflict",
    "CommitGaveUp",
    "Plan",
    "commit_with_retries",
    "fsync_dir",
    "mark_aliased",
    "publish",
    "put_manifest",
    "sync_folders",
    "sync_manifest",
    "tables_of",
    "upgrade_format",
    "write_data_file",
    "write_marker",
    "write_pointer",
]

ROW_GROUP_SIZE = 32_768
# A writer that loses the race for an id tries again this often, then gives up.
COMMIT_ATTEMPTS = 400
# Full-jitter exponential backoff between attempts (seconds): a lost race costs a
# re-read of the files the winner added, so the pause can stay short.
BACKOFF_BASE_S = 0.001
BACKOFF_CAP_S = 0.02
# A parent resolved longer ago than this is checked again just before the link:
# expiry deletes a manifest only once it is MANIFEST_MIN_AGE old (see warehouse.expiry),
# so a writer cannot link an id an expiry freed after that writer last looked.
PARENT_FRESHNESS_S = 60.0
# Plans made again in one attempt when other writers published while one was made.
_REPLANS = 3
# Resolutions of the newest manifest that may race an expiry deleting it.
_RESOLVE_TRIES = 3
# Rounds of rewriting the hints when newer snapshots appear while a writer writes them.
_POINTER_ROUNDS = 4


class CommitConflict(BeamlineError):
    """Another writer published the snapshot id this commit aimed at; re-read and try the next one."""


class CommitGaveUp(BeamlineError):
    """A commit lost the race for a snapshot id every time it tried."""


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (files added, renamed, linked) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_file(root: Path, name: str, data: bytes) -> None:
    """Replace ``root/name`` by a temporary file and a rename: readers see the old file or the new one."""
    tmp = root / f".{name}.{uuid.uuid4().hex}"
    try:
        _write_durably(tmp, data)
        os.replace(tmp, root / name)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (root / name).is_dir():
            raise WarehouseInconsistent(
                f"{root / name} is a folder, not a file; remove it (`rm -r {root / name}`): it is only a hint, "
                "written again on the next open or commit"
            ) from None
        raise


# -- the steps of a commit -------------------------------------------------------------
def write_data_file(path: Path, table: pa.Table) -> None:
    """Step 1: one immutable Parquet file of a commit, fsynced (its name is new and unique)."""
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def sync_folders(folders: Iterable[Path]) -> None:
    """Step 2: fsync every folder a data file was added to, before a manifest can name the file."""
    for folder in sorted(set(folders)):
        fsync_dir(folder)


def put_manifest(root: Path, snapshot_id: int, document: bytes) -> None:
    """Step 3, the commit point: create the manifest of ``snapshot_id`` if no writer has; else CommitConflict."""
    folder = root / SNAPSHOTS_DIR
    if (folder / manifest_name(snapshot_id)).exists():  # lost already: spare the write and its fsync
        raise CommitConflict(f"snapshot {snapshot_id} of {root} was published by another writer")
    tmp = folder / f".tmp-{snapshot_id:012d}-{uuid.uuid4().hex}.json"
    _write_durably(tmp, document)
    try:
        os.link(tmp, folder / manifest_name(snapshot_id))
    except FileExistsError:
        # Over NFS a LINK retried after a lost reply answers EEXIST although it worked: then tmp has two names.
        if os.stat(tmp).st_nlink != 2:
            raise CommitConflict(f"snapshot {snapshot_id} of {root} was published by another writer") from None
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise BeamlineError(
                f"the file system of {root} cannot make hard links ({exc.strerror}); commits need them to "
                "publish a manifest atomically: put the warehouse on a local or NFS file system"
            ) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def sync_manifest(root: Path) -> None:
    """Step 4: make the new manifest's name durable."""
    fsync_dir(root / SNAPSHOTS_DIR)


def write_pointer(root: Path, snap: Snapshot, name: str | None = None) -> None:
    """Step 5: point the hints ``CURRENT`` and ``catalog.sql`` at ``snap`` (or at a newer snapshot, if one appeared).

    Writers replace the hints without a lock, so a slow writer could leave
    them at an older snapshot than a fast one's; each writer therefore looks
    again after writing and rewrites them for the newest snapshot it finds.
    The last writer to look sees the newest, so the hints settle there.
    """
    for _ in range(_POINTER_ROUNDS):
        name = name or manifest_name(snap.snapshot_id)
        _replace_file(root, CATALOG_SQL, catalog_sql(snap).encode())
        _replace_file(root, CURRENT_FILE, name.encode())
        fsync_dir(root)
        newest = current_manifest(root)
        if (manifest_id(newest) or 0) <= snap.snapshot_id:
            return
        name = newest
        try:
            snap = read_manifest(root, newest)
        except FileNotFoundError:
            return  # expired in between: a newer one holds the hints' answer, and its writer writes them


# -- publishing ------------------------------------------------------------------------
def tables_of(files: Mapping[str, Sequence[tuple[str, int]]]) -> dict[str, tuple[tuple[str, int], ...]]:
    """Every table a manifest lists: the registry's (empty or not) and any other the files name."""
    return {t: tuple(files.get(t, ())) for t in sorted(set(VIEWS) | set(files))}


def manifest_document(
    snapshot_id: int,
    committed_at_us: int,
    files: Mapping[str, Sequence[tuple[str, int]]],
    *,
    operation: str,
    expired_through: int,
    aliases: Mapping[str, Alias] | None = None,
) -> bytes:
    """The JSON manifest of a snapshot: every table's files, the aliases, the commit time, what expired before it."""
    doc = {
        "snapshot_id": snapshot_id,
        "committed_at_us": committed_at_us,
        "operation": operation,
        "expired_through": expired_through,
        "views": {t: [{"path": p, "rows": n} for p, n in entries] for t, entries in tables_of(files).items()},
        "aliases": {view: alias.as_json() for view, alias in sorted((aliases or {}).items())},
    }
    return json.dumps(doc).encode()


def publish(
    root: Path,
    snapshot_id: int,
    committed_at_us: int,
    files: Mapping[str, Sequence[tuple[str, int]]],
    *,
    operation: str = "commit",
    expired_through: int = -1,
    aliases: Mapping[str, Alias] | None = None,
) -> Snapshot:
    """Steps 3 to 5 for files already written and synced: the snapshot, or CommitConflict."""
    aliases = dict(aliases or {})
    if aliases or any("@" in table for table in files):
        mark_aliased(root)
    put_manifest(
        root,
        snapshot_id,
        manifest_document(
            snapshot_id, committed_at_us, files, operation=operation, expired_through=expired_through, aliases=aliases
        ),
    )
    sync_manifest(root)
    snap = Snapshot(root, snapshot_id, committed_at_us, tables_of(files), expired_through, aliases)
    write_pointer(root, snap)
    return snap


@dataclass
class Plan:
    """What one attempt publishes on top of its parent."""

    files: Mapping[str, Sequence[tuple[str, int]]]
    operation: str = "commit"
    # Files made for this plan (a compaction's output): deleted once no later plan of the commit uses them.
    scratch: list[Path] = field(default_factory=list)
    expired_through: int | None = None  # None: as the parent says
    committed_at_us: int | None = None  # None: now (and after the parent's)
    aliases: Mapping[str, Alias] | None = None  # None: as the parent says


# Publishes a snapshot whose files are written (its return value is not used); CommitConflict if the id is taken.
Publisher = Callable[..., object]


def commit_with_retries(
    root: Path, plan: Callable[[Snapshot], Plan | None], publisher: Publisher, *, what: str
) -> Snapshot | None:
    """Publish ``plan(newest snapshot)`` as the next snapshot, re-planning on the newest after each lost race.

    Writing and syncing the data files is most of a plan's time, and another
    writer may publish meanwhile: so before racing for the id, the plan is
    made again on whatever is newest then (cheap: the version rule reads only
    the files the others added, and the data file is reused when the same rows
    survive). That leaves only the manifest's own write between finding the
    parent and the link. Returns None when the plan says there is nothing to
    publish. Raises CommitGaveUp after COMMIT_ATTEMPTS lost races.
    """
    check_not_ahead(root)  # lost manifests: this commit would reuse their ids (and an expiry delete their files)
    rng = random.Random()
    planned: Plan | None = None  # the last plan made; its scratch files are deleted when no later plan keeps them
    for attempt in range(COMMIT_ATTEMPTS):
        planned_on = ""
        for _ in range(_REPLANS):
            parent_name, found = _resolve(root, planned_on)
            if found is None:
                break  # nobody published while the plan was made
            parent = found
            resolved, planned_on = time.monotonic(), parent_name
            previous = planned
            try:
                planned = plan(parent)
            except FileNotFoundError as exc:
                raise WarehouseInconsistent(
                    f"{exc.filename}, which snapshot {parent.snapshot_id} of {root} needs, is missing; nothing was "
                    "committed; run `beamline warehouse check`"
                ) from None
            if previous is not None:
                _delete(set(previous.scratch) - set(planned.scratch if planned else ()))
            if planned is None:
                return None
        assert planned is not None
        sid = parent.snapshot_id + 1
        expired = parent.expired_through if planned.expired_through is None else planned.expired_through
        # Every commit carries the aliases on: only a promote, a rollback or a drop changes them.
        aliases = dict(parent.aliases if planned.aliases is None else planned.aliases)
        # Commit times grow with ids across all writers, whatever their clocks say.
        when = planned.committed_at_us or max(time.time_ns() // 1000, parent.committed_at_us + 1)
        try:
            if time.monotonic() - resolved > PARENT_FRESHNESS_S:
                _check_still_newest(root, planned_on, sid)
            publisher(sid, when, planned.files, operation=planned.operation, expired_through=expired, aliases=aliases)
        except CommitConflict:
            time.sleep(rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))
            continue
        return Snapshot(root, sid, when, tables_of(planned.files), expired, aliases)
    if planned is not None:
        _delete(planned.scratch)
    raise CommitGaveUp(
        f"gave up {what} in {root}: other writers published first {COMMIT_ATTEMPTS} times in a row; "
        "nothing of this commit is visible, so it can be retried as it is"
    )


def _resolve(root: Path, known: str) -> tuple[str, Snapshot | None]:
    """The newest manifest's name, and its snapshot unless that is the manifest ``known``."""
    for attempt in range(_RESOLVE_TRIES):
        try:
            name = current_manifest(root)
            return name, None if name == known else read_manifest(root, name)
        except FileNotFoundError:
            if attempt == _RESOLVE_TRIES - 1:
                raise
            time.sleep(0.001)  # an expiry deleted the manifest as it was found: there is a newer one
    raise AssertionError("unreachable")


def _delete(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _check_still_newest(root: Path, parent_name: str, sid: int) -> None:
    folder = root / SNAPSHOTS_DIR
    if not (folder / parent_name).exists() or (folder / manifest_name(sid)).exists():
        raise CommitConflict(f"snapshot {sid - 1} of {root} is no longer the newest")


# -- the marker ------------------------------------------------------------------------
def write_marker(root: Path) -> None:
    """Mark ``root`` as a warehouse of this format (atomically, durably), unless a writer marked it format 3."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if json.loads((root / MARKER_FILE).read_text()).get("format_version") == ALIASED_FORMAT_VERSION:
            return
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    _replace_file(root, MARKER_FILE, json.dumps(meta).encode())
    fsync_dir(root)


def mark_aliased(root: Path) -> None:
    """Mark ``root`` format 3 before its first versioned table or alias is committed (once: then a read).

    Beamline from before versions reads the views' plain tables only and
    writes manifests of the registry's tables only: it would answer from v1
    after a promote and drop every version from its next commit. Marked, it
    refuses the folder in one line instead.
    """
    try:
        meta = json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return  # no marker yet: a new warehouse, marked when its writer finishes creating it
    if isinstance(meta, dict) and meta.get("format_version") == FORMAT_VERSION:
        _replace_file(
            root, MARKER_FILE, json.dumps({"format": FORMAT_NAME, "format_version": ALIASED_FORMAT_VERSION}).encode()
        )
        fsync_dir(root)


def upgrade_format(root: Path) -> None:
    """Format 1 -> 2, under format 1's writer lock: no format-1 writer is mid-commit, and none commits after.

    A format-1 writer checks the marker inside its lock before each commit and
    refuses a format-2 warehouse, so the two protocols never write at once.
    """
    with open(root / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            meta = json.loads((root / MARKER_FILE).read_text())
            if meta.get("format_version") == 1:
                write_marker(root)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
