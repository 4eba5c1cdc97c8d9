"""A pool of Python SDK workers for Beam's EXTERNAL environment, on this machine.

A portable runner (Prism's job service, Flink's TaskManagers) given
``--environment_type=EXTERNAL --environment_config=localhost:PORT`` asks the
pool for a worker per job environment instead of starting one itself, so a
job's Python code runs in processes managed apart from the runner and from the
program that submitted it. ``beamline workers start`` runs one on its own;
``beamline flink start`` runs one beside its cluster. The pool process is
:mod:`infra.worker_pool_main`; each worker runs :mod:`infra.sdk_worker_boot`
and imports the job's code from the package the job staged (``--setup_file``).

Files in its state folder (``$BEAMLINE_HOME/workers``, or the Flink cluster's)::

    worker-pool.pid|.log   the pool process
    pool.json              the pool's port and each worker's pid and state
    worker-N.log           worker number N (1, 2, ...; never reused)
    worker-N/              a live worker's current folder: what its job staged
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ServiceError
from core.settings import state_dir
from infra.process import ManagedProcess, port_open, require_free_port, spawn

__all__ = ["DEFAULT_PORT", "PoolWorker", "WorkerPool", "WorkerPoolStatus"]

DEFAULT_PORT = 50000
READY_TIMEOUT_S = 90.0
POOL_FILE = "pool.json"  # written by infra.worker_pool_main


@dataclass(frozen=True)
class PoolWorker:
    """One SDK worker process: ``idle`` (warm), ``starting`` or ``busy`` (running a job)."""

    number: int
    pid: int
    state: str
    worker_id: str | None = None


@dataclass(frozen=True)
class WorkerPoolStatus:
    """Whether a pool runs from a state folder, where it listens, and its workers."""

    running: bool
    pid: int | None
    port: int | None
    count: int | None
    state_dir: Path
    workers: list[PoolWorker] = field(default_factory=list)
    #: Why the pool stopped starting workers (they exit while starting), if it did.
    failing: str | None = None

    @property
    def endpoint(self) -> str | None:
        """``HOST:PORT`` to pass as ``--environment-config`` (EXTERNAL)."""
        return f"localhost:{self.port}" if self.running and self.port else None

    def in_state(self, state: str) -> list[PoolWorker]:
        return [worker for worker in self.workers if worker.state == state]


class WorkerPool(ManagedProcess):
    """Start, stop and inspect one worker pool rooted in ``folder``."""

    NAME = "worker-pool"
    WHAT = "Python SDK worker pool"
    STOP_TIMEOUT_S = 15.0

    def __init__(self, folder: Path | str | None = None) -> None:
        super().__init__(folder or state_dir() / "workers")

    def status(self) -> WorkerPoolStatus:
        pid = self.pid()
        try:
            pool = json.loads((self.folder / POOL_FILE).read_text())
        except (OSError, ValueError):
            pool = {}
        if pid is None:
            return WorkerPoolStatus(False, None, pool.get("port"), pool.get("count"), self.folder)
        workers = [
            PoolWorker(each["number"], each["pid"], each["state"], each.get("worker_id"))
            for each in pool.get("workers", [])
        ]
        return WorkerPoolStatus(
            True, pid, pool.get("port"), pool.get("count"), self.folder, workers, pool.get("failing")
        )

    def start(
        self,
        port: int = DEFAULT_PORT,
        *,
        count: int = 1,
        python: str | None = None,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> WorkerPoolStatus:
        """Start the pool on ``port``; return once it listens and ``count`` workers wait warm.

        ``python`` runs the workers (default: this Python). It needs Beam and
        the pipelines' requirements installed, not Beamline: the workers
        import Beamline from the package each job stages.
        """
        self._refuse_second_start("use it, or run `beamline workers stop` first")
        worker_python = python or sys.executable
        if not os.access(worker_python, os.X_OK):
            raise ServiceError(f"the workers' Python {worker_python} is not an executable file; pass another")
        require_free_port(port, "Python SDK worker pool", hint="choose another with --port")
        self._prepare_folder()
        (self.folder / POOL_FILE).unlink(missing_ok=True)
        process = spawn(
            [
                sys.executable,
                "-m",
                "infra.worker_pool_main",
                f"--port={port}",
                f"--count={count}",
                f"--python={worker_python}",
            ],
            self.log_file,
            self.pid_file,
            cwd=self.folder,
        )

        def ready() -> bool:
            status = self.status()
            if status.failing:
                self.stop()
                raise ServiceError(f"the {self.WHAT}'s workers cannot start: {status.failing}")
            return port_open(port) and len(status.in_state("idle")) >= count

        self._wait_ready(process, ready, f"listen on port {port} with {count} warm worker(s)", timeout_s)
        return self.status()

    def stop(self) -> bool:
        """Stop the pool and every worker it started (its process group)."""
        pid = self.pid()
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return super().stop()
