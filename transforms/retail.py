"""Streaming retail views in one stateful step: inventory and sales per window.

:class:`StreamRetail` is ``ComputeInventory`` followed by ``SalesByWindow``,
run as one DoFn keyed by (store_id, item_id), because both steps key by the
same thing. Fused, an applied sale goes straight to its window instead of
through a second shuffle and a second stateful stage, and a bundle reads one
state cell per key instead of two (on Prism every state read is a round trip
to the runner, each bundle: that, not the per-event work, set the streaming
latency). The logic is the two DoFns' own (:class:`InventoryDoFn`,
:class:`SalesWindowDoFn`); each sees its part of the shared cell, read once
per call, so the rows, dead letters and metrics are the same as when the
steps run apart. Streaming only: a backfill uses :mod:`transforms.backfill`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.counts import (
    DEFAULT_ALLOWED_LATENESS,
    DEFAULT_EARLY_DELAY,
    DEFAULT_WINDOW_SIZE,
    CountTooLate,
    EarlySalesWindowDoFn,
    SalesKeyState,
)
from transforms.events import Sale
from transforms.inventory import (
    APPLIED_TAG,
    DEAD_LETTERS_TAG,
    DEFAULT_HORIZON,
    SEEN_STATE,
    InventoryDoFn,
    KeyState,
)

__all__ = ["RETAIL_STATE", "StreamRetail", "StreamRetailResult"]

WINDOWS_TAG = "windows"
TOO_LATE_TAG = "too_late"


@dataclass
class _RetailState:
    inventory: KeyState = field(default_factory=KeyState)
    sales: SalesKeyState = field(default_factory=SalesKeyState)


# Everything a key keeps except its remembered ids (a bag: see InventoryDoFn).
RETAIL_STATE = ReadModifyWriteStateSpec("retail", PickleCoder())

_CELL = beam.DoFn.StateParam(RETAIL_STATE)
_SEEN = beam.DoFn.StateParam(SEEN_STATE)
# The two steps' timers, as this step's own specs (a spec has one callback).
EXPIRY_TIMER = TimerSpec("expiry", beam.TimeDomain.WATERMARK)
WINDOW_TIMER = TimerSpec("window", beam.TimeDomain.WATERMARK)
EARLY_TIMER = TimerSpec("early", beam.TimeDomain.REAL_TIME)
_EXPIRY = beam.DoFn.TimerParam(EXPIRY_TIMER)
_WINDOW = beam.DoFn.TimerParam(WINDOW_TIMER)
_EARLY = beam.DoFn.TimerParam(EARLY_TIMER)


class _Cell:
    """The key's shared cell, read once per call and written back whole.

    Without cache tokens every ``read()`` of a state not yet written in the
    bundle is a round trip, so the two steps must not each read it: they see
    their parts of one value through :meth:`part`. ``close`` writes the value
    back even when nothing changed, so later calls in the bundle read it from
    memory.
    """

    def __init__(self, state: Any) -> None:
        self._state = state
        self.value: _RetailState = state.read() or _RetailState()
        self._written = False

    def part(self, name: str) -> _Part:
        return _Part(self, name)

    def write(self) -> None:
        self._state.write(self.value)
        self._written = True

    def close(self) -> None:
        if not self._written:
            self.write()


class _Part:
    """One step's state within the shared cell (``read``/``write`` like a state)."""

    def __init__(self, cell: _Cell, name: str) -> None:
        self._cell = cell
        self._name = name

    def read(self) -> Any:
        return getattr(self._cell.value, self._name)

    def write(self, part: Any) -> None:
        setattr(self._cell.value, self._name, part)
        self._cell.write()


class _NoTimer:
    def set(self, _when: Any) -> None:
        raise AssertionError("a streaming step never sets the batch timer")


_NO_TIMER = _NoTimer()


