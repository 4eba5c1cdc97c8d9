"""Kernel memory figures of a process tree, sampled while it runs.

A streaming pipeline is several processes (the ``beamline run`` process with
its SDK harness, and the Prism runner it starts), so a figure for "the
pipeline" has to add them up. Everything comes from ``/proc``: ``VmRSS`` is what
the kernel holds resident now, ``VmHWM`` the peak it has seen for one process.
The sum of per-process peaks is an upper bound of the tree's peak (they need
not happen at the same moment); the largest sampled sum is a lower bound.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RssSample", "RssSampler", "process_tree", "tree_memory"]


def _status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (by parent pid in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            tree.append(pid)
            todo.extend(children.get(pid, ()))
    return tree


def tree_memory(root: int) -> dict[str, tuple[int, int]]:
    """Per process of the tree, ``name[pid] -> (VmRSS KiB, VmHWM KiB)``."""
    return {
        f"{_name(pid)}[{pid}]": (_status_kib(pid, "VmRSS"), _status_kib(pid, "VmHWM")) for pid in process_tree(root)
    }


@dataclass(frozen=True)
class RssSample:
    """The tree's resident memory at one moment (seconds since the sampler started)."""

    t: float
    rss_kib: int
    by_process: dict[str, int] = field(default_factory=dict)


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of a process tree every ``every_s`` seconds, in a thread."""

    def __init__(self, root: int, every_s: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.root = root
        self.every_s = every_s
        self.samples: list[RssSample] = []
        self.peaks: dict[str, int] = {}  # VmHWM per process, the last value read while it lived
        self._halt = threading.Event()
        self.started_at = time.monotonic()

    def sample(self) -> RssSample:
        """Read the tree once and record it."""
        memory = tree_memory(self.root)
        for name, (_rss, hwm) in memory.items():
            self.peaks[name] = max(self.peaks.get(name, 0), hwm)
        sample = RssSample(
            time.monotonic() - self.started_at,
            sum(rss for rss, _ in memory.values()),
            {name: rss for name, (rss, _) in memory.items()},
        )
        self.samples.append(sample)
        return sample

    def run(self) -> None:
        """Sample on a fixed schedule until stopped."""
        next_at = time.monotonic()
        while not self._halt.is_set():
            self.sample()
            next_at += self.every_s
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
