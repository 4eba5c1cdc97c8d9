"""The worker pool process: Beam's external worker pool service over warm SDK workers.

A portable runner given ``--environment_type=EXTERNAL
--environment_config=HOST:PORT`` asks this service to start an SDK worker
(``StartWorker``) for each environment of a job, and to stop it when the job
is done (``StopWorker``). Beam's own ``worker_pool_main`` starts a bare
harness per request, which imports Beam first (seconds) and installs nothing
that the job staged. This pool instead keeps at least ``--count`` worker
processes (:mod:`infra.sdk_worker_boot`) alive: idle ones wait with Beam
already imported, and a request hands one of them its endpoints. A worker
that ends or is killed is replaced, so the pool is back to ``--count``
processes within seconds.

Run by :class:`infra.worker_pool.WorkerPool` as ``python -m
infra.worker_pool_main`` in the pool's state folder, where it keeps
``pool.json`` (the pool and each worker's pid and state), one folder per live
worker (its current directory: staged files, nothing of a checkout) and one
log per worker, ``worker-N.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

from infra.process import last_log_line

__all__ = ["POOL_FILE", "WarmWorkerPool", "main"]

POOL_FILE = "pool.json"
READY_FILE = "ready"  # what infra.sdk_worker_boot creates once Beam is imported
#: How long a request waits for a worker to become ready (a cold one imports Beam first).
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
#: Workers in a row that may exit before they are ready; then the pool stops starting them (a broken Python).
MAX_FAILED_WARMUPS = 3
_WATCH_S = 0.1
_BOOT_SOURCE = (Path(__file__).with_name("sdk_worker_boot.py")).read_text()

_LOG = logging.getLogger("beamline.worker_pool")


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen
    folder: Path
    worker_id: str | None = None  # the runner's id once assigned; None while idle

    @property
    def state(self) -> str:
        if self.worker_id is not None:
            return "busy"
        return "idle" if (self.folder / READY_FILE).exists() else "starting"


class WarmWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Hands warm SDK workers to a runner and keeps at least ``count`` of them alive."""

    def __init__(self, folder: Path, python: str, count: int, port: int) -> None:
        self.folder = folder
        self.python = python
        self.count = count
        self.port = port
        self._workers: list[_Worker] = []
        self._started = 0
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._published: str | None = None
        self._failed_warmups = 0
        self._failing: str | None = None  # why the pool stopped starting workers

    # -- the gRPC service -------------------------------------------------------------
    def StartWorker(
        self, request: beam_fn_api_pb2.StartWorkerRequest, context: object
    ) -> beam_fn_api_pb2.StartWorkerResponse:
        assignment = {
            "worker_id": request.worker_id,
            "control_endpoint": request.control_endpoint.url,
            "logging_endpoint": request.logging_endpoint.url,
            "artifact_endpoint": request.artifact_endpoint.url,
            "provision_endpoint": request.provision_endpoint.url,
        }
        try:
            worker = self._take_idle(request.worker_id)
            assert worker.process.stdin is not None
            worker.process.stdin.write((json.dumps(assignment) + "\n").encode())
            worker.process.stdin.close()
        except Exception as exc:  # the runner gets the reason in its own log
            _LOG.exception("could not start a worker for %s", request.worker_id)
            return beam_fn_api_pb2.StartWorkerResponse(error=f"{type(exc).__name__}: {exc}")
        _LOG.info("Starting worker %s (pid %s) for %s", worker.number, worker.process.pid, request.worker_id)
        self.refill()
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(
        self, request: beam_fn_api_pb2.StopWorkerRequest, context: object
    ) -> beam_fn_api_pb2.StopWorkerResponse:
        with self._lock:
            found = [w for w in self._workers if w.worker_id == request.worker_id]
        for worker in found:
            _LOG.info("Stopping worker %s (pid %s) of %s", worker.number, worker.process.pid, request.worker_id)
            _stop_process(worker.process)
        return beam_fn_api_pb2.StopWorkerResponse()

    # -- workers ----------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        """Start one warm worker in a folder of its own (caller holds the lock)."""
        self._started += 1
        number = self._started
        folder = self.folder / f"worker-{number}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with open(self.folder / f"worker-{number}.log", "ab") as log:
            process = subprocess.Popen(
                [self.python, "-c", _BOOT_SOURCE],
                cwd=folder,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = _Worker(number, process, folder)
        self._workers.append(worker)
        _LOG.info("worker %s (pid %s) warming up in %s", number, process.pid, folder)
        return worker

    def _take_idle(self, worker_id: str) -> _Worker:
        """The first ready idle worker, now assigned to ``worker_id``; starts one if none is on its way."""
        with self._lock:
            if self._failing:
                raise RuntimeError(self._failing)
            if not any(w.worker_id is None for w in self._workers):
                self._spawn()
            ready = self._lock.wait_for(
                lambda: any(w.worker_id is None and w.state == "idle" for w in self._workers), START_TIMEOUT_S
            )
            if not ready:
                raise TimeoutError(f"no SDK worker became ready within {START_TIMEOUT_S:.0f}s; see the worker logs")
            worker = next(w for w in self._workers if w.worker_id is None and w.state == "idle")
            worker.worker_id = worker_id
            return worker

    def refill(self) -> None:
        """Start workers until at least ``count`` are alive; publish the pool's state."""
        with self._lock:
            while len(self._workers) < self.count and not self._stopping.is_set() and not self._failing:
                self._spawn()
            self._publish()
            self._lock.notify_all()

    def watch(self) -> None:
        """Reap workers that ended, start their replacements, keep ``pool.json`` current."""
        while not self._stopping.wait(_WATCH_S):
            with self._lock:
                for worker in [w for w in self._workers if w.process.poll() is not None]:
                    self._workers.remove(worker)
                    _LOG.info(
                        "worker %s (pid %s%s) ended with code %s",
                        worker.number,
                        worker.process.pid,
                        f", {worker.worker_id}" if worker.worker_id else "",
                        worker.process.returncode,
                    )
                    self._count_warmup(worker)
                    shutil.rmtree(worker.folder, ignore_errors=True)
            self.refill()

    def _count_warmup(self, ended: _Worker) -> None:
        """Stop starting workers once ``MAX_FAILED_WARMUPS`` in a row end before they are ready (lock held)."""
        if ended.state != "starting":
            self._failed_warmups = 0
            return
        self._failed_warmups += 1
        if self._failed_warmups >= MAX_FAILED_WARMUPS:
            log = self.folder / f"worker-{ended.number}.log"
            self._failing = (
                f"{self._failed_warmups} in a row exited while starting (code {ended.process.returncode}); "
                f"see {log}: {last_log_line(log)}"
            )
            _LOG.error("%s; no more workers are started", self._failing)

    def _publish(self) -> None:
        """Rewrite ``pool.json`` when anything changed (caller holds the lock)."""
        text = json.dumps(
            {
                "pid": os.getpid(),
                "port": self.port,
                "count": self.count,
                "python": self.python,
                "failing": self._failing,
                "workers": [
                    {"number": w.number, "pid": w.process.pid, "state": w.state, "worker_id": w.worker_id}
                    for w in self._workers
                ],
            },
            indent=2,
        )
        if text != self._published:
            partial = self.folder / f"{POOL_FILE}.tmp"
            partial.write_text(text + "\n")
            os.replace(partial, self.folder / POOL_FILE)
            self._published = text

    def shutdown(self) -> None:
        """Stop every worker (idle ones leave when their stdin closes)."""
        self._stopping.set()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            _stop_process(worker.process)


def _stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.worker_pool_main")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the SDK workers")
    parser.add_argument("--host", default="localhost")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)

    pool = WarmWorkerPool(Path.cwd(), args.python, args.count, args.port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.add_insecure_port(f"{args.host}:{args.port}")
    pool.refill()
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    server.start()
    watcher = threading.Thread(target=pool.watch, name="watch-workers", daemon=True)
    watcher.start()
    _LOG.info(
        "worker pool listening on %s:%s, keeping %s worker(s) with %s", args.host, args.port, args.count, pool.python
    )
    stopped.wait()
    server.stop(grace=2)
    pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
