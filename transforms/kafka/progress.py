"""Records read so far in this process, for the progress lines of a long batch run.

Beam metrics reach the launcher only when a job ends on some runners; this
module is the running total that readers add to as they go and that the
launcher (``pipelines.runner``) reads while the job runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

__all__ = ["LOCAL_PROGRESS", "PROGRESS_DIR_ENV"]

# Set by the launcher of a batch run to a folder: readers in worker processes
# (the FnApiRunner's multi_processing mode) write their running totals there,
# one file per process, so the launcher's progress lines count every process.
PROGRESS_DIR_ENV = "BEAMLINE_PROGRESS_DIR"
_SHARE_EVERY_S = 0.5


class _LocalProgress:
    """Records read by readers running in this process.

    The launcher reads it directly when the workers share its process
    (FnApiRunner, Prism's loopback), and through the folder named by
    ``PROGRESS_DIR_ENV`` when they do not.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # add() shares while holding it
        self._records = 0
        self._shared_at = 0.0

    def add(self, records: int) -> None:
        with self._lock:
            self._records += records
            now = time.monotonic()
            if now - self._shared_at >= _SHARE_EVERY_S:
                self._shared_at = now
                self.share()

    def share(self) -> None:
        """Write this process's total where the launcher looks, if it asked (``PROGRESS_DIR_ENV``)."""
        folder = os.environ.get(PROGRESS_DIR_ENV)
        if not folder:
            return
        path = os.path.join(folder, str(os.getpid()))
        with self._lock:
            try:
                with open(path + ".tmp", "w") as out:
                    out.write(str(self._records))
                os.replace(path + ".tmp", path)
            except OSError:
                pass  # progress is a courtesy: a read never fails for it

    @property
    def records(self) -> int:
        return self._records

    @staticmethod
    def in_other_processes(folder: str) -> int:
        """Records that readers in other processes last reported to ``folder``."""
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.isdigit() and int(entry.name) != os.getpid():
                    with contextlib.suppress(OSError, ValueError), open(entry.path) as report:
                        total += int(report.read() or 0)
        return total


LOCAL_PROGRESS = _LocalProgress()
