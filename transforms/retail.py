"""Streaming retail views in one stateful step: inventory and sales per window.

:class:`StreamRetail` is ``ComputeInventory`` followed by ``SalesByWindow``,
run as one DoFn, because both key by (store_id, item_id): an applied sale goes
straight to its window instead of through a second shuffle and stage. The
logic is the two DoFns' own (:class:`InventoryDoFn`, :class:`SalesWindowDoFn`),
per (store_id, item_id), so the rows, dead letters and metrics are theirs.

Why shards. On a runner that gives the SDK no state cache tokens (Prism),
every state read is a round trip to the runner, and so is every state commit,
one key after another. Keyed by (store_id, item_id), a bundle of a few hundred
keys spent seconds on round trips, whatever the work per event: that set the
streaming latency. So the step is keyed by a *shard* of (store_id, item_id)
(``shards``, a stable hash) and keeps the state of the shard's keys together:

- a small head cell per shard: a version, a sequence number, and what the
  shard's three timers are set for;
- a log bag per shard: a snapshot of a key's state whenever a bundle changed
  it, and each remembered id (appends only; rewritten whole now and then, and
  after expiry has forgotten ids);
- in each worker process, the shard's keys and ids as of a version. A bundle
  tags the head with a version of its own; the log is read only when the
  committed head names a version this process does not hold (another worker,
  a retried bundle, a restart), so a failed bundle's changes are never taken
  as committed. A bundle thus costs about three round trips per shard touched.

With a ``checkpoint`` (how the inventory pipeline runs) the warehouse takes
the log bag's place: each bundle commits its changed keys, new ids, views
and covered offsets in one snapshot before it ends, and a process that does
not hold the head's version reloads the shard from the warehouse, which is
never behind the last successful bundle (:mod:`transforms.checkpoint`). A
restart is then a new run whose shards start from the warehouse's state.

The events themselves cross to the step as one element per shard and
upstream bundle (``KeyByShard``), in the order they were read.

Each key's event-time timers (dedupe expiry, window deadlines) are kept in its
state; the shard's timer of each kind is set for the earliest of its keys, and
when it fires, every key that is due runs its own timer logic with its own
time. An on-time deadline the watermark has passed already (a timer of the
shard fired beyond it) runs at once instead, from the data path: a late sale
that opens a window of a closed hour gets its on-time pane in its own bundle.
Through the timer it cost a bundle of its own, and since Prism never puts a
key's timers and data in one bundle, the shard's events waited a bundle more:
at the start of a stream with late events, every other bundle. A deadline that
closes a window stays with the timer, which runs after the bundle: the
bundle's other sales in that window still count, as they would without it.

Early panes are per shard, as a record cache's flush is: the first sale that
leaves a window without a pane makes the shard due ``early_delay`` later, and
then every such window of the shard gets its early pane, so none waits longer
than the delay. A busy shard fires them from its data path (the first event
after the due time); the processing-time timer, set half a delay after the due
time, fires them only when the shard has gone quiet. Why not the timer alone:
Prism re-examines a due processing-time timer in a tight loop while its key has
a bundle in flight, and a busy shard always has one; with per-key early times
the shard's timer was due nearly all the time, and the loop took most of a
core. Streaming only: a backfill uses :mod:`transforms.backfill`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.errors import ConfigError
from transforms.changes import ChangesTopics
from transforms.checkpoint import (
    Checkpoint,
    Claims,
    IdColumns,
    Progress,
    Restored,
    decode_state,
    restore,
    restored_progress,
    state_row,
)
from transforms.counts import (
    DEFAULT_ALLOWED_LATENESS,
    DEFAULT_EARLY_DELAY,
    DEFAULT_WINDOW_SIZE,
    CountTooLate,
    EarlySalesWindowDoFn,
    SalesKeyState,
)
from transforms.events import DeadLetter, Sale, Shipment, dead_letter_to_row
from transforms.inventory import (
    DEAD_LETTERS_TAG,
    DEFAULT_HORIZON,
    REMEMBERED,
    InventoryDoFn,
    KeyState,
    Seen,
    VersionedCache,
    inventory_row,
)
from transforms.kafka import GLOBAL_WINDOWS
from transforms.params import KEY_PARAM, TIMESTAMP_PARAM
from transforms.seen_ids import RestoredSeen
from transforms.shard_keys import KeyByShard, ShardEvents, shard_of
from transforms.sinks import WarehouseOutlet
from warehouse.resume import progress_version

__all__ = [
    "DEFAULT_HISTORY_GRID",
    "DEFAULT_SHARDS",
    "SHARD_HEAD",
    "SHARD_LOG",
    "StreamRetail",
    "StreamRetailResult",
    "shard_of",
]

WINDOWS_TAG = "windows"
TOO_LATE_TAG = "too_late"

# Few enough that a bundle touches few shards on one machine; raise it for more
# parallel workers (each shard is one key: it runs on one worker at a time).
DEFAULT_SHARDS = 4

# Timers for deadlines this far behind the wall clock fire on this grid of
# event time instead (see _ShardedRetailFn._fire_at): a replay of history then
# costs one firing per day of it, not one per window.
DEFAULT_HISTORY_GRID = timedelta(days=1)

Key = tuple[str, str]


@dataclass
class _RetailState:
    """One (store_id, item_id): its totals and its windows (``sales.early_pending``: an early pane is owed)."""

    inventory: KeyState = field(default_factory=KeyState)
    sales: SalesKeyState = field(default_factory=SalesKeyState)
    version: int = 0  # of the key's row in the warehouse's _inventory_state (checkpointed runs)


@dataclass
class _Head:
    version: int = 0
    seq: int = 0  # orders the key snapshots in the log
    # "expiry"/"window": the event time the shard's timer is set for;
    # "early": the processing time the shard's early panes are due.
    timers: dict[str, int] = field(default_factory=dict)
    # Checkpointed runs: the version of the shard's last commit to the warehouse.
    committed: int = 0
    # The latest event time an event-time timer of the shard fired at: the watermark is past it.
    passed: int = MIN_TIMESTAMP.micros


@dataclass
class _Shard:
    """A shard's keys and remembered ids, as of one version."""

    keys: dict[Key, _RetailState] = field(default_factory=dict)
    seen: dict[Key, Seen] = field(default_factory=dict)
    ids: int = 0  # remembered ids, all keys
    entries: int = 0  # entries in the log (committed and this bundle's)
    rewrite: bool = False  # the log holds forgotten ids: rewrite it
    # Checkpointed runs: per partition, the offsets whose outcome the shard has committed; its commits this run.
    progress: dict[tuple[str, int], Progress] = field(default_factory=dict)
    commits: int = 0


