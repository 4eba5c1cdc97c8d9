"""Local service processes: find ``java``, check ports, start, wait, stop.

Shared by every local service (the Kafka broker, the Flink cluster, the Prism
job service, the worker pool). A service runs in its own session (it outlives
the command that started it) and its pid is written to a pid file in its state
folder, so a later ``beamline ... status`` or ``stop`` finds it from any
process. :class:`ManagedProcess` is that pattern for a one-process service.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from core.errors import ServiceError

__all__ = [
    "ManagedProcess",
    "find_java",
    "free_port",
    "last_log_line",
    "pid_alive",
    "port_is_free",
    "port_open",
    "prepare_folder",
    "read_pid",
    "require_free_port",
    "spawn",
    "terminate",
    "wait_started",
]

#: Seconds to wait for a process to die after SIGKILL before sending it again.
_KILL_WAIT_S = 10.0
#: Words that mark a log line as the likely reason a process failed.
_ERROR_MARKERS = (" ERROR ", "Exception", "Error:")


def find_java() -> str:
    """The ``java`` to run services with: ``$JAVA_HOME/bin/java`` or the PATH's."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise ServiceError("Java not found: install a JDK 17 or newer and put `java` on PATH (or set JAVA_HOME)")
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (for tests and internal listeners)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free_port(port: int, what: str | None = None, *, hint: str = "choose a free port") -> None:
    """Raise ServiceError when ``port`` is taken; ``hint`` says how to pick another."""
    if not port_is_free(port):
        label = f"port {port} ({what})" if what else f"port {port}"
        raise ServiceError(f"{label} is already in use by another program; {hint} or stop what listens there")


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie of ours."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0). Reap it if it is our child; otherwise
    # (its parent exited and nobody reaps it) ask /proc whether it is one.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def read_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def terminate(pid_file: Path, timeout_s: float, *, hard: bool = False) -> bool:
    """Stop the process in ``pid_file`` and wait until it is gone; False if none ran.

    SIGTERM first (SIGKILL at once when ``hard``, as a crash would), then
    SIGKILL if it is still alive after ``timeout_s``. The pid file is removed.
    """
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        if not _gone_within(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)
            _gone_within(pid, _KILL_WAIT_S)
    pid_file.unlink(missing_ok=True)
    return True


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def spawn(cmd: Sequence[str], log_file: Path, pid_file: Path, **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``cmd`` in its own session, output appended to ``log_file``, pid in ``pid_file``."""
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI that started it
            **popen_kwargs,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process


def prepare_folder(folder: Path, *subfolders: Path) -> None:
    """Create a state folder (and ``subfolders``) that this process can write, or say in one line why not."""
    try:
        for each in (folder, *subfolders):
            each.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ServiceError(f"state dir {folder} is unusable ({exc.strerror or exc}); pass a writable folder") from None


def last_log_line(log_file: Path) -> str:
    """The last error-looking line of ``log_file`` (else its last line), for one-line errors."""
    try:
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "no log written"
    errors = [ln for ln in lines if any(marker in ln for marker in _ERROR_MARKERS)]
    return (errors or lines or ["no log written"])[-1][:300]


def wait_started(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    *,
    what: str,
    expectation: str,
    log_file: Path,
    pid_file: Path,
    stop: Callable[[], object],
    timeout_s: float,
    poll_s: float = 0.1,
) -> None:
    """Block until ``ready()``; raise ServiceError naming the log if ``process`` dies or time runs out.

    ``what`` names the service ("the Kafka broker") and ``expectation`` what
    readiness means ("answer on HOST:PORT"). On a timeout ``stop`` is called
    first, so no half-started process is left behind.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise ServiceError(
                f"{what} exited with code {process.returncode} while starting; "
                f"see {log_file}: {last_log_line(log_file)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            stop()
            raise ServiceError(f"{what} did not {expectation} within {timeout_s:.0f}s; see {log_file}")
        time.sleep(poll_s)


class ManagedProcess:
    """A one-process service whose ``NAME.pid`` and ``NAME.log`` live in a state folder.

    Subclasses name the files (``NAME``), say what runs in errors (``WHAT``)
    and implement ``start``; ``pid``, ``stop`` and the readiness wait are here.
    """

    NAME: ClassVar[str]
    WHAT: ClassVar[str]
    STOP_TIMEOUT_S: ClassVar[float] = 10.0

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    @property
    def pid_file(self) -> Path:
        return self.folder / f"{self.NAME}.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.NAME}.log"

    def pid(self) -> int | None:
        """The service's pid while it runs, else None."""
        return read_pid(self.pid_file)

    def stop(self) -> bool:
        """Stop the process; False if none ran."""
        return terminate(self.pid_file, self.STOP_TIMEOUT_S)

    def _refuse_second_start(self, hint: str = "stop it first") -> None:
        pid = self.pid()
        if pid is not None:
            raise ServiceError(f"a {self.WHAT} already runs from {self.folder} (pid {pid}); {hint}")

    def _prepare_folder(self) -> None:
        prepare_folder(self.folder)

    def _wait_ready(
        self, process: subprocess.Popen, ready: Callable[[], bool], expectation: str, timeout_s: float
    ) -> None:
        wait_started(
            process,
            ready,
            what=f"the {self.WHAT}",
            expectation=expectation,
            log_file=self.log_file,
            pid_file=self.pid_file,
            stop=self.stop,
            timeout_s=timeout_s,
        )

    def _wait_listening(self, process: subprocess.Popen, port: int, timeout_s: float) -> None:
        self._wait_ready(process, lambda: port_open(port), f"listen on port {port}", timeout_s)
