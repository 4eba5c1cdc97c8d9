"""StreamRetail's shared cell: one state round trip per key and bundle.

Without cache tokens (Prism), every read of a state not yet written in the
bundle goes to the runner. Pure logic with a fake state cell that counts those
reads; the end-to-end behaviour (same panes, same refusals as the separate
steps) is pinned in tests/test_counts.py and tests/test_inventory.py.
"""

from __future__ import annotations

from tests.fake_state import FakeBag, FakeCell, FakeTimer
from transforms.events import Sale, Shipment
from transforms.retail import StreamRetail

HOUR = 3_600 * 1_000_000
T0 = 1_000 * 24 * HOUR


def test_one_bundle_reads_the_key_cell_once() -> None:
    fn = StreamRetail(early_delay=None)._fn
    fn.setup()
    fn.start_bundle()
    cell, seen = FakeCell(), FakeBag()
    events = [
        Sale("dup", "s", "i", 1, T0),
        Sale("dup", "s", "i", 1, T0),  # a duplicate writes nothing itself
        Shipment("a", "s", "i", 5, T0),
        Sale("b", "s", "i", 2, T0 + 2 * HOUR),
    ]
    outputs = [out for e in events for out in fn.process((e.key, e), cell, seen, FakeTimer(), FakeTimer(), FakeTimer())]
    assert cell.round_trips == 1
    rows = [o for o in outputs if not hasattr(o, "tag")]
    windows = [o.value for o in outputs if getattr(o, "tag", None) == "windows"]
    assert (rows[-1]["shipped"], rows[-1]["sold"], rows[-1]["events"]) == (5, 3, 3)
    assert cell.read().sales.windows and not windows  # no pane before the watermark passes
