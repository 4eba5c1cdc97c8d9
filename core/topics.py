"""The registry of Kafka topics Beamline reads and writes.

Names are defined once here; every default elsewhere refers to these
constants, and each one can be overridden on the command line.
"""

from __future__ import annotations

__all__ = ["DEAD_LETTERS", "SALES", "SHIPMENTS", "TEXT_LINES", "WORD_COUNTS"]

SHIPMENTS = "shipments"
SALES = "sales"
TEXT_LINES = "text-lines"
DEAD_LETTERS = "dead-letters"
WORD_COUNTS = "word-counts"