SHARD_HEAD = ReadModifyWriteStateSpec("shard_head", PickleCoder())
# ("k", seq, key, _RetailState) or ("i", key, kind, event_id, event_time micros, quantity).
SHARD_LOG = BagStateSpec("shard_log", PickleCoder())
EXPIRY_TIMER = TimerSpec("expiry", beam.TimeDomain.WATERMARK)
WINDOW_TIMER = TimerSpec("window", beam.TimeDomain.WATERMARK)
EARLY_TIMER = TimerSpec("early", beam.TimeDomain.REAL_TIME)

_HEAD = beam.DoFn.StateParam(SHARD_HEAD)
_LOG = beam.DoFn.StateParam(SHARD_LOG)
_EXPIRY = beam.DoFn.TimerParam(EXPIRY_TIMER)
_WINDOW = beam.DoFn.TimerParam(WINDOW_TIMER)
_EARLY = beam.DoFn.TimerParam(EARLY_TIMER)

# Keys' pending times per event-time timer kind, as each key's own logic keeps them.
_PENDING: dict[str, Callable[[_RetailState], int | None]] = {
    "expiry": lambda st: st.inventory.expiry_at,
    "window": lambda st: st.sales.timer_at,
}


_SHARD_CACHE = VersionedCache(size=lambda shard: shard.ids + len(shard.keys))

