"""Events into the sharded retail state step: one element per shard and upstream bundle.

The state step (:mod:`transforms.retail`) is keyed by a *shard* of
(store_id, item_id); this is the step before it, which groups a bundle's
events by shard, stamps each group, and (for a step that checkpoints to the
warehouse) tells every shard which offsets the bundle held.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.checkpoint import Claims, claims_of
from transforms.coders import EstimatedPickleCoder
from transforms.events import DeadLetter, Sale, Shipment
from transforms.kafka import GLOBAL_WINDOWS
from transforms.params import TIMESTAMP_PARAM

__all__ = ["KeyByShard", "ShardEvents", "shard_of"]

Key = tuple[str, str]


def shard_of(key: Key, shards: int) -> int:
    """The shard of a (store_id, item_id): the same in every process and run."""
    return zlib.crc32(f"{key[0]}\x00{key[1]}".encode()) % shards


class ShardEvents(list):
    """A shard's events of one bundle, in the order they came: the state step's input value.

    ``claims``: for a checkpointed step, every offset the upstream bundle held
    (for every shard, whether or not any of its events are here).
    """

    claims: Claims = ()


class ShardEventsCoder(EstimatedPickleCoder):
    """One pickle for the whole list: the events' class and repeated names are written once."""

    def __init__(self) -> None:
        super().__init__(shard_events_size)


def shard_events_size(events: ShardEvents) -> int:
    return 64 + 120 * len(events)  # pickled bytes, about, for generated retail events


beam.coders.registry.register_coder(ShardEvents, ShardEventsCoder)


class KeyByShard(beam.DoFn):
    """events -> (shard, [events]) once per shard and bundle, stamped with the earliest of its events' stamps.

    One element per shard and bundle, not per event: each element that
    crosses to the state step is encoded, sent through the runner and decoded
    again, and the state step pays its per-element overhead (parameters,
    window, timestamp) once per element. A streaming runner releases a
    bundle's output only when the bundle ends, so holding the events to the
    bundle's end delays nothing.

    Stamps. Prism holds a stateful stage's input watermark at its oldest
    pending element, and queues a key's elements behind its pending timers
    in timestamp order. An element stamped behind the watermark (a trickle
    of events an hour late) would hold every shard's timers back; one
    stamped ahead of it (an event dated next year, or a partition read ahead
    of the others) would wait behind the shard's timers until the watermark
    got there. So the events come stamped by the event-time read, which keeps
    each stamp within its watermark's step (``ReadFromKafka(event_time=...)``),
    and a shard's element carries the earliest of its events' stamps. The
    logic reads event times from the events, never from element timestamps,
    so stamps change no row; they only order the work.
    """

    def __init__(self, shards: int, claims: bool = False) -> None:
        self._shards = shards
        self._claims = claims
        self._events: dict[int, ShardEvents] = {}
        self._stamps: dict[int, Timestamp] = {}  # per shard, the earliest stamp of its events
        self._positions: list[tuple[str, int, int]] = []

    def start_bundle(self) -> None:
        self._events = {}
        self._stamps = {}
        self._positions = []

    def process(self, event: Shipment | Sale | DeadLetter, stamp: Timestamp = TIMESTAMP_PARAM) -> None:
        if isinstance(event, DeadLetter):
            # Any shard will do: it only commits the letter with the offsets it covers.
            shard = event.partition % self._shards
            if self._claims:
                self._positions.append((event.source_topic, event.partition, event.offset))
        else:
            shard = shard_of(event.key, self._shards)
            if self._claims:
                self._positions.append((event.source_topic, event.partition, event.offset))
        events = self._events.get(shard)
        if events is None:
            self._events[shard] = ShardEvents([event])
            self._stamps[shard] = stamp
        else:
            events.append(event)
            if stamp < self._stamps[shard]:
                self._stamps[shard] = stamp

    def finish_bundle(self) -> Iterator[WindowedValue]:
        events, stamps, positions = self._events, self._stamps, self._positions
        self._events, self._stamps, self._positions = {}, {}, []
        if positions:
            # Every shard learns every offset of the bundle, so each shard's committed offsets have no holes.
            claims = claims_of(positions)
            earliest = min(stamps.values())
            for shard in range(self._shards):
                shard_events = events.setdefault(shard, ShardEvents())
                shard_events.claims = claims
                stamps.setdefault(shard, earliest)
        for shard, shard_events in events.items():
            yield WindowedValue((shard, shard_events), stamps[shard], GLOBAL_WINDOWS)
