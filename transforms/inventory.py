"""Stock per (store_id, item_id): shipments minus sales, each event applied once.

:class:`ComputeInventory` keys events by (store_id, item_id) and runs one stateful
DoFn that keeps the running totals and remembers each event's identity: the
contract's (topic, store_id, item_id, event_id), that is ``(kind, event_id)``
within the key (one topic per kind). A shipment and a sale may share an
event_id, and so may two stores or items: each is another event. An identity
seen again with the same content (quantity and event_time) is a re-send,
applied once; with other content it is a dead letter ("event_id reused with
different content"): the first one seen wins, which for one partition is the
first in the log. An event that would take the key's shipped or sold total
past int64 is a dead letter too ("quantity would overflow ..."); its identity
is still remembered, so a re-send of it is a duplicate. A batch backfill
(``transforms/backfill.py``) applies the same rules in log order.

Bounded memory (streaming). Remembered event_ids are forgotten once their event
time is more than ``horizon`` behind the watermark; an event-time timer does it.
A Python DoFn cannot read the watermark directly, so each key keeps the frontier
its own expiry timers have proven: a timer firing at T means the watermark has
passed T, and everything older than ``T - horizon`` is forgotten. A later record
older than that frontier cannot be checked against the forgotten ids, so it is
not applied; it becomes a dead letter saying so. A record older than
``watermark - horizon`` but newer than the key's frontier is still checked and
applied: the key remembers every id since its frontier, so this is safe, and it
keeps the streaming view closer to the recompute. The frontier trails the
watermark by about one expiry bucket (horizon / 8) while the key remembers ids,
and stops moving once it remembers none.

Batch. ``mode="batch"`` never expires ids and emits one row per key when the
input ends (a timer at the end of the global window), so the result is the plain
recompute of the log whatever the event-time order, and whatever watermark the
source reports while reading. ``mode="streaming"`` also behaves as a recompute on
bounded input, because the watermark stays at -inf until the input ends.

Rows carry ``events`` (distinct events applied). It grows with every change, so
the sink keeps, per key, the row with the largest ``events``; a batch backfill of
the same log never has fewer events than a streaming run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import apache_beam as beam
from apache_beam.coders import PickleCoder, StrUtf8Coder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from core import topics
from core.errors import ConfigError
from transforms.events import NO_TIME, DeadLetter, Sale, Shipment, duration_micros, event_payload, micros_to_datetime
from transforms.params import KEY_PARAM, TIMESTAMP_PARAM
from transforms.seen_ids import RestoredSeen

__all__ = [
    "APPLIED_TAG",
    "DEAD_LETTERS_TAG",
    "DEFAULT_HORIZON",
    "EXPIRY_TIMER",
    "FINAL_TIMER",
    "INVENTORY_TAG",
    "KEY_STATE",
    "MAX_TOTAL",
    "REMEMBERED",
    "SEEN_STATE",
    "ComputeInventory",
    "GroupedInventoryFn",
    "InventoryDoFn",
    "Mode",
    "VersionedCache",
    "conflict_error",
    "event_letter",
    "identify",
    "inventory_row",
    "log_position",
    "overflow_error",
    "would_overflow",
]

Mode = Literal["streaming", "batch"]

INVENTORY_TAG = "inventory"
APPLIED_TAG = "applied"
DEAD_LETTERS_TAG = "dead_letters"

DEFAULT_HORIZON = timedelta(days=7)
# Expiry runs at most once per eighth of the horizon per key, not once per event:
# ids live up to 1/8 longer than the horizon, and a watermark that jumps far
# (catching up, or the end of bounded input) costs at most ~8 firings per horizon.
_EXPIRY_BUCKETS_PER_HORIZON = 8

# (kind, event_id, event_time micros, quantity) of every event remembered for this key.
# A bag: remembering one more id appends it, instead of rewriting every id.
SEEN_STATE = BagStateSpec("seen", TupleCoder((StrUtf8Coder(), StrUtf8Coder(), VarIntCoder(), VarIntCoder())))
# The key's totals and bookkeeping (:class:`KeyState`).
KEY_STATE = ReadModifyWriteStateSpec("key", PickleCoder())
# Streaming: forget ids older than the horizon behind the watermark.
EXPIRY_TIMER = TimerSpec("expiry", beam.TimeDomain.WATERMARK)
# Batch: emit the key's row once, when the input has ended.
FINAL_TIMER = TimerSpec("final", beam.TimeDomain.WATERMARK)

# DoFn parameter markers, built once (ruff B008: no calls in argument defaults).
_SEEN = beam.DoFn.StateParam(SEEN_STATE)
_KEY = beam.DoFn.StateParam(KEY_STATE)
_EXPIRY = beam.DoFn.TimerParam(EXPIRY_TIMER)
_FINAL = beam.DoFn.TimerParam(FINAL_TIMER)


@dataclass
class KeyState:
    shipped: int = 0
    sold: int = 0
    events: int = 0
    last_event_time: int = NO_TIME
    expired_before: int = NO_TIME  # ids with event_time < this are forgotten
    expiry_at: int | None = None  # when the expiry timer is set for
    final_set: bool = False
    seen_version: int = 0  # names the bag's contents; see InventoryDoFn._seen


# The largest total a view column holds (signed 64-bit).
MAX_TOTAL = 2**63 - 1

# What the key remembers of an event: (kind, event_id) -> (event_time micros, quantity).
Seen = dict[tuple[str, str], tuple[int, int]]
Outcome = Literal["new", "duplicate", "conflict"]
# What became of one event: ``admit``'s answer. The identity is remembered after "overflow" and "applied".
Admission = Literal["too_old", "duplicate", "conflict", "overflow", "applied"]
REMEMBERED = ("overflow", "applied")


def _apply(st: KeyState, event: Shipment | Sale) -> None:
    """Add one (already deduped, overflow-checked) event to a key's totals."""
    if isinstance(event, Shipment):
        st.shipped += event.quantity
    else:
        st.sold += event.quantity
    st.events += 1
    st.last_event_time = max(st.last_event_time, event.event_time)


