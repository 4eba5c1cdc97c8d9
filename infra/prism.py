"""Beam's Prism runner as a long-running job service, with its web UI.

``beamline run`` on its own starts a private Prism per run and stops it at the
end. This one outlives the command that started it: pipelines are submitted
to it with ``--runner portable --job-endpoint localhost:JOB_PORT`` (Beam's
``PortableRunner``), keep running after the submitter exits (``--detach``),
and ``beamline jobs`` lists and cancels them. Prism runs each job's Python
code in SDK workers: LOOPBACK (inside the submitting process) or EXTERNAL
(a worker pool, :mod:`infra.worker_pool`).

Files in its state folder (``$BEAMLINE_HOME/prism``)::

    prism.pid    the running job service (absent when stopped)
    prism.log    its log (Prism's own, and what the SDK workers log through it)
    prism.json   the ports chosen at start, so ``status`` works from any shell
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, SetupMissing
from core.settings import prism_binary, state_dir
from infra.process import ManagedProcess, require_free_port, spawn

__all__ = ["DEFAULT_JOB_PORT", "DEFAULT_UI_PORT", "PrismJobService", "PrismStatus", "default_job_endpoint"]

DEFAULT_JOB_PORT = 8073
DEFAULT_UI_PORT = 8074
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PrismStatus:
    """Whether a job service runs from a state folder, and where it answers."""

    running: bool
    pid: int | None
    job_port: int | None
    ui_port: int | None
    state_dir: Path

    @property
    def job_endpoint(self) -> str | None:
        """``HOST:PORT`` to pass as ``--job-endpoint``."""
        return f"localhost:{self.job_port}" if self.job_port else None

    @property
    def ui_url(self) -> str | None:
        return f"http://localhost:{self.ui_port}" if self.ui_port else None


class PrismJobService(ManagedProcess):
    """Start, stop and inspect one Prism job service rooted in ``folder``."""

    NAME = "prism"
    WHAT = "Prism job service"
    STOP_TIMEOUT_S = 15.0

    def __init__(self, folder: Path | str | None = None, *, binary: Path | None = None) -> None:
        super().__init__(folder or state_dir() / "prism")
        self.binary = binary or prism_binary()

    @property
    def _ports_file(self) -> Path:
        return self.folder / "prism.json"

    def status(self) -> PrismStatus:
        try:
            ports = json.loads(self._ports_file.read_text())
        except (OSError, ValueError):
            ports = {}
        pid = self.pid()
        return PrismStatus(pid is not None, pid, ports.get("job_port"), ports.get("ui_port"), self.folder)

    def start(
        self, job_port: int = DEFAULT_JOB_PORT, ui_port: int = DEFAULT_UI_PORT, *, timeout_s: float = READY_TIMEOUT_S
    ) -> PrismStatus:
        """Start Prism and return once its job service answers a ``GetJobs`` call."""
        from infra.job_service import JobServiceClient  # imports Beam (seconds): only when starting

        self._refuse_second_start("use it, or run `beamline prism stop` first")
        if job_port == ui_port:
            raise ConfigError(f"--job-port and --ui-port must differ; both are {job_port}")
        if not self.binary.is_file():
            raise SetupMissing(f"Prism runner not found at {self.binary}; run `make setup`")
        require_free_port(job_port, "Prism job service", hint="choose another with --job-port")
        require_free_port(ui_port, "Prism web UI", hint="choose another with --ui-port")
        self._prepare_folder()
        self._ports_file.write_text(json.dumps({"job_port": job_port, "ui_port": ui_port}) + "\n")
        process = spawn(
            [
                str(self.binary),
                f"--job_port={job_port}",
                f"--web_port={ui_port}",
                "--serve_http=true",
                "--log_kind=text",  # the default colours every line for a terminal
            ],
            self.log_file,
            self.pid_file,
            cwd=self.folder,
        )
        endpoint = f"localhost:{job_port}"
        with JobServiceClient(endpoint) as client:
            self._wait_ready(process, client.answers, f"answer on its job port {job_port}", timeout_s)
        return self.status()


def default_job_endpoint() -> str:
    """The job service of ``beamline prism start`` (default state folder), else where it would listen."""
    return PrismJobService().status().job_endpoint or f"localhost:{DEFAULT_JOB_PORT}"
