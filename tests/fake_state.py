"""Fake Beam state cells and timers for unit tests of stateful DoFn logic (pure logic only).

They behave as the SDK's runtime state does on a runner without cache tokens:
writes stay pending until the bundle commits, and a read of a cell not yet
written in the bundle is a round trip to the runner (counted).
"""

from __future__ import annotations

from typing import Any


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
            return self.committed
        return self._pending

    def write(self, value: Any) -> None:
        self._pending, self._written = value, True

    def commit(self) -> None:
        if self._written:
            self.committed = self._pending


class FakeBag:
    """A bag state for one bundle; ``reads`` counts whole reads."""

    def __init__(self, committed: list[Any] | None = None) -> None:
        self.committed = list(committed or [])
        self._added: list[Any] = []
        self._cleared = False
        self.reads = 0

    def read(self) -> list[Any]:
        self.reads += 1
        return ([] if self._cleared else list(self.committed)) + self._added

    def add(self, value: Any) -> None:
        self._added.append(value)

    def clear(self) -> None:
        self._cleared, self._added = True, []

    def commit(self) -> None:
        self.committed = ([] if self._cleared else self.committed) + self._added


class FakeTimer:
    def set(self, _when: Any) -> None:
        pass
