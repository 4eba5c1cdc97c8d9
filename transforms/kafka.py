"""Kafka I/O for Beam in pure Python (kafka-python): ReadFromKafka, WriteToKafka.

(Being written: only the record type is here yet.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KafkaRecord"]


@dataclass(frozen=True)
class KafkaRecord:
    """One Kafka record as read from the log.

    ``timestamp`` is the record's time in milliseconds since the epoch;
    ``headers`` is a tuple of ``(name, value-bytes-or-None)`` pairs.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
