"""The warehouse as the streaming inventory step's checkpoint: what it commits and how a restart restores it.

Why the warehouse. Event sourcing keeps the log for ever, and Prism keeps state
in memory: a restart used to replay the whole log. The warehouse already holds
the views, durable and versioned; committed with them, in the same snapshot,
it now holds the state that produced them and the offsets they cover
(``_inventory_state``, ``_inventory_ids``, ``_resume_offsets``; see
:mod:`core.views`), so a restart starts each partition at its recorded offset
with that state (:func:`start_run`).

What a commit covers. The keying step before the state step sees every record
of a bundle, events and dead letters alike, and sends each shard the offsets
the bundle held (:func:`claims_of`), with or without events for it. A shard
commits, in one snapshot, its changed views, its changed keys' state, the ids
it added and, per partition, the offsets whose outcome is now committed
(:class:`Progress`: a floor below which every offset is done, and ranges above
it). So per shard the committed state is exactly the outcome of the offsets it
claims, and every record below the lowest floor of all shards is in the views.
A restart reads from that floor; the records after it that a shard had
already applied are duplicates to the restored ids and change nothing.

Within a run a shard that loses its in-memory copy reloads it from the
warehouse too, which the shard's last successful bundle committed to before it
ended (the reload checks this by version and otherwise reads again). The
in-memory copy is the working state; the runner's state holds only a head.

Offsets the log does not hold (transaction markers, compacted records) are
never claimed: a floor waits at such a gap, and a restart reads again from it.
Topics written by idempotent, non-transactional producers have none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.errors import ConfigError
from core.views import INVENTORY_IDS, INVENTORY_STATE, RESUME_OFFSETS
from transforms.counts import SalesKeyState, SalesWindowDoFn, WindowState
from transforms.events import NO_TIME, duration_micros
from transforms.inventory import InventoryDoFn, KeyState
from transforms.kafka import KafkaConnection, commit_group_offsets, partition_offsets
from transforms.seen_ids import SeenBase, ident_hash
from warehouse.format import current_manifest
from warehouse.resume import (
    begin_run,
    check_readable,
    hold_run_lock,
    progress_version,
    query_tables,
    recorded_run,
)
from warehouse.versions import RunTables

__all__ = [
    "CATCH_UP_RECORDS",
    "Checkpoint",
    "Claims",
    "GroupOffsets",
    "IdColumns",
    "Progress",
    "Restored",
    "claims_of",
    "commit_catch_up",
    "decode_state",
    "encode_state",
    "id_row",
    "restore",
    "restored_progress",
    "start_run",
    "state_row",
]

_LOG = logging.getLogger(__name__)

# A streaming start with no resume point catches up in batch first when the log holds this many records:
# a backfill reads several times faster than the streaming step applies.
CATCH_UP_RECORDS = 100_000
# The event-time read keeps its watermark this far behind the newest time it read (ReadTiming.allowed_skew_s).
_CATCH_UP_SKEW = 5_000_000

Partition = tuple[str, int]
Key = tuple[str, str]
# Per partition of one bundle, the runs of consecutive offsets it held: ((topic, partition), ((first, last), ...)).
Claims = tuple[tuple[Partition, tuple[tuple[int, int], ...]], ...]


@dataclass(frozen=True)
class Checkpoint:
    """What the state step needs to commit to and restore from the warehouse; small and picklable."""

    warehouse: str
    pipeline: str
    run: int
    # Where this run started each partition: a shard's floor before its first commit.
    starts: tuple[tuple[Partition, int], ...]
    # The snapshot whose resume point the run started from (None: the first run, from the earliest offsets).
    resumed_from: int | None = None
    # The table of each view and hidden table the run writes (``inventory`` -> ``inventory@v2``); absent: its own.
    tables: tuple[tuple[str, str], ...] = ()

    def start_of(self, partition: Partition) -> int | None:
        return dict(self.starts).get(partition)

    def table(self, view: str) -> str:
        """The table this run writes for ``view``: the version it runs at."""
        return dict(self.tables).get(view, view)

    def describe(self) -> str:
        """One line for the log: where this run starts."""
        if self.resumed_from is None:
            return f"{self.pipeline}: no resume point in {self.warehouse}; reading the log from its earliest offsets"
        covered = sum(offset for _, offset in self.starts)
        return (
            f"{self.pipeline}: resuming from snapshot {self.resumed_from} of {self.warehouse} "
            f"(run {self.run}; offsets up to {covered:,} records in all are in the views)"
        )


def start_run(
    connection: KafkaConnection,
    warehouse: str,
    tables: RunTables,
    topics: Iterable[str],
    shards: int,
    settings: Mapping[str, object] | None = None,
) -> Checkpoint:
    """Begin a streaming run: resume where the warehouse says, else from the earliest offsets.

    ``tables`` names the run's resume point (``inventory``, or a version's:
    ``inventory@v2``) and the tables it writes. Refuses, in one line, a
    warehouse whose resume point reads other topics or was computed with
    other ``settings`` (a window size, say), or that another streaming run
    of the pipeline is writing to.
    """
    pipeline = tables.pipeline
    topics = sorted(set(topics))
    hold_run_lock(warehouse, pipeline)
    prior = recorded_run(warehouse, pipeline)
    if prior is not None and prior.topics != set(topics):
        raise ConfigError(
            f"the warehouse {warehouse} holds the {pipeline} resume point for topics "
            f"{', '.join(sorted(prior.topics))}, but this run reads {', '.join(topics)}; "
            "use another --warehouse, or the same topics"
        )
    settings = dict(settings or {})
    if prior is not None and prior.settings and dict(prior.settings) != settings:
        changed = sorted(k for k in prior.settings.keys() | settings.keys() if prior.settings.get(k) != settings.get(k))
        was = ", ".join(f"--{k}={prior.settings.get(k)}" for k in changed)
        now = ", ".join(f"--{k}={settings.get(k)}" for k in changed)
        raise ConfigError(
            f"the warehouse {warehouse} holds the {pipeline} state computed with {was}; this run asks {now}: "
            "its state would be read wrongly. Run with the same settings, or write a new warehouse"
        )
    log = partition_offsets(connection, topics)
    missing = [topic for topic in topics if not any(t == topic for t, _ in log)]
    if missing:  # before anything is recorded: a resume point for part of the topics would refuse the right ones
        raise ConfigError(
            f"Kafka topic(s) {', '.join(missing)} do not exist at {connection.bootstrap_servers}; "
            "create them or fix the topic names"
        )
    check_readable(warehouse, [table for _, table in tables.tables])
    earliest = {tp: first for tp, (first, _) in log.items()}
    recorded = dict(prior.offsets) if prior is not None else {}
    # A partition the resume point does not list (new since) starts at its earliest offset.
    starts = {tp: max(recorded.get(tp, first), first) for tp, first in earliest.items()}
    run = begin_run(warehouse, pipeline, starts, shards, settings=settings)
    resumed_from = prior.snapshot_id if prior is not None else None
    # Absolute: workers may run in other folders (an external worker pool).
    root = str(Path(warehouse).absolute())
    return Checkpoint(root, pipeline, run, tuple(sorted(starts.items())), resumed_from, tables.tables)


def claims_of(positions: Iterable[tuple[str, int, int]]) -> Claims:
    """(topic, partition, offset) of a bundle's records -> per partition, its runs of consecutive offsets."""
    by_partition: dict[Partition, list[int]] = {}
    for topic, partition, offset in positions:
        by_partition.setdefault((topic, partition), []).append(offset)
    claims = []
    for tp, offsets in sorted(by_partition.items()):
        offsets.sort()
        runs: list[tuple[int, int]] = []
        first = last = offsets[0]
        for offset in offsets[1:]:
            if offset > last + 1:
                runs.append((first, last))
                first = offset
            last = max(last, offset)
        runs.append((first, last))
        claims.append((tp, tuple(runs)))
    return tuple(claims)


