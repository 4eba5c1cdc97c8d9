"""Beamline's decoder of Kafka record batches against kafka-python's own (no broker: batches built here).

Each test builds v2 record batches with kafka-python's batch builder, reads
them through kafka-python's stock ``PartitionRecords`` and through Beamline's
subclass, and requires the same records, the same next fetch offset and the
same errors.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from transforms.kafka import KafkaRecord
from transforms.kafka import records as kafka_records

TP = TopicPartition("events", 3)
GZIP = DefaultRecordBatchBuilder.CODEC_GZIP
# Batch header layout (KIP-98): attributes at byte 21, CRC-32C of the rest at 17.
_ATTRIBUTES_AT, _CRC_AT = 21, 17
_LOG_APPEND_TIME, _TRANSACTIONAL, _CONTROL = 0x08, 0x10, 0x20

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def _batch(
    base_offset: int,
    records: list[Record],
    *,
    compression: int = 0,
    producer_id: int = -1,
    attributes: int = 0,
    offset_step: int = 1,
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=bool(attributes & _TRANSACTIONAL),
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=1 << 30,
    )
    for i, (key, value, headers, timestamp) in enumerate(records):
        builder.append(i * offset_step, timestamp=timestamp, key=key, value=value, headers=headers)
    batch = builder.build()
    struct.pack_into(">q", batch, 0, base_offset)
    if attributes & ~_TRANSACTIONAL:
        # What only a broker sets: log append time and control batches. Re-sign the batch.
        batch[_ATTRIBUTES_AT + 1] |= attributes
        struct.pack_into(">I", batch, _CRC_AT, calc_crc32c(memoryview(batch)[_ATTRIBUTES_AT:]))
    return bytes(batch)


class _AbortedTransaction(NamedTuple):
    producer_id: int
    first_offset: int


def _abort_marker(base_offset: int, producer_id: int) -> bytes:
    """A control batch holding an abort marker: key = (version 0, type 0 = abort)."""
    record = (struct.pack(">hh", 0, 0), struct.pack(">hi", 0, 0), [], 1_700_000_000_000)
    return _batch(base_offset, [record], producer_id=producer_id, attributes=_TRANSACTIONAL | _CONTROL)


def _stock(fetch_offset: int, data: bytes, **kw: Any) -> Any:
    return Fetcher.PartitionRecords(fetch_offset, TP, MemoryRecords(data), **kw)


def _beamline(fetch_offset: int, data: bytes, **kw: Any) -> Any:
    cls = kafka_records._TUPLE_RECORDS
    assert cls is not None, "the pinned kafka-python must take Beamline's decoder"
    return cls(fetch_offset, TP, MemoryRecords(data), **kw)


def _as_tuples(records: list[Any]) -> list[KafkaRecord]:
    return [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers) if r.headers else ())
        for r in records
    ]


def _same(fetch_offset: int, data: bytes, take: int | None = None, **kw: Any) -> list[KafkaRecord]:
    """Read ``data`` both ways, ``take`` records at a time; assert equal records and positions."""
    stock, ours = _stock(fetch_offset, data, **kw), _beamline(fetch_offset, data, **kw)
    read: list[KafkaRecord] = []
    while True:
        expected, got = _as_tuples(stock.take(take)), ours.take(take)
        assert got == expected
        assert all(type(r) is KafkaRecord for r in got)
        assert ours.next_fetch_offset == stock.next_fetch_offset
        read += got
        if not stock:  # drained
            assert not ours
            break
    assert ours.records_read == stock.records_read
    return read


_bytes_or_none = st.none() | st.binary(max_size=300)
_header = st.tuples(st.text(max_size=12), _bytes_or_none)
_record = st.tuples(
    _bytes_or_none,
    _bytes_or_none,
    st.lists(_header, max_size=3),
    st.integers(min_value=1_600_000_000_000, max_value=1_800_000_000_000),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(_record, min_size=1, max_size=40), min_size=1, max_size=4),
    gzip=st.booleans(),
    append_time=st.booleans(),
    offset_step=st.sampled_from([1, 1, 7]),  # 7: gaps as compaction leaves them
    skip=st.integers(min_value=0, max_value=30),
    take=st.sampled_from([None, 1, 13]),
)
def test_records_equal_kafka_pythons(
    batches: list[list[Record]], gzip: bool, append_time: bool, offset_step: int, skip: int, take: int | None
) -> None:
    data, base = b"", 1_000
    for records in batches:
        data += _batch(
            base,
            records,
            compression=GZIP if gzip else 0,
            attributes=_LOG_APPEND_TIME if append_time else 0,
            offset_step=offset_step,
        )
        base += len(records) * offset_step + 5
    read = _same(1_000 + skip, data, take)
    assert len(read) <= sum(len(b) for b in batches)


def test_large_offsets_timestamps_and_values_take_multibyte_varints() -> None:
    records: list[Record] = [
        (b"k" * 200, b"v" * (1 << 20), [("h" * 150, None)], 1_700_000_000_000 + 10**9 * i) for i in range(3)
    ]
    read = _same(2**40, _batch(2**40, records, offset_step=100_000))
    assert [r.offset for r in read] == [2**40, 2**40 + 100_000, 2**40 + 200_000]
    assert read[2].value == b"v" * (1 << 20)


def test_aborted_transactions_and_control_batches_are_skipped_under_read_committed() -> None:
    aborted = [(b"a", b"aborted", [], 1_700_000_000_000)] * 3
    committed = [(b"c", b"committed", [], 1_700_000_000_000)] * 2
    data = (
        _batch(0, aborted, producer_id=7, attributes=_TRANSACTIONAL)
        + _abort_marker(3, 7)
        + _batch(4, committed, producer_id=8, attributes=_TRANSACTIONAL)
    )
    # What a fetch response lists for the partition: producer 7 aborted from offset 0.
    kw = {"isolation_level": IsolationLevel.READ_COMMITTED, "aborted_transactions": [_AbortedTransaction(7, 0)]}
    read = _same(0, data, **kw)
    assert [r.value for r in read] == [b"committed"] * 2
    # read_uncommitted sees the aborted records too, never the marker
    assert [r.value for r in _same(0, data)] == [b"aborted"] * 3 + [b"committed"] * 2


def test_a_malformed_record_is_a_corrupt_record_error_as_in_kafka_python() -> None:
    good = _batch(0, [(b"k", b"value", [], 1_700_000_000_000)] * 2)
    broken = bytearray(good)
    broken[-7] = 12  # the last value's size, 5 -> 6 (zig-zag): its fields no longer add up
    struct.pack_into(">I", broken, _CRC_AT, calc_crc32c(memoryview(broken)[_ATTRIBUTES_AT:]))
    for reader in (_stock, _beamline):
        records = reader(0, bytes(broken))
        with pytest.raises(CorruptRecordError):  # kafka-python's after the good record; ours at once
            while records:
                records.take()
    with pytest.raises(CorruptRecordError, match="crc"):
        _beamline(0, good[:-1] + bytes([good[-1] ^ 1])).take()


def test_install_declines_a_consumer_with_deserializers() -> None:
    class _Fetcher:
        config = {"key_deserializer": bytes.decode, "value_deserializer": None}

    class _Consumer:
        _fetcher = _Fetcher()

    assert kafka_records.install(_Consumer()) is False
    assert "PartitionRecords" not in vars(_Consumer._fetcher)
    _Fetcher.config = {"key_deserializer": None, "value_deserializer": None}
    assert kafka_records.install(_Consumer()) is True
    assert _Consumer._fetcher.PartitionRecords is kafka_records._TUPLE_RECORDS
    assert kafka_records.install(object()) is False


def test_v1_message_sets_of_old_brokers_read_through_kafka_pythons_decoder() -> None:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    for offset, (key, value) in enumerate([(b"k", b"v"), (None, b""), (b"k2", None)]):
        builder.append(offset, timestamp=1_700_000_000_000 + offset, key=key, value=value)
    read = _same(1, bytes(builder.build()))
    assert [(r.offset, r.key, r.value) for r in read] == [(1, None, b""), (2, b"k2", None)]