def identify(seen: Seen, event: Shipment | Sale) -> Outcome:
    """Remember the event's identity; "duplicate" (same content) or "conflict" (other content) if already seen."""
    ident = (event.kind, event.event_id)
    known = seen.get(ident)
    if known is None:
        seen[ident] = (event.event_time, event.quantity)
        return "new"
    return "duplicate" if known == (event.event_time, event.quantity) else "conflict"


def conflict_error(event_id: str, key: tuple[str, str], first: tuple[int, int], again: tuple[int, int]) -> str:
    """The error of an identity seen again with other content; ``first`` and ``again`` are (event_time, quantity)."""

    def content(seen: tuple[int, int]) -> str:
        return f"quantity {seen[1]} at {micros_to_datetime(seen[0]).isoformat()}"

    return (
        f"event_id reused with different content: {event_id!r} for store {key[0]!r}, item {key[1]!r} "
        f"was first {content(first)}, this record has {content(again)}; not applied (the first one counts)"
    )


def overflow_error(column: str, key: tuple[str, str], total: int, quantity: int) -> str:
    """The dead letter's error for an event that would take a key's total past int64."""
    return (
        f"quantity would overflow {column}: store {key[0]!r}, item {key[1]!r} has {column} {total}, and "
        f"{quantity} more would pass {MAX_TOTAL} (the largest a 64-bit column holds); not applied"
    )


def would_overflow(st: KeyState, event: Shipment | Sale) -> str | None:
    """The error if adding the event passes int64 in the key's shipped or sold total (on_hand then cannot)."""
    column, total = ("shipped", st.shipped) if isinstance(event, Shipment) else ("sold", st.sold)
    if total + event.quantity > MAX_TOTAL:
        return overflow_error(column, event.key, total, event.quantity)
    return None


def event_letter(event: Shipment | Sale, error: str) -> DeadLetter:
    """A dead letter for an event that was read but not applied."""
    default_topic = topics.SHIPMENTS if isinstance(event, Shipment) else topics.SALES
    return DeadLetter(event.source_topic or default_topic, event.partition, event.offset, error, event_payload(event))


def inventory_row(key: tuple[str, str], shipped: int, sold: int, events: int, last_event_time: int) -> dict[str, Any]:
    """An ``inventory`` row; the one place it is built. ``last_event_time`` is epoch micros."""
    return {
        "store_id": key[0],
        "item_id": key[1],
        "on_hand": shipped - sold,
        "shipped": shipped,
        "sold": sold,
        "events": events,
        "last_event_time": micros_to_datetime(last_event_time),
    }


