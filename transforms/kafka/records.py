"""Kafka records as the read emits them, and the decoder that builds them from fetched batches.

:class:`KafkaRecord` (one record), :class:`KafkaBatch` (one poll of one
partition, for ``ReadFromKafka(batched=True)``) and its coder live here, below
every other module of the package, so the clients, the read and the steps
downstream share one definition.

The decoder: kafka-python turns each record of a fetch into a ``DefaultRecord``
(through properties read once per field) and then a 13-field ``ConsumerRecord``,
which the reader copied into a ``KafkaRecord``: about 5.5 µs a record, more than
half of what a plain consumer loop spends. This module keeps kafka-python for
everything but that step (the fetch protocol, offsets, CRC checks,
decompression, transactions) and decodes the records of a v2 batch (KIP-98's
format) in one tight loop: about 1.9 µs a record.

It plugs in per consumer, by giving that consumer's fetcher a subclass of
kafka-python's ``PartitionRecords``. That class is internal to kafka-python,
so :func:`install` checks for what it relies on and leaves the consumer as it
was when a kafka-python release differs; the tests pin that it does install
with the release in requirements.txt.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import apache_beam as beam

from transforms.coders import EstimatedPickleCoder

__all__ = ["KafkaBatch", "KafkaBatchCoder", "KafkaRecord", "decode_records", "install"]


class KafkaRecord(NamedTuple):
    """One Kafka record as read from the log; immutable.

    ``timestamp`` is the record's time in milliseconds since the epoch;
    ``headers`` is a tuple of ``(name, value-bytes-or-None)`` pairs. A named
    tuple rather than a frozen dataclass: a backfill builds one per record,
    and a tuple is three times cheaper to build.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class KafkaBatch(NamedTuple):
    """Consecutive records of one partition as one poll returned them: ``ReadFromKafka(batched=True)``.

    For steps that do their per-record work in plain Python, such as a
    backfill's decode: one element per poll (up to thousands of records)
    instead of one per record takes Beam's per-element cost off the hot path.
    The element is timestamped with its newest record's time (with an
    event-time read, with the earliest of its records' stamps).
    """

    topic: str
    partition: int
    records: tuple[KafkaRecord, ...]


class KafkaBatchCoder(EstimatedPickleCoder):
    """Pickles a :class:`KafkaBatch`; estimates its size from a few of its records.

    A poll can hold tens of thousands of records: pickling sampled batches for
    Beam's byte counters cost a backfill over a second per million records.
    """

    def __init__(self) -> None:
        super().__init__(_estimated_batch_size)


_RECORD_OVERHEAD = 48  # pickled bytes of a record besides its key and value, roughly


