"""The inventory view in memory, for point lookups that run no query.

An :class:`InventoryIndex` describes one snapshot's inventory view and never
changes once made, so a request that holds one sees that snapshot whole while
the watcher makes the next. It keeps:

* a *base*: a dict keyed by ``(store_id, item_id)`` giving a row number in one
  NumPy array of the numbers (``on_hand, shipped, sold, events`` and
  ``last_event_time`` in µs), built from the view's Parquet files;
* *layers* over it: small dicts of the rows a commit changed, newest last.

A commit only adds files, so the next snapshot's index is this one plus a layer
of the added files' rows that beat the stored version (``events``, the view's
version column): a few milliseconds for a commit, however large the view. The
layers are folded together, and into a new base once they hold many rows, off
the request path (:meth:`InventoryIndex.tidied`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.views import INVENTORY
from readside.query import _timestamp_text
from warehouse.format import EPOCH

__all__ = ["InventoryIndex", "Key", "Row", "row_dict"]

Key = tuple[str, str]
# on_hand, shipped, sold, events, last_event_time (µs since the epoch); NULL is stored as NULL_VALUE
Row = tuple[int, int, int, int, int]

_NUMBERS = ("on_hand", "shipped", "sold", "events")
_VERSION = _NUMBERS.index("events")
# int64's minimum stands for NULL (the pipelines never write one; a total that low would have overflowed).
NULL_VALUE = int(np.iinfo(np.int64).min)
# Layers are folded into one past this many, and into the base past this many rows
# (or a twentieth of the base): a fold copies the base's dict, tens of ms for 1M keys.
_MAX_LAYERS = 8
_MIN_FOLD_ROWS = 50_000


def _strings(column: pa.ChunkedArray) -> list[str]:
    """A string column as Python strings, one object per distinct value (store ids repeat a lot)."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    words = encoded.dictionary.to_pylist()
    return list(map(words.__getitem__, encoded.indices.to_numpy(zero_copy_only=False).tolist()))


def _numbers(table: pa.Table) -> np.ndarray:
    """The numeric columns of inventory rows as one (rows, 5) int64 array."""
    columns = [table.column(name).cast(pa.int64()) for name in (*_NUMBERS, "last_event_time")]
    if not table.num_rows:
        return np.empty((0, 5), dtype=np.int64)
    return np.column_stack([c.fill_null(NULL_VALUE).to_numpy() for c in columns]).astype(np.int64, copy=False)


class InventoryIndex:
    """The inventory rows of one snapshot by ``(store_id, item_id)``; immutable."""

    __slots__ = ("_layers", "_positions", "_values", "layer_rows", "rows")

    def __init__(
        self, positions: dict[Key, int], values: np.ndarray, layers: tuple[dict[Key, Row], ...], rows: int
    ) -> None:
        self._positions = positions
        self._values = values
        self._layers = layers
        self.rows = rows  # distinct keys
        self.layer_rows = sum(len(layer) for layer in layers)

    @classmethod
    def empty(cls) -> InventoryIndex:
        return cls({}, np.empty((0, 5), dtype=np.int64), (), 0)

    @classmethod
    def build(cls, tables: Sequence[pa.Table]) -> InventoryIndex:
        """The index of the view whose files hold ``tables``: per key, the row with the most events."""
        tables = [t.select(list(INVENTORY.column_names)) for t in tables if t.num_rows]
        if not tables:
            return cls.empty()
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        keys = list(zip(_strings(table.column("store_id")), _strings(table.column("item_id")), strict=True))
        values = _numbers(table)
        positions = dict(zip(keys, range(len(keys)), strict=True))
        if len(positions) != len(keys):
            # A key in several files (or twice in one): the row with the most events wins, so the
            # rows go in by ascending version and a later one replaces an earlier one.
            order = np.argsort(values[:, _VERSION], kind="stable").tolist()
            positions = {keys[i]: i for i in order}
        return cls(positions, values, (), len(positions))

    # reading
    def get(self, key: Key) -> Row | None:
        """The row of ``key``, or None if the view has no row for it."""
        for layer in reversed(self._layers):
            row = layer.get(key)
            if row is not None:
                return row
        position = self._positions.get(key)
        if position is None:
            return None
        found: Row = tuple(self._values[position].tolist())
        return found

    def __len__(self) -> int:
        return self.rows

    @property
    def layers(self) -> int:
        return len(self._layers)

    # the next snapshot
    def with_rows(self, tables: Iterable[pa.Table]) -> InventoryIndex:
        """This index plus the rows of files a commit added (each kept only if it beats the stored version)."""
        layer: dict[Key, Row] = {}
        added = 0
        for table in tables:
            if not table.num_rows:
                continue
            keys = zip(table.column("store_id").to_pylist(), table.column("item_id").to_pylist(), strict=True)
            for key, numbers in zip(keys, _numbers(table).tolist(), strict=True):
                old = layer.get(key) or self.get(key)
                if old is None or numbers[_VERSION] > old[_VERSION]:
                    added += old is None
                    layer[key] = tuple(numbers)
        if not layer:
            return self
        return InventoryIndex(self._positions, self._values, (*self._layers, layer), self.rows + added)

    def tidied(self) -> InventoryIndex | None:
        """The same rows in fewer layers (or in a new base), or None if this one is tidy enough."""
        if self.layer_rows > max(_MIN_FOLD_ROWS, len(self._positions) // 20):
            return self._folded()
        if len(self._layers) > _MAX_LAYERS:
            merged: dict[Key, Row] = {}
            for layer in self._layers:
                merged.update(layer)
            return InventoryIndex(self._positions, self._values, (merged,), self.rows)
        return None

    def _folded(self) -> InventoryIndex:
        """Every layer written into a copy of the base."""
        positions = dict(self._positions)
        latest: dict[Key, Row] = {}
        for layer in self._layers:
            latest.update(layer)
        new_keys = [key for key in latest if key not in positions]
        start = len(self._values)
        values = np.empty((start + len(new_keys), 5), dtype=np.int64)
        values[:start] = self._values
        for offset, key in enumerate(new_keys):
            positions[key] = start + offset
        for key, row in latest.items():
            values[positions[key]] = row
        return InventoryIndex(positions, values, (), len(positions))


def _value(number: int) -> int | None:
    return None if number == NULL_VALUE else number


def _time_text(micros: int) -> str | None:
    """``last_event_time`` as ``beamline query --format json`` writes it."""
    if micros == NULL_VALUE:
        return None
    try:
        return (EPOCH + dt.timedelta(microseconds=micros)).isoformat()
    except OverflowError:  # past year 9999: DuckDB's text for it, as the command line prints it
        return _timestamp_text(micros, "us", True)


def row_dict(key: Key, row: Row) -> dict[str, Any]:
    """One inventory row as JSON-ready values, the same as ``beamline query --format json`` gives."""
    on_hand, shipped, sold, events, when = row
    return {
        "store_id": key[0],
        "item_id": key[1],
        "on_hand": _value(on_hand),
        "shipped": _value(shipped),
        "sold": _value(sold),
        "events": events,
        "last_event_time": _time_text(when),
    }
