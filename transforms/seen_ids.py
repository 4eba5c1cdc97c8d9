"""The event identities a key remembers for dedupe, as restored from the warehouse.

A streaming restart restores millions of remembered identities at once. Held
as Python tuples in dicts they cost seconds to build and hundreds of bytes
each; here each key's restored identities are three sorted NumPy arrays (a
64-bit hash of ``(kind, event_id)``, the event time, the quantity), built
from the warehouse's ``_inventory_ids`` table without a Python object per row.
Identities the key remembers after the restart go into an ordinary dict laid
over them (:class:`RestoredSeen`), so the dedupe logic reads both the same way.

The hash is stored with each identity when it is committed, so a restore never
hashes. Two identities of one key colliding in 64 bits is about as likely as
n² / 2⁶⁵ for n identities of that key: for a million, about 3 in 10⁸.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["RestoredSeen", "SeenBase", "ident_hash"]


def ident_hash(kind: str, event_id: str) -> int:
    """A stable signed 64-bit hash of an event's identity within its key."""
    digest = hashlib.blake2b(f"{kind}\x00{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SeenBase:
    """One key's restored identities: sorted hashes with their event times and quantities."""

    __slots__ = ("hashes", "quantities", "times")

    def __init__(self, hashes: np.ndarray, times: np.ndarray, quantities: np.ndarray) -> None:
        self.hashes = hashes
        self.times = times
        self.quantities = quantities

    def __len__(self) -> int:
        return len(self.hashes)

    def lookup(self, kind: str, event_id: str) -> tuple[int, int] | None:
        """(event_time, quantity) of the identity, if restored."""
        h = ident_hash(kind, event_id)
        at = int(self.hashes.searchsorted(h))  # the method: np.searchsorted's dispatch cost 4x the search
        if at < len(self.hashes) and int(self.hashes[at]) == h:
            return int(self.times[at]), int(self.quantities[at])
        return None

    def kept(self, cutoff: int) -> SeenBase | None:
        """The identities with event time at or after ``cutoff`` (None if none)."""
        keep = self.times >= cutoff
        if keep.all():
            return self
        if not keep.any():
            return None
        return SeenBase(self.hashes[keep], self.times[keep], self.quantities[keep])

    def min_time(self) -> int:
        return int(self.times.min())


class RestoredSeen(dict[tuple[str, str], tuple[int, int]]):
    """A key's remembered identities: new ones in the dict, restored ones in ``base``.

    ``get`` and ``[]`` look in both; iteration and ``items`` show only the dict
    (the dedupe logic that forgets old identities treats ``base`` apart).
    """

    __slots__ = ("base",)

    def __init__(self, entries: Any = (), base: SeenBase | None = None) -> None:
        super().__init__(entries)
        self.base = base

    def get(self, ident: tuple[str, str], default: Any = None) -> Any:
        found = dict.get(self, ident)
        if found is None and self.base is not None:
            found = self.base.lookup(*ident)
        return default if found is None else found

    def __missing__(self, ident: tuple[str, str]) -> tuple[int, int]:
        found = self.base.lookup(*ident) if self.base is not None else None
        if found is None:
            raise KeyError(ident)
        return found

    def __bool__(self) -> bool:
        return dict.__len__(self) > 0 or self.base is not None

    def remembered(self) -> int:
        """How many identities the key holds, both kinds."""
        return len(self) + (len(self.base) if self.base is not None else 0)
