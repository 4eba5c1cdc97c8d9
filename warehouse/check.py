"""Checking a warehouse folder file by file: what ``beamline warehouse check`` runs.

Readers trust the files a manifest lists; this verifies them, without a lock
and without changing anything: the marker, every manifest of the snapshots
checked (the newest, or with ``all_snapshots`` every kept one), and each
Parquet file they list: it exists, it opens, its schema is the view's storage
schema, it holds the rows its manifest says, and every row group decodes.
Each problem is one line naming the file and its view; a check finds them all
rather than stopping at the first.

``CURRENT`` is only a hint (readers find the newest manifest without it), so a
damaged ``CURRENT`` is reported as a note, not a problem, unless it names a
snapshot newer than any manifest (one was lost).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import BeamlineError
from core.views import ViewSpec, get_view
from warehouse.format import (
    CURRENT_FILE,
    DATA_DIR,
    MARKER_FILE,
    SNAPSHOTS_DIR,
    Snapshot,
    WarehouseInconsistent,
    check_not_ahead,
    check_root,
    current_manifest,
    expired_error,
    list_snapshots,
    manifest_id,
    read_manifest,
    view_dir,
)

__all__ = ["CheckReport", "Problem", "check_warehouse"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of the warehouse."""

    path: str  # relative to the warehouse root
    reason: str
    view: str | None = None
    snapshot_id: int | None = None

    def __str__(self) -> str:
        where = [f"view {self.view}"] if self.view else []
        if self.snapshot_id is not None:
            where.append(f"snapshot {self.snapshot_id}")
        suffix = f" ({', '.join(where)})" if where else ""
        return f"{self.path}{suffix}: {self.reason}"


@dataclass
class CheckReport:
    """What a check found: problems (each one line), notes, and how much it looked at."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshots: int = 0
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: what was checked and how many problems were found."""
        checked = (
            f"{self.snapshots} snapshot{'s' if self.snapshots != 1 else ''} and "
            f"{self.files} Parquet file{'s' if self.files != 1 else ''} of {self.root}"
        )
        if self.ok:
            return f"checked {checked}: no problems"
        n = len(self.problems)
        return (
            f"checked {checked}: {n} problem{'s' if n != 1 else ''}; restore the files named above from a "
            "backup, or rebuild the warehouse from the log (`beamline run ... --mode batch`)"
        )


def check_warehouse(root: str | os.PathLike[str], *, all_snapshots: bool = False) -> CheckReport:
    """Check the newest snapshot (``all_snapshots``: every kept one) of the warehouse at ``root``.

    Raises WarehouseMissing (one line) only if ``root`` is not a folder; everything else is reported.
    """
    path = Path(root).absolute()
    report = CheckReport(path)
    try:
        check_root(path)
    except BeamlineError as e:
        if not path.is_dir():
            raise
        report.problems.append(Problem(MARKER_FILE, str(e)))
    manifests = _snapshots(path, report, all_snapshots)
    _check_current(path, report, [snap for _, snap in manifests])
    _check_not_ahead(path, report)
    report.snapshots = len(manifests)
    files: dict[str, tuple[str, int, int]] = {}  # path -> (view, rows, snapshot) of its first listing
    for name, snap in manifests:
        for view, entries in snap.files.items():
            if _spec(view) is None:
                report.problems.append(Problem(f"{SNAPSHOTS_DIR}/{name}", f"lists files of {view!r}, not a view"))
                continue
            for rel, rows in entries:
                known = files.setdefault(rel, (view, rows, snap.snapshot_id))
                if known[:2] != (view, rows):
                    report.problems.append(
                        Problem(rel, f"listed as {known[1]} rows of {known[0]} elsewhere", view, snap.snapshot_id)
                    )
    for rel, (view, rows, sid) in sorted(files.items()):
        report.files += 1
        problems = _file_problems(path, rel, view, rows)
        if problems == ["missing"] and _expired(path, sid):
            continue  # its snapshot expired while the check ran: the file is rightly gone
        report.problems.extend(Problem(rel, reason, view, sid) for reason in problems)
    return report


def _expired(root: Path, snapshot_id: int) -> bool:
    try:
        return expired_error(root, snapshot_id) is not None
    except (OSError, BeamlineError):
        return False


