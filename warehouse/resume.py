"""A streaming pipeline's resume point, kept in the warehouse beside the views it covers.

The views, the state that produced them and the source offsets they cover are
committed together, in one snapshot, so a restart can start each partition at
the recorded offset with that state, never from offset 0 (the hidden tables of
:mod:`core.views`). This module reads and starts runs of ``_resume_offsets``
and queries the hidden tables; what the state means belongs to the pipeline's
transforms. Nothing here imports Beam or Kafka.

Each streaming start is a *run*, numbered from 1. A run first commits a row for
every (topic, partition, shard) of its own, at the offset it starts from, so
the newest run's rows are always complete: the offset to resume a partition
from is the lowest ``next_offset`` among them (a shard below it has not
committed the outcome of every record before it yet).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from core.errors import ConfigError
from core.views import RESUME_OFFSETS, RESUME_RUNS, get_view
from warehouse.format import (
    RUN_LOCK_PREFIX,
    Snapshot,
    WarehouseInconsistent,
    WarehouseMissing,
    dedupe_sql,
    empty_view_sql,
    load_snapshot,
    parquet_sql,
    quote_ident,
)
from warehouse.writer import Warehouse

__all__ = [
    "RecordedRun",
    "begin_run",
    "check_readable",
    "hand_over_run_locks",
    "hold_run_lock",
    "progress_version",
    "query_tables",
    "recorded_run",
    "set_job_probe",
]

Partition = tuple[str, int]

# A row's version: its run in the high bits, the shard's commits in that run below.
_RUN_SHIFT = 32


# Run locks this process holds, by path: open for as long as the process runs the pipeline.
_HELD_LOCKS: dict[str, int] = {}


def hold_run_lock(root: str | os.PathLike[str], pipeline: str) -> None:
    """Hold the warehouse's run lock of ``pipeline`` until this process ends, or refuse in one line.

    Two streaming runs of one pipeline writing one resume point would each
    take the other's offsets for their own; the second is refused instead. An
    advisory lock (flock) on a file in the warehouse: freed by the system when
    the process that holds it ends, however it ends. A detached submission
    ends while its job streams on in a job service: it leaves the job's id in
    the file (:func:`hand_over_run_locks`), and the lock counts as held for as
    long as the job service says that job runs.
    """
    folder = os.fspath(root)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--warehouse {folder} is a file, not a folder; pass a folder (new or a warehouse)")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{RUN_LOCK_PREFIX}{pipeline}.lock")
    if path in _HELD_LOCKS:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"another streaming run of {pipeline} (pid {holder}) is writing to the warehouse {folder}; "
            "stop it first, or pass another --warehouse"
        ) from None
    job = _detached_job(os.pread(fd, 1024, 0).decode(errors="replace"))
    if job is not None and _job_running(*job):
        os.close(fd)
        endpoint, job_id = job
        raise ConfigError(
            f"job {job_id} of the job service at {endpoint} is streaming {pipeline} into the warehouse {folder}; "
            f"stop it first (`beamline jobs cancel {job_id} --job-endpoint {endpoint}`), or pass another --warehouse"
        )
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[path] = fd


# What a run lock file holds once a detached submission handed it to its job.
_JOB_PREFIX = "job "
# (endpoint, job id) -> whether that job still runs. Set by the pipelines' runner, which speaks the
# job API; with none set (a process that never imported it), a handed-over lock counts as held.
_job_probe: Callable[[str, str], bool] | None = None


def set_job_probe(probe: Callable[[str, str], bool]) -> None:
    """How :func:`hold_run_lock` asks a job service whether a job runs (the pipelines' runner sets it)."""
    global _job_probe
    _job_probe = probe


def hand_over_run_locks(endpoint: str, job_id: str) -> None:
    """Write into every run lock this process holds that job ``job_id`` of ``endpoint`` now holds it."""
    for fd in _HELD_LOCKS.values():
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_JOB_PREFIX + json.dumps({"job": job_id, "endpoint": endpoint})).encode(), 0)


def _detached_job(text: str) -> tuple[str, str] | None:
    if not text.startswith(_JOB_PREFIX):
        return None
    try:
        record = json.loads(text[len(_JOB_PREFIX) :])
        return str(record["endpoint"]), str(record["job"])
    except (ValueError, KeyError, TypeError):
        return None


def _job_running(endpoint: str, job_id: str) -> bool:
    return _job_probe(endpoint, job_id) if _job_probe is not None else True


def progress_version(run: int, commits: int) -> int:
    """The version of a shard's offset rows after its ``commits``-th commit in ``run``: grows across runs."""
    return (run << _RUN_SHIFT) | commits