# A checkpointed step's last restore in this process, per (warehouse, pipeline, run): every shard loads from one read.
_RESTORED: dict[tuple[str, str, int], Restored] = {}


def _replay(entries: Iterable[tuple[Any, ...]]) -> _Shard:
    """A shard's committed log -> its keys and ids (latest snapshot of each key wins)."""
    shard = _Shard()
    latest: dict[Key, int] = {}
    ids = []
    for entry in entries:
        shard.entries += 1
        if entry[0] == "k":
            _, seq, key, st = entry
            if seq > latest.get(key, -1):
                latest[key] = seq
                shard.keys[key] = st
        else:
            ids.append(entry)
    for _, key, kind, event_id, t, q in ids:
        st = shard.keys.get(key)
        if st is not None and t >= st.inventory.expired_before:
            shard.seen.setdefault(key, {})[(kind, event_id)] = (t, q)
            shard.ids += 1
    return shard


@dataclass
class _Outbox:
    """What a checkpointed step commits when its bundle ends, besides the changed keys' rows."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    ids: IdColumns = field(default_factory=IdColumns)
    shards: set[int] = field(default_factory=set)  # shards whose offsets moved


class _Sales:
    """A key's window state, as SalesWindowDoFn reads and writes its state cell."""

    def __init__(self, st: _RetailState) -> None:
        self._st = st

    def read(self) -> SalesKeyState:
        return self._st.sales

    def write(self, sales: SalesKeyState) -> None:
        self._st.sales = sales


class _Wanted:
    """Stands for a key's timer: records the time the key's logic asks for."""

    def __init__(self) -> None:
        self.micros: int | None = None

    def set(self, when: Timestamp) -> None:
        self.micros = when.micros


