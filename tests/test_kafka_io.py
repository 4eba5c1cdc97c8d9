"""ReadFromKafka / WriteToKafka against the session's real broker.

Given records produced with known offsets, when a pipeline reads them, then it
returns exactly those records (FnApiRunner and Prism, batch and streaming).
The contract tests run once per Kafka client (the ``client`` fixture).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions, NewTopic

from core.errors import ConfigError, KafkaUnavailable
from infra.kafka_broker import KafkaBroker, free_port
from pipelines.runner import PRISM_NO_SPLITS
from transforms.kafka import (
    KAFKA_CLIENTS,
    LOCAL_PROGRESS,
    METRICS_NAMESPACE,
    PROGRESS_DIR_ENV,
    KafkaBatch,
    KafkaBatchCoder,
    KafkaConnection,
    KafkaRecord,
    KafkaSender,
    KafkaWriteError,
    ReadFromKafka,
    ReadTiming,
    StartAt,
    StopAt,
    WriteToKafka,
    count_records,
    ensure_topics,
    wait_for_kafka,
)
from transforms.kafka.partitions import _RANGE_COST, _equal_shares, _Partition
from transforms.kafka.read import _OffsetTracker
from transforms.kafka.records import _TP
from transforms.kafka.watermarks import SharedWatermarks, _PartitionWatermark, event_time_step

BIG_VALUE = bytes(range(256)) * 4096  # 1 MiB


def _fingerprint(rec: KafkaRecord, ts: Timestamp = MIN_TIMESTAMP) -> tuple[Any, ...]:
    """A small, comparable summary of a record (the 1 MiB value is hashed)."""
    value = None if rec.value is None else hashlib.sha1(rec.value).hexdigest()
    timestamped = ts == MIN_TIMESTAMP or ts.micros == rec.timestamp * 1000
    return (rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, value, rec.headers, timestamped)


def _expected(topic: str, meta: Any, key: bytes | None, value: bytes | None, headers: Any) -> tuple[Any, ...]:
    digest = None if value is None else hashlib.sha1(value).hexdigest()
    return (topic, meta.partition, meta.offset, meta.timestamp, key, digest, tuple(headers), True)


class _Fingerprint(beam.DoFn):
    def process(self, rec: KafkaRecord, ts: Any = beam.DoFn.TimestampParam) -> Iterator[tuple[Any, ...]]:
        yield _fingerprint(rec, ts)


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, result: Any = None) -> None:
    """Poll ``condition`` until it holds; fail at the deadline or when the pipeline died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if result is not None and PipelineState.is_terminal(result.state):
            pytest.fail(f"the pipeline ended ({result.state}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def _prism(prism_location: str, *, streaming: bool = False, splits: bool = True) -> beam.Pipeline:
    args = [f"--prism_location={prism_location}"]
    if streaming:
        args.append("--streaming")
    if not splits:
        # As Beamline's runner does (pipelines.runner.PRISM_NO_SPLITS): Prism 2.77
        # may split a bundle of a stateful step and then run the same key in two
        # bundles at once. Unbounded discovery keeps its "seen partitions" in
        # such a step: the race emits a partition twice, and the whole partition
        # is read twice. Seen here under load (2 busy cores), in Prism's log:
        # "split elements" on NewPartitionsOnly, then a second bundle of its key
        # reading the state before the first one committed.
        args.append(f"--experiments={PRISM_NO_SPLITS}")
    return beam.Pipeline("PrismRunner", options=PipelineOptions(args))


def _committed_reader(bootstrap: str, *topics: str) -> KafkaConsumer:
    """A plain consumer of ``topics`` from their start that sees committed transactions only."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed")
    consumer.assign([TopicPartition(topic, 0) for topic in topics])
    consumer.seek_to_beginning()
    return consumer


def _fn_api() -> beam.Pipeline:
    return beam.Pipeline("FnApiRunner")


@pytest.fixture(params=KAFKA_CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    """Each Kafka client ReadFromKafka / WriteToKafka can use."""
    return str(request.param)


@pytest.fixture
def kafka(bootstrap_servers: str, client: str) -> KafkaConnection:
    """The session's broker, through each Kafka client."""
    return KafkaConnection(bootstrap_servers, client=client)


def _group(client: str, group: str) -> dict[str, str]:
    """A consumer group setting in the client's own dialect."""
    return {"group.id" if client == "confluent" else "group_id": group}


@pytest.fixture(scope="module")
def backfill_topic(bootstrap_servers: str) -> tuple[str, list[tuple[Any, ...]]]:
    """A 4-partition topic with 20k records: null keys, empty values, headers, one 1 MiB value."""
    topic = f"backfill-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=10, max_request_size=4 << 20)
    sent = []
    for i in range(20_000):
        key = None if i % 7 == 0 else b"k%d" % i
        value = BIG_VALUE if i == 12_345 else (b"" if i % 11 == 0 else b"v%d" % i)
        headers = [("source", b"test"), ("n", str(i).encode())] if i % 5 == 0 else []
        if i % 13 == 0:
            headers.append(("empty", b""))  # kafka-python's producer refuses None header values
        future = producer.send(topic, key=key, value=value, headers=headers, partition=i % 4)
        sent.append((future, key, value, headers))
    producer.flush()
    producer.close()
    expected = [_expected(topic, f.get(timeout=10), k, v, h) for f, k, v, h in sent]
    return topic, expected


def _read_all(
    pipeline: beam.Pipeline, connection: KafkaConnection | str, topic: str, expected: list[Any], **kw: Any
) -> None:
    with pipeline as p:
        got = p | ReadFromKafka(connection, topic, stop="end", **kw) | beam.ParDo(_Fingerprint())
        assert_that(got, equal_to(expected))


# -- bounded reads (backfill) -----------------------------------------------------------


def test_bounded_read_returns_exactly_the_log_on_fnapi(backfill_topic: Any, kafka: KafkaConnection) -> None:
    topic, expected = backfill_topic
    assert len(expected) == 20_000 and any(e[4] is None for e in expected) and any(e[6] for e in expected)
    _read_all(_fn_api(), kafka, topic, expected)


def test_kafka_python_polls_come_from_beamlines_record_decoder(bootstrap_servers: str, backfill_topic: Any) -> None:
    """The pinned kafka-python takes Beamline's decoder; a release that did not would fall back silently."""
    topic, expected = backfill_topic
    consumer = ReadFromKafka(bootstrap_servers, topic, stop="end")._spec.new_consumer()
    try:
        assert consumer._tuples is True
        tp = _TP(topic, 0)
        consumer.assign(tp)
        consumer.seek(tp, 0)
        records: list[Any] = []
        while len(records) < 100:
            records += consumer.poll_batch(tp, 1.0)
        assert all(type(r) is KafkaRecord for r in records)
        assert {_fingerprint(r) for r in records} <= set(expected)
    finally:
        consumer.close()


class _UnpackBatch(beam.DoFn):
    """A batch's records as fingerprints, after checking the batch's own promises."""

    def process(self, batch: KafkaBatch, ts: Any = beam.DoFn.TimestampParam) -> Iterator[tuple[Any, ...]]:
        records = batch.records
        assert records, "an empty batch"
        assert all(r.topic == batch.topic and r.partition == batch.partition for r in records)
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets)), "a batch's offsets must rise"
        assert ts.micros == max(r.timestamp for r in records) * 1000, "stamped with its newest record"
        for rec in records:
            yield _fingerprint(rec)


