"""StreamRetail's sharded state: few round trips, and nothing uncommitted taken as committed.

Without cache tokens (Prism), every read of a state not yet written in the
bundle goes to the runner. Pure logic with fake state that counts those reads
and keeps only what a bundle commits; the end-to-end behaviour (same panes,
same refusals as the separate steps) is pinned in tests/test_counts.py and
tests/test_inventory.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from apache_beam.utils.timestamp import Timestamp

from core.errors import ConfigError
from tests.fake_state import FakeBag, FakeCell, FakeTimer
from transforms.events import Sale, Shipment
from transforms.retail import StreamRetail, _replay
from transforms.shard_keys import KeyByShard, shard_of

HOUR = 3_600 * 1_000_000
T0 = 1_000 * 24 * HOUR


class _Runner:
    """One shard's committed state, and bundles run against it."""

    def __init__(self, retail: StreamRetail) -> None:
        self.fn = retail._fn
        self.fn.setup()
        self.head, self.log = FakeCell(), FakeBag()
        self.timers = {"expiry": FakeTimer(), "window": FakeTimer(), "early": FakeTimer()}

    def bundle(self, events: list[Any], *, commit: bool = True, fire: tuple[str, int] | None = None) -> list[Any]:
        """Process ``events`` (and fire one timer) in one bundle; outputs as (tag, value)."""
        self.fn.start_bundle()
        out: list[Any] = []
        timers = self.timers
        for event in events:
            stamp = Timestamp(micros=event.event_time)
            kinds = (timers["expiry"], timers["window"], timers["early"])
            out += self.fn.process((0, [event]), stamp, self.head, self.log, *kinds)
        if fire is not None and fire[0] == "expiry":
            out += self.fn._expire(0, Timestamp(micros=fire[1]), self.head, self.log, timers["expiry"])
        if fire is not None and fire[0] == "window":
            out += self.fn._on_watermark(0, Timestamp(micros=fire[1]), self.head, self.log, timers["window"])
        if fire is not None and fire[0] == "early":
            out += self.fn._on_early(0, self.head, self.log)
        out += self.fn.finish_bundle()
        for state in (self.head, self.log):
            state.commit() if commit else state.abandon()
        return [(getattr(o, "tag", "inventory"), getattr(o, "value", o)) for o in out]


def _panes(outputs: list[Any]) -> list[tuple[str, int, int, int, str]]:
    rows = [r for tag, r in outputs if tag == "windows"]
    return sorted((r["item_id"], r["units"], r["sales"], r["pane"], r["timing"]) for r in rows)


def _rows(outputs: list[Any]) -> list[tuple[str, str, int, int, int]]:
    rows = [r for tag, r in outputs if tag == "inventory"]
    return [(r["store_id"], r["item_id"], r["shipped"], r["sold"], r["events"]) for r in rows]


def test_a_bundle_reads_its_shard_once_and_the_log_only_when_another_version_committed() -> None:
    run = _Runner(StreamRetail(early_delay=None))
    events = [
        Sale("dup", "s", "i", 1, T0),
        Sale("dup", "s", "i", 1, T0),  # a duplicate writes nothing itself
        Shipment("a", "s", "j", 5, T0),  # another key of the same shard
        Sale("b", "s", "i", 2, T0 + 2 * HOUR),
    ]
    out = run.bundle(events)
    assert run.head.round_trips == 1 and run.log.reads == 0  # a new shard: nothing to read
    # One row per key the bundle changed, its latest.
    assert sorted(_rows(out)) == [("s", "i", 0, 3, 2), ("s", "j", 5, 0, 1)]
    assert not [v for tag, v in out if tag == "windows"]  # no pane before the watermark passes

    out = run.bundle([Sale("dup", "s", "i", 1, T0), Sale("c", "s", "i", 1, T0)])
    assert run.head.round_trips == 2 and run.log.reads == 0  # this process holds the committed version
    assert _rows(out) == [("s", "i", 0, 4, 3)]


def test_a_failed_bundle_is_never_taken_as_committed() -> None:
    run = _Runner(StreamRetail(early_delay=None))
    a, b = Shipment("a", "s", "i", 1, T0), Shipment("b", "s", "i", 2, T0)
    assert _rows(run.bundle([a])) == [("s", "i", 1, 0, 1)]
    # This bundle fails: b must not be remembered or counted by anyone.
    assert _rows(run.bundle([b], commit=False)) == [("s", "i", 3, 0, 2)]
    # The retry finds an older version in the head, replays the log once,
    # applies b again and still drops a re-sent a.
    assert _rows(run.bundle([b, a])) == [("s", "i", 3, 0, 2)]
    assert run.log.reads == 1
    assert _rows(run.bundle([a, b, Sale("a", "s", "i", 1, T0)])) == [("s", "i", 3, 1, 3)]
    assert run.log.reads == 1