class _ShardedRetailFn(beam.DoFn):
    """(shard, event) -> inventory rows; window rows, too-late sales and dead letters tagged."""

    def __init__(
        self,
        inventory: InventoryDoFn,
        windows: EarlySalesWindowDoFn,
        clock: Callable[[], float],
        early_backstop: timedelta,
        history_grid: timedelta | None = DEFAULT_HISTORY_GRID,
        checkpoint: Checkpoint | None = None,
        shards: int = DEFAULT_SHARDS,
        changes: ChangesTopics | None = None,
    ) -> None:
        self._checkpoint = checkpoint
        self._shards = shards
        # The way into the warehouse of a checkpointed step (opened in setup).
        self._outlet = WarehouseOutlet(checkpoint.warehouse, changes) if checkpoint is not None else None
        self._inventory = inventory
        self._windows = windows
        self._clock = clock
        self._backstop = early_backstop // timedelta(microseconds=1)
        self._grid = 0 if history_grid is None else history_grid // timedelta(milliseconds=1) * 1_000
        # Every copy of this DoFn in a worker process shares the cache; the id
        # keeps two pipeline steps apart.
        self._step = uuid.uuid4().hex
        self._version = 0
        self._open: dict[int, tuple[_Head, _Shard]] = {}
        self._logged: set[tuple[int, Key]] = set()
        self._changed: dict[Key, tuple[KeyState, Timestamp]] = {}
        self._outbox = _Outbox()

    def setup(self) -> None:
        if self._outlet is not None:
            self._outlet.open()

    def teardown(self) -> None:
        if self._outlet is not None:
            self._outlet.close()

    def start_bundle(self) -> None:
        self._version = int.from_bytes(os.urandom(8), "big") | 1  # never 0 (a new shard's head)
        self._open = {}
        self._logged = set()
        self._changed = {}
        self._outbox = _Outbox()
        _SHARD_CACHE.trim()

    def _load(
        self, shard: int, head_state: Any, log_state: Any, timers: dict[str, Any] | None = None
    ) -> tuple[_Head, _Shard]:
        """The shard as of its committed head, read once per bundle, re-tagged with this bundle's version.

        A checkpointed step reads the shard from the warehouse instead of the
        runner's log; on a new run's first load (an empty head) it also sets
        the shard's timers for what its restored keys wait for (``timers``).
        """
        opened = self._open.get(shard)
        if opened is not None:
            return opened
        head: _Head = head_state.read() or _Head()
        data = _SHARD_CACHE.get((self._step, shard), head.version)
        if data is None and self._checkpoint is not None:
            data = self._restore(shard, head)
            if not head.version and timers is not None:
                self._rearm_restored(head, data, timers)
        elif data is None:
            data = _replay(log_state.read()) if head.version else _Shard()
        # Re-tagged before any change: if this bundle fails, the committed head
        # still names the old version, and the next bundle replays the log.
        head.version = self._version
        _SHARD_CACHE.put((self._step, shard), self._version, data)
        # The SDK encodes written state when the bundle commits, so the head
        # (and each key snapshot added to the log) goes out as the bundle left it.
        head_state.write(head)
        self._open[shard] = (head, data)
        return head, data

    def _restore(self, shard: int, head: _Head) -> _Shard:
        """The shard as the warehouse's newest snapshot has it, as new as its last successful bundle left it."""
        checkpoint = self._checkpoint
        assert checkpoint is not None
        cache_key = (checkpoint.warehouse, checkpoint.pipeline, checkpoint.run)
        restored = _RESTORED.get(cache_key)
        progress, version = restored_progress(restored, checkpoint, shard) if restored is not None else ({}, -1)
        if restored is None or version < head.committed:
            restored = _RESTORED[cache_key] = restore(checkpoint)
            progress, version = restored_progress(restored, checkpoint, shard)
        data = _Shard(progress=progress)
        data.commits = version - progress_version(checkpoint.run, 0) if version >> 32 == checkpoint.run else 0
        for key, (text, key_version) in restored.keys.items():
            if shard_of(key, self._shards) == shard:
                inventory, sales = decode_state(text)
                data.keys[key] = _RetailState(inventory, sales, key_version)
                base = restored.ids.get(key)
                if base is not None:
                    data.seen[key] = RestoredSeen((), base)
        return data

    def _rearm_restored(self, head: _Head, data: _Shard, timers: dict[str, Any]) -> None:
        """A new run's runner has no timers: set the shard's for its restored keys."""
        for name in _PENDING:
            self._rearm(head, data, name, timers[name])
        if any(st.sales.early_pending for st in data.keys.values()):
            due = int(self._clock() * 1_000_000)
            head.timers["early"] = due
            timers["early"].set(Timestamp(micros=due + self._backstop))

    def _log_key(self, shard: int, head: _Head, data: _Shard, log_state: Any, key: Key) -> None:
        """Log the key's state once per bundle: the entry is encoded with its final value at commit.

        A checkpointed step only notes the key: its state goes to the warehouse when the bundle ends.
        """
        if (shard, key) in self._logged:
            return
        self._logged.add((shard, key))
        if self._checkpoint is not None:
            return
        head.seq += 1
        log_state.add(("k", head.seq, key, data.keys[key]))
        data.entries += 1

    def _tidy(self, shard: int, head: _Head, data: _Shard, log_state: Any) -> None:
        """Rewrite the log as one snapshot per key plus the live ids, when it has grown or holds forgotten ids."""
        if self._checkpoint is not None:
            return
        if not data.rewrite and data.entries <= 2 * (len(data.keys) + data.ids) + 1_024:
            return
        log_state.clear()
        data.entries = 0
        for key in data.keys:
            self._logged.discard((shard, key))
            self._log_key(shard, head, data, log_state, key)
        for key, seen in data.seen.items():
            for (kind, event_id), (t, q) in seen.items():
                log_state.add(("i", key, kind, event_id, t, q))
        data.entries += data.ids
        data.rewrite = False

    def _fire_at(self, micros: int) -> int:
        """When the shard's timer fires for a key deadline at ``micros`` (event time).

        On time, unless the deadline is history: when the next point of the
        history grid after it has passed on the wall clock too, the timer
        fires at that point instead. On Prism a stateful step's pending timer
        holds its watermark and its key's later elements, so a timer fires
        per distinct time, one bundle after another: replaying twelve days of
        history cost twelve days of hourly windows' firings before the
        shard's later events went through. On the grid a day of history is
        one firing. Each key's logic still runs with its own deadlines, in
        order (``_fire_due``); firing later only keeps a window open longer
        (a sale it would have refused is counted) and ids remembered longer.
        """
        grid = self._grid
        if grid:
            on_grid = -(-micros // grid) * grid
            if on_grid <= self._clock() * 1_000_000:
                return on_grid
        return micros

    def _want(self, head: _Head, name: str, micros: int, timer: Any) -> None:
        """Make sure the shard's timer fires by ``micros`` (a key of the shard needs it then)."""
        micros = self._fire_at(micros)
        current = head.timers.get(name)
        if current is None or micros < current:
            timer.set(Timestamp(micros=micros))
            head.timers[name] = micros

    def _rearm(self, head: _Head, data: _Shard, name: str, timer: Any) -> None:
        """After the shard's timer fired: set it for the earliest key still waiting."""
        head.timers.pop(name, None)
        pending = [t for t in map(_PENDING[name], data.keys.values()) if t is not None]
        if pending:
            self._want(head, name, min(pending), timer)

    def process(
        self,
        element: tuple[int, ShardEvents],
        stamp: Timestamp = TIMESTAMP_PARAM,
        head_state: Any = _HEAD,
        log_state: Any = _LOG,
        expiry: Any = _EXPIRY,
        window: Any = _WINDOW,
        early: Any = _EARLY,
    ) -> Iterator[Any]:
        shard, events = element
        head, data = self._load(shard, head_state, log_state, {"expiry": expiry, "window": window, "early": early})
        for event in events:
            yield from self._noted(self._apply(shard, head, data, log_state, event, stamp, expiry, window, early))
        if self._checkpoint is not None:
            self._claim(shard, data, events.claims)

    def _claim(self, shard: int, data: _Shard, claims: Claims) -> None:
        """The bundle's offsets are done for this shard: their outcome commits when the bundle ends."""
        self._outbox.shards.add(shard)
        for partition, runs in claims:
            progress = data.progress.get(partition)
            if progress is None:  # a partition new since the run began: its offsets start at 0
                progress = data.progress[partition] = Progress(0)
            for first, last in runs:
                progress.claim(first, last)

    def _noted(self, outputs: Iterable[Any]) -> Iterator[Any]:
        """Pass outputs on; a checkpointed step also keeps the rows it commits when the bundle ends."""
        if self._checkpoint is None:
            yield from outputs
            return
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput):
                if out.tag == WINDOWS_TAG:
                    self._outbox.windows.append(out.value)
                else:  # dead letters and too-late sales
                    self._outbox.letters.append(dead_letter_to_row(out.value))
            yield out

    def _apply(
        self,
        shard: int,
        head: _Head,
        data: _Shard,
        log_state: Any,
        event: Shipment | Sale,
        stamp: Timestamp,
        expiry: Any,
        window: Any,
        early: Any,
    ) -> Iterator[Any]:
        """One event of the shard, in the order the shard's element holds them."""
        if isinstance(event, DeadLetter):  # a record the decode refused, here so its outcome commits with the rest
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, event)
            return
        due = head.timers.get("early")
        if due is not None and self._clock() * 1_000_000 >= due:
            yield from self._fire_early(shard, head, data, log_state)
        key = event.key
        st = data.keys.get(key)
        if st is None:
            st = data.keys[key] = _RetailState()
        inventory = self._inventory
        outcome, letter = inventory.admit(st.inventory, data.seen.setdefault(key, {}), event)
        if letter is not None:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, letter)
        if outcome not in REMEMBERED:
            return
        data.ids += 1
        if self._checkpoint is None:
            log_state.add(("i", key, event.kind, event.event_id, event.event_time, event.quantity))
            data.entries += 1
        else:
            self._outbox.ids.add(key, event.kind, event.event_id, event.event_time, event.quantity)
        due = inventory.expiry_due(st.inventory, event.event_time)
        if due is not None:
            self._want(head, "expiry", due, expiry)
        if outcome != "applied":
            self._log_key(shard, head, data, log_state, key)  # its expiry time changed
            return
        if isinstance(event, Sale):
            at, soon = _Wanted(), _Wanted()
            yield from self._tagged(self._windows.add((key, event), _Sales(st), at, soon))
            if at.micros is not None and at.micros <= head.passed:
                # A window the watermark has already passed (a late sale opened it): its
                # on-time pane now, as the timer would give it, not through a timer bundle.
                yield from self._on_time_passed(key, st, head.passed)
                at.micros = st.sales.timer_at
            if at.micros is not None:
                self._want(head, "window", at.micros, window)
            if soon.micros is not None and "early" not in head.timers:
                head.timers["early"] = soon.micros
                early.set(Timestamp(micros=soon.micros + self._backstop))
        self._log_key(shard, head, data, log_state, key)
        self._tidy(shard, head, data, log_state)
        self._changed[key] = (st.inventory, stamp)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        # One inventory row per key changed in the bundle, its latest: the view
        # keeps a key's newest row anyway, and the sink commits a few hundred
        # rows instead of one per event.
        rows = [
            (inventory_row(key, st.shipped, st.sold, st.events, st.last_event_time), stamp)
            for key, (st, stamp) in self._changed.items()
        ]
        if self._checkpoint is not None:
            self._commit([row for row, _ in rows])
        for row, stamp in rows:
            yield WindowedValue(row, stamp, GLOBAL_WINDOWS)

    def _commit(self, inventory: list[dict[str, Any]]) -> None:
        """The bundle's outcome, in one snapshot: views, changed keys' state, new ids, each touched shard's offsets.

        Before the bundle ends, so a shard's next bundle (which the runner
        starts only after this one succeeded) finds it in the warehouse.
        """
        checkpoint, outlet, outbox = self._checkpoint, self._outlet, self._outbox
        assert checkpoint is not None and outlet is not None
        touched = outbox.shards | {shard for shard, _ in self._logged}
        if not touched:
            return
        states: list[dict[str, Any]] = []
        offsets: list[dict[str, Any]] = []
        for shard in sorted(touched):
            head, data = self._open[shard]
            data.commits += 1
            head.committed = progress_version(checkpoint.run, data.commits)
            offsets.extend(
                progress.row(checkpoint.pipeline, partition, shard, self._shards, checkpoint.run, data.commits)
                for partition, progress in sorted(data.progress.items())
            )
            for logged_shard, key in self._logged:
                if logged_shard == shard:
                    st = data.keys[key]
                    st.version += 1
                    states.append(state_row(key, st.inventory, st.sales, st.version))
        table = checkpoint.table
        outlet.commit(
            {
                table("inventory"): inventory,
                table("sales_by_window"): outbox.windows,
                table("dead_letters"): outbox.letters,
                table("_inventory_state"): states,
                table("_inventory_ids"): outbox.ids.table(),
                "_resume_offsets": offsets,
            }
        )

    def _fire_due(
        self,
        shard: int,
        head: _Head,
        data: _Shard,
        log_state: Any,
        name: str,
        upto: int,
        fire: Callable[[Key, _RetailState, int], Iterable[Any]],
        timer: Any,
    ) -> Iterator[Any]:
        """After the shard's ``name`` timer fired: each key's own timers of that kind up to ``upto``.

        A key's logic runs once per time it asked for, in turn and with that
        time, as if it had a timer of its own; then the shard's timer is set
        for the earliest key still waiting.
        """
        head.passed = max(head.passed, upto)
        pending = _PENDING[name]
        for key, st in data.keys.items():
            while (at := pending(st)) is not None and at <= upto:
                yield from fire(key, st, at)
                self._log_key(shard, head, data, log_state, key)
        self._rearm(head, data, name, timer)

    def _window_deadline(self, key: Key, st: _RetailState, at: int) -> Iterator[Any]:
        """The key's window logic for its deadline ``at``, as its own timer would run it."""
        return self._tagged(self._windows.on_watermark(key, Timestamp(micros=at), _Sales(st), _Wanted()))

    def _on_time_passed(self, key: Key, st: _RetailState, passed: int) -> Iterator[Any]:
        """The key's deadlines up to ``passed``, each with its own time, unless one of them closes a window.

        Those are on-time panes only; a window whose lateness ``passed`` has
        run out as well closes from the timer, after the bundle, as before.
        """
        windows = self._windows
        while (at := st.sales.timer_at) is not None and at <= passed and not windows.closes_by(st.sales, passed):
            yield from self._window_deadline(key, st, at)

    @on_timer(EXPIRY_TIMER)
    def _expire(
        self,
        shard: int = KEY_PARAM,
        fired: Timestamp = TIMESTAMP_PARAM,
        head_state: Any = _HEAD,
        log_state: Any = _LOG,
        expiry: Any = _EXPIRY,
    ) -> Iterator[Any]:
        head, data = self._load(shard, head_state, log_state)

        def forget(key: Key, st: _RetailState, at: int) -> Iterable[Any]:
            kept = self._inventory.forget(st.inventory, data.seen.pop(key, {}), at)
            if kept:
                data.seen[key] = kept
            data.rewrite = True  # the log still holds the forgotten ids
            return ()

        yield from self._fire_due(shard, head, data, log_state, "expiry", fired.micros, forget, expiry)
        data.ids = sum(len(seen) for seen in data.seen.values())
        self._tidy(shard, head, data, log_state)

    @on_timer(WINDOW_TIMER)
    def _on_watermark(
        self,
        shard: int = KEY_PARAM,
        fired: Timestamp = TIMESTAMP_PARAM,
        head_state: Any = _HEAD,
        log_state: Any = _LOG,
        window: Any = _WINDOW,
    ) -> Iterator[Any]:
        head, data = self._load(shard, head_state, log_state)
        due = self._fire_due(shard, head, data, log_state, "window", fired.micros, self._window_deadline, window)
        yield from self._noted(due)

    @on_timer(EARLY_TIMER)
    def _on_early(
        self,
        shard: int = KEY_PARAM,
        head_state: Any = _HEAD,
        log_state: Any = _LOG,
    ) -> Iterator[Any]:
        # Set past the due time: every owed pane is due (none if the data path fired them).
        head, data = self._load(shard, head_state, log_state)
        yield from self._noted(self._fire_early(shard, head, data, log_state))

    def _fire_early(self, shard: int, head: _Head, data: _Shard, log_state: Any) -> Iterator[Any]:
        """Every window of the shard still owed an early pane gets it now."""
        head.timers.pop("early", None)
        for key, st in data.keys.items():
            if st.sales.early_pending:  # on_early clears it
                yield from self._tagged(self._windows.on_early(key, _Sales(st)))
                self._log_key(shard, head, data, log_state, key)

    @staticmethod
    def _tagged(outputs: Iterator[Any]) -> Iterator[Any]:
        """The window logic's rows and too-late letters, under this step's tags."""
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(TOO_LATE_TAG, out.value)
            else:
                yield beam.pvalue.TaggedOutput(WINDOWS_TAG, out)


