"""Test-only entry point: ``beamline`` that crashes itself (kill -9 of its process group) at a named point.

``python -m tests.crash_points PLAN POINT [POINT ...] -- ARGS...`` runs
``beamline ARGS...`` in this process with one point armed: the first POINT
that no earlier run of the command reached. Reaching it, the process creates
``PLAN/<n>-<point>`` and sends SIGKILL to its process group (itself, Prism,
any workers), as a crash would. So the same command, run again after each
crash, crashes at the next point, and runs plainly once every point was
reached. Points (N counts from 1, in this process):

- ``before-catch-up-commit``: a batch catch-up has written its views, and the
  one commit of its state and resume point is next;
- ``after-catch-up-commit``: that commit is made; the streaming run is next;
- ``group-gap:N``: right after the Nth warehouse commit that moved the
  running run's resume point, before the consumer group hears of it (the
  group's commits wait while a warehouse commit is made and checked);
- ``restored:N``: right after the state step's Nth read of its state;
- ``published:N``: right after the Nth snapshot this process publishes.

Prism's LOOPBACK workers and a small batch's FnApiRunner run the DoFns in this
process, so the patches reach them. Used by ``tests/test_faults.py``; product
code knows nothing of it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

POINTS = ("before-catch-up-commit", "after-catch-up-commit", "group-gap", "restored", "published")


def armed(plan: Path, points: list[str]) -> tuple[Path, str] | None:
    """The first point no run has reached yet, with its marker; None when every one was."""
    for n, point in enumerate(points, 1):
        marker = plan / f"{n}-{point.replace(':', '-')}"
        if not marker.exists():
            return marker, point
    return None


def crash(marker: Path, point: str) -> NoReturn:
    """Mark ``point`` reached, then kill -9 this process's group."""
    marker.touch()
    print(f"crash_points: kill -9 at {point}", file=sys.stderr, flush=True)
    os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(137)  # not reached: SIGKILL to one's own group is delivered before killpg returns


def nth_call(n: int) -> Callable[[], bool]:
    """A thread-safe counter that says True on its ``n``-th call only."""
    lock = threading.Lock()
    calls = 0

    def count() -> bool:
        nonlocal calls
        with lock:
            calls += 1
            return calls == n

    return count


def install(marker: Path, point: str) -> None:
    """Patch this process so that reaching ``point`` crashes it."""
    import pipelines.inventory
    import transforms.checkpoint
    import transforms.retail
    from warehouse.resume import recorded_run
    from warehouse.writer import Warehouse

    name, _, count = point.partition(":")
    if name not in POINTS:
        raise SystemExit(f"crash_points: unknown point {point!r}; known: {', '.join(POINTS)}")
    due = nth_call(int(count or 1))
    publish = Warehouse._publish

    if name in ("before-catch-up-commit", "after-catch-up-commit"):
        commit_catch_up = pipelines.inventory.commit_catch_up

        def catch_up_commit(*args: Any, **kwargs: Any) -> int:
            if name == "before-catch-up-commit":
                crash(marker, point)
            run = commit_catch_up(*args, **kwargs)
            crash(marker, point)
            return run

        pipelines.inventory.commit_catch_up = catch_up_commit  # type: ignore[assignment]

    elif name == "group-gap":
        gate = threading.Lock()  # held from before a commit until it is checked: no group commit in between
        commit_group_offsets = transforms.checkpoint.commit_group_offsets

        def group_commit(*args: Any, **kwargs: Any) -> None:
            with gate:
                commit_group_offsets(*args, **kwargs)

        def moving_publish(self: Warehouse, snapshot_id: int, *args: Any, **kwargs: Any) -> Any:
            with gate:
                before = recorded_run(self.root, pipelines.inventory.PIPELINE)
                published = publish(self, snapshot_id, *args, **kwargs)
                after = recorded_run(self.root, pipelines.inventory.PIPELINE)
                if before is not None and after is not None and before.run == after.run:
                    if before.offsets != after.offsets and due():
                        crash(marker, point)
                return published

        transforms.checkpoint.commit_group_offsets = group_commit  # type: ignore[assignment]
        Warehouse._publish = moving_publish  # type: ignore[method-assign]

    elif name == "restored":
        restore = transforms.retail.restore

        def restoring(*args: Any, **kwargs: Any) -> Any:
            restored = restore(*args, **kwargs)
            if due():
                crash(marker, point)
            return restored

        transforms.retail.restore = restoring  # type: ignore[assignment]

    else:  # published

        def counted_publish(self: Warehouse, snapshot_id: int, *args: Any, **kwargs: Any) -> Any:
            published = publish(self, snapshot_id, *args, **kwargs)
            if snapshot_id > 0 and due():  # snapshot 0 is the empty warehouse, not a commit
                crash(marker, point)
            return published

        Warehouse._publish = counted_publish  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: python -m tests.crash_points PLAN POINT [POINT ...] -- BEAMLINE-ARGS...")
    split = argv.index("--")
    (plan, *points), args = argv[:split], argv[split + 1 :]
    found = armed(Path(plan), points)
    if found is not None:
        install(*found)
    from cli.main import main as beamline

    return beamline(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