def _estimated_batch_size(batch: KafkaBatch) -> int:
    records = batch.records
    if not records:
        return 64
    probe = records[:: max(1, len(records) // 16)]
    probe_bytes = sum(len(r.key or b"") + len(r.value or b"") + _RECORD_OVERHEAD for r in probe)
    return 64 + probe_bytes * len(records) // len(probe)


beam.coders.registry.register_coder(KafkaBatch, KafkaBatchCoder)


class _TP(NamedTuple):
    """A (topic, partition) pair; equal to kafka-python's TopicPartition."""

    topic: str
    partition: int


# -- the record-batch decoder ---------------------------------------------------------

_BATCH_HEADER_SIZE = 61  # bytes before the records of a v2 batch
_new_tuple = tuple.__new__


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``pos`` (any length) and the position after it."""
    raw = 0
    shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")


def decode_records(
    buffer: bytes,
    pos: int,
    count: int,
    *,
    base_offset: int,
    first_timestamp: int,
    append_time: int | None,
    topic: str,
    partition: int,
) -> list[KafkaRecord]:
    """Decode ``count`` records of one v2 batch starting at ``pos`` in ``buffer``.

    ``buffer`` holds the batch's (decompressed) records and must end where they
    end. ``append_time`` is the batch's max timestamp when the topic stamps log
    append time, else None (each record carries a delta to ``first_timestamp``).
    Raises ValueError or IndexError on a malformed record.

    The varints are decoded inline when they fit in one byte (most do); this
    loop is the whole per-record cost of a read, so it trades tidiness for speed.
    """
    records: list[KafkaRecord] = []
    append = records.append
    varint = _varint
    new = _new_tuple
    record_type = KafkaRecord
    for _ in range(count):
        byte = buffer[pos]
        if byte < 0x80:
            length, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        else:
            length, pos = varint(buffer, pos)
        end = pos + length
        pos += 1  # attributes: unused by v2 records
        byte = buffer[pos]
        if byte < 0x80:
            timestamp_delta, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        else:
            timestamp_delta, pos = varint(buffer, pos)
        byte = buffer[pos]
        if byte < 0x80:
            offset_delta, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        else:
            offset_delta, pos = varint(buffer, pos)
        byte = buffer[pos]
        if byte < 0x80:
            size, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        else:
            size, pos = varint(buffer, pos)
        if size >= 0:
            key: bytes | None = buffer[pos : pos + size]
            pos += size
        else:
            key = None
        byte = buffer[pos]
        if byte < 0x80:
            size, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        else:
            size, pos = varint(buffer, pos)
        if size >= 0:
            value: bytes | None = buffer[pos : pos + size]
            pos += size
        else:
            value = None
        if buffer[pos] == 0:  # no headers: the usual case
            headers: tuple[tuple[str, bytes | None], ...] = ()
            pos += 1
        else:
            headers, pos = _headers(buffer, pos)
        if pos != end:
            raise ValueError(f"a record's fields take {pos - end + length} bytes, its length says {length}")
        append(
            new(
                record_type,
                (
                    topic,
                    partition,
                    base_offset + offset_delta,
                    first_timestamp + timestamp_delta if append_time is None else append_time,
                    key,
                    value,
                    headers,
                ),
            )
        )
    if pos != len(buffer):
        raise ValueError(f"{len(buffer) - pos} bytes left after the batch's {count} records")
    return records


def _headers(buffer: bytes, pos: int) -> tuple[tuple[tuple[str, bytes | None], ...], int]:
    count, pos = _varint(buffer, pos)
    if count < 0:
        raise ValueError(f"a negative header count ({count})")
    headers = []
    for _ in range(count):
        size, pos = _varint(buffer, pos)
        if size < 0:
            raise ValueError(f"a header name of negative size ({size})")
        name = buffer[pos : pos + size].decode("utf-8")
        pos += size
        size, pos = _varint(buffer, pos)
        if size >= 0:
            value: bytes | None = buffer[pos : pos + size]
            pos += size
        else:
            value = None
        headers.append((name, value))
    return tuple(headers), pos


def _partition_records_class() -> type | None:
    """kafka-python's PartitionRecords with the records of v2 batches decoded here, or None."""
    try:
        from kafka.consumer.fetcher import Fetcher, IsolationLevel
        from kafka.errors import CorruptRecordError
        from kafka.record.default_records import DefaultRecordBatch
    except ImportError:
        return None
    base = getattr(Fetcher, "PartitionRecords", None)
    needed = ("_unpack_records", "_consume_aborted_transactions_up_to", "_is_batch_aborted", "_contains_abort_marker")
    if base is None or not all(hasattr(base, name) for name in needed):
        return None
    if not {"_buffer", "_pos"} <= set(DefaultRecordBatch.__slots__) or not hasattr(
        DefaultRecordBatch, "_maybe_uncompress"
    ):
        return None

    class _TupleRecords(base):  # type: ignore[misc, valid-type]
        """Yields KafkaRecord tuples; batch handling as kafka-python's, record decoding from this module."""

        def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any) -> Any:
            topic, partition = tp.topic, tp.partition
            last_batch = None
            while (batch := records.next_batch()) is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {tp} at offset {batch.base_offset} failed crc check"
                    )
                if batch.magic < 2:
                    yield from self._legacy(batch, topic, partition)
                    continue
                self.leader_epoch = batch.leader_epoch
                if self._skipped(batch):
                    self.next_fetch_offset = batch.next_offset
                    continue
                batch._maybe_uncompress()
                buffer = bytes(batch._buffer)
                try:
                    decoded = decode_records(
                        buffer,
                        batch._pos,
                        batch.records_count,
                        base_offset=batch.base_offset,
                        first_timestamp=batch.first_timestamp,
                        append_time=batch.max_timestamp if batch.timestamp_type == 1 else None,
                        topic=topic,
                        partition=partition,
                    )
                except (ValueError, IndexError, UnicodeDecodeError) as exc:
                    raise CorruptRecordError(
                        f"Found invalid record structure in {tp} at offset {batch.base_offset}: {exc}"
                    ) from None
                self.records_read += len(decoded)
                self.bytes_read += len(buffer) - batch._pos
                for record in decoded:
                    self.next_fetch_offset = record.offset + 1
                    yield record
            # A v2 batch keeps its last offset even when compaction removed the
            # last record: fetch after it, not after the last record seen.
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

        def _skipped(self, batch: Any) -> bool:
            """True for a control batch and for a batch of an aborted transaction (read_committed)."""
            if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                self._consume_aborted_transactions_up_to(batch.last_offset)
                if self._contains_abort_marker(batch):
                    self.aborted_producer_ids.discard(batch.producer_id)
                elif self._is_batch_aborted(batch):
                    return True
            return bool(batch.is_control_batch)

        def _legacy(self, batch: Any, topic: str, partition: int) -> Any:
            """Records of a v0/v1 message set (brokers before 0.11), through kafka-python's own decoder."""
            for record in batch:
                self.records_read += 1
                self.bytes_read += record.size_in_bytes
                self.next_fetch_offset = record.offset + 1
                yield KafkaRecord(topic, partition, record.offset, record.timestamp, record.key, record.value, ())

    return _TupleRecords


_TUPLE_RECORDS = _partition_records_class()


def install(consumer: Any) -> bool:
    """Make ``consumer.poll`` return :class:`KafkaRecord` tuples; False (and no change) if it cannot.

    Only for a consumer with no key or value deserializer: the records keep
    their raw bytes.
    """
    fetcher: Any = getattr(consumer, "_fetcher", None)
    config = getattr(fetcher, "config", None)
    if _TUPLE_RECORDS is None or not isinstance(config, dict):
        return False
    if config.get("key_deserializer") is not None or config.get("value_deserializer") is not None:
        return False
    fetcher.PartitionRecords = _TUPLE_RECORDS
    return True
