"""A coder that pickles an element whole and sizes it without encoding it.

Beam samples element sizes for its byte counters by encoding the element.
For an element that holds thousands of records (a poll, a dedupe bucket)
that is a full extra pickle per sample, for a number; these coders take an
estimate from a cheap function instead.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from apache_beam.coders import PickleCoder
from apache_beam.coders.coder_impl import CallbackCoderImpl

__all__ = ["EstimatedPickleCoder", "pickle_whole"]


def pickle_whole(value: Any) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


class EstimatedPickleCoder(PickleCoder):
    """Pickles elements; ``estimate(element)`` gives Beam their size in bytes.

    ``estimate`` must be a module-level function, so the coder pickles by
    reference. Coders compare by it: PickleCoder compares by type alone, and
    Beam shares equal coders between steps.
    """

    def __init__(self, estimate: Callable[[Any], int]) -> None:
        self._estimate = estimate

    def _create_impl(self) -> CallbackCoderImpl:
        return CallbackCoderImpl(pickle_whole, pickle.loads, size_estimator=self._estimate)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._estimate is self._estimate

    def __hash__(self) -> int:
        return hash((type(self), self._estimate))