def test_the_log_replays_to_what_the_bundles_left_and_forgets_expired_ids() -> None:
    run = _Runner(StreamRetail(horizon=timedelta(hours=2), early_delay=None))
    for n in range(30):
        run.bundle([Sale(f"s{n}", "s", f"i{n % 3}", 1, T0 + n * HOUR // 10), Shipment(f"p{n}", "t", "i", 2, T0)])
    fresh = _replay(run.log.committed)
    want = {key: (st.inventory.shipped, st.inventory.sold, st.inventory.events) for key, st in fresh.keys.items()}
    sales = {("s", f"i{n}"): (0, 10, 10) for n in range(3)}
    assert want == {**sales, ("t", "i"): (60, 0, 30)}
    assert fresh.ids == 60
    # The expiry timer was asked for; firing it far ahead forgets every id and rewrites the log.
    assert run.timers["expiry"].at is not None
    run.bundle([], fire=("expiry", T0 + 100 * HOUR))
    assert _replay(run.log.committed).ids == 0
    assert len(run.log.committed) == 4  # one snapshot per key, no ids
    # An id older than what was forgotten is refused, with a dead letter.
    out = run.bundle([Sale("s0", "s", "i0", 1, T0)])
    assert [tag for tag, _ in out] == ["dead_letters"]


def test_early_panes_come_per_shard_from_the_data_path_when_busy_and_the_timer_when_quiet() -> None:
    now = [100.0]
    run = _Runner(StreamRetail(early_delay=timedelta(seconds=10), clock=lambda: now[0]))
    assert not _panes(run.bundle([Sale("a", "s", "i", 2, T0)]))
    # The shard is due 10 s after its first owed pane; its timer is only the
    # backstop for a quiet shard, half a delay later.
    assert run.timers["early"].at == Timestamp(seconds=115)
    now[0] = 105.0
    assert not _panes(run.bundle([Sale("b", "s", "j", 3, T0)]))
    assert run.timers["early"].at == Timestamp(seconds=115)  # already due at 110
    now[0] = 110.0
    # The shard's first event at the due time, of any key or kind, brings every owed pane.
    out = run.bundle([Shipment("c", "t", "k", 1, T0)])
    assert _panes(out) == [("i", 2, 1, 0, "early"), ("j", 3, 1, 0, "early")]
    # Owed again from here: due at 120, timer at 125; the shard goes quiet and the timer fires.
    assert not _panes(run.bundle([Sale("d", "s", "i", 1, T0)]))
    assert run.timers["early"].at == Timestamp(seconds=125)
    assert _panes(run.bundle([], fire=("early", 125))) == [("i", 3, 2, 1, "early")]
    # Nothing is owed: a stale firing adds nothing, and a new pane is owed only after a new sale.
    assert not _panes(run.bundle([], fire=("early", 125)))
    now[0] = 200.0
    assert not _panes(run.bundle([Shipment("e", "t", "k", 1, T0)]))


@pytest.mark.parametrize("shards", [1, 7, 16])
def test_shards_are_stable_and_spread(shards: int) -> None:
    keys = [(f"store-{s}", f"item-{i}") for s in range(20) for i in range(20)]
    assigned = [shard_of(key, shards) for key in keys]
    assert assigned == [shard_of(key, shards) for key in keys]
    assert set(assigned) == set(range(shards))
    assert shard_of(("a", "bc"), 1 << 20) != shard_of(("ab", "c"), 1 << 20)  # the separator counts


def test_shards_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="shards"):
        StreamRetail(shards=0)


def test_a_shards_element_carries_the_earliest_stamp_of_its_events() -> None:
    # The read stamps events within its watermark's step; the shard's element
    # must not be stamped later than any of its events (nor than the read did).
    keyer = KeyByShard(shards=1)
    on_time = Sale("a", "s", "i", 1, T0)
    an_hour_late = Sale("b", "s", "i", 1, T0 - HOUR)
    cases = [
        # The read stamped the late event at its watermark, 5 s behind the newest: that is the element's stamp.
        ([(on_time, T0), (an_hour_late, T0 - 5_000_000)], T0 - 5_000_000),
        ([(an_hour_late, T0 - HOUR)], T0 - HOUR),
    ]
    for stamped, earliest in cases:
        keyer.start_bundle()
        for event, micros in stamped:
            assert list(keyer.process(event, Timestamp(micros=micros)) or ()) == []  # held to the bundle's end
        (out,) = keyer.finish_bundle()
        assert out.timestamp.micros == earliest
        # The events themselves, and so every row built from them, are untouched.
        assert out.value == (0, [event for event, _ in stamped])


def test_each_bundle_sends_one_element_per_shard_with_its_events_in_order() -> None:
    keyer = KeyByShard(shards=4)
    events = [Sale(f"e{n}", f"store-{n % 3}", f"item-{n % 5}", 1, T0 + n) for n in range(40)]
    keyer.start_bundle()
    for event in events:
        keyer.process(event, Timestamp(micros=event.event_time))
    out = {v.value[0]: v.value[1] for v in keyer.finish_bundle()}
    assert out == {
        shard: [e for e in events if shard_of(e.key, 4) == shard] for shard in {shard_of(e.key, 4) for e in events}
    }
    keyer.start_bundle()
    assert list(keyer.finish_bundle()) == []  # nothing carried over into the next bundle


@pytest.mark.parametrize("grid", [timedelta(0), timedelta(microseconds=1500), timedelta(seconds=-1)])
def test_history_grid_must_be_whole_positive_milliseconds(grid: timedelta) -> None:
    with pytest.raises(ConfigError, match="history_grid"):
        StreamRetail(history_grid=grid)


def test_a_window_the_watermark_has_passed_gets_its_panes_from_the_data_path() -> None:
    run = _Runner(StreamRetail(early_delay=None, history_grid=None))
    run.bundle([Sale("a", "s", "i", 2, T0)])
    end = T0 + HOUR - 1_000  # the hour's on-time deadline
    assert run.timers["window"].at == Timestamp(micros=end)
    assert _panes(run.bundle([], fire=("window", end))) == [("i", 2, 1, 0, "on_time")]
    closing = run.timers["window"].at  # the hour closes an allowed lateness later
    assert closing == Timestamp(micros=end + HOUR)
    # Another key's first sale in that hour: the watermark is past its end, so
    # the on-time pane comes in this bundle, and the timer is not set back.
    assert _panes(run.bundle([Sale("b", "s", "j", 3, T0 + 10)])) == [("j", 3, 1, 0, "on_time")]
    assert run.timers["window"].at == closing
    # Later sales in the hour are late panes, at once, as they were before.
    assert _panes(run.bundle([Sale("c", "s", "j", 1, T0 + 20)])) == [("j", 4, 2, 1, "late")]
    # The closing deadline runs from the timer, for both keys, with its own time.
    assert _panes(run.bundle([], fire=("window", end + HOUR))) == []
    out = run.bundle([Sale("d", "s", "j", 1, T0 + 30)])
    assert sorted(tag for tag, _ in out) == ["inventory", "too_late"]
    # A key's first sales in an hour whose lateness has run out as well: a deadline that closes
    # the window stays with the timer, after the bundle, so every sale of the bundle counts.
    assert not _panes(run.bundle([Sale("e", "s", "k", 1, T0 + 40), Sale("f", "s", "k", 2, T0 + 50)]))
    assert run.timers["window"].at == Timestamp(micros=end)
    assert _panes(run.bundle([], fire=("window", end))) == [("k", 3, 2, 0, "on_time")]


def test_before_any_timer_fired_no_deadline_counts_as_passed() -> None:
    run = _Runner(StreamRetail(early_delay=None, history_grid=None))
    before_1970 = -10 * HOUR  # event times may be older than the epoch
    assert not _panes(run.bundle([Sale("a", "s", "i", 2, before_1970)]))
    assert run.timers["window"].at == Timestamp(micros=-9 * HOUR - 1_000)


def test_timers_for_history_fire_on_the_grid_and_for_the_present_on_time() -> None:
    day = 24 * HOUR
    now = (T0 + 10 * day - 20 * 60 * 1_000_000) / 1e6  # 20 minutes before T0 + 10 days

    def runner() -> _Runner:
        return _Runner(StreamRetail(horizon=timedelta(days=2), early_delay=None, clock=lambda: now))

    history = runner()
    # A sale ten days back: its window's deadline (T0 + 1 h - 1 ms) and its
    # id's expiry (T0 + 2 days + one 6-hour bucket) are history: next day boundary.
    history.bundle([Sale("old", "s", "i", 1, T0)])
    assert (history.timers["window"].at, history.timers["expiry"].at) == (
        Timestamp(micros=T0 + day),
        Timestamp(micros=T0 + 3 * day),
    )
    # Fired there, the key's own expiry logic runs with its own time.
    history.bundle([], fire=("expiry", T0 + 3 * day))
    assert _replay(history.log.committed).ids == 0
    # A sale of the present keeps its exact deadline: the end of its hour, less 1 ms.
    present = runner()
    present.bundle([Sale("new", "s", "j", 1, int(now * 1e6) - 10 * 60 * 1_000_000)])
    assert present.timers["window"].at == Timestamp(micros=T0 + 10 * day - 1_000)