class StreamRetailResult(NamedTuple):
    inventory: beam.PCollection
    windows: beam.PCollection
    dead_letters: beam.PCollection
    # The same dead letters unflattened (refused events; too-late sales), for a
    # sink to write in the step that makes them: on Prism a Flatten starts a stage.
    dead_letter_parts: tuple[beam.PCollection, ...]


class StreamRetail(beam.PTransform):
    """(shipment events, sale events) -> inventory rows, sales_by_window rows, dead letters.

    The streaming equivalent of ``ComputeInventory(mode="streaming")`` followed by
    ``SalesByWindow(mode="streaming")`` on its applied sales, with the same rows;
    ``shards`` bounds how many stateful keys (and parallel workers) the step has.
    Feed it events an event-time read stamped (see ``KeyByShard``); the
    decode's dead letters may come as inputs too, and come out with the rest.
    ``history_grid``: timers for deadlines that far behind ``clock`` fire on
    that grid of event time (None: always on time; see ``_fire_at``).

    ``checkpoint`` (see :mod:`transforms.checkpoint`): the step commits its
    views, its state and the offsets they cover to the warehouse itself, one
    snapshot per bundle, and a restart resumes from them. Pass the decode's
    dead letters in then, so their offsets count as done only once they are
    in the warehouse; the outputs still carry every row, for other sinks.
    With ``changes`` too, each commit's rows go to the views' changes topics
    once durable (:mod:`transforms.changes`).
    """

    def __init__(
        self,
        horizon: timedelta = DEFAULT_HORIZON,
        window_size: timedelta = DEFAULT_WINDOW_SIZE,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        early_delay: timedelta | None = DEFAULT_EARLY_DELAY,
        clock: Callable[[], float] = time.time,
        shards: int = DEFAULT_SHARDS,
        history_grid: timedelta | None = DEFAULT_HISTORY_GRID,
        checkpoint: Checkpoint | None = None,
        changes: ChangesTopics | None = None,
    ) -> None:
        super().__init__()
        if shards < 1:
            raise ConfigError("shards must be at least 1")
        if history_grid is not None and (
            history_grid < timedelta(milliseconds=1) or history_grid % timedelta(milliseconds=1)
        ):
            raise ConfigError("history_grid must be a positive whole number of milliseconds, or None")
        self._shards = shards
        self._fn = _ShardedRetailFn(
            InventoryDoFn("streaming", horizon),
            # The early-firing variant for its on_early logic; no early_delay, no early panes.
            EarlySalesWindowDoFn("streaming", window_size, allowed_lateness, early_delay, clock),
            clock,
            (early_delay or timedelta(0)) / 2,
            history_grid,
            checkpoint,
            shards,
            changes,
        )
        self._checkpoint = checkpoint

    def expand(self, events: Any) -> StreamRetailResult:
        # Keyed before the flatten: on Prism a Flatten ends a fused stage, so a
        # keying step after it would be a stage (a bundle hop) of its own.
        inputs = list(events) if isinstance(events, (tuple, list)) else [events]
        keyed_inputs = [
            pcoll
            | f"KeyByShard{n if n else ''}"
            >> beam.ParDo(KeyByShard(self._shards, claims=self._checkpoint is not None)).with_output_types(
                tuple[int, ShardEvents]
            )
            for n, pcoll in enumerate(inputs)
        ]
        keyed = keyed_inputs[0] if len(keyed_inputs) == 1 else keyed_inputs | "FlattenKinds" >> beam.Flatten()
        out = keyed | "ApplyOnce" >> beam.ParDo(self._fn).with_outputs(
            WINDOWS_TAG, TOO_LATE_TAG, DEAD_LETTERS_TAG, main="inventory"
        )
        too_late = out[TOO_LATE_TAG] | "CountTooLate" >> beam.ParDo(CountTooLate())
        parts = (out[DEAD_LETTERS_TAG], too_late)
        dead = parts | "AllDeadLetters" >> beam.Flatten()
        return StreamRetailResult(out.inventory, out[WINDOWS_TAG], dead, parts)