def _snapshots(root: Path, report: CheckReport, all_snapshots: bool) -> list[tuple[str, Snapshot]]:
    """The manifests to check, by name, each read; one that cannot be found or read is a problem."""
    try:
        names = [current_manifest(root)]
    except (OSError, BeamlineError) as e:
        report.problems.append(Problem(SNAPSHOTS_DIR, f"no manifest can be found ({_reason(e)})"))
        return []
    if all_snapshots:
        try:
            names = [name for _, _, name in list_snapshots(root)]
        except (OSError, BeamlineError):
            # A manifest that cannot be read hides which are kept: read every one there (each is reported).
            names = sorted(n for n in _listing(root) if manifest_id(n) is not None)
        names += sorted(n for n in _listing(root) if manifest_id(n) is None)
    out = []
    for name in dict.fromkeys(names):
        try:
            out.append((name, read_manifest(root, name)))
        except (OSError, BeamlineError) as e:
            reason = str(e) if isinstance(e, BeamlineError) else f"cannot be read ({_reason(e)})"
            report.problems.append(Problem(f"{SNAPSHOTS_DIR}/{name}", reason))
    return out


def _listing(root: Path) -> list[str]:
    """The files of ``snapshots/`` (not the writers' hidden temporary files)."""
    try:
        return [n for n in os.listdir(root / SNAPSHOTS_DIR) if not n.startswith(".")]
    except OSError:
        return []


def _check_current(root: Path, report: CheckReport, snapshots: list[Snapshot]) -> None:
    try:
        pointer = (root / CURRENT_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        report.notes.append(f"{CURRENT_FILE}: unreadable ({_reason(e)}); only a hint, the next commit rewrites it")
        return
    named = manifest_id(pointer)
    newest = max((s.snapshot_id for s in snapshots), default=None)
    if named is None or not (root / SNAPSHOTS_DIR / pointer).exists():
        if named is not None and newest is not None and named > newest:
            report.problems.append(
                Problem(CURRENT_FILE, f"names snapshot {named}, newer than any manifest: a manifest was lost")
            )
            return
        report.notes.append(
            f"{CURRENT_FILE}: names no manifest ({pointer[:60]!r}); only a hint, the next commit rewrites it"
        )


def _check_not_ahead(root: Path, report: CheckReport) -> None:
    """Data files of snapshots above the newest manifest (lost manifests), or a CURRENT that is a folder."""
    try:
        check_not_ahead(root)
    except WarehouseInconsistent as e:
        if " data files of " in str(e):
            report.problems.append(Problem(DATA_DIR, str(e)))
        elif not any(p.path == CURRENT_FILE for p in report.problems):
            report.problems.append(Problem(CURRENT_FILE, str(e)))
    except (OSError, BeamlineError):
        pass  # no manifest found: reported already


def _file_problems(root: Path, rel: str, view: str, rows: int) -> list[str]:
    """What is wrong with one Parquet file of ``view`` (nothing: an empty list)."""
    spec = _spec(view)
    assert spec is not None  # the caller skipped tables that are no view's
    problems = []
    if not rel.startswith(view_dir(view) + "/"):
        problems.append(f"lies outside {view_dir(view)}/")
    path = root / rel
    if not path.exists():
        return [*problems, "missing"]
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        return [*problems, f"not a readable Parquet file ({_reason(e)})"]
    with parquet:
        expected = [(f.name, f.type) for f in spec.storage_schema]
        found = [(f.name, f.type) for f in parquet.schema_arrow]
        if found != expected:
            problems.append(f"schema is ({_columns(found)}), view {view} stores ({_columns(expected)})")
        if parquet.metadata.num_rows != rows:
            problems.append(f"holds {parquet.metadata.num_rows} rows, the manifest says {rows}")
        try:
            for group in range(parquet.num_row_groups):
                parquet.read_row_group(group)
        except (OSError, pa.ArrowException) as e:
            problems.append(f"row group {group} cannot be read ({_reason(e)})")
    return problems


def _spec(table: str) -> ViewSpec | None:
    """The spec of a table a manifest lists (a view, a version of one, a hidden table), or None."""
    try:
        spec = get_view(table)
    except BeamlineError:
        return None
    return spec if spec.name == table else None


def _columns(fields: list[tuple[str, pa.DataType]]) -> str:
    return ", ".join(f"{name} {dtype}" for name, dtype in fields)


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
