"""StreamRetail's shared cell: one state round trip per key and bundle.

Without cache tokens (Prism), every read of a state not yet written in the
bundle goes to the runner. Pure logic with a fake state cell that counts those
reads; the end-to-end behaviour (same panes, same refusals as the separate
steps) is pinned in tests/test_counts.py and tests/test_inventory.py.
"""

from __future__ import annotations

from typing import Any

from transforms.events import Sale, Shipment
from transforms.retail import StreamRetail

HOUR = 3_600 * 1_000_000
T0 = 1_000 * 24 * HOUR


class CountingCell:
    """A state cell that counts reads which would be round trips (nothing written yet)."""

    def __init__(self) -> None:
        self.value: Any = None
        self.written = False
        self.round_trips = 0

    def read(self) -> Any:
        if not self.written:
            self.round_trips += 1
        return self.value

    def write(self, value: Any) -> None:
        self.value, self.written = value, True


class Bag:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def read(self) -> list[Any]:
        return list(self.items)

    def add(self, value: Any) -> None:
        self.items.append(value)

    def clear(self) -> None:
        self.items = []


class Timer:
    def set(self, _when: Any) -> None:
        pass


def test_one_bundle_reads_the_key_cell_once() -> None:
    fn = StreamRetail(early_delay=None)._fn
    fn.setup()
    fn.start_bundle()
    cell, seen = CountingCell(), Bag()
    events = [
        Sale("dup", "s", "i", 1, T0),
        Sale("dup", "s", "i", 1, T0),  # a duplicate writes nothing itself
        Shipment("a", "s", "i", 5, T0),
        Sale("b", "s", "i", 2, T0 + 2 * HOUR),
    ]
    outputs = [out for e in events for out in fn.process((e.key, e), cell, seen, Timer(), Timer(), Timer())]
    assert cell.round_trips == 1
    rows = [o for o in outputs if not hasattr(o, "tag")]
    windows = [o.value for o in outputs if getattr(o, "tag", None) == "windows"]
    assert (rows[-1]["shipped"], rows[-1]["sold"], rows[-1]["events"]) == (5, 3, 3)
    assert cell.value.sales.windows and not windows  # no pane before the watermark passes
