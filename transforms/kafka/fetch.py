"""FetchRecords: a few records looked up by where they sit in the log, each with a value kept alongside.

A dead letter carries its record's raw bytes. A step that learns late which
records were refused (a backfill, once its buckets are whole) names them by
topic, partition and offset, and this reads exactly those records back
instead of carrying every payload through the shuffle. Records are immutable
at their offset, so the bytes are the ones first read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from core.errors import KafkaUnavailable
from transforms.kafka.clients import _Consumer, first_record_from, new_consumer
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.records import _TP, KafkaRecord
from transforms.kafka.spec import ReadTiming

__all__ = ["FetchRecords"]

# How long a lookup waits for its record before it fails the bundle (the runner retries it).
_FETCH_WAIT_S = 60.0


class _FetchFn(beam.DoFn):
    """((topic, partition, offset), value) -> (KafkaRecord, value); one consumer per DoFn instance."""

    def __init__(self, connection: KafkaConnection, timing: ReadTiming) -> None:
        self._connection = connection
        self._config = connection.role_settings(None, "consumer")
        self._timing = timing
        self._consumer: _Consumer | None = None

    def setup(self) -> None:
        self._consumer = new_consumer(self._connection, self._config, self._timing.timeout_s)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(self, element: tuple[tuple[str, int, int], Any]) -> Iterator[tuple[KafkaRecord, Any]]:
        (topic, partition, offset), value = element
        consumer = self._consumer
        assert consumer is not None
        record = first_record_from(consumer, _TP(topic, partition), offset, _FETCH_WAIT_S)
        if record is not None and record.offset == offset:  # past it: nothing readable at that offset any more
            yield record, value
            return
        raise KafkaUnavailable(
            f"the record at {topic}/{partition} offset {offset} could not be read back at "
            f"{self._connection.bootstrap_servers}; check the broker (and that retention kept it)"
        )


class FetchRecords(beam.PTransform):
    """``((topic, partition, offset), value)`` pairs -> ``(KafkaRecord, value)``: the records at those offsets.

    For a handful of records (one lookup each), not for reading a topic.
    """

    def __init__(self, connection: KafkaConnection | str, *, timing: ReadTiming | None = None) -> None:
        super().__init__()
        self._fn = _FetchFn(KafkaConnection.of(connection), timing or ReadTiming())

    def expand(self, wanted: beam.PCollection) -> beam.PCollection:
        return wanted | "Fetch" >> beam.ParDo(self._fn)
