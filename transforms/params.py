"""Beam's DoFn parameter markers, typed so a parameter keeps its own type.

Beam recognises ``key=beam.DoFn.KeyParam`` by the default value; to a type
checker that default is a ``_DoFnParam``, not the key. These aliases are the
same objects, typed ``Any``, so ``key: tuple[str, str] = KEY_PARAM`` checks.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

__all__ = ["KEY_PARAM", "TIMESTAMP_PARAM"]

KEY_PARAM: Any = beam.DoFn.KeyParam
TIMESTAMP_PARAM: Any = beam.DoFn.TimestampParam