@dataclass
class Progress:
    """One shard's committed offsets of one partition: all below ``floor``, and the ``pending`` ranges above."""

    floor: int
    pending: list[tuple[int, int]] = field(default_factory=list)
    start: int = -1  # where the run started the partition (-1: the floor it was made with)

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.floor

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Progress:
        """The progress a ``_resume_offsets`` row records."""
        pending = [(int(lo), int(hi)) for lo, hi in json.loads(row["pending"])]
        return cls(int(row["next_offset"]), pending, int(row["start_offset"]))

    def done(self, offset: int) -> bool:
        """Whether ``offset`` is among the offsets claimed."""
        return offset < self.floor or any(lo <= offset <= hi for lo, hi in self.pending)

    def claim(self, first: int, last: int) -> None:
        """Offsets ``first``..``last`` (inclusive) are done."""
        if last < self.floor:
            return
        ranges = sorted([*self.pending, (max(first, self.floor), last)])
        merged: list[tuple[int, int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        while merged and merged[0][0] <= self.floor:
            self.floor = max(self.floor, merged.pop(0)[1] + 1)
        self.pending = merged

    def row(self, pipeline: str, partition: Partition, shard: int, shards: int, run: int, commits: int) -> dict:
        return {
            "pipeline": pipeline,
            "topic": partition[0],
            "partition": partition[1],
            "shard": shard,
            "run": run,
            "shards": shards,
            "start_offset": self.start,
            "next_offset": self.floor,
            "pending": json.dumps(self.pending),
            "version": progress_version(run, commits),
        }


def encode_state(inventory: KeyState, sales: SalesKeyState) -> str:
    """A key's state as JSON (the ``state`` column of ``_inventory_state``)."""
    windows = {str(start): dataclasses.asdict(w) for start, w in sales.windows.items()}
    sales_fields = {f.name: getattr(sales, f.name) for f in dataclasses.fields(sales) if f.name != "windows"}
    return json.dumps({"inventory": dataclasses.asdict(inventory), "sales": {**sales_fields, "windows": windows}})


def decode_state(text: str) -> tuple[KeyState, SalesKeyState]:
    """The inverse of :func:`encode_state`."""
    doc = json.loads(text)
    sales = dict(doc["sales"])
    windows = {int(start): WindowState(**w) for start, w in sales.pop("windows").items()}
    return KeyState(**doc["inventory"]), SalesKeyState(**sales, windows=windows)


def state_row(key: Key, inventory: KeyState, sales: SalesKeyState, version: int) -> dict[str, Any]:
    """A ``_inventory_state`` row."""
    return {
        "store_id": key[0],
        "item_id": key[1],
        "expired_before": inventory.expired_before,
        "state": encode_state(inventory, sales),
        "version": version,
    }


class IdColumns:
    """A bundle's new ``_inventory_ids`` rows, column by column.

    A stream remembers one id per event it applies, so a bundle at a few
    thousand events a second commits as many id rows. Kept as dicts they
    cost about as much to turn into Arrow as everything else the commit
    does; as columns they become a table in one call.
    """

    __slots__ = ("_columns",)

    def __init__(self) -> None:
        self._columns: tuple[list[Any], ...] = tuple([] for _ in INVENTORY_IDS.storage_schema.names)

    def add(self, key: Key, kind: str, event_id: str, event_time: int, quantity: int) -> None:
        store_ids, item_ids, kinds, event_ids, hashes, times, quantities = self._columns
        store_ids.append(key[0])
        item_ids.append(key[1])
        kinds.append(kind)
        event_ids.append(event_id)
        hashes.append(ident_hash(kind, event_id))
        times.append(event_time)
        quantities.append(quantity)

    def __len__(self) -> int:
        return len(self._columns[0])

    def table(self) -> pa.Table:
        """The rows as a table with the view's storage schema."""
        schema = INVENTORY_IDS.storage_schema
        return pa.Table.from_arrays(
            [pa.array(column, type=f.type) for column, f in zip(self._columns, schema, strict=True)], schema=schema
        )


def id_row(key: Key, kind: str, event_id: str, event_time: int, quantity: int) -> dict[str, Any]:
    """A ``_inventory_ids`` row."""
    return {
        "store_id": key[0],
        "item_id": key[1],
        "kind": kind,
        "event_id": event_id,
        "ident_hash": ident_hash(kind, event_id),
        "event_time": event_time,
        "quantity": quantity,
    }


@dataclass
class Restored:
    """The newest committed state of a pipeline's state step, for every shard."""

    snapshot_id: int
    keys: dict[Key, tuple[str, int]]  # state (JSON, decoded by each load: loads must not share it) and its version
    ids: dict[Key, SeenBase]
    # (shard, partition) -> (floor, pending, version, start) of this run's rows.
    progress: dict[tuple[int, Partition], tuple[int, list[tuple[int, int]], int, int]]


def restore(checkpoint: Checkpoint) -> Restored:
    """Read the newest snapshot's state, ids and this run's offsets (ids the keys forgot are left out)."""
    snap, (keys, progress, _, counts, ids) = query_tables(
        checkpoint.warehouse,
        [
            f"SELECT store_id, item_id, state, version FROM {INVENTORY_STATE.name}",
            f"SELECT shard, topic, partition, start_offset, next_offset, pending, version FROM {RESUME_OFFSETS.name} "
            "WHERE pipeline = $pipeline AND run = $run",
            # Append-only (a retried bundle appends its ids again): DISTINCT. Sorted by key, then hash.
            f"""CREATE TEMP TABLE restored_ids AS
                SELECT DISTINCT i.store_id, i.item_id, i.ident_hash, i.event_time, i.quantity
                FROM {INVENTORY_IDS.name} i JOIN {INVENTORY_STATE.name} s USING (store_id, item_id)
                WHERE i.event_time >= s.expired_before
                ORDER BY i.store_id, i.item_id, i.ident_hash""",
            "SELECT store_id, item_id, count(*) AS n FROM restored_ids GROUP BY ALL ORDER BY store_id, item_id",
            "SELECT ident_hash, event_time, quantity FROM restored_ids",
        ],
        {name: checkpoint.table(name) for name in (INVENTORY_STATE.name, RESUME_OFFSETS.name, INVENTORY_IDS.name)},
        {"pipeline": checkpoint.pipeline, "run": checkpoint.run},
    )
    restored_keys = {(r["store_id"], r["item_id"]): (r["state"], int(r["version"])) for r in keys.to_pylist()}
    restored_progress = {
        (int(r["shard"]), (r["topic"], int(r["partition"]))): (
            int(r["next_offset"]),
            [(int(lo), int(hi)) for lo, hi in json.loads(r["pending"])],
            int(r["version"]),
            int(r["start_offset"]),
        )
        for r in progress.to_pylist()
    }
    return Restored(snap.snapshot_id, restored_keys, _split_by_key(counts, ids), restored_progress)


def _split_by_key(counts: Any, ids: Any) -> dict[Key, SeenBase]:
    """Ids sorted by key, and each key's count in that order -> one SeenBase per key, slices of three arrays."""
    if ids.num_rows == 0:
        return {}
    hashes = ids.column("ident_hash").to_numpy()
    times = ids.column("event_time").to_numpy()
    quantities = ids.column("quantity").to_numpy()
    out: dict[Key, SeenBase] = {}
    lo = 0
    for store, item, n in zip(
        counts.column("store_id").to_pylist(),
        counts.column("item_id").to_pylist(),
        counts.column("n").to_pylist(),
        strict=True,
    ):
        out[(store, item)] = SeenBase(hashes[lo : lo + n], times[lo : lo + n], quantities[lo : lo + n])
        lo += n
    return out


def restored_progress(restored: Restored, checkpoint: Checkpoint, shard: int) -> tuple[dict[Partition, Progress], int]:
    """A shard's progress per partition from ``restored`` (this run's rows), and the highest version among them."""
    progress: dict[Partition, Progress] = {}
    version = 0
    for tp, start in checkpoint.starts:
        found = restored.progress.get((shard, tp))
        if found is None:
            progress[tp] = Progress(start)
        else:
            floor, pending, row_version, started = found
            progress[tp] = Progress(floor, list(pending), started)
            version = max(version, row_version)
    return progress, version


class GroupOffsets(contextlib.AbstractContextManager["GroupOffsets"]):
    """While a run streams: commit the offsets its warehouse covers to a consumer group, as they move.

    Kafka's own lag tools then show the pipeline's lag. The offsets are read
    back from the warehouse (the lowest floor per partition, as a restart
    would resume), so the group never runs ahead of what the views hold.
    Best effort: a failed commit is logged and tried again at the next tick.
    Every 5 s, as Kafka's own consumers auto-commit, and only when a new
    snapshot was published since the last look: reading the resume point
    opens a DuckDB database, and at 2 s a tick this thread took a tenth of the
    streaming process's busy CPU.
    """

    def __init__(self, connection: KafkaConnection, checkpoint: Checkpoint, group: str, every_s: float = 5.0) -> None:
        self._connection = connection
        self._checkpoint = checkpoint
        self._group = group
        self._every_s = every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="beamline-group-offsets", daemon=True)
        self._committed: dict[Partition, int] = {}
        self._looked_at: str | None = None  # the newest manifest when the offsets were last read

    def __enter__(self) -> GroupOffsets:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self._every_s + 15)
        self.commit_once()  # the last word: what the warehouse holds as the run ends

    def _loop(self) -> None:
        while not self._done.wait(self._every_s):
            self.commit_once()

    def commit_once(self) -> None:
        """Commit the recorded offsets if they moved since the last commit."""
        try:
            try:
                newest = current_manifest(Path(self._checkpoint.warehouse))
            except FileNotFoundError:  # no snapshot published yet
                return
            if newest == self._looked_at:
                return
            recorded = recorded_run(self._checkpoint.warehouse, self._checkpoint.pipeline)
            if recorded is not None and recorded.run == self._checkpoint.run:
                if dict(recorded.offsets) != self._committed:
                    commit_group_offsets(self._connection, self._group, recorded.offsets)
                    self._committed = dict(recorded.offsets)
            self._looked_at = newest
        except Exception as exc:  # monitoring only: never stop the run for it
            _LOG.warning("committing offsets to consumer group %s failed: %s", self._group, exc)