def query_tables(
    root: str | os.PathLike[str],
    sql: str | Sequence[str],
    views: Sequence[str] | Mapping[str, str],
    params: Mapping[str, object] | None = None,
    snapshot: Snapshot | None = None,
) -> tuple[Snapshot, list[pa.Table]]:
    """Run statements (``$name`` from ``params``) over the named tables of the newest snapshot, in one connection.

    Hidden tables and hidden version columns included; each table is deduped by key as readers see views.
    ``views`` maps the names the SQL uses to tables (``{"inventory": "inventory@v2"}``), or lists tables
    the SQL names as they are. Returns the snapshot (``snapshot`` if given, else the newest) and each
    statement's result (an empty table for one that returns no rows).
    """
    snap = snapshot if snapshot is not None else load_snapshot(root)
    named = dict(views) if isinstance(views, Mapping) else {view: view for view in views}
    con = duckdb.connect()
    results: list[pa.Table] = []
    try:
        for view, table in named.items():
            spec = get_view(table)
            paths = snap.paths(table)
            body = dedupe_sql(spec, parquet_sql(paths), visible_only=False) if paths else empty_view_sql(spec)
            con.execute(f"CREATE VIEW {quote_ident(view)} AS {body}")
        _run(con, [sql] if isinstance(sql, str) else list(sql), params, results)
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:  # a file missing, cut short or not Parquet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WarehouseInconsistent(
            f"reading {', '.join(named.values())} of the warehouse {root} failed: {first}; "
            "`beamline warehouse check` names the damaged file: restore it from a backup, or write a new "
            "warehouse (a batch run rebuilds the views, not a streaming run's resume point)"
        ) from None
    finally:
        con.close()
    return snap, results


def _run(
    con: duckdb.DuckDBPyConnection,
    statements: Sequence[str],
    params: Mapping[str, object] | None,
    results: list[pa.Table],
) -> None:
    """Each statement in turn, its result (a table, empty for one that returns no rows) appended."""
    for statement in statements:
        used = {name: value for name, value in (params or {}).items() if f"${name}" in statement}
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            results.append(con.sql(statement, params=used or None).to_arrow_table())
        else:
            con.execute(statement, used)
            results.append(pa.table({}))


@dataclass(frozen=True)
class RecordedRun:
    """The newest run of a pipeline as the warehouse has it: where each partition's read may resume."""

    run: int
    shards: int
    offsets: Mapping[Partition, int]
    snapshot_id: int
    committed_at_us: int
    settings: Mapping[str, object] = field(default_factory=dict)  # what the run's state depends on

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(topic for topic, _ in self.offsets)


def recorded_run(root: str | os.PathLike[str], pipeline: str, snapshot: Snapshot | None = None) -> RecordedRun | None:
    """The pipeline's newest run in the warehouse at ``root`` (as of ``snapshot``), or None if it never streamed."""
    try:
        snap, (rows, runs) = query_tables(
            root,
            [
                f"""
            WITH mine AS (SELECT * FROM {RESUME_OFFSETS.name} WHERE pipeline = $pipeline),
                 newest AS (SELECT * FROM mine WHERE run = (SELECT max(run) FROM mine))
            SELECT topic, "partition", min(next_offset) AS next_offset, any_value(run) AS run,
                   max(shards) AS shards
            FROM newest GROUP BY topic, "partition" ORDER BY topic, "partition"
            """,
                f"SELECT run, settings FROM {RESUME_RUNS.name} WHERE pipeline = $pipeline",
            ],
            [RESUME_OFFSETS.name, RESUME_RUNS.name],
            {"pipeline": pipeline},
            snapshot,
        )
    except WarehouseMissing:
        return None
    if rows.num_rows == 0:
        return None
    listed = rows.to_pylist()
    settings = [r["settings"] for r in runs.to_pylist() if r["run"] == listed[0]["run"]]
    return RecordedRun(
        run=int(listed[0]["run"]),
        shards=int(listed[0]["shards"]),
        offsets={(r["topic"], int(r["partition"])): int(r["next_offset"]) for r in listed},
        snapshot_id=snap.snapshot_id,
        committed_at_us=snap.committed_at_us,
        settings=json.loads(settings[0]) if settings else {},
    )


def check_readable(root: str | os.PathLike[str], tables: Iterable[str]) -> None:
    """Raise WarehouseInconsistent (one line) unless every file of ``tables`` in the newest snapshot reads.

    A count reads each Parquet file's footer only: cheap, and a resume would
    otherwise start, look healthy, and fail at its first bundle.
    """
    try:
        snap = load_snapshot(root)
    except WarehouseMissing:
        return
    present = [table for table in tables if snap.paths(table)]
    if present:
        query_tables(root, [f"SELECT count(*) FROM {quote_ident(t)}" for t in present], present, snapshot=snap)


def begin_run(
    root: str | os.PathLike[str],
    pipeline: str,
    starts: Mapping[Partition, int],
    shards: int,
    with_rows: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
    settings: Mapping[str, object] | None = None,
) -> int:
    """Commit the rows of the pipeline's next run (every partition and shard at its start); return its number.

    ``with_rows`` go in the same snapshot (a catch-up's state: the resume
    point and the state it covers become visible together). ``settings``:
    what the run's state depends on (a later run with others is refused).
    """
    prior = recorded_run(root, pipeline)
    run = 1 if prior is None else prior.run + 1
    rows = [
        {
            "pipeline": pipeline,
            "topic": topic,
            "partition": partition,
            "shard": shard,
            "run": run,
            "shards": shards,
            "start_offset": offset,
            "next_offset": offset,
            "pending": "[]",
            "version": progress_version(run, 0),
        }
        for (topic, partition), offset in sorted(starts.items())
        for shard in range(shards)
    ]
    warehouse = Warehouse(root)
    try:
        if rows:
            run_row = {"pipeline": pipeline, "run": run, "settings": json.dumps(dict(settings or {}), sort_keys=True)}
            warehouse.commit_many({RESUME_OFFSETS.name: rows, RESUME_RUNS.name: [run_row], **(with_rows or {})})
    finally:
        warehouse.close()
    return run
