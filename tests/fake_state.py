"""Fake Beam state cells and timers for unit tests of stateful DoFn logic (pure logic only).

They behave as the SDK's runtime state does on a runner without cache tokens:
writes stay pending until the bundle commits, where they are encoded (later
changes to a committed object do not reach the committed state), and a read of
a cell not yet written in the bundle is a round trip to the runner (counted).
"""

from __future__ import annotations

import pickle
from typing import Any


def _encoded(value: Any) -> Any:
    """What the runner holds after a commit: a copy, as a coder round trip makes."""
    return pickle.loads(pickle.dumps(value))


class FakeCell:
    """A read-modify-write state cell for one bundle."""

    def __init__(self, committed: Any = None) -> None:
        self.committed = committed
        self._pending: Any = None
        self._written = False
        self.round_trips = 0

    def read(self) -> Any:
        if not self._written:
            self.round_trips += 1
            return _encoded(self.committed)
        return self._pending

    def write(self, value: Any) -> None:
        self._pending, self._written = value, True

    def commit(self) -> None:
        if self._written:
            self.committed = _encoded(self._pending)
        self._written = False

    def abandon(self) -> None:
        """The bundle failed: its write is dropped."""
        self._written = False


class FakeBag:
    """A bag state for one bundle; ``reads`` counts whole reads."""

    def __init__(self, committed: list[Any] | None = None) -> None:
        self.committed = list(committed or [])
        self._added: list[Any] = []
        self._cleared = False
        self.reads = 0

    def read(self) -> list[Any]:
        self.reads += 1
        return ([] if self._cleared else _encoded(self.committed)) + self._added

    def add(self, value: Any) -> None:
        self._added.append(value)

    def clear(self) -> None:
        self._cleared, self._added = True, []

    def commit(self) -> None:
        self.committed = ([] if self._cleared else self.committed) + _encoded(self._added)
        self._added, self._cleared = [], False

    def abandon(self) -> None:
        """The bundle failed: its adds and clears are dropped."""
        self._added, self._cleared = [], False


class FakeTimer:
    """Records the last time set."""

    def __init__(self) -> None:
        self.at: Any = None

    def set(self, when: Any) -> None:
        self.at = when