def commit_catch_up(
    warehouse: str,
    tables: RunTables,
    stops: Mapping[Partition, int],
    shards: int,
    *,
    remember_since: int,
    horizon: timedelta,
    window_size: timedelta,
    allowed_lateness: timedelta,
    settings: Mapping[str, object] | None = None,
) -> int:
    """After a batch catch-up to ``stops``: the state a streaming run resumes from, and its resume point, in one commit.

    The batch views are the totals; the state is what a streaming run would
    hold once caught up: its watermark at the wall clock less the read's skew
    (the read never moves a watermark past the wall clock, and an idle
    partition follows it), ids from ``remember_since`` on (the backfill wrote
    them), older ones forgotten; windows still within the allowed lateness
    open with their sums, their on-time pane fired if their end has passed;
    every earlier window closed. Not the log's newest event time when that is
    ahead of the clock: events dated in the future would close windows that
    the stream still accepts sales for, and the version would refuse, as too
    late, sales that every version streaming from the log counts.
    Returns the run number the resume point is recorded under.
    """
    inventory_logic = InventoryDoFn("streaming", horizon)
    windows_logic = SalesWindowDoFn("streaming", window_size, allowed_lateness)
    size, lateness = duration_micros(window_size), duration_micros(allowed_lateness)
    named = {name: tables[name] for name in ("inventory", "sales_by_window", INVENTORY_IDS.name)}
    watermark = time.time_ns() // 1_000 - _CATCH_UP_SKEW
    _, (totals, open_windows, oldest_ids) = query_tables(
        warehouse,
        [
            "SELECT store_id, item_id, shipped, sold, events, epoch_us(last_event_time) AS last FROM inventory",
            "SELECT store_id, item_id, epoch_us(window_start) AS start, units, sales FROM sales_by_window "
            "WHERE epoch_us(window_end) - 1000 + $lateness > $watermark",
            f"SELECT store_id, item_id, min(event_time) AS oldest FROM {INVENTORY_IDS.name} "
            "WHERE event_time >= $since GROUP BY ALL",
        ],
        named,
        {"lateness": lateness, "watermark": watermark, "since": remember_since},
    )
    oldest = {(r["store_id"], r["item_id"]): r["oldest"] for r in oldest_ids.to_pylist()}
    windows: dict[Key, dict[int, WindowState]] = {}
    for r in open_windows.to_pylist():
        ended = r["start"] + size - 1_000 <= watermark
        state = WindowState(units=r["units"], sales=r["sales"], pane=0, on_time_fired=ended, dirty=False)
        windows.setdefault((r["store_id"], r["item_id"]), {})[r["start"]] = state
    states = []
    closed_until = watermark + 1_000 - lateness
    for r in totals.to_pylist():
        key = (r["store_id"], r["item_id"])
        inventory = KeyState(
            shipped=r["shipped"], sold=r["sold"], events=r["events"], last_event_time=r["last"] or NO_TIME,
            expired_before=remember_since,
        )  # fmt: skip
        if key in oldest:
            inventory_logic.expiry_due(inventory, oldest[key])
        mine = windows.get(key, {})
        deadlines = [windows_logic.next_deadline(start, w) for start, w in mine.items()]
        sales = SalesKeyState(closed_until=closed_until, timer_at=min(deadlines) if deadlines else None, windows=mine)
        states.append(state_row(key, inventory, sales, 1))
    return begin_run(warehouse, tables.pipeline, stops, shards, {tables[INVENTORY_STATE.name]: states}, settings)