class VersionedCache:
    """Per-key values a stateful step keeps in its worker process, each under a version.

    Only a bundle that holds the key reads or replaces its entry (a runner never
    runs one key in two bundles at once), so entries need no lock. ``size``
    measures an entry; the total is approximate and only decides when to start
    over (entries are then rebuilt from state).
    """

    max_size = 4_000_000
    check_every = 256  # bundles between two size checks

    def __init__(self, size: Callable[[Any], int] = len) -> None:
        self._entries: dict[Any, tuple[int, Any]] = {}
        self._size = size
        self._bundles = 0

    def get(self, cache_key: Any, version: int) -> Any:
        entry = self._entries.get(cache_key)
        return entry[1] if entry is not None and entry[0] == version else None

    def put(self, cache_key: Any, version: int, value: Any) -> None:
        self._entries[cache_key] = (version, value)

    def trim(self) -> None:
        """Start over when the entries held pass ``max_size``."""
        self._bundles += 1
        if self._bundles % self.check_every == 0:
            if sum(self._size(value) for _, value in list(self._entries.values())) > self.max_size:
                self._entries.clear()


_SEEN_CACHE = VersionedCache()


class InventoryDoFn(beam.DoFn):
    """Applies ((store_id, item_id), event) pairs once each; emits inventory rows.

    Outputs: main = inventory rows; ``applied`` = each event the first time it is
    applied (keeps its timestamp, feeds the windowed counts); ``dead_letters`` =
    events too old to dedupe (streaming only), identities reused with other
    content, and events that would overflow a total.

    State per key: a small cell of totals and a bag of remembered ids. Prism
    gives the SDK no cache tokens, so every state read is a round trip, each
    bundle. This DoFn therefore keeps the ids it has built in memory, tagged
    with a version that it also writes into the key's cell (a random number per
    bundle). A bundle reads the small cell once per key; the
    bag is read only when the cell names a version this worker process did not
    write (another worker, a retried bundle, a restart), so a failed bundle's ids
    can never be mistaken for committed ones.
    """

    def __init__(self, mode: Mode = "streaming", horizon: timedelta = DEFAULT_HORIZON) -> None:
        if mode not in ("streaming", "batch"):
            raise ConfigError(f"mode must be 'streaming' or 'batch', not {mode!r}")
        if horizon <= timedelta(0):
            raise ConfigError("horizon must be positive")
        self._mode = mode
        self._horizon = duration_micros(horizon)
        # Whole milliseconds: portable runners keep timer times in milliseconds.
        self._bucket = max(1_000, self._horizon // _EXPIRY_BUCKETS_PER_HORIZON // 1_000 * 1_000)
        self._applied = Metrics.counter("beamline", "inventory_events_applied")
        self._duplicates = Metrics.counter("beamline", "inventory_duplicates")
        self._conflicts = Metrics.counter("beamline", "inventory_event_ids_reused")
        self._overflows = Metrics.counter("beamline", "inventory_overflows")
        self._too_old = Metrics.counter("beamline", "inventory_too_old_for_dedupe")
        # Every copy of this DoFn in a worker process (one per concurrent bundle)
        # shares one cache; the id keeps two pipeline steps apart.
        self._step = uuid.uuid4().hex
        self._version = 0

    def start_bundle(self) -> None:
        self._version = int.from_bytes(os.urandom(8), "big") | 1  # never 0 (a new key's cell)
        _SEEN_CACHE.trim()

    def _seen(self, key: Any, st: KeyState, seen_state: Any) -> Seen:
        """The key's remembered ids as of its committed (or this bundle's) cell."""
        cache_key = (self._step, key)
        cached = _SEEN_CACHE.get(cache_key, st.seen_version)
        if cached is not None:
            return cached
        seen = {(kind, event_id): (t, q) for kind, event_id, t, q in seen_state.read()} if st.seen_version else {}
        _SEEN_CACHE.put(cache_key, st.seen_version, seen)
        return seen

    def _changed(self, key: Any, st: KeyState, seen: Seen) -> None:
        """Tag the key's cell and cached ids with this bundle's version."""
        st.seen_version = self._version
        _SEEN_CACHE.put((self._step, key), self._version, seen)

    def process(
        self,
        element: tuple[tuple[str, str], Shipment | Sale],
        seen_state: Any = _SEEN,
        key_state: Any = _KEY,
        expiry: Any = _EXPIRY,
        final: Any = _FINAL,
    ) -> Iterator[Any]:
        key, event = element
        st: KeyState = key_state.read() or KeyState()
        seen = self._seen(key, st, seen_state) if event.event_time >= st.expired_before else {}
        outcome, letter = self.admit(st, seen, event)
        if letter is not None:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, letter)
        if outcome not in REMEMBERED:
            return
        seen_state.add((event.kind, event.event_id, event.event_time, event.quantity))
        self._changed(key, st, seen)
        if self._mode == "streaming":
            due = self.expiry_due(st, event.event_time)
            if due is not None:
                expiry.set(Timestamp(micros=due))
        elif not st.final_set:
            final.set(GlobalWindow().max_timestamp())
            st.final_set = True
        key_state.write(st)
        if outcome == "applied":
            yield beam.pvalue.TaggedOutput(APPLIED_TAG, event)
            if self._mode == "streaming":
                yield from self._flush(key, st)

    # The steps of process and expire, also run by the sharded streaming step
    # (transforms/retail.py) and the grouped batch step over their own state.

    def admit(self, st: KeyState, seen: Seen, event: Shipment | Sale) -> tuple[Admission, DeadLetter | None]:
        """Check one event against what its key forgot, remembers and holds; apply it if it passes.

        In this order: older than what the key forgot ("too_old": a dead letter,
        not remembered); an identity seen before ("duplicate", or "conflict":
        a dead letter); a total that would pass int64 ("overflow": a dead
        letter, the identity remembered); else "applied". Counted either way.
        """
        if event.event_time < st.expired_before:
            self._too_old.inc()
            return "too_old", self._too_old_letter(event, st)
        outcome = identify(seen, event)
        if outcome == "duplicate":
            self._duplicates.inc()
            return outcome, None
        if outcome == "conflict":
            self._conflicts.inc()
            first = seen[(event.kind, event.event_id)]
            error = conflict_error(event.event_id, event.key, first, (event.event_time, event.quantity))
            return outcome, event_letter(event, error)
        overflow = would_overflow(st, event)
        if overflow is not None:
            self._overflows.inc()
            return "overflow", event_letter(event, overflow)
        _apply(st, event)
        self._applied.inc()
        return "applied", None

    def expiry_due(self, st: KeyState, event_time: int) -> int | None:
        """The earlier expiry time an id of ``event_time`` needs, if any (recorded in ``st``)."""
        due = self.expiry_time(event_time)
        if st.expiry_at is None or due < st.expiry_at:
            st.expiry_at = due
            return due
        return None

    def forget(self, st: KeyState, seen: Seen, fired: int) -> Seen:
        """The ids still remembered once the watermark passed ``fired``; sets the next expiry in ``st``."""
        # The watermark has passed `fired`, so nothing older than the cutoff can
        # be checked any more by anyone: forget it, and remember that we did.
        st.expired_before = max(st.expired_before, fired - self._horizon)
        kept: Seen = {ident: seen_as for ident, seen_as in seen.items() if seen_as[0] >= st.expired_before}
        oldest = [t for t, _ in kept.values()]
        base = seen.base.kept(st.expired_before) if isinstance(seen, RestoredSeen) and seen.base else None
        if base is not None:
            kept = RestoredSeen(kept, base)
            oldest.append(base.min_time())
        st.expiry_at = self.expiry_time(min(oldest)) if oldest else None  # always > fired
        return kept

    @on_timer(EXPIRY_TIMER)
    def expire(
        self,
        key: tuple[str, str] = KEY_PARAM,
        fired: Timestamp = TIMESTAMP_PARAM,
        seen_state: Any = _SEEN,
        key_state: Any = _KEY,
        expiry: Any = _EXPIRY,
    ) -> Iterable[Any]:
        st: KeyState = key_state.read() or KeyState()
        seen = self.forget(st, self._seen(key, st, seen_state), fired.micros)
        seen_state.clear()
        for (kind, event_id), (t, q) in seen.items():
            seen_state.add((kind, event_id, t, q))
        self._changed(key, st, seen)
        if st.expiry_at is not None:
            expiry.set(Timestamp(micros=st.expiry_at))
        key_state.write(st)
        return ()

    @on_timer(FINAL_TIMER)
    def _final(
        self,
        key: tuple[str, str] = KEY_PARAM,
        key_state: Any = _KEY,
    ) -> Iterator[dict[str, Any]]:
        st = key_state.read()
        if st is not None and st.events:
            yield from self._flush(key, st)

    def expiry_time(self, event_time: int) -> int:
        """First bucket boundary strictly after ``event_time + horizon``."""
        due = event_time + self._horizon
        return due - due % self._bucket + self._bucket

    @staticmethod
    def _flush(key: tuple[str, str], st: KeyState) -> Iterator[dict[str, Any]]:
        """The key's current row (process and timer)."""
        yield inventory_row(key, st.shipped, st.sold, st.events, st.last_event_time)

    def _too_old_letter(self, event: Shipment | Sale, st: KeyState) -> DeadLetter:
        horizon = timedelta(microseconds=self._horizon)
        error = (
            f"not applied: event_time {micros_to_datetime(event.event_time).isoformat()} is more than "
            f"the dedupe horizon ({horizon}) behind the watermark (ids before "
            f"{micros_to_datetime(st.expired_before).isoformat()} are forgotten), so a duplicate "
            "could not be detected; re-run a batch backfill to include it"
        )
        return event_letter(event, error)


