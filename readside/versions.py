"""Every version of every view, and how far behind the log each one is: ``beamline views list``.

A version's lag is read from its resume point (the offsets its views cover,
which its streaming run commits in the same snapshots as the rows: see
:mod:`warehouse.resume`) against the broker's end offsets now, in records
(those the views do not cover yet) and in time: how long ago the oldest of
those records was appended, 0 when the version covers the whole log. That is
what ``beamline views promote --max-lag`` bounds. A version without a resume
point (built in batch only, or its stream not started yet) has no lag to show.
Nothing here writes: the promote itself is :mod:`warehouse.versions`.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from core.errors import BeamlineError
from core.views import PIPELINE_VIEWS, USER_VIEWS, table_name
from transforms.kafka import KafkaConnection, first_record_times, partition_offsets
from warehouse.format import Snapshot, load_snapshot, manifest_name, quote_ident, read_manifest, user_tables
from warehouse.reader import Reader
from warehouse.resume import recorded_run
from warehouse.versions import last_commit

__all__ = ["Lag", "VersionStatus", "format_versions", "list_versions", "resume_names", "version_lag"]


@dataclass(frozen=True)
class Lag:
    """How far a version's resume point is behind the log: records, and the age of the oldest it lacks."""

    pipeline: str  # the resume point's name: inventory, inventory@v2
    records: int | None = None
    seconds: float | None = None
    error: str | None = None  # why the lag is unknown (no broker answered)

    def describe(self) -> str:
        if self.records is None:
            return f"lag unknown ({self.error})" if self.error else "lag unknown"
        if self.records == 0:
            return "caught up (0 records behind the log)"
        age = "?" if self.seconds is None else f"{self.seconds:.1f}s"
        return f"{self.records:,} records ({age}) behind the log"


@dataclass(frozen=True)
class VersionStatus:
    """One version of one view, as ``beamline views list`` shows it."""

    view: str
    version: str
    table: str
    promoted: bool
    rows: int
    files: int
    last_commit: int | None  # the snapshot of the version's newest file (None: no rows yet)
    last_commit_at: dt.datetime | None
    lag: Lag | None  # None: no resume point

    def as_json(self) -> dict[str, Any]:
        lag = self.lag
        return {
            "view": self.view,
            "version": self.version,
            "table": self.table,
            "promoted": self.promoted,
            "rows": self.rows,
            "files": self.files,
            "last_commit": self.last_commit,
            "last_commit_at": None if self.last_commit_at is None else self.last_commit_at.isoformat(),
            "resume_point": None if lag is None else lag.pipeline,
            "lag_records": None if lag is None else lag.records,
            "lag_s": None if lag is None or lag.seconds is None else round(lag.seconds, 3),
            "lag_error": None if lag is None else lag.error,
        }


def resume_names(view: str, version: str) -> list[str]:
    """The resume points that may cover ``version`` of ``view``: those of the pipelines writing it, at that version."""
    return [table_name(pipeline, version) for pipeline, views in PIPELINE_VIEWS.items() if view in views]


def version_lag(
    warehouse: str | os.PathLike[str], view: str, version: str, connection: KafkaConnection | None
) -> Lag | None:
    """The lag of ``version`` of ``view`` behind the log (None: no resume point covers it)."""
    found = [(name, run) for name in resume_names(view, version) if (run := recorded_run(warehouse, name))]
    if not found:
        return None
    pipeline, recorded = found[0]
    if connection is None:
        return Lag(pipeline, error="not asked: --no-broker")
    try:
        ends = partition_offsets(connection, sorted(recorded.topics), timeout_s=5.0)
        behind = {tp: covered for tp, covered in recorded.offsets.items() if ends.get(tp, (0, covered))[1] > covered}
        times = first_record_times(connection, behind, timeout_s=5.0) if behind else {}
    except BeamlineError as exc:
        return Lag(pipeline, error=str(exc))
    records = sum(max(0, ends[tp][1] - covered) for tp, covered in recorded.offsets.items() if tp in ends)
    # A partition added since the run began is read from its earliest offset: all of it is behind.
    records += sum(end - first for tp, (first, end) in ends.items() if tp not in recorded.offsets)
    if not behind and records == 0:
        return Lag(pipeline, 0, 0.0)
    now_ms = time.time() * 1000
    seconds = None if set(times) != set(behind) or not times else max(0.0, (now_ms - min(times.values())) / 1000)
    return Lag(pipeline, records, seconds)


def list_versions(
    warehouse: str | os.PathLike[str], connection: KafkaConnection | None
) -> tuple[Snapshot, list[VersionStatus]]:
    """Every version of every view in the newest snapshot, with its rows and (when a broker answers) its lag."""
    snap = load_snapshot(warehouse)
    names = [(view, version) for view in USER_VIEWS for version in snap.versions(view)]
    queryable = user_tables(snap)  # a view with one version has no "view@v1" name: its plain name is that table
    counted = {
        table_name(view, version): f"{view}@{version}" if f"{view}@{version}" in queryable else view
        for view, version in names
        if USER_VIEWS[view].version_column is not None
    }
    counts: dict[str, int] = {}
    if counted:
        with closing(Reader(warehouse, snap.committed_at)) as reader:
            sql = "SELECT " + ", ".join(
                f"(SELECT count(*) FROM {quote_ident(name)}) AS {quote_ident(table)}" for table, name in counted.items()
            )
            counts = reader.query(sql).to_pylist()[0]
    lags: dict[tuple[str, str], Lag | None] = {}
    statuses = []
    for view, version in names:
        table = table_name(view, version)
        entries = snap.files.get(table, ())
        stored = sum(rows for _, rows in entries)
        newest = last_commit(snap, table)
        key = (",".join(resume_names(view, version)), version)
        if key not in lags:
            lags[key] = version_lag(warehouse, view, version, connection)
        statuses.append(
            VersionStatus(
                view=view,
                version=version,
                table=table,
                promoted=snap.promoted(view) == version,
                rows=counts.get(table, stored),
                files=len(entries),
                last_commit=newest,
                last_commit_at=_committed_at(snap, newest),
                lag=lags[key],
            )
        )
    return snap, statuses


def _committed_at(snap: Snapshot, snapshot_id: int | None) -> dt.datetime | None:
    """When snapshot ``snapshot_id`` was committed (None: unknown, or its manifest has expired)."""
    if snapshot_id is None:
        return None
    if snapshot_id == snap.snapshot_id:
        return snap.committed_at
    try:
        return read_manifest(snap.root, manifest_name(snapshot_id)).committed_at
    except (OSError, BeamlineError):
        return None


def format_versions(snap: Snapshot, statuses: Sequence[VersionStatus], now: dt.datetime | None = None) -> str:
    """The versions as a table for a terminal: ``*`` marks the version each view shows."""
    now = now or dt.datetime.now(dt.timezone.utc)
    header = ("view", "version", "promoted", "rows", "files", "last commit", "lag")
    lines = [header]
    for s in statuses:
        if s.last_commit is None:
            commit = "-"
        elif s.last_commit_at is None:
            commit = f"{s.last_commit}"
        else:
            commit = f"{s.last_commit} ({(now - s.last_commit_at).total_seconds():,.0f}s ago)"
        lag = "-" if s.lag is None else s.lag.describe()
        lines.append((s.view, s.version, "*" if s.promoted else "", f"{s.rows:,}", str(s.files), commit, lag))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = [
        f"snapshot {snap.snapshot_id} committed {snap.committed_at.isoformat(timespec='seconds')}; "
        "* = the version the view's name shows"
    ]
    text += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    return "\n".join(text) + "\n"
