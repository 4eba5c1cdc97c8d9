"""Test-only entry point: ``beamline`` whose warehouse sink fails once, inside a commit.

``python -m tests.sink_fault MARKER N ARGS...`` runs ``beamline ARGS...`` in this
process with one change: the Nth snapshot this process publishes raises
:class:`InjectedSinkFault` after the commit has written its Parquet file and
before the snapshot is published (a bundle dying in the middle of a commit). The
failure creates MARKER first, and nothing fails while MARKER exists, so the same
command run again behaves normally. Prism's LOOPBACK workers and the batch
FnApiRunner run the DoFns in this process, so the patch reaches the sink. Used by
``tests/test_faults.py``; product code knows nothing of it.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any


class InjectedSinkFault(RuntimeError):
    """The failure the fault tests inject into a warehouse commit."""


def install(marker: Path, nth: int) -> None:
    """Make the ``nth`` publish of a commit in this process fail once (unless ``marker`` exists)."""
    from warehouse.writer import Warehouse

    lock = threading.Lock()
    publishes = 0
    publish = Warehouse._publish

    def failing_publish(self: Warehouse, snapshot_id: int, *args: Any, **kwargs: Any) -> None:
        nonlocal publishes
        if snapshot_id > 0:  # snapshot 0 is the empty warehouse, not a commit
            with lock:
                publishes += 1
                due = publishes == nth
            if due:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass  # failed once already (an earlier run of this command)
                else:
                    raise InjectedSinkFault(f"injected sink failure at commit {nth} (snapshot {snapshot_id})")
        publish(self, snapshot_id, *args, **kwargs)

    Warehouse._publish = failing_publish  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    marker, nth, *args = argv
    install(Path(marker), int(nth))
    from cli.main import main as beamline

    return beamline(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