def test_batch_coder_round_trips_and_sizes_a_batch_without_pickling_it(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = (("h", b"x"),)
    records = tuple(
        KafkaRecord("t", 1, n, 1_000 + n, None if n % 3 else b"k%d" % n, b"v" * (n % 200), headers if n % 7 else ())
        for n in range(5_000)
    )
    batch = KafkaBatch("t", 1, records)
    coder = beam.coders.registry.get_coder(KafkaBatch)
    assert isinstance(coder, KafkaBatchCoder)
    encoded = coder.encode(batch)
    assert coder.decode(encoded) == batch
    # Beam sizes sampled elements for its byte counters; for a batch that must not pickle it again.
    monkeypatch.setattr("transforms.coders.pickle_whole", lambda value: pytest.fail("pickled to size"))
    estimate = KafkaBatchCoder().get_impl().estimate_size(batch)
    assert len(encoded) / 2 < estimate < len(encoded) * 2
    assert KafkaBatchCoder().get_impl().estimate_size(KafkaBatch("t", 1, ())) > 0


def _fewer_than(limit: int) -> Callable[[list[int]], None]:
    def check(counts: list[int]) -> None:
        assert counts and counts[0] < limit, f"{counts} elements, expected fewer than {limit}"

    return check


def test_batched_bounded_read_returns_exactly_the_log_in_batches(backfill_topic: Any, kafka: KafkaConnection) -> None:
    topic, expected = backfill_topic
    with _fn_api() as p:
        batches = p | ReadFromKafka(kafka, topic, stop=StopAt("end"), batched=True)
        got = batches | beam.ParDo(_UnpackBatch())
        assert_that(got, equal_to(expected), label="Records")
        # Batching is the point: far fewer elements than records.
        assert_that(batches | "Batches" >> beam.combiners.Count.Globally(), _fewer_than(len(expected) // 10))


def test_bounded_read_returns_exactly_the_log_with_two_worker_processes(
    bootstrap_servers: str, backfill_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The FnApiRunner's multi-worker mode can drop an SDF's self-checkpoint residual
    # (apache/beam#19842), and a 2-worker backfill once read a third of a topic; a
    # bounded read must come out whole however small its polls and bundle deadline.
    topic, expected = backfill_topic
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))  # as a batch run's launcher does
    options = PipelineOptions(direct_num_workers=2, direct_running_mode="multi_processing")
    pipeline = beam.Pipeline("FnApiRunner", options=options)
    small_polls = {"max_poll_records": 500}
    _read_all(
        pipeline, bootstrap_servers, topic, expected, timing=ReadTiming(max_bundle_s=0.01), consumer_config=small_polls
    )
    # The workers' readers told the launcher how many records they read, every one.
    assert LOCAL_PROGRESS.in_other_processes(str(tmp_path)) == len(expected)


def test_a_bounded_read_on_two_worker_processes_gives_each_an_equal_share(
    bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skewed partitions: dealt whole in turn, one worker would read 3,400 records and the other 600.
    topic = make_topic(partitions=3)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    sent = [
        (producer.send(topic, value=b"%d" % i, partition=partition), b"%d" % i)
        for partition, count in ((0, 3000), (1, 600), (2, 400))
        for i in range(count)
    ]
    producer.flush()
    producer.close()
    expected = [_expected(topic, future.get(timeout=10), None, value, []) for future, value in sent]
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))
    options = PipelineOptions(direct_num_workers=2, direct_running_mode="multi_processing")
    _read_all(beam.Pipeline("FnApiRunner", options=options), bootstrap_servers, topic, expected, readers=2)
    per_worker = sorted(int(report.read_text()) for report in tmp_path.iterdir() if report.name.isdigit())
    # Each worker read exactly the share planned for it (by work, with a cost per range).
    dealt = _equal_shares([_Partition(topic, p, 0, n) for p, n in ((0, 3000), (1, 600), (2, 400))], 2)
    planned = sorted(sum(p.stop - p.start for p in dealt[k::2]) for k in range(2))
    assert per_worker == planned != [600, 3400]


def test_equal_shares_cut_bounded_ranges_into_shares_dealt_in_turn() -> None:
    thousand = 1000
    parts = [
        _Partition("sales", 0, 0, 239 * thousand),
        _Partition("sales", 1, 10, 274 * thousand),
        _Partition("sales", 2, 0, 287 * thousand),
        _Partition("sales", 3, 0, 155 * thousand),
        _Partition("ships", 0, 3, 17 * thousand),
        _Partition("ships", 1, 0, 9 * thousand),
        _Partition("ships", 2, 5, 5),  # empty
    ]

    def cover(ranges: list[_Partition]) -> list[tuple[str, int, int, int]]:
        """The offsets read, as spans per partition; an overlap or a gap shows as an extra span."""
        spans: list[tuple[str, int, int, int]] = []
        for topic, partition, start, stop in sorted(p for p in ranges if p.stop > p.start):
            if spans and spans[-1][:2] == (topic, partition) and spans[-1][3] == start:
                start = spans.pop()[2]
            spans.append((topic, partition, start, stop))
        return spans

    for readers in (2, 3, 4, 7):
        dealt = _equal_shares(parts, readers)
        assert len(dealt) % readers == 0  # padded with empty ranges: the turns stay aligned
        # Equal work: records, plus a cost for starting each range.
        shares = [[p for p in dealt[k::readers] if p.stop > p.start] for k in range(readers)]
        work = [sum(p.stop - p.start + _RANGE_COST for p in share) for share in shares]
        assert max(work) - min(work) <= 2 * _RANGE_COST, work
        # Every offset exactly once, at most readers - 1 partitions cut.
        assert cover(dealt) == cover(parts)
        assert sum(map(len, shares)) <= 6 + readers - 1
    assert _equal_shares(parts, 1) == parts
    unbounded = [_Partition("sales", 0, 0, None)]
    assert _equal_shares(unbounded, 2) == unbounded
    with pytest.raises(ConfigError, match="readers"):
        ReadFromKafka("localhost:9092", "t", readers=0, validate=False)


def test_bounded_read_returns_exactly_the_log_on_prism(
    backfill_topic: Any, prism_location: str, kafka: KafkaConnection
) -> None:
    topic, expected = backfill_topic
    _read_all(_prism(prism_location), kafka, topic, expected)


def test_bounded_read_finishes_in_streaming_mode_on_prism(
    bootstrap_servers: str, make_topic: Callable[..., str], prism_location: str, kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=3)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    # Event times spread over 30 one-minute windows an hour ago: history, which
    # a backfill in streaming mode must not treat as late.
    base = (int(time.time()) - 3600) // 60 * 60 * 1000
    metas = [
        producer.send(topic, value=b"%d" % i, partition=i % 2, timestamp_ms=base + i * 6000).get(timeout=10)
        for i in range(300)
    ]
    producer.close()
    # Partition 2 is empty: its range is empty and must not keep the read alive.
    expected = [(m.partition, m.offset) for m in metas]
    with _prism(prism_location, streaming=True) as p:
        records = p | ReadFromKafka(kafka, topic, stop="end")
        got = records | beam.Map(lambda r: (r.partition, r.offset))
        assert_that(got, equal_to(expected))
        per_window = (
            records
            | beam.WindowInto(window.FixedWindows(60))
            | beam.Map(lambda r: ("all", 1))
            | beam.CombinePerKey(sum)
            | beam.Map(lambda kv: kv[1])
        )
        assert_that(per_window, equal_to([10] * 30), label="every window complete")


def test_stop_and_start_by_offsets_and_time(
    bootstrap_servers: str, make_topic: Callable[..., str], kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    base = 1_700_000_000_000
    for i in range(50):
        producer.send(topic, value=b"%d" % i, timestamp_ms=base + i * 1000)
    producer.flush()
    producer.close()
    moment = datetime.fromtimestamp((base + 20_000) / 1000, tz=timezone.utc)
    with _fn_api() as p:
        by_offsets = (
            p
            | "Offsets" >> ReadFromKafka(kafka, topic, start={(topic, 0): 5}, stop={(topic, 0): 15})
            | "O" >> beam.Map(lambda r: r.offset)
        )
        by_time = (
            p
            | "Time" >> ReadFromKafka(kafka, topic, start=StartAt(moment), stop="end")
            | "T" >> beam.Map(lambda r: r.offset)
        )
        until_time = p | "Until" >> ReadFromKafka(kafka, topic, stop=moment) | "U" >> beam.Map(lambda r: r.offset)
        assert_that(by_offsets, equal_to(list(range(5, 15))), label="by offsets")
        assert_that(by_time, equal_to(list(range(20, 50))), label="from time")
        assert_that(until_time, equal_to(list(range(20))), label="until time")


# -- unbounded reads (streaming) ----------------------------------------------------------


class _WindowCount(beam.DoFn):
    def process(self, count: int, win: Any = beam.DoFn.WindowParam) -> Iterator[tuple[bytes, bytes]]:
        yield b"window", b"%d:%d" % (win.start.micros // 1_000_000, count)


def _partition_count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        consumer.topics()  # a fresh metadata request
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def _drain(consumer: KafkaConsumer, into: list[Any]) -> None:
    for records in consumer.poll(timeout_ms=200).values():
        into.extend(records)


@pytest.mark.slow
def test_unbounded_read_on_prism_follows_new_records_partitions_and_idle_watermark(
    bootstrap_servers: str, make_topic: Callable[..., str], prism_location: str, kafka: KafkaConnection
) -> None:
    source = make_topic(partitions=2)
    raw_out = make_topic(partitions=1)
    window_out = make_topic(partitions=1)
    p = _prism(prism_location, streaming=True, splits=False)
    timing = ReadTiming(discovery_interval_s=1.0, allowed_skew_s=1.0, resume_delay_s=0.2, max_bundle_s=1)
    records = p | ReadFromKafka(kafka, source, timing=timing)
    (records | "Raw" >> beam.Map(lambda r: (None, r.value)) | "WriteRaw" >> WriteToKafka(kafka, raw_out))
    (
        records
        | "Window" >> beam.WindowInto(window.FixedWindows(2))
        | "Count" >> beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
        | "Label" >> beam.ParDo(_WindowCount())
        | "WriteWindows" >> WriteToKafka(kafka, window_out)
    )
    # History from two minutes ago, in the log before the pipeline starts: its
    # window must still count it (the watermark may not run ahead of the log).
    old_millis = int(time.time() * 1000) - 120_000
    old_window = old_millis // 2000 * 2
    history = [b"old-%d" % i for i in range(10)]
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for value in history:
        producer.send(source, value=value, partition=0, timestamp_ms=old_millis)
    producer.close()
    result = p.run()
    consumer = _committed_reader(bootstrap_servers, raw_out, window_out)
    seen: list[Any] = []
    try:
        # Records arrive after the pipeline started; only partition 0 gets any,
        # so partition 1 is idle and only its idle watermark lets windows fire.
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
        first = [b"live-%d" % i for i in range(20)]
        for value in first:
            producer.send(source, value=value, partition=0)
        producer.flush()

        def values() -> set[bytes]:
            return {r.value for r in seen if r.topic == raw_out}

        def windows() -> list[bytes]:
            return [r.value for r in seen if r.topic == window_out]

        _wait_for(
            lambda: (_drain(consumer, seen), set(first) <= values())[1], 90, "records produced after start", result
        )
        assert set(history) <= values()

        def live_count() -> int:
            return sum(int(w.split(b":")[1]) for w in windows() if int(w.split(b":")[0]) != old_window)

        _wait_for(
            lambda: (
                (_drain(consumer, seen), b"%d:10" % old_window in windows(), live_count() == len(first))[1:]
                == (True, True)
            ),
            60,
            "the windows of old and live records to fire with partition 1 idle",
            result,
        )

        # A partition added while running is discovered and read from its start.
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
        admin.create_partitions({source: NewPartitions(total_count=3)})
        admin.close()
        producer.close()
        _wait_for(lambda: _partition_count(bootstrap_servers, source) == 3, 30, "the new partition in metadata")
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
        producer.send(source, value=b"new-partition", partition=2).get(timeout=10)
        producer.close()
        _wait_for(
            lambda: (_drain(consumer, seen), b"new-partition" in values())[1],
            60,
            "the added partition's record",
            result,
        )
        raw_values = [r.value for r in seen if r.topic == raw_out]
        assert sorted(raw_values) == sorted([*history, *first, b"new-partition"]), "lost or duplicated records"
        assert live_count() == len(first) and windows().count(b"%d:10" % old_window) == 1
    finally:
        consumer.close()
        result.cancel()


@pytest.mark.slow
def test_unbounded_read_survives_a_broker_restart_without_loss_or_duplicates(
    kafka_broker: KafkaBroker,
    bootstrap_servers: str,
    make_topic: Callable[..., str],
    prism_location: str,
    kafka: KafkaConnection,
) -> None:
    source = make_topic(partitions=2)
    out = make_topic(partitions=1)
    p = _prism(prism_location, streaming=True, splits=False)
    (
        p
        | ReadFromKafka(kafka, source, timing=ReadTiming(discovery_interval_s=2.0, resume_delay_s=0.2, max_bundle_s=1))
        | beam.Map(lambda r: (None, r.value))
        | WriteToKafka(kafka, out, timeout_s=30)  # exactly once: the default
    )
    result = p.run()
    consumer = _committed_reader(bootstrap_servers, out)
    seen: list[Any] = []
    before = [b"before-%d" % i for i in range(40)]
    after = [b"after-%d" % i for i in range(40)]
    port = int(bootstrap_servers.rsplit(":", 1)[1])
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
        for i, value in enumerate(before):
            producer.send(source, value=value, partition=i % 2)
        producer.close()
        _wait_for(
            lambda: (_drain(consumer, seen), len(seen) >= len(before))[1], 90, "records before the restart", result
        )
        kafka_broker.stop()
        kafka_broker.start(port)
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
        for i, value in enumerate(after):
            producer.send(source, value=value, partition=i % 2)
        producer.close()
        _wait_for(
            lambda: (_drain(consumer, seen), len(seen) >= len(before) + len(after))[1],
            90,
            "records after the restart",
            result,
        )
        # Let anything duplicated arrive before comparing.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            _drain(consumer, seen)
        assert sorted(r.value for r in seen) == sorted(before + after), "lost or duplicated records"
    finally:
        consumer.close()
        result.cancel()
        if not kafka_broker.status().running:
            kafka_broker.start(port)


# -- committed offsets ---------------------------------------------------------------------


def test_restart_from_committed_offsets_continues_where_the_last_run_committed(
    bootstrap_servers: str, make_topic: Callable[..., str], prism_location: str, client: str, kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=2)
    group = f"group-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for i in range(200):
        producer.send(topic, value=b"%d" % i, partition=i % 2)
    producer.flush()
    producer.close()
    config = _group(client, group)
    first_stop = {(topic, 0): 40, (topic, 1): 70}
    with _prism(prism_location) as p:
        first = (
            p
            | ReadFromKafka(
                kafka,
                topic,
                start="committed",
                stop=first_stop,
                consumer_config=config,
                commit_offsets=True,
            )
            | beam.Map(lambda r: (r.partition, r.offset))
        )
        assert_that(first, equal_to([(0, o) for o in range(40)] + [(1, o) for o in range(70)]))

    checker = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        committed = {p: checker.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        checker.close(autocommit=False)
    assert committed == {0: 40, 1: 70}, "the committed offset is the next offset to read"

    with _fn_api() as p:
        second = (
            p
            | ReadFromKafka(
                kafka,
                topic,
                start="committed",
                stop="end",
                consumer_config=config,
                commit_offsets=True,
            )
            | beam.Map(lambda r: (r.partition, r.offset))
        )
        assert_that(second, equal_to([(0, o) for o in range(40, 100)] + [(1, o) for o in range(70, 100)]))


# -- the sink ------------------------------------------------------------------------------


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_write_then_read_round_trips(
    make_topic: Callable[..., str], kafka: KafkaConnection, exactly_once: bool
) -> None:
    topic = make_topic(partitions=4)
    events = [{"id": i, "body": "x" * (i % 50)} for i in range(2_000)]
    with _fn_api() as p:
        (
            p
            | beam.Create(events)
            | WriteToKafka(
                kafka,
                topic,
                key_fn=lambda e: None if e["id"] % 10 == 0 else str(e["id"]).encode(),
                value_fn=lambda e: e["body"].encode(),
                exactly_once=exactly_once,
            )
        )
    expected = [(None if e["id"] % 10 == 0 else str(e["id"]).encode(), e["body"].encode()) for e in events]
    p = _fn_api()
    got = p | ReadFromKafka(kafka, topic, stop="end") | beam.Map(lambda r: (r.key, r.value))
    assert_that(got, equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    }
    assert counters[f"{topic}.records_read"] == len(events)
    assert counters[f"{topic}.bytes_read"] >= sum(len(k or b"") + len(v) for k, v in expected)


def _values(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    """Values of a one-partition topic up to the end offset its readers of that level see now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        end = consumer.end_offsets([tp])[tp]
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in batch)
        return values
    finally:
        consumer.close()


def _stable_end(bootstrap: str, topic: str) -> bool:
    """No transaction is open on partition 0: read_committed readers see up to the log's end."""
    committed = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    uncommitted = KafkaConsumer(bootstrap_servers=bootstrap)
    tp = TopicPartition(topic, 0)
    try:
        return committed.end_offsets([tp])[tp] == uncommitted.end_offsets([tp])[tp]
    finally:
        committed.close()
        uncommitted.close()


def _write_fn(connection: KafkaConnection, topic: str, **kw: Any) -> Any:
    """WriteToKafka's DoFn, to drive its bundles the way a runner does."""
    fn = WriteToKafka(connection, topic, **kw)._fn
    fn.setup()
    return fn


def test_a_retried_bundle_is_visible_once_to_read_committed_readers(
    bootstrap_servers: str, make_topic: Callable[..., str], kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=1)
    bundle = [(None, b"r%d" % i) for i in range(20)]
    # Attempt 1 sends every record (acknowledged: max_pending=5 waits for each
    # five), then fails before finish_bundle; the runner tears the DoFn down.
    first = _write_fn(kafka, topic, max_pending=5)
    first.start_bundle()
    for element in bundle:
        first.process(element)
    first.teardown()
    # Attempt 2 runs the same bundle on a fresh instance, as Beam does after a failure.
    second = _write_fn(kafka, topic)
    second.start_bundle()
    for element in bundle:
        second.process(element)
    second.finish_bundle()
    # The same instance reused after a failed bundle aborts it in start_bundle.
    second.start_bundle()
    second.process((None, b"never"))
    second.start_bundle()
    second.finish_bundle()
    second.teardown()
    values = [v for _, v in bundle]
    assert sorted(_values(bootstrap_servers, topic, "read_committed")) == sorted(values)
    # The aborted first attempt did reach the log: read_uncommitted readers see it.
    uncommitted = [v for v in _values(bootstrap_servers, topic, "read_uncommitted") if v != b"never"]
    assert sorted(uncommitted) == sorted(values * 2)
    assert _stable_end(bootstrap_servers, topic), "an aborted transaction is still open"


def test_at_least_once_writer_shows_a_failed_bundle(
    bootstrap_servers: str, make_topic: Callable[..., str], kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=1)
    fn = _write_fn(kafka, topic, max_pending=5, exactly_once=False)
    fn.start_bundle()
    for i in range(10):
        fn.process((None, b"r%d" % i))
    fn.teardown()  # the bundle failed after its records were acknowledged
    assert sorted(_values(bootstrap_servers, topic, "read_committed")) == sorted(b"r%d" % i for i in range(10))


def test_a_failed_pipeline_leaves_nothing_visible_to_read_committed_readers(
    bootstrap_servers: str, make_topic: Callable[..., str], kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=1)

    def fail_at_50(n: int) -> tuple[None, bytes]:
        if n == 50:
            raise ValueError("boom at 50")
        return None, b"%d" % n

    with pytest.raises(Exception, match="boom at 50"):
        with _fn_api() as p:
            (
                p
                | beam.Create(range(100), reshuffle=False)  # in order, one bundle
                | beam.Map(fail_at_50)
                | WriteToKafka(kafka, topic, max_pending=10)
            )
    assert _values(bootstrap_servers, topic, "read_committed") == []
    assert len(_values(bootstrap_servers, topic, "read_uncommitted")) == 50  # written, then aborted
    assert _stable_end(bootstrap_servers, topic)


@pytest.mark.slow
def test_a_dead_writers_transaction_is_aborted_by_the_broker_at_its_timeout(
    bootstrap_servers: str, make_topic: Callable[..., str], client: str, kafka: KafkaConnection
) -> None:
    topic = make_topic(partitions=1)
    timeout_key = "transaction.timeout.ms" if client == "confluent" else "transaction_timeout_ms"
    fn = _write_fn(kafka, topic, max_pending=5, producer_config={timeout_key: 3000})
    fn.start_bundle()
    for i in range(10):
        fn.process((None, b"r%d" % i))
    producer = fn._producer
    fn._producer = None  # the worker dies: no abort, no teardown; its producer is just gone
    producer.discard()
    assert not _stable_end(bootstrap_servers, topic), "read_committed readers wait for the open transaction"
    # The broker looks for expired transactions every 10 s (Kafka's default).
    _wait_for(lambda: _stable_end(bootstrap_servers, topic), 60, "the broker to abort the dead transaction")
    assert _values(bootstrap_servers, topic, "read_committed") == []


def test_bounded_read_ends_over_transaction_markers(
    bootstrap_servers: str, make_topic: Callable[..., str], kafka: KafkaConnection
) -> None:
    committed_last, aborted_last, open_last = (make_topic(partitions=1) for _ in range(3))
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=f"test-{uuid.uuid4().hex}")
    producer.init_transactions()
    for topic in (committed_last, aborted_last, open_last):
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, value=b"c%d" % i)
        producer.commit_transaction()  # the log ends with a commit marker
    producer.begin_transaction()
    for i in range(5):
        producer.send(aborted_last, value=b"a%d" % i)
    producer.flush()
    producer.abort_transaction()  # aborted records, then an abort marker
    producer.begin_transaction()
    for i in range(5):
        producer.send(open_last, value=b"o%d" % i)
    producer.flush()  # left open while the read runs: its records are past the stable end
    try:
        started = time.monotonic()
        with _fn_api() as p:
            for topic in (committed_last, aborted_last, open_last):
                got = (
                    p
                    | f"Read {topic}" >> ReadFromKafka(kafka, topic, stop="end")
                    | f"Values {topic}" >> beam.Map(lambda r: r.value)
                )
                assert_that(got, equal_to([b"c%d" % i for i in range(5)]), label=f"committed of {topic}")
        assert time.monotonic() - started < 60, "a bounded read waited on offsets that hold no records"
    finally:
        producer.abort_transaction()
        producer.close()


def test_exactly_once_settings_are_checked_when_the_write_is_built(
    bootstrap_servers: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    with pytest.raises(ConfigError, match="transactional_id"):
        WriteToKafka(bootstrap_servers, topic, producer_config={"transactional_id": "mine"})
    confluent = KafkaConnection(bootstrap_servers, client="confluent")
    with pytest.raises(ConfigError, match=r"transactional\.id"):
        WriteToKafka(confluent, topic, producer_config={"transactional.id": "mine"})
    with pytest.raises(ConfigError, match="acks"):
        WriteToKafka(bootstrap_servers, topic, producer_config={"acks": 1})
    with pytest.raises(ConfigError, match="acks"):
        WriteToKafka(confluent, topic, producer_config={"acks": 1})
    with pytest.raises(ConfigError, match="transactional_id_prefix"):
        WriteToKafka(bootstrap_servers, topic, transactional_id_prefix=" ")
    # Plain at-least-once writes may lower acks (kafka-python then drops idempotence itself).
    WriteToKafka(bootstrap_servers, topic, producer_config={"acks": 1}, exactly_once=False)
    config = {"acks": "1", "enable.idempotence": False}
    WriteToKafka(confluent, topic, producer_config=config, exactly_once=False)


def test_write_fails_the_bundle_when_the_broker_does_not_acknowledge(kafka: KafkaConnection) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with pytest.raises(Exception, match=r"KafkaWriteError|did not acknowledge|could not send") as info:
        with _fn_api() as p:
            write = WriteToKafka(kafka, missing, timeout_s=2, validate=False)
            p | beam.Create([(b"k", b"v")]) | write
    assert missing in str(info.value)
    assert time.monotonic() - started < 30


# -- bad input -----------------------------------------------------------------------------


def test_unknown_consumer_setting_is_one_clear_error(bootstrap_servers: str, make_topic: Callable[..., str]) -> None:
    with pytest.raises(ConfigError, match="fetch_max_byte"):
        ReadFromKafka(bootstrap_servers, make_topic(), consumer_config={"fetch_max_byte": 1})
    with pytest.raises(ConfigError, match="value_deserializer"):
        ReadFromKafka(bootstrap_servers, make_topic(), consumer_config={"value_deserializer": bytes})
    with pytest.raises(ConfigError, match="group_id"):
        ReadFromKafka(bootstrap_servers, make_topic(), start="committed")
    with pytest.raises(ConfigError, match="auto_offset_reset"):
        ReadFromKafka(bootstrap_servers, make_topic(), consumer_config={"auto_offset_reset": "latest"})
    with pytest.raises(ConfigError, match="not read"):
        ReadFromKafka(bootstrap_servers, make_topic(), start={("other-topic", 0): 3})
    with pytest.raises(ConfigError, match="start must be"):
        ReadFromKafka(bootstrap_servers, make_topic(), start="beginning")
    with pytest.raises(ConfigError, match="compresion_type"):
        WriteToKafka(bootstrap_servers, make_topic(), producer_config={"compresion_type": "gzip"})


def test_confluent_settings_use_librdkafka_names(bootstrap_servers: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    confluent = KafkaConnection(bootstrap_servers, client="confluent")
    with pytest.raises(ConfigError, match=r"fetch\.max\.byte"):
        ReadFromKafka(confluent, topic, consumer_config={"fetch.max.byte": 1})
    with pytest.raises(ConfigError, match=r"auto\.offset\.reset"):
        ReadFromKafka(confluent, topic, consumer_config={"auto.offset.reset": "latest"})
    with pytest.raises(ConfigError, match=r"group\.id"):
        ReadFromKafka(confluent, topic, start="committed")
    with pytest.raises(ConfigError, match=r"compresion\.type"):
        WriteToKafka(confluent, topic, producer_config={"compresion.type": "gzip"})
    with pytest.raises(ConfigError, match="client must be one of"):
        KafkaConnection(bootstrap_servers, client="librdkafka")


def test_confluent_client_not_installed_is_one_clear_error(
    bootstrap_servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # makes the import fail
    confluent = KafkaConnection(bootstrap_servers, client="confluent")  # no settings: nothing to check yet
    with pytest.raises(ConfigError, match="pip install confluent-kafka"):
        ReadFromKafka(confluent, "anything")
    with pytest.raises(ConfigError, match="pip install confluent-kafka"):
        WriteToKafka(confluent, "anything")


def test_unknown_topic_is_an_error_at_construction(kafka: KafkaConnection) -> None:
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError, match=missing):
        ReadFromKafka(kafka, missing, stop="end")
    with pytest.raises(ConfigError, match=missing):
        WriteToKafka(kafka, missing)


def test_unknown_topic_is_an_error_at_start_when_not_validated(kafka: KafkaConnection) -> None:
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(Exception, match=f"{missing} does not exist"):
        with _fn_api() as p:
            p | ReadFromKafka(kafka, missing, stop="end", validate=False)


@pytest.mark.kafka  # waits out a bounded connect timeout
def test_unreachable_broker_fails_fast(client: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=nowhere):
        ReadFromKafka(KafkaConnection(nowhere, client=client), "anything", timing=ReadTiming(timeout_s=2))
    assert time.monotonic() - started < 15


# -- topics and brokers ------------------------------------------------------------------------


def test_topic_helpers_work_through_either_client(kafka: KafkaConnection, bootstrap_servers: str) -> None:
    names = [f"admin-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    assert ensure_topics(kafka, names, partitions=3) == sorted(names)
    assert ensure_topics(kafka, names) == []  # nothing left to create
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for i in range(7):
        producer.send(names[i % 2], value=b"%d" % i, partition=i % 3)
    producer.close()
    assert count_records(kafka, names) == 7
    assert count_records(kafka, [names[0], "no-such-topic"]) == 4
    assert _partition_count(bootstrap_servers, names[1]) == 3


def test_waiting_for_a_missing_broker_is_bounded_and_says_what_to_do(client: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="beamline kafka start") as info:
        wait_for_kafka(KafkaConnection(nowhere, client=client), timeout_s=0.5)
    assert nowhere in str(info.value)
    assert time.monotonic() - started < 15


# -- pieces of the splittable read ----------------------------------------------------------


def test_unbounded_range_only_checkpoints_and_bounded_range_splits() -> None:
    unbounded = _OffsetTracker(OffsetRange(10, 2**63 - 1), bounded=False)
    assert not unbounded.is_bounded()
    assert unbounded.try_claim(10)
    assert unbounded.try_split(0.5) is None
    primary, residual = unbounded.try_split(0)
    assert (primary.stop, residual.start) == (11, 11)
    bounded = _OffsetTracker(OffsetRange(0, 100), bounded=True)
    assert bounded.is_bounded()
    assert bounded.try_split(0.5) is not None


def test_partition_watermark_never_goes_back() -> None:
    estimator = _PartitionWatermark(None)
    assert estimator.current_watermark() == MIN_TIMESTAMP
    estimator.advance_to(Timestamp(100))
    estimator.advance_to(Timestamp(50))
    estimator.observe_timestamp(Timestamp(500))
    assert estimator.current_watermark() == Timestamp(100)
    assert _PartitionWatermark(estimator.get_estimator_state()).current_watermark() == Timestamp(100)


def test_each_partition_reports_the_lowest_watermark_of_its_read_in_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prism takes a splittable step's watermark from the bundle that finished
    # last: a partition read in another bundle must still hold it.
    shared = SharedWatermarks(stale_s=60)
    clock = [1000.0]
    monkeypatch.setattr("transforms.kafka.watermarks.time.monotonic", lambda: clock[0])
    ahead, behind, elsewhere = _PartitionWatermark(None), _PartitionWatermark(None), _PartitionWatermark(None)
    ahead.share(shared, "read", _TP("t", 0))
    behind.share(shared, "read", _TP("t", 1))
    elsewhere.share(shared, "other read", _TP("t", 0))
    ahead.advance_to(Timestamp(500))
    elsewhere.advance_to(Timestamp(900))
    assert ahead.current_watermark() == MIN_TIMESTAMP  # partition 1 has read nothing yet
    behind.advance_to(Timestamp(100))
    assert (ahead.current_watermark(), behind.current_watermark()) == (Timestamp(100), Timestamp(100))
    assert ahead.get_estimator_state() == Timestamp(500)  # its own, for its next call
    assert elsewhere.current_watermark() == Timestamp(900)  # reads are kept apart
    # A partition nobody here renews (read by another worker process) stops holding the others.
    clock[0] += 61
    ahead.advance_to(Timestamp(600))
    assert ahead.current_watermark() == Timestamp(600)


@pytest.mark.parametrize(
    ("times", "before", "now", "after", "stamps"),
    [
        # In order: up to the newest event time, less the skew; each record at its event time, capped there.
        ([100, 300, 200], 0, 10_000, 295, [100, 295, 200]),
        # Older than the watermark: stamped at it, and the watermark does not go back.
        ([50, 400], 300, 10_000, 395, [300, 395]),
        # No event time (an invalid record) moves nothing and is stamped at the watermark.
        ([None, None], 300, 10_000, 300, [300, 300]),
        # Dated past the wall clock: the watermark stops at the clock, less the skew.
        ([100, 10**15], 0, 1_000, 995, [100, 995]),
    ],
)
def test_event_time_moves_the_watermark_and_keeps_stamps_within_its_step(
    times: list[int | None], before: int, now: int, after: int, stamps: list[int]
) -> None:
    assert event_time_step(times, before, now, skew=5) == (after, stamps)


# -- writes across a broker outage ---------------------------------------------------------

_HALF_SENT = threading.Event()
_BROKER_STOPPED = threading.Event()


def _hold_after_250(value: bytes) -> tuple[None, bytes]:
    """Pass records on; at the 251st, wait until the test has stopped the broker (the transaction is open)."""
    if value == b"v-250":
        _HALF_SENT.set()
        assert _BROKER_STOPPED.wait(180), "the test never stopped the broker"
    return None, value


class _LogFlag(logging.Handler):
    """Sets ``event`` when a record whose message contains ``text`` is logged."""

    def __init__(self, event: threading.Event, text: str) -> None:
        super().__init__(logging.WARNING)
        self._event, self._text = event, text

    def emit(self, record: logging.LogRecord) -> None:
        if self._text in record.getMessage():
            self._event.set()


@pytest.mark.slow
def test_a_transactional_write_waits_out_a_stopped_broker_and_writes_each_record_once(
    kafka_broker: KafkaBroker, bootstrap_servers: str, make_topic: Callable[..., str], kafka: KafkaConnection
) -> None:
    out = make_topic(partitions=1)
    port = int(bootstrap_servers.rsplit(":", 1)[1])
    values = [b"v-%d" % i for i in range(500)]
    waiting = threading.Event()
    flag = _LogFlag(waiting, "waiting for the broker")
    logging.getLogger("transforms.kafka.write").addHandler(flag)
    _HALF_SENT.clear()
    _BROKER_STOPPED.clear()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with _fn_api() as p:
                _ = (
                    p
                    | beam.Create(values, reshuffle=False)
                    | beam.Map(_hold_after_250)
                    # 100 records a flush: two flushes are in the open transaction when the broker goes.
                    | WriteToKafka(kafka, out, timeout_s=3, max_pending=100, outage_timeout_s=None)
                )
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    writer = threading.Thread(target=run, daemon=True)
    try:
        writer.start()
        assert _HALF_SENT.wait(120), "the pipeline never reached the 251st record"
        kafka_broker.stop()
        _BROKER_STOPPED.set()
        assert waiting.wait(180), "the write never waited for the broker"
        kafka_broker.start(port)
        writer.join(240)
        assert not writer.is_alive(), "the write did not finish after the broker came back"
        assert not failures, failures
    finally:
        _BROKER_STOPPED.set()
        logging.getLogger("transforms.kafka.write").removeHandler(flag)
        if not kafka_broker.status().running:  # the session broker serves the tests after this one
            kafka_broker.start(port)
    consumer = _committed_reader(bootstrap_servers, out)
    seen: list[Any] = []
    try:
        _wait_for(lambda: (_drain(consumer, seen), len(seen) >= len(values))[1], 60, "the written records")
        deadline = time.monotonic() + 2  # let anything duplicated arrive before comparing
        while time.monotonic() < deadline:
            _drain(consumer, seen)
    finally:
        consumer.close()
    assert sorted(r.value for r in seen) == sorted(values), "lost or duplicated records"


@pytest.mark.kafka  # waits out a broker that never answers
def test_a_write_gives_up_on_a_broker_that_stays_away_after_its_outage_timeout() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    sender = KafkaSender(nowhere, "anything", timeout_s=1, outage_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(KafkaWriteError, match=r"gave up after waiting \d+ s for the broker at 127\.0\.0\.1") as info:
        sender.send([(None, b"x")])
    assert "\n" not in str(info.value)
    assert time.monotonic() - started < 30
    sender.close()