def log_position(event: Shipment | Sale) -> tuple[int, int]:
    """Where an event sits in its topic: (partition, offset), the order in which the log has it."""
    return (event.partition, event.offset)


class GroupedInventoryFn(beam.DoFn):
    """Batch: every event of one key at once -> one row, applied in log order.

    A backfill has the whole log, so there is nothing to expire and no reason to
    touch per-element state: grouping first is the recompute itself, and far
    cheaper than a state read and write per event. The rules are the streaming
    step's (``InventoryDoFn.admit``), in the order the log holds the events:
    partition, then offset.
    """

    def __init__(self) -> None:
        self._logic = InventoryDoFn("batch")

    def process(self, element: tuple[tuple[str, str], Iterable[Shipment | Sale]]) -> Iterator[Any]:
        key, events = element
        st = KeyState()
        seen: Seen = {}
        for event in sorted(events, key=log_position):
            outcome, letter = self._logic.admit(st, seen, event)
            if letter is not None:
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, letter)
            if outcome == "applied":
                yield beam.pvalue.TaggedOutput(APPLIED_TAG, event)
        if st.events:
            yield from InventoryDoFn._flush(key, st)


class ComputeInventory(beam.PTransform):
    """Events (one PCollection of both kinds, or a tuple of PCollections) -> inventory.

    ``rows, applied, dead = (shipments, sales) | ComputeInventory(mode="streaming")``
    (also ``result.inventory``, ``result.applied``, ``result.dead_letters``).
    Row: store_id, item_id, on_hand, shipped, sold, events, last_event_time (aware
    UTC datetime). ``horizon`` only matters in streaming mode.
    """

    def __init__(self, mode: Mode = "streaming", horizon: timedelta = DEFAULT_HORIZON) -> None:
        super().__init__()
        self._fn = InventoryDoFn(mode, horizon)
        self._batch = mode == "batch"

    def expand(self, events: Any) -> beam.pvalue.DoOutputsTuple:
        if isinstance(events, (tuple, list)):
            events = events | "FlattenKinds" >> beam.Flatten()
        keyed = events | "KeyByStoreItem" >> beam.Map(lambda e: (e.key, e)).with_output_types(
            tuple[tuple[str, str], Any]
        )
        fn: beam.DoFn = self._fn
        if self._batch and keyed.is_bounded:
            # Bounded input in batch mode: group, then apply (the stateful DoFn
            # keeps batch semantics for unbounded input such as a TestStream).
            keyed = keyed | "GroupByStoreItem" >> beam.GroupByKey()
            fn = GroupedInventoryFn()
        return keyed | "ApplyOnce" >> beam.ParDo(fn).with_outputs(APPLIED_TAG, DEAD_LETTERS_TAG, main=INVENTORY_TAG)