class _StreamRetailFn(beam.DoFn):
    """((store_id, item_id), event) -> inventory rows; window rows and dead letters tagged."""

    def __init__(self, inventory: InventoryDoFn, windows: EarlySalesWindowDoFn) -> None:
        self._inventory = inventory
        self._windows = windows

    def start_bundle(self) -> None:
        self._inventory.start_bundle()

    def process(  # type: ignore[override]
        self,
        element: tuple[tuple[str, str], Any],
        cell: Any = _CELL,
        seen: Any = _SEEN,
        expiry: Any = _EXPIRY,
        window: Any = _WINDOW,
        early: Any = _EARLY,
    ) -> Iterator[Any]:
        key = element[0]
        shared = _Cell(cell)
        for out in self._inventory.process(element, seen, shared.part("inventory"), expiry, _NO_TIMER):
            tag = getattr(out, "tag", None)
            if tag != APPLIED_TAG:
                yield out
            elif isinstance(out.value, Sale):
                yield from self._windowed(self._windows.add((key, out.value), shared.part("sales"), window, early))
        shared.close()

    @on_timer(EXPIRY_TIMER)
    def _expire(
        self,
        key: tuple[str, str] = beam.DoFn.KeyParam,
        fired: Timestamp = beam.DoFn.TimestampParam,
        cell: Any = _CELL,
        seen: Any = _SEEN,
        expiry: Any = _EXPIRY,
    ) -> Iterator[Any]:
        return iter(self._inventory.expire(key, fired, seen, _Cell(cell).part("inventory"), expiry))

    @on_timer(WINDOW_TIMER)
    def _on_watermark(
        self,
        key: tuple[str, str] = beam.DoFn.KeyParam,
        fired: Timestamp = beam.DoFn.TimestampParam,
        cell: Any = _CELL,
        window: Any = _WINDOW,
    ) -> Iterator[Any]:
        return self._windowed(self._windows.on_watermark(key, fired, _Cell(cell).part("sales"), window))

    @on_timer(EARLY_TIMER)
    def _on_early(self, key: tuple[str, str] = beam.DoFn.KeyParam, cell: Any = _CELL) -> Iterator[Any]:
        return self._windowed(self._windows.on_early(key, _Cell(cell).part("sales")))

    @staticmethod
    def _windowed(outputs: Iterator[Any]) -> Iterator[Any]:
        """The window step's rows and too-late letters, under this step's tags."""
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(TOO_LATE_TAG, out.value)
            else:
                yield beam.pvalue.TaggedOutput(WINDOWS_TAG, out)


class StreamRetailResult(NamedTuple):
    inventory: beam.PCollection
    windows: beam.PCollection
    dead_letters: beam.PCollection


class StreamRetail(beam.PTransform):
    """(shipment events, sale events) -> inventory rows, sales_by_window rows, dead letters.

    The streaming equivalent of ``ComputeInventory(mode="streaming")`` followed by
    ``SalesByWindow(mode="streaming")`` on its applied sales, with the same rows.
    """

    def __init__(
        self,
        horizon: timedelta = DEFAULT_HORIZON,
        window_size: timedelta = DEFAULT_WINDOW_SIZE,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        early_delay: timedelta | None = DEFAULT_EARLY_DELAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._fn = _StreamRetailFn(
            InventoryDoFn("streaming", horizon),
            # The early-firing variant for its on_early logic; no early_delay, no early panes.
            EarlySalesWindowDoFn("streaming", window_size, allowed_lateness, early_delay, clock),
        )

    def expand(self, events: Any) -> StreamRetailResult:
        if isinstance(events, (tuple, list)):
            events = events | "FlattenKinds" >> beam.Flatten()
        keyed = events | "KeyByStoreItem" >> beam.Map(lambda e: (e.key, e)).with_output_types(
            tuple[tuple[str, str], Any]
        )
        out = keyed | "ApplyOnce" >> beam.ParDo(self._fn).with_outputs(
            WINDOWS_TAG, TOO_LATE_TAG, DEAD_LETTERS_TAG, main="inventory"
        )
        too_late = out[TOO_LATE_TAG] | "CountTooLate" >> beam.ParDo(CountTooLate())
        dead = (out[DEAD_LETTERS_TAG], too_late) | "AllDeadLetters" >> beam.Flatten()
        return StreamRetailResult(out.inventory, out[WINDOWS_TAG], dead)
