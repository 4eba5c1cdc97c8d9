"""Kafka I/O for Beam in Python, without a Java expansion service: ReadFromKafka, WriteToKafka.

Beam's own Kafka connector for Python is a Java cross-language transform; this
one runs on any portable runner with only kafka-python. The read is a
splittable DoFn: one element per partition, a restriction that is a range of
offsets, and a watermark per partition. The same transform serves streaming
(``stop=None``) and backfill (``stop="end"``): a backfill reads up to the end
offsets seen when the read starts and then finishes on its own.

Two Kafka clients can do the I/O, chosen with ``client=``: ``"kafka-python"``
(the default, always installed) and ``"confluent"`` (confluent-kafka, built on
librdkafka; faster, installed separately). Both sit behind a
small client interface (``_Consumer``, ``_Producer``), so one DoFn drives
either. Settings are given in each client's own dialect: kafka-python names
(``group_id``, ``security_protocol``) or librdkafka names (``group.id``,
``security.protocol``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.iobase import RestrictionTracker, WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.errors import BeamlineError, ConfigError, KafkaUnavailable
from transforms.coders import EstimatedPickleCoder
from transforms.worker_gc import WORKER_GC_THRESHOLD, tune_worker_gc

__all__ = [
    "GLOBAL_WINDOWS",
    "KAFKA_CLIENTS",
    "LOCAL_PROGRESS",
    "METRICS_NAMESPACE",
    "PROGRESS_DIR_ENV",
    "KafkaBatch",
    "KafkaBatchCoder",
    "KafkaRecord",
    "KafkaWriteError",
    "ReadFromKafka",
    "WriteToKafka",
]

# Beam metrics: counters ``<topic>.records_read`` / ``<topic>.bytes_read`` and
# gauges ``<topic>.<partition>.lag`` (records between position and high watermark).
METRICS_NAMESPACE = "beamline.kafka"
_LOG = logging.getLogger(__name__)
# The upper bound of an unbounded restriction: "no stop offset".
_UNBOUNDED_STOP = sys.maxsize
_START_MODES = ("earliest", "latest", "committed")
# The Kafka clients a read or write can use; the first is the default.
KAFKA_CLIENTS = ("kafka-python", "confluent")
# Settings the reader owns: records are bytes, and offsets are committed only
# after a bundle's output is durable (bundle finalization), never by a timer.
# Where to start is ``start``/``start_fallback``, so kafka-python's own reset is not ours to set.
_READER_OWNED_KEYS = frozenset({"key_deserializer", "value_deserializer", "enable_auto_commit", "auto_offset_reset"})
_WRITER_OWNED_KEYS = frozenset({"key_serializer", "value_serializer"})
# The same, in librdkafka's names (the confluent client has no (de)serializers).
_CONFLUENT_READER_OWNED_KEYS = frozenset({"enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset"})
_CONFLUENT_WRITER_OWNED_KEYS = frozenset({"on_delivery"})
# librdkafka settings a producer config shares with the topic check's consumer.
_CONFLUENT_SHARED_PREFIXES = ("client.", "security.", "ssl.", "sasl.", "socket.", "broker.", "api.version")

# Connection and security settings a producer config shares with the consumer
# used to check the topic when a WriteToKafka is built.
_SHARED_CLIENT_KEYS = frozenset(
    {
        "client_id",
        "security_protocol",
        "ssl_context",
        "ssl_check_hostname",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_crlfile",
        "ssl_ciphers",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_name",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
        "api_version",
    }
)

StartSpec = str | datetime | Mapping[tuple[str, int], int]
StopSpec = str | datetime | Mapping[tuple[str, int], int] | None


# Set by the launcher of a batch run to a folder: readers in worker processes
# (the FnApiRunner's multi_processing mode) write their running totals there,
# one file per process, so the launcher's progress lines count every process.
PROGRESS_DIR_ENV = "BEAMLINE_PROGRESS_DIR"
_SHARE_EVERY_S = 0.5


class _LocalProgress:
    """Records read by readers running in this process.

    Beam metrics reach the launcher only when a job ends on some runners; this
    running total lets the launcher print progress of a long backfill while it
    runs: directly when the workers share its process (FnApiRunner, Prism's
    loopback), through the folder named by ``PROGRESS_DIR_ENV`` when they do not.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # add() shares while holding it
        self._records = 0
        self._shared_at = 0.0

    def add(self, records: int) -> None:
        with self._lock:
            self._records += records
            now = time.monotonic()
            if now - self._shared_at >= _SHARE_EVERY_S:
                self._shared_at = now
                self.share()

    def share(self) -> None:
        """Write this process's total where the launcher looks, if it asked (``PROGRESS_DIR_ENV``)."""
        folder = os.environ.get(PROGRESS_DIR_ENV)
        if not folder:
            return
        path = os.path.join(folder, str(os.getpid()))
        with self._lock:
            try:
                with open(path + ".tmp", "w") as out:
                    out.write(str(self._records))
                os.replace(path + ".tmp", path)
            except OSError:
                pass  # progress is a courtesy: a read never fails for it

    @property
    def records(self) -> int:
        return self._records

    @staticmethod
    def in_other_processes(folder: str) -> int:
        """Records that readers in other processes last reported to ``folder``."""
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.isdigit() and int(entry.name) != os.getpid():
                    with contextlib.suppress(OSError, ValueError), open(entry.path) as report:
                        total += int(report.read() or 0)
        return total


LOCAL_PROGRESS = _LocalProgress()


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
    The element is timestamped with its newest record's time.
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


class KafkaWriteError(BeamlineError):
    """The broker did not acknowledge written records; the bundle fails and is retried."""


# -- configuration -----------------------------------------------------------------


def _known_consumer_keys() -> frozenset[str]:
    from kafka import KafkaConsumer

    return frozenset(KafkaConsumer.DEFAULT_CONFIG)


def _known_producer_keys() -> frozenset[str]:
    from kafka import KafkaProducer

    return frozenset(KafkaProducer.DEFAULT_CONFIG)


def _check_config(config: Mapping[str, Any], known: frozenset[str], owned: frozenset[str], what: str) -> None:
    """Reject misspelt or reader-owned keys now, not deep inside a worker."""
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(
            f"unknown kafka-python {what} setting(s) {', '.join(unknown)}; "
            f"use kafka-python names such as security_protocol, sasl_mechanism, client_id"
        )
    forbidden = sorted(set(config) & owned)
    if forbidden:
        raise ConfigError(
            f"{what} setting(s) {', '.join(forbidden)} are managed by Beamline; remove them "
            "(records are raw bytes, positions come from start/start_fallback, and offsets "
            "are committed after output is durable)"
        )


def _confluent() -> Any:
    """The confluent_kafka module, or one clear error saying how to install it."""
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError("client='confluent' needs confluent-kafka: pip install confluent-kafka") from None
    return confluent_kafka


def _check_client_config(client: str, config: Mapping[str, Any], what: str) -> None:
    """Check ``config`` in the dialect of ``client`` (``what`` is consumer or producer)."""
    if client not in KAFKA_CLIENTS:
        raise ConfigError(f"client must be one of {', '.join(KAFKA_CLIENTS)}; got {client!r}")
    if client == "kafka-python":
        if what == "consumer":
            _check_config(config, _known_consumer_keys(), _READER_OWNED_KEYS, what)
        else:
            _check_config(config, _known_producer_keys(), _WRITER_OWNED_KEYS, what)
        return
    ck = _confluent()
    owned = _CONFLUENT_READER_OWNED_KEYS if what == "consumer" else _CONFLUENT_WRITER_OWNED_KEYS
    forbidden = sorted(set(config) & owned)
    if forbidden:
        raise ConfigError(
            f"{what} setting(s) {', '.join(forbidden)} are managed by Beamline; remove them "
            "(positions come from start/start_fallback, and offsets are committed after output is durable)"
        )
    # librdkafka checks every name and value when a client is made; one without
    # bootstrap servers never connects. log_level 0 keeps its warnings quiet.
    try:
        if what == "consumer":
            ck.Consumer({"group.id": "beamline-check", "log_level": 0, **config}).close()
        else:
            ck.Producer({"log_level": 0, **config})
    except (ck.KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid confluent-kafka {what} setting ({exc}); use librdkafka names such as "
            "security.protocol, sasl.mechanism, client.id"
        ) from None


def _to_millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ConfigError(f"timestamp {moment.isoformat()} has no time zone; pass an aware datetime")
    return int(moment.timestamp() * 1000)


def _check_offsets(spec: Mapping[Any, Any], what: str, topics: tuple[str, ...]) -> None:
    for tp, offset in spec.items():
        if not (isinstance(tp, tuple) and len(tp) == 2 and isinstance(tp[0], str) and isinstance(tp[1], int)):
            raise ConfigError(f"{what} offsets must be keyed by (topic, partition); got {tp!r}")
        if tp[0] not in topics:
            raise ConfigError(f"{what} offset given for topic {tp[0]}, which is not read; add it to topics")
        if not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"{what} offset for {tp} must be a non-negative integer; got {offset!r}")


@dataclass(frozen=True)
class _ReadSpec:
    """Everything a worker needs to read; small, frozen and picklable."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    start: Any
    start_fallback: str
    stop: Any
    consumer_config: tuple[tuple[str, Any], ...]
    commit_offsets: bool
    allowed_skew_s: float
    resume_delay_s: float
    max_bundle_s: float
    discovery_interval_s: float
    timeout_s: float
    client: str = "kafka-python"
    batched: bool = False
    gc_threshold: int | None = WORKER_GC_THRESHOLD
    readers: int = 1

    @property
    def bounded(self) -> bool:
        return self.stop is not None

    def consumer_settings(self) -> dict[str, Any]:
        timeout_ms = int(self.timeout_s * 1000)
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "enable_auto_commit": False,
            # Only reached when retention deleted the offsets a restriction starts
            # at: continue from the oldest record still in the log.
            "auto_offset_reset": "earliest",
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 5000),
            # Large polls and fetches keep the per-record cost in the decoder,
            # not in round trips.
            "max_poll_records": 10_000,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            "fetch_max_wait_ms": 100,
            # kafka-python sleeps this long in a fresh consumer's poll while the
            # partition's leader is not known yet: 100 ms (its default) for every
            # read a pipeline starts. Reconnects back off on their own
            # (reconnect_backoff_ms, exponential).
            "retry_backoff_ms": 20,
            # Records of aborted transactions (a failed bundle of an exactly-once
            # writer) are never read, and a transaction is read once committed.
            # kafka-python's own default is read_uncommitted.
            "isolation_level": "read_committed",
        }
        settings.update(self.consumer_config)
        return settings

    def confluent_settings(self) -> dict[str, Any]:
        """The same defaults in librdkafka's names, for ``client="confluent"``."""
        timeout_ms = int(self.timeout_s * 1000)
        settings: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            # librdkafka wants a group even for assigned partitions; nothing is
            # committed to it unless commit_offsets names the user's group.
            "group.id": "beamline-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "socket.timeout.ms": max(timeout_ms, 5000),
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "fetch.wait.max.ms": 100,
            # Once a partition's local queue holds queued.min.messages (100k), librdkafka
            # waits this long before fetching it again; its default of 1 s left a
            # fast reader idle half of the time.
            "fetch.queue.backoff.ms": 10,
            "isolation.level": "read_committed",  # librdkafka's default too; see consumer_settings
            "logger": _LOG,  # librdkafka's log lines go to this module's logger
        }
        settings.update(self.consumer_config)
        return settings


def _unavailable(servers: str, timeout_s: float, exc: BaseException) -> KafkaUnavailable:
    return KafkaUnavailable(
        f"no Kafka broker answered at {servers} within {timeout_s:.0f}s "
        f"({type(exc).__name__}); start the broker or fix --bootstrap-servers"
    )


# -- the client interface: one small surface over kafka-python and confluent-kafka ----


class _TP(NamedTuple):
    """A (topic, partition) pair; equal to kafka-python's TopicPartition."""

    topic: str
    partition: int


class _Consumer:
    """What the read needs from a Kafka consumer; one partition is assigned at a time.

    Offsets are "next offset to read" throughout, as Kafka defines them.
    ``errors`` are the client's own exception types; ``retriable`` says
    whether one means "the broker is away, try again later".
    """

    errors: tuple[type[BaseException], ...] = ()

    def retriable(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def topics(self) -> set[str]:
        """Topic names, from a fresh metadata request."""
        raise NotImplementedError

    def partitions(self, topic: str) -> set[int]:
        """Partitions of ``topic`` as of the last :meth:`topics` call (empty if unknown)."""
        raise NotImplementedError

    def beginning_offsets(self, tps: list[_TP]) -> dict[_TP, int]:
        raise NotImplementedError

    def end_offsets(self, tps: list[_TP]) -> dict[_TP, int]:
        raise NotImplementedError

    def offsets_for_times(self, tps: list[_TP], millis: int) -> dict[_TP, int | None]:
        """The first offset at or after ``millis``; None where there is none."""
        raise NotImplementedError

    def committed(self, tp: _TP) -> int | None:
        raise NotImplementedError

    def assigned(self) -> _TP | None:
        raise NotImplementedError

    def assign(self, tp: _TP) -> None:
        raise NotImplementedError

    def seek(self, tp: _TP, offset: int) -> None:
        raise NotImplementedError

    def poll_batch(self, tp: _TP, timeout_s: float) -> list[KafkaRecord]:
        """Records of ``tp`` in offset order: waits up to ``timeout_s`` for the first."""
        raise NotImplementedError

    def position(self, tp: _TP) -> int | None:
        raise NotImplementedError

    def highwater(self, tp: _TP) -> int | None:
        """The end offset the broker last reported in a fetch, without asking again."""
        raise NotImplementedError

    def commit(self, tp: _TP, offset: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _KafkaPythonConsumer(_Consumer):
    """kafka-python's KafkaConsumer; its connect is bounded, so a missing broker fails here."""

    def __init__(self, spec: _ReadSpec) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaConfigurationError, KafkaConnectionError, KafkaError

        self.errors = (KafkaError,)
        self._connection_error = KafkaConnectionError
        self._tp = TopicPartition
        self._timeout_ms = int(spec.timeout_s * 1000)
        self._assigned: Any = None
        try:
            self._c = KafkaConsumer(**spec.consumer_settings())
        except KafkaConfigurationError as exc:
            raise ConfigError(f"invalid Kafka consumer settings: {exc}; fix consumer_config") from None
        except (KafkaError, OSError) as exc:
            raise _unavailable(spec.bootstrap_servers, spec.timeout_s, exc) from None
        from transforms import kafka_records

        # Polls return KafkaRecord tuples decoded by Beamline: a third of the cost.
        self._tuples = kafka_records.install(self._c)

    def retriable(self, exc: BaseException) -> bool:
        return bool(getattr(exc, "retriable", False)) or isinstance(exc, self._connection_error)

    def topics(self) -> set[str]:
        return set(self._c.topics())

    def partitions(self, topic: str) -> set[int]:
        return set(self._c.partitions_for_topic(topic) or ())

    def beginning_offsets(self, tps: list[_TP]) -> dict[_TP, int]:
        found = self._c.beginning_offsets([self._tp(*tp) for tp in tps], timeout_ms=self._timeout_ms)
        return {_TP(*tp): offset for tp, offset in found.items()}

    def end_offsets(self, tps: list[_TP]) -> dict[_TP, int]:
        found = self._c.end_offsets([self._tp(*tp) for tp in tps], timeout_ms=self._timeout_ms)
        return {_TP(*tp): offset for tp, offset in found.items()}

    def offsets_for_times(self, tps: list[_TP], millis: int) -> dict[_TP, int | None]:
        query = {self._tp(*tp): millis for tp in tps}
        found = self._c.offsets_for_times(query, timeout_ms=self._timeout_ms)
        return {_TP(*tp): (found[tp].offset if found.get(tp) is not None else None) for tp in query}

    def committed(self, tp: _TP) -> int | None:
        return self._c.committed(self._tp(*tp), timeout_ms=self._timeout_ms)

    def assigned(self) -> _TP | None:
        return None if self._assigned is None else _TP(*self._assigned)

    def assign(self, tp: _TP) -> None:
        self._assigned = self._tp(*tp)
        self._c.assign([self._assigned])

    def seek(self, tp: _TP, offset: int) -> None:
        self._c.seek(self._tp(*tp), offset)

    def poll_batch(self, tp: _TP, timeout_s: float) -> list[KafkaRecord]:
        batch = self._c.poll(timeout_ms=max(1, int(timeout_s * 1000)), max_records=10_000).get(tp)
        if not batch:
            return []
        if self._tuples:
            return batch
        return [
            KafkaRecord(
                rec.topic,
                rec.partition,
                rec.offset,
                rec.timestamp,
                rec.key,
                rec.value,
                tuple(rec.headers) if rec.headers else (),
            )
            for rec in batch
        ]

    def position(self, tp: _TP) -> int | None:
        return self._c.position(self._tp(*tp), timeout_ms=self._timeout_ms)

    def highwater(self, tp: _TP) -> int | None:
        return self._c.highwater(self._tp(*tp))

    def commit(self, tp: _TP, offset: int) -> None:
        from kafka.structs import OffsetAndMetadata

        self._c.commit({self._tp(*tp): OffsetAndMetadata(offset, "", -1)})

    def close(self) -> None:
        self._c.close(autocommit=False)


# librdkafka reports these when the broker is away; it reconnects on its own.
_CONFLUENT_RETRIABLE_CODES = ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_WAIT_COORD", "_RESOLVE")


class _ConfluentConsumer(_Consumer):
    """confluent-kafka's Consumer (librdkafka). It connects lazily, so the first request bounds the wait."""

    def __init__(self, spec: _ReadSpec) -> None:
        ck = _confluent()
        self._ck = ck
        self.errors = (ck.KafkaException,)
        self._servers = spec.bootstrap_servers
        self._timeout_s = spec.timeout_s
        self._metadata: Any = None
        self._assigned: _TP | None = None
        self._seeked: int | None = None
        try:
            self._c = ck.Consumer(spec.confluent_settings())
        except (ck.KafkaException, ValueError) as exc:
            raise ConfigError(f"invalid Kafka consumer settings: {exc}; fix consumer_config") from None
        codes = {getattr(ck.KafkaError, name, None) for name in _CONFLUENT_RETRIABLE_CODES}
        self._retriable_codes = codes - {None}

    def retriable(self, exc: BaseException) -> bool:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, self._ck.KafkaError):
            return False
        return error.retriable() or error.code() in self._retriable_codes

    def _tp(self, tp: _TP, offset: int | None = None) -> Any:
        if offset is None:
            return self._ck.TopicPartition(tp[0], tp[1])
        return self._ck.TopicPartition(tp[0], tp[1], offset)

    def topics(self) -> set[str]:
        try:
            self._metadata = self._c.list_topics(timeout=self._timeout_s)
        except self._ck.KafkaException as exc:
            raise _unavailable(self._servers, self._timeout_s, exc) from None
        return {name for name, meta in self._metadata.topics.items() if meta.error is None}

    def partitions(self, topic: str) -> set[int]:
        meta = None if self._metadata is None else self._metadata.topics.get(topic)
        return set() if meta is None or meta.error is not None else set(meta.partitions)

    def _watermarks(self, tp: _TP) -> tuple[int, int]:
        try:
            found = self._c.get_watermark_offsets(self._tp(tp), timeout=self._timeout_s, cached=False)
        except self._ck.KafkaException as exc:
            if exc.args[0].code() != self._ck.KafkaError._UNKNOWN_PARTITION:
                raise
            # A partition added since this client last loaded the topic's
            # metadata: load it again (that refreshes librdkafka's cache), retry once.
            self._c.list_topics(tp[0], timeout=self._timeout_s)
            found = self._c.get_watermark_offsets(self._tp(tp), timeout=self._timeout_s, cached=False)
        if found is None:
            raise _unavailable(self._servers, self._timeout_s, TimeoutError())
        return found

    def beginning_offsets(self, tps: list[_TP]) -> dict[_TP, int]:
        return {_TP(*tp): self._watermarks(tp)[0] for tp in tps}

    def end_offsets(self, tps: list[_TP]) -> dict[_TP, int]:
        return {_TP(*tp): self._watermarks(tp)[1] for tp in tps}

    def offsets_for_times(self, tps: list[_TP], millis: int) -> dict[_TP, int | None]:
        found = self._c.offsets_for_times([self._tp(tp, millis) for tp in tps], timeout=self._timeout_s)
        return {_TP(f.topic, f.partition): (f.offset if f.offset >= 0 else None) for f in found}

    def committed(self, tp: _TP) -> int | None:
        (found,) = self._c.committed([self._tp(tp)], timeout=self._timeout_s)
        return found.offset if found.offset >= 0 else None

    def assigned(self) -> _TP | None:
        return self._assigned

    def assign(self, tp: _TP) -> None:
        # The real assignment happens in seek: librdkafka refuses a seek on a
        # partition whose fetcher has not started, but takes an offset in assign.
        self._assigned = _TP(*tp)
        self._seeked = None

    def seek(self, tp: _TP, offset: int) -> None:
        self._c.assign([self._tp(tp, offset)])
        self._assigned, self._seeked = _TP(*tp), offset

    def poll_batch(self, tp: _TP, timeout_s: float) -> list[KafkaRecord]:
        # Block for the first record only, then take what is already fetched:
        # a batch never waits for a full batch to arrive.
        first = self._c.poll(timeout_s)
        if first is None:
            return []
        messages = [first, *self._c.consume(9_999, 0)]
        out = []
        eof = self._ck.KafkaError._PARTITION_EOF
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == eof:
                    continue
                raise self._ck.KafkaException(error)
            headers = msg.headers()
            out.append(
                KafkaRecord(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    msg.timestamp()[1],
                    msg.key(),
                    msg.value(),
                    tuple(headers) if headers else (),
                )
            )
        return out

    def position(self, tp: _TP) -> int | None:
        (found,) = self._c.position([self._tp(tp)])
        if found.offset >= 0:
            return found.offset
        # Nothing consumed since the seek: the next offset to read is where it went.
        return self._seeked if self._assigned == tp else None

    def highwater(self, tp: _TP) -> int | None:
        # Cached: updated by every fetch response, no request is made.
        high = self._c.get_watermark_offsets(self._tp(tp), cached=True)
        return high[1] if high is not None and high[1] >= 0 else None

    def commit(self, tp: _TP, offset: int) -> None:
        self._c.commit(offsets=[self._tp(tp, offset)], asynchronous=False)

    def close(self) -> None:
        self._c.close()


def _new_consumer(spec: _ReadSpec) -> _Consumer:
    """A consumer of ``spec.client``; an unreachable broker is an error, not a hang."""
    if spec.client == "confluent":
        return _ConfluentConsumer(spec)
    return _KafkaPythonConsumer(spec)


def _client_errors(client: str) -> tuple[type[BaseException], ...]:
    """The exception types ``client`` raises for broker and protocol errors."""
    if client == "confluent":
        return (_confluent().KafkaException,)
    from kafka.errors import KafkaError

    return (KafkaError,)


def _check_topics(consumer: _Consumer, spec: _ReadSpec) -> None:
    existing = consumer.topics()
    missing = [t for t in spec.topics if t not in existing]
    if missing:
        raise ConfigError(
            f"Kafka topic(s) {', '.join(missing)} do not exist at {spec.bootstrap_servers}; "
            "create them or fix the topic names"
        )


# -- partitions and their offset ranges ----------------------------------------------


class _Partition(NamedTuple):
    """The SDF element: a (topic, partition) with the offsets resolved when it was found.

    ``stop`` is exclusive (the next offset *not* to read); None means unbounded.
    Resolving both ends in one place means every partition of a backfill
    stops at the end offsets seen at the same moment.
    """

    topic: str
    partition: int
    start: int
    stop: int | None


def _resolve_partitions(consumer: _Consumer, spec: _ReadSpec, tps: list[_TP]) -> list[_Partition]:
    """Turn the start/stop specs into concrete offsets for ``tps``."""
    if not tps:
        return []
    beginning = consumer.beginning_offsets(tps)
    end = consumer.end_offsets(tps)

    def at_time(millis: int) -> dict[_TP, int]:
        found = consumer.offsets_for_times(tps, millis)
        # No record at or after the time: the position is the end of the log.
        return {tp: (found[tp] if found.get(tp) is not None else end[tp]) for tp in tps}

    def by_mode(mode: str, tp: _TP) -> int:
        if mode == "earliest":
            return beginning[tp]
        if mode == "latest":
            return end[tp]
        committed = consumer.committed(tp)
        # The committed offset is the next offset to read, as Kafka defines it.
        return committed if committed is not None else by_mode(spec.start_fallback, tp)

    start = spec.start
    start_at_time = at_time(start) if isinstance(start, int) else {}
    stop = spec.stop
    stop_at_time = at_time(stop) if isinstance(stop, int) else {}
    out = []
    for tp in tps:
        if isinstance(start, str):
            first = by_mode(start, tp)
        elif isinstance(start, int):
            first = start_at_time[tp]
        else:
            first = dict(start).get((tp.topic, tp.partition))
            first = by_mode(spec.start_fallback, tp) if first is None else first
        # Offsets outside the log: before its start were deleted by retention,
        # beyond its end do not exist yet.
        first = min(max(first, beginning[tp]), end[tp])
        if stop is None:
            last = None
        elif stop == "end":
            last = end[tp]
        elif isinstance(stop, int):
            last = stop_at_time[tp]
        else:
            last = dict(stop).get((tp.topic, tp.partition), end[tp])
        if last is not None:
            last = max(first, last)
        out.append(_Partition(tp.topic, tp.partition, first, last))
    return out


# What starting a range costs a reader, in records it could have read meanwhile:
# a seek and the first fetch took 40-150 ms where a reader decodes ~125k records/s.
_RANGE_COST = 10_000


def _equal_shares(parts: list[_Partition], readers: int) -> list[_Partition]:
    """Bounded ranges cut into ``readers`` shares of equal work, ordered to be dealt in turn.

    The FnApiRunner deals a Reshuffle's elements to its worker processes in
    turn (element i to worker i mod n), whatever their size: on skewed
    partitions one worker read on alone for a second of a 1M-record backfill.
    A share's work is its records plus ``_RANGE_COST`` per range. Largest
    partitions go first, at most ``readers - 1`` of them are cut, and empty
    ones drop out. Share k is the elements k, k + n, k + 2n, ...; a share with
    fewer ranges is padded with empty ones (read at no cost), so the turns stay
    aligned. On other runners the order does no harm.
    """
    if readers < 2 or any(part.stop is None for part in parts):
        return parts
    ranges = sorted((p for p in parts if p.stop > p.start), key=lambda p: p.stop - p.start, reverse=True)
    if not ranges:
        return parts
    # Up to readers - 1 cuts each start one more range.
    work = sum(p.stop - p.start + _RANGE_COST for p in ranges) + (readers - 1) * _RANGE_COST
    room = [work // readers] * readers
    shares: list[list[_Partition]] = [[] for _ in range(readers)]
    k = 0
    for part in ranges:
        start, stop = part.start, part.stop
        while start < stop:
            # A share without room for another range is done; the last takes the rest.
            while k < readers - 1 and room[k] <= _RANGE_COST:
                k += 1
            take = stop - start if k == readers - 1 else min(stop - start, room[k] - _RANGE_COST)
            shares[k].append(part._replace(start=start, stop=start + take))
            room[k] -= take + _RANGE_COST
            start += take
    dealt = []
    for turn in range(max(len(share) for share in shares)):
        for share in shares:
            if turn < len(share):
                dealt.append(share[turn])
            else:
                last = share[-1] if share else ranges[0]
                dealt.append(last._replace(start=last.stop))
    return dealt


def _list_partitions(consumer: _Consumer, spec: _ReadSpec, *, strict: bool) -> list[_TP]:
    consumer.topics()  # a fresh metadata request: picks up new topics and partitions
    tps = []
    for topic in spec.topics:
        parts = consumer.partitions(topic)
        if not parts and strict:
            raise ConfigError(
                f"Kafka topic {topic} does not exist at {spec.bootstrap_servers}; create it or fix the topic name"
            )
        tps.extend(_TP(topic, p) for p in sorted(parts))
    return tps


class _DiscoverPartitionsFn(beam.DoFn):
    """Lists the topics' partitions and resolves their offset ranges."""

    def __init__(self, spec: _ReadSpec) -> None:
        self._spec = spec
        self._consumer: _Consumer | None = None

    def setup(self) -> None:
        self._consumer = _new_consumer(self._spec)

    def process(self, unused_impulse: Any) -> Iterator[Any]:
        spec = self._spec
        tps = _list_partitions(self._consumer, spec, strict=spec.bounded)
        parts = _resolve_partitions(self._consumer, spec, tps)
        if not spec.commit_offsets:
            parts = _equal_shares(parts, spec.readers)  # bounded reads on several workers only
        for part in parts:
            # Minimum timestamp: a partition's element must not hold the watermark
            # later than its oldest record; the read's estimator sets the real one.
            yield TimestampedValue(part, MIN_TIMESTAMP)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class _ListTopicPartitionsFn(beam.DoFn):
    """Unbounded mode, step 1: the (topic, partition) pairs that exist now."""

    def __init__(self, spec: _ReadSpec) -> None:
        self._spec = spec
        self._consumer: _Consumer | None = None

    def process(self, unused_tick: Any) -> Iterator[tuple[str, tuple[str, int]]]:
        try:
            # Connected lazily: a streaming read outlives broker restarts.
            if self._consumer is None:
                self._consumer = _new_consumer(self._spec)
            tps = _list_partitions(self._consumer, self._spec, strict=False)
        except (*_client_errors(self._spec.client), KafkaUnavailable) as exc:
            # A streaming read outlives broker restarts: the next tick looks again.
            _LOG.warning("Kafka partition discovery skipped a round: %r", exc)
            return
        for tp in tps:
            yield "", (tp.topic, tp.partition)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


_SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
_SEEN_PARAM = beam.DoFn.StateParam(_SEEN)


class _NewPartitionsOnlyFn(beam.DoFn):
    """Unbounded mode, step 2: emit a partition the first time it is seen.

    The set of seen partitions is Beam state, so it survives worker restarts;
    offsets for a new partition are resolved when it first appears.
    """

    def __init__(self, spec: _ReadSpec) -> None:
        self._spec = spec
        self._consumer: _Consumer | None = None

    def process(self, keyed: tuple[str, tuple[str, int]], seen_state: Any = _SEEN_PARAM) -> Iterator[Any]:
        seen = seen_state.read() or frozenset()
        topic, partition = keyed[1]
        if (topic, partition) in seen:
            return
        try:
            if self._consumer is None:
                self._consumer = _new_consumer(self._spec)
            parts = _resolve_partitions(self._consumer, self._spec, [_TP(topic, partition)])
        except (*_client_errors(self._spec.client), KafkaUnavailable) as exc:
            # Not marked as seen: the next discovery round tries this partition again.
            _LOG.warning("Kafka offsets for %s/%s not resolved yet: %r", topic, partition, exc)
            return
        seen_state.write(seen | {(topic, partition)})
        for part in parts:
            yield TimestampedValue(part, MIN_TIMESTAMP)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


# -- the splittable read -------------------------------------------------------------


class _OffsetTracker(OffsetRestrictionTracker):
    """Offset tracker that knows whether its range is unbounded.

    An unbounded range only accepts checkpoints (fraction 0): splitting
    ``[n, inf)`` in half would hand a worker offsets that never exist.
    """

    def __init__(self, offset_range: OffsetRange, bounded: bool) -> None:
        super().__init__(offset_range)
        self._bounded = bounded

    def try_split(self, fraction_of_remainder: float) -> Any:
        if not self._bounded and fraction_of_remainder != 0:
            return None
        return super().try_split(fraction_of_remainder)

    def is_bounded(self) -> bool:
        return self._bounded


class _OffsetRangeProvider(RestrictionProvider):
    def initial_restriction(self, element: _Partition) -> OffsetRange:
        stop = _UNBOUNDED_STOP if element.stop is None else element.stop
        return OffsetRange(element.start, stop)

    def create_tracker(self, restriction: OffsetRange) -> RestrictionTracker:
        return _OffsetTracker(restriction, restriction.stop != _UNBOUNDED_STOP)

    def restriction_size(self, element: _Partition, restriction: OffsetRange) -> int:
        if restriction.stop == _UNBOUNDED_STOP:
            return 1
        return max(0, restriction.stop - restriction.start)

    def truncate(self, element: _Partition, restriction: OffsetRange) -> OffsetRange | None:
        # On drain an unbounded read stops; a bounded one still finishes its range.
        return None if restriction.stop == _UNBOUNDED_STOP else restriction


class _PartitionWatermark(WatermarkEstimator):
    """Monotonic watermark of one partition, moved only by the reader.

    The reader advances it after each poll to the newest record time minus the
    allowed skew, and when the partition is caught up and idle to "now minus
    the allowed skew", so event-time windows downstream close even when a
    partition receives nothing. Per-output observation is a no-op: once per
    poll is enough and cheaper.
    """

    def __init__(self, state: Timestamp | None) -> None:
        self._watermark = state if state is not None else MIN_TIMESTAMP

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        pass

    def advance_to(self, timestamp: Timestamp) -> None:
        if timestamp > self._watermark:
            self._watermark = timestamp

    def current_watermark(self) -> Timestamp:
        return self._watermark

    def get_estimator_state(self) -> Timestamp:
        return self._watermark


class _PartitionWatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element: _Partition, restriction: OffsetRange) -> None:
        return None

    def create_watermark_estimator(self, estimator_state: Timestamp | None) -> _PartitionWatermark:
        return _PartitionWatermark(estimator_state)

    def estimator_state_coder(self) -> Any:
        return PickleCoder()


# How long a bounded read (a backfill) waits on a partition that stops
# answering, or stops delivering records below its stop offset, before failing.
_BOUNDED_STALL_S = 120.0


class _Stall:
    """Fails a bounded read that makes no progress for a while, with one clear line.

    A backfill outlives a short broker outage (it retries in place), but must
    never hang for ever on a partition that cannot be read.
    """

    def __init__(self, tp: _TP, servers: str) -> None:
        self._tp = tp
        self._servers = servers
        self._offset: int | None = None
        self._since = 0.0

    def check(self, offset: int, reason: str) -> None:
        now = time.monotonic()
        if offset != self._offset:
            self._offset, self._since = offset, now
        elif now - self._since > _BOUNDED_STALL_S:
            raise KafkaUnavailable(
                f"reading {self._tp.topic}/{self._tp.partition} at {self._servers} made no progress at offset "
                f"{offset} for {_BOUNDED_STALL_S:.0f}s ({reason}); check the broker"
            )

    def wait(self, offset: int, reason: str, backoff_s: float) -> None:
        self.check(offset, reason)
        time.sleep(backoff_s)  # back off before asking the broker again


# The windows of a value in the global window, built once. The read's input is
# always in the global window (this module makes it), so records are emitted
# as ready-made windowed values: a TimestampedValue would make Beam assign
# windows per element, building a GlobalWindow each time. Other steps whose
# output stays in the global window use it for the same reason.
GLOBAL_WINDOWS = (GlobalWindow(),)
_TRACKER_PARAM = beam.DoFn.RestrictionParam(_OffsetRangeProvider())
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(_PartitionWatermarkProvider())


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition's offset range; one consumer per DoFn instance."""

    def __init__(self, spec: _ReadSpec) -> None:
        self._spec = spec
        self._consumer: _Consumer | None = None
        self._next_offset: dict[_TP, int] = {}
        self._committed: dict[_TP, int] = {}
        self._commit_lock = threading.Lock()
        self._records: dict[str, Any] = {}
        self._bytes: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_spec": self._spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_spec"])

    def setup(self) -> None:
        tune_worker_gc(self._spec.gc_threshold)
        self._connect(not self._spec.bounded)

    def _connect(self, tolerate_outage: bool) -> bool:
        """Create the consumer; in streaming an unreachable broker only pauses the read."""
        try:
            self._consumer = _new_consumer(self._spec)
        except KafkaUnavailable as exc:
            if not tolerate_outage:
                raise
            _LOG.warning("Kafka read waiting for the broker: %s", exc)
            return False
        return True

    def _counters(self, topic: str) -> tuple[Any, Any]:
        if topic not in self._records:
            self._records[topic] = Metrics.counter(METRICS_NAMESPACE, f"{topic}.records_read")
            self._bytes[topic] = Metrics.counter(METRICS_NAMESPACE, f"{topic}.bytes_read")
        return self._records[topic], self._bytes[topic]

    def _seek(self, consumer: _Consumer, tp: _TP, offset: int) -> None:
        """Point the shared consumer at ``tp``/``offset``, keeping its buffer if already there."""
        if consumer.assigned() != tp:
            consumer.assign(tp)
            self._next_offset.clear()
        if self._next_offset.get(tp) != offset:
            consumer.seek(tp, offset)
            self._next_offset[tp] = offset

    def process(
        self,
        element: _Partition,
        tracker: Any = _TRACKER_PARAM,
        watermark: Any = _WATERMARK_PARAM,
    ) -> Iterator[WindowedValue]:
        return self._read(element, tracker, watermark, None)

    def _read(self, element: _Partition, tracker: Any, watermark: Any, finalizer: Any) -> Iterator[WindowedValue]:
        """Claim and emit records until the range ends, the poll is empty, or time is up."""
        spec = self._spec
        restriction = tracker.current_restriction()
        tp = _TP(element.topic, element.partition)
        if restriction.start >= restriction.stop or (
            self._consumer is None and not self._connect(restriction.stop == _UNBOUNDED_STOP)
        ):
            if finalizer is not None:
                finalizer.register(_no_commit)
            if restriction.start < restriction.stop:
                tracker.defer_remainder(Duration.of(spec.resume_delay_s))
            return
        consumer = self._consumer
        assert consumer is not None
        self._seek(consumer, tp, restriction.start)
        records_counter, bytes_counter = self._counters(tp.topic)
        lag_gauge = Metrics.gauge(METRICS_NAMESPACE, f"{tp.topic}.{tp.partition}.lag")
        poll = consumer.poll_batch
        claim = tracker.try_claim
        deadline = time.monotonic() + spec.max_bundle_s
        skew = Duration.of(spec.allowed_skew_s)
        next_offset = restriction.start  # the next offset to read = what a commit saves
        # A bounded range is read to its end in this call: no self-checkpoints.
        # Batch needs none, and the FnApiRunner's multi-worker mode can drop the
        # residual of a self-checkpointed SDF (its merged bundle response keeps
        # only metrics; apache/beam#19842): 2-worker backfills came out short.
        bounded = restriction.stop != _UNBOUNDED_STOP
        # A bounded read may wait for its fetch; an unbounded one keeps each call short,
        # because other partitions in the same bundle wait for it.
        poll_s = max(0.001, min(spec.resume_delay_s, 0.5 if bounded else 0.1))
        stall = _Stall(tp, spec.bootstrap_servers)
        try:
            while True:
                try:
                    batch = poll(tp, poll_s)
                    position = None if batch else consumer.position(tp)
                except consumer.errors as exc:
                    if not consumer.retriable(exc):
                        raise KafkaUnavailable(
                            f"reading {tp.topic}/{tp.partition} at {spec.bootstrap_servers} failed: {exc!r}; "
                            "check the broker and the consumer settings"
                        ) from exc
                    # The broker is away (restart, leader change): try again from the
                    # next offset to read, without moving the watermark.
                    _LOG.warning("Kafka read of %s paused: %r", tp, exc)
                    self._next_offset.pop(tp, None)
                    if not bounded:
                        tracker.defer_remainder(Duration.of(spec.resume_delay_s))
                        return
                    stall.wait(next_offset, repr(exc), poll_s)
                    self._seek(consumer, tp, next_offset)
                    continue
                if not batch:
                    if position is None:
                        self._next_offset.pop(tp, None)
                        if not bounded:
                            tracker.defer_remainder(Duration.of(spec.resume_delay_s))
                            return
                        stall.wait(next_offset, "the consumer lost its position", poll_s)
                        self._seek(consumer, tp, next_offset)
                        continue
                    stop = tracker.current_restriction().stop
                    if position >= stop:
                        # Offsets up to the stop hold no records (transaction
                        # markers, compaction): claim the stop to end the range.
                        claim(stop)
                        return
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        lag_gauge.set(max(0, highwater - position))
                    if bounded:
                        # Records below the stop exist; the fetch is on its way.
                        stall.check(position, "no records arrived")
                        continue
                    # Caught up (per the broker's last answer, never a guess): let the
                    # watermark follow the clock so windows downstream can close.
                    if highwater is not None and position >= highwater:
                        watermark.advance_to(Timestamp.now() - skew)
                    tracker.defer_remainder(Duration.of(spec.resume_delay_s))
                    return
                # One claim per poll: claiming the batch's last offset claims every
                # offset before it. If a split moved the stop into this batch, the
                # records below the new stop are still ours and nothing after it is.
                # No later split can cut below a failed claim, so the stop is final.
                if batch[0].offset < next_offset:
                    # Already emitted (a re-fetch after a reconnect): never twice.
                    batch = [rec for rec in batch if rec.offset >= next_offset]
                    if not batch:
                        continue
                claimed_all = claim(batch[-1].offset)
                if not claimed_all:
                    stop = tracker.current_restriction().stop
                    batch = [rec for rec in batch if rec.offset < stop]
                    self._next_offset.pop(tp, None)
                if batch:
                    size, newest = _batch_size_and_newest(batch)
                    if spec.batched:
                        yield WindowedValue(
                            KafkaBatch(tp.topic, tp.partition, tuple(batch)),
                            Timestamp(micros=newest * 1000),
                            GLOBAL_WINDOWS,
                        )
                    else:
                        last_millis: int | None = None
                        stamp = MIN_TIMESTAMP
                        for rec in batch:
                            if rec.timestamp != last_millis:
                                # Neighbouring records often share a millisecond: reuse the
                                # (immutable) Timestamp, which is costly to build.
                                last_millis = rec.timestamp
                                stamp = Timestamp(micros=last_millis * 1000)
                            yield WindowedValue(rec, stamp, GLOBAL_WINDOWS)
                    next_offset = batch[-1].offset + 1  # the next offset to read
                    watermark.advance_to(Timestamp(micros=newest * 1000) - skew)
                    records_counter.inc(len(batch))
                    bytes_counter.inc(size)
                    LOCAL_PROGRESS.add(len(batch))
                if not claimed_all:
                    return
                self._next_offset[tp] = next_offset
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag_gauge.set(max(0, highwater - next_offset))
                if next_offset >= tracker.current_restriction().stop:
                    return
                if not bounded and (
                    (highwater is not None and next_offset >= highwater) or time.monotonic() > deadline
                ):
                    # Caught up with what the broker had, or time is up: end the call so the
                    # runner passes this output downstream now (a streaming runner releases a
                    # bundle's output only when the bundle ends) and moves the watermark.
                    # The next call starts at once; it waits for new records in its poll.
                    tracker.defer_remainder()
                    return
        finally:
            LOCAL_PROGRESS.share()  # the last records of a call count before the next tick
            # Registered on every call: a runner may ask to finalize any bundle of
            # a DoFn that declares a finalizer.
            if finalizer is not None:
                finalizer.register(lambda tp=tp, offset=next_offset: self._commit(tp, offset))

    def _commit(self, tp: _TP, offset: int) -> None:
        """Commit ``offset`` (the next one to read) once the runner made the output durable."""
        with self._commit_lock:
            if self._committed.get(tp, 0) >= offset or self._consumer is None:
                return
            self._consumer.commit(tp, offset)
            self._committed[tp] = offset

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _batch_size_and_newest(batch: list[KafkaRecord]) -> tuple[int, int]:
    """Bytes (keys and values) and the newest record time (ms) of a poll's records."""
    size = 0
    newest = -1
    for rec in batch:
        if rec.timestamp > newest:
            newest = rec.timestamp
        if rec.value:
            size += len(rec.value)
        if rec.key:
            size += len(rec.key)
    return size, newest


class _CommittingReadPartitionFn(_ReadPartitionFn):
    """The read with offset commits after bundle finalization (output durable)."""

    def process(
        self,
        element: _Partition,
        # The finalizer goes first: Beam passes it by position, the tracker
        # and the watermark estimator by keyword.
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = _TRACKER_PARAM,
        watermark: Any = _WATERMARK_PARAM,
    ) -> Iterator[WindowedValue]:
        return self._read(element, tracker, watermark, finalizer)


def _no_commit() -> None:
    """Finalization callback for a bundle that read nothing."""


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics as :class:`KafkaRecord` elements timestamped with record time.

    ``start``: ``"earliest"``, ``"latest"``, ``"committed"`` (the group in
    ``consumer_config['group_id']``; partitions without a commit use
    ``start_fallback``), an aware ``datetime``, or ``{(topic, partition): offset}``
    (unlisted partitions use ``start_fallback``).

    ``stop``: ``None`` reads forever and picks up partitions added later;
    ``"end"`` stops at the end offsets seen when the read starts (backfill);
    an aware ``datetime`` stops before the first record at or after it;
    ``{(topic, partition): offset}`` stops before that offset (unlisted
    partitions stop at their end offsets).

    ``commit_offsets`` commits, for the group in ``consumer_config``, the next
    offset to read once a bundle's output is durable. ``allowed_skew_s`` keeps
    the watermark that far behind record time, and behind wall time when a
    partition is idle. ``validate`` checks the broker and topics when the
    pipeline is built, with a bounded wait of ``timeout_s``.

    Unbounded reads end each call once caught up with the broker, or after
    ``max_bundle_s`` (a streaming runner passes output on when a bundle ends),
    and wait ``resume_delay_s`` before polling an idle partition again.

    On Prism 2.77 run an unbounded read with
    ``--experiments=prism_disable_sdf_split`` (Beamline's runner adds it): a
    Prism split of the stateful partition-discovery step can run its key in two
    bundles at once and emit a partition twice, so it is read twice.

    ``client`` picks the Kafka client: ``"kafka-python"`` (default) or
    ``"confluent"`` (needs ``pip install confluent-kafka``). ``consumer_config``
    uses that client's names: ``group_id`` for kafka-python, ``group.id`` for
    confluent.

    ``batched=True`` emits :class:`KafkaBatch` elements, one per poll of a
    partition, instead of one :class:`KafkaRecord` per record: for a step that
    loops over records itself (a backfill), at a fraction of the per-record cost.

    ``gc_threshold`` is the young-generation threshold of CPython's garbage
    collector that the read sets in its worker process, unless the process
    already runs with a threshold of its own (see :mod:`transforms.worker_gc`);
    ``None`` leaves the collector alone.

    ``readers``: the worker processes a bounded read runs on (the
    FnApiRunner's ``direct_num_workers``). Above 1, the offsets are cut into
    that many shares of equal work, each dealt to one worker (see
    ``_equal_shares``), unless the read commits offsets.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        *,
        start: StartSpec = "earliest",
        stop: StopSpec = None,
        start_fallback: str = "earliest",
        consumer_config: Mapping[str, Any] | None = None,
        commit_offsets: bool = False,
        allowed_skew_s: float = 5.0,
        resume_delay_s: float = 0.25,
        max_bundle_s: float = 1.0,
        discovery_interval_s: float = 10.0,
        timeout_s: float = 10.0,
        validate: bool = True,
        client: str = "kafka-python",
        batched: bool = False,
        gc_threshold: int | None = WORKER_GC_THRESHOLD,
        readers: int = 1,
    ) -> None:
        super().__init__()
        servers = bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        if not servers:
            raise ConfigError("bootstrap_servers is empty; pass HOST:PORT of a Kafka broker")
        topic_list = (topics,) if isinstance(topics, str) else tuple(topics)
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise ConfigError(f"topics must be one or more non-empty names; got {topics!r}")
        config = dict(consumer_config or {})
        _check_client_config(client, config, "consumer")
        if start_fallback not in ("earliest", "latest"):
            raise ConfigError(f"start_fallback must be 'earliest' or 'latest'; got {start_fallback!r}")
        start_value: Any
        if isinstance(start, str):
            if start not in _START_MODES:
                raise ConfigError(f"start must be one of {', '.join(_START_MODES)}; got {start!r}")
            start_value = start
        elif isinstance(start, datetime):
            start_value = _to_millis(start)
        elif isinstance(start, Mapping):
            _check_offsets(start, "start", topic_list)
            start_value = tuple(sorted(start.items()))
        else:
            raise ConfigError(f"start must be a mode, an aware datetime or offsets; got {start!r}")
        group_key = "group.id" if client == "confluent" else "group_id"
        if (start == "committed" or commit_offsets) and not config.get(group_key):
            raise ConfigError(f"committed offsets need a consumer group: set consumer_config['{group_key}']")
        stop_value: Any
        if stop is None or stop == "end":
            stop_value = stop
        elif isinstance(stop, datetime):
            stop_value = _to_millis(stop)
        elif isinstance(stop, Mapping):
            _check_offsets(stop, "stop", topic_list)
            stop_value = tuple(sorted(stop.items()))
        else:
            raise ConfigError(f"stop must be None, 'end', an aware datetime or offsets; got {stop!r}")
        for name, seconds in (
            ("allowed_skew_s", allowed_skew_s),
            ("resume_delay_s", resume_delay_s),
            ("max_bundle_s", max_bundle_s),
            ("discovery_interval_s", discovery_interval_s),
            ("timeout_s", timeout_s),
        ):
            if seconds < 0 or (name != "allowed_skew_s" and seconds == 0):
                raise ConfigError(f"{name} must be positive; got {seconds!r}")
        if gc_threshold is not None and (
            isinstance(gc_threshold, bool) or not isinstance(gc_threshold, int) or gc_threshold < 1
        ):
            raise ConfigError(f"gc_threshold must be a positive whole number or None; got {gc_threshold!r}")
        if isinstance(readers, bool) or not isinstance(readers, int) or readers < 1:
            raise ConfigError(f"readers must be a positive whole number; got {readers!r}")
        self._spec = _ReadSpec(
            bootstrap_servers=servers,
            topics=topic_list,
            start=start_value,
            start_fallback=start_fallback,
            stop=stop_value,
            consumer_config=tuple(sorted(config.items())),
            commit_offsets=commit_offsets,
            allowed_skew_s=float(allowed_skew_s),
            resume_delay_s=float(resume_delay_s),
            max_bundle_s=float(max_bundle_s),
            discovery_interval_s=float(discovery_interval_s),
            timeout_s=float(timeout_s),
            client=client,
            batched=batched,
            gc_threshold=gc_threshold,
            readers=readers,
        )
        if validate:
            consumer = _new_consumer(self._spec)
            try:
                _check_topics(consumer, self._spec)
            finally:
                consumer.close()

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord] | beam.PCollection[KafkaBatch]:
        spec = self._spec
        read_fn = (_CommittingReadPartitionFn if spec.commit_offsets else _ReadPartitionFn)(spec)
        output_type = KafkaBatch if spec.batched else KafkaRecord
        if spec.bounded:
            return (
                pbegin
                | "Impulse" >> beam.Impulse()
                | "DiscoverPartitions" >> beam.ParDo(_DiscoverPartitionsFn(spec))
                | "SpreadPartitions" >> beam.Reshuffle()
                | "ReadPartitions" >> beam.ParDo(read_fn).with_output_types(output_type)
            )
        # The first listing comes from an Impulse, whose element has the minimum
        # timestamp: it holds the watermark from the very start until each
        # partition's own estimator takes over, so history already in the log is
        # not late. Later ticks only add partitions (records in a partition added
        # while running that are older than the watermark are late, as in any
        # Kafka source). No shuffle between here and the read: it would not keep
        # that hold.
        first = pbegin | "FirstListing" >> beam.Impulse()
        ticks = pbegin | "DiscoveryTicks" >> PeriodicImpulse(
            start_timestamp=Timestamp.now() + Duration.of(spec.discovery_interval_s),
            fire_interval=spec.discovery_interval_s,
        )
        return (
            (first, ticks)
            | "Listings" >> beam.Flatten()
            | "ListPartitions" >> beam.ParDo(_ListTopicPartitionsFn(spec))
            | "NewPartitionsOnly" >> beam.ParDo(_NewPartitionsOnlyFn(spec))
            | "ReadPartitions" >> beam.ParDo(read_fn).with_output_types(output_type)
        )

    def default_label(self) -> str:
        return f"ReadFromKafka({','.join(self._spec.topics)})"


# -- the sink ------------------------------------------------------------------------


@dataclass(frozen=True)
class _WriteSpec:
    """Everything a writer needs; small, frozen and picklable."""

    bootstrap_servers: str
    topic: str
    producer_config: tuple[tuple[str, Any], ...]
    timeout_s: float
    client: str
    # One Kafka transaction per bundle; ids are "<prefix>-<random per DoFn instance>".
    exactly_once: bool = False
    transactional_id_prefix: str = ""


# How long the broker keeps a transaction open before aborting it on its own.
# It bounds how long a worker that died mid-bundle holds back read_committed
# readers of the output; a bundle (and any broker outage it rides through) must
# commit within it. Kafka's own default is 60 s; producer_config may override
# (transaction_timeout_ms / transaction.timeout.ms), up to the broker's
# transaction.max.timeout.ms (15 min by default).
_TRANSACTION_TIMEOUT_MS = 120_000
# The producer settings a transactional writer owns, in both clients' names.
_TRANSACTIONAL_ID_KEYS = frozenset({"transactional_id", "transactional.id"})


class _Producer:
    """What the sink needs from a Kafka producer: send, then flush and count failures.

    ``flush`` waits for every record sent since the last flush and returns
    ``(failed, sent, first error)``; ``errors`` are the client's exception types.
    A producer made with a transactional id has already registered it with the
    broker (which fenced any earlier producer with that id and aborted its open
    transaction); ``begin``, ``commit`` and ``abort`` then bound one transaction.
    ``discard`` drops the producer without waiting for anything.
    """

    errors: tuple[type[BaseException], ...] = ()

    def send(self, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError

    def flush(self, timeout_s: float) -> tuple[int, int, str]:
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self, timeout_s: float) -> None:
        """Commit the open transaction: its records become visible to read_committed readers."""
        raise NotImplementedError

    def abort(self, timeout_s: float) -> None:
        raise NotImplementedError

    def close(self, timeout_s: float) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class _KafkaPythonProducer(_Producer):
    def __init__(self, spec: _WriteSpec, transactional_id: str | None = None) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, KafkaError, KafkaTimeoutError

        self.errors = (KafkaError,)
        self._timeout_error = KafkaTimeoutError
        self._topic = spec.topic
        self._pending: list[Any] = []
        timeout_ms = int(spec.timeout_s * 1000)
        settings: dict[str, Any] = {
            "bootstrap_servers": spec.bootstrap_servers.split(","),
            # All in-sync replicas; kafka-python spells "all" as -1. With it the
            # producer is idempotent (kafka-python's default): a send retried
            # after a lost acknowledgement is not written twice.
            "acks": -1,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_request_size": 8 * 1024 * 1024,
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 5000),
            # kafka-python requires delivery > linger + request timeout.
            "delivery_timeout_ms": max(timeout_ms, 5000) + 30_000,
        }
        if transactional_id:
            settings["transaction_timeout_ms"] = _TRANSACTION_TIMEOUT_MS
            # A transaction's first request is refused while the broker still
            # writes the previous commit's markers; the sender waits this long to
            # ask again (100 ms by default, which doubled the cost of a bundle).
            settings["retry_backoff_ms"] = 20
        settings.update(spec.producer_config)
        if transactional_id:
            settings["transactional_id"] = transactional_id
        try:
            self._p = KafkaProducer(**settings)
        except KafkaConfigurationError as exc:
            raise ConfigError(f"invalid Kafka producer settings: {exc}; fix producer_config") from None
        except (KafkaError, OSError) as exc:
            raise _unavailable(spec.bootstrap_servers, spec.timeout_s, exc) from None
        if transactional_id:
            try:
                # Bounded by max_block_ms. Fences an earlier producer with this id
                # and aborts the transaction it left open.
                self._p.init_transactions()
            except KafkaError:
                self.discard()
                raise

    def send(self, key: bytes | None, value: bytes | None) -> None:
        self._pending.append(self._p.send(self._topic, key=key, value=value))

    def flush(self, timeout_s: float) -> tuple[int, int, str]:
        pending, self._pending = self._pending, []
        if not pending:
            return 0, 0, ""
        self._p.flush(timeout=timeout_s)
        failed = [f for f in pending if not f.is_done or f.failed()]
        first = "" if not failed else (repr(failed[0].exception) if failed[0].is_done else "no answer")
        return len(failed), len(pending), first

    def begin(self) -> None:
        self._p.begin_transaction()

    def _end_transaction(self, commit: bool, timeout_s: float) -> None:
        # KafkaProducer.commit_transaction/abort_transaction wait without a bound
        # (for ever while the broker is away). This is their body, with a bound.
        manager = getattr(self._p, "_transaction_manager", None)
        sender = getattr(self._p, "_sender", None)
        if manager is None or sender is None:  # another kafka-python: its own, unbounded wait
            (self._p.commit_transaction if commit else self._p.abort_transaction)()
            return
        result = manager.begin_commit() if commit else manager.begin_abort()
        sender.wakeup()
        if not result.wait(timeout_ms=int(timeout_s * 1000)):
            raise self._timeout_error(f"no answer to the transaction {'commit' if commit else 'abort'}")

    def commit(self, timeout_s: float) -> None:
        self._end_transaction(True, timeout_s)

    def abort(self, timeout_s: float) -> None:
        self._pending = []
        self._end_transaction(False, timeout_s)

    def close(self, timeout_s: float) -> None:
        self._p.close(timeout=timeout_s)

    def discard(self) -> None:
        self._pending = []
        self._p.close(timeout=0)


def _confluent_producer_settings(spec: _WriteSpec, transactional_id: str | None = None) -> dict[str, Any]:
    timeout_ms = int(spec.timeout_s * 1000)
    settings: dict[str, Any] = {
        "bootstrap.servers": spec.bootstrap_servers,
        "acks": "all",
        # librdkafka's producer is not idempotent unless asked: a send retried
        # after a lost acknowledgement (a broker restart) would be written twice.
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.max.bytes": 8 * 1024 * 1024,
        "socket.timeout.ms": max(timeout_ms, 5000),
        "message.timeout.ms": max(timeout_ms, 5000) + 30_000,
        # A topic missing for this long fails its records (kafka-python's max_block_ms).
        "topic.metadata.propagation.max.ms": timeout_ms,
        "logger": _LOG,
    }
    if transactional_id:
        settings["transaction.timeout.ms"] = _TRANSACTION_TIMEOUT_MS
    settings.update(spec.producer_config)
    if transactional_id:
        settings["transactional.id"] = transactional_id
        # librdkafka refuses delivery and socket timeouts longer than a transaction's.
        txn_ms = int(settings["transaction.timeout.ms"])
        for key, most in (("message.timeout.ms", txn_ms), ("socket.timeout.ms", txn_ms + 100)):
            if key not in spec.producer_config:
                settings[key] = min(settings[key], most)
    return settings


class _ConfluentProducer(_Producer):
    def __init__(self, spec: _WriteSpec, transactional_id: str | None = None) -> None:
        ck = _confluent()
        self.errors = (ck.KafkaException,)
        self._topic = spec.topic
        self._sent = 0
        self._failures: list[str] = []
        try:
            self._p = ck.Producer(_confluent_producer_settings(spec, transactional_id))
        except (ck.KafkaException, ValueError) as exc:
            raise ConfigError(f"invalid Kafka producer settings: {exc}; fix producer_config") from None
        if transactional_id:
            try:
                # Fences an earlier producer with this id and aborts the transaction it left open.
                self._p.init_transactions(spec.timeout_s)
            except ck.KafkaException:
                self.discard()
                raise

    def _delivered(self, error: Any, unused_message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(self, key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                self._p.produce(self._topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:
                self._p.poll(0.05)  # the local queue is full: serve acknowledgements, then retry
        self._sent += 1

    def flush(self, timeout_s: float) -> tuple[int, int, str]:
        unanswered = self._p.flush(timeout_s)
        failures, self._failures = self._failures, []
        sent, self._sent = self._sent, 0
        first = failures[0] if failures else ("no answer" if unanswered else "")
        return len(failures) + unanswered, sent, first

    def begin(self) -> None:
        self._p.begin_transaction()

    def commit(self, timeout_s: float) -> None:
        self._p.commit_transaction(timeout_s)

    def abort(self, timeout_s: float) -> None:
        self._failures, self._sent = [], 0
        self._p.abort_transaction(timeout_s)

    def close(self, timeout_s: float) -> None:
        self._p.flush(timeout_s)

    def discard(self) -> None:
        self._failures, self._sent = [], 0
        self._p.purge()  # drop queued and in-flight records; nothing waits for them


# librdkafka errors that mean "the broker, or its transaction coordinator, is not ready yet".
_CONFLUENT_NOT_READY = (
    "COORDINATOR_LOAD_IN_PROGRESS",
    "COORDINATOR_NOT_AVAILABLE",
    "NOT_COORDINATOR",
    "CONCURRENT_TRANSACTIONS",
    *_CONFLUENT_RETRIABLE_CODES,
)


def _broker_not_ready(exc: BaseException) -> bool:
    """Whether making a producer failed because the broker is away or still starting."""
    if isinstance(exc, KafkaUnavailable):
        return True
    error = exc.args[0] if exc.args else None
    if callable(getattr(error, "code", None)):  # a confluent KafkaError
        ck = _confluent()
        codes = {getattr(ck.KafkaError, name, None) for name in _CONFLUENT_NOT_READY} - {None}
        return bool(error.retriable()) or error.code() in codes
    return bool(getattr(exc, "retriable", False))  # kafka-python marks its retriable errors


class _WriteFn(beam.DoFn):
    """Sends records and waits for the broker's acknowledgement before the bundle ends.

    Records are held until the bundle ends or ``max_pending`` wait, then sent
    back to back: the producer batches them into a few requests. Sent as they
    came, each one among thousands of other elements (a backfill's dead
    letters) woke the producer's network thread and went out as a request of
    its own: about 0.2 ms of CPU a record, a second of each worker's time for
    the 9k dead letters of a 1M-event backfill.

    With ``exactly_once`` each bundle is one Kafka transaction, begun with the
    bundle's first record and committed in ``finish_bundle`` once every record
    is acknowledged. A bundle that fails before that (here or in any other step
    of its stage) is aborted, so a retried bundle's first attempt is never
    visible to read_committed readers. After any failure the producer is
    dropped and the next bundle makes a new one with the same transactional id,
    which fences the old one and aborts whatever it left open.
    """

    def __init__(
        self,
        spec: _WriteSpec,
        key_fn: Callable[[Any], bytes | None] | None,
        value_fn: Callable[[Any], bytes | None] | None,
        max_pending: int,
    ) -> None:
        self._spec = spec
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._max_pending = max_pending
        self._producer: _Producer | None = None
        self._pending: list[tuple[bytes | None, bytes | None]] = []
        self._in_transaction = False
        self._transactional_id: str | None = None

    def setup(self) -> None:
        if self._spec.exactly_once:
            import uuid

            # Unique per DoFn instance (two live producers with one id would fence
            # each other) and kept for its whole life (see the class docstring).
            self._transactional_id = f"{self._spec.transactional_id_prefix}-{uuid.uuid4().hex[:16]}"
        # The producer is made with the first record: an instance set up while
        # the broker is away (a streaming read waits it out) needs none until then.

    def _new_producer(self) -> _Producer:
        spec = self._spec
        make = _ConfluentProducer if spec.client == "confluent" else _KafkaPythonProducer
        # Right after a broker (re)start its transaction coordinator is still
        # loading: try again for as long as a send may wait for its acknowledgement.
        deadline = time.monotonic() + spec.timeout_s + 40
        while True:
            try:
                return make(spec, self._transactional_id)
            except (*_client_errors(spec.client), KafkaUnavailable) as exc:
                if time.monotonic() < deadline and _broker_not_ready(exc):
                    _LOG.warning("Kafka writer for %s waiting for the broker: %r", spec.topic, exc)
                    time.sleep(1.0)
                    continue
                if isinstance(exc, KafkaUnavailable):
                    raise
                raise KafkaWriteError(
                    f"could not start Kafka transactions as {self._transactional_id} at {spec.bootstrap_servers} "
                    f"({exc!r}); the bundle will be retried; check the broker (transaction.state.log.replication."
                    "factor and transaction.state.log.min.isr must not exceed its live brokers) and its ACLs on "
                    "transactional ids"
                ) from exc

    def start_bundle(self) -> None:
        self._pending = []
        if self._in_transaction:
            # This instance's last bundle failed before its commit: never commit it.
            self._abandon()

    def process(self, element: Any) -> None:
        if self._key_fn is None and self._value_fn is None:
            key, value = element
        else:
            key = self._key_fn(element) if self._key_fn else None
            value = self._value_fn(element) if self._value_fn else element
        self._pending.append((key, value))
        if len(self._pending) >= self._max_pending:
            self._flush()

    def _flush(self) -> None:
        """Send the pending records and wait for them; raise (fail the bundle) if any was not acknowledged."""
        records, self._pending = self._pending, []
        if not records:
            return
        if self._producer is None:
            self._producer = self._new_producer()
        producer, spec = self._producer, self._spec
        try:
            if spec.exactly_once and not self._in_transaction:
                producer.begin()
                self._in_transaction = True
            for key, value in records:
                producer.send(key, value)
        except producer.errors as exc:
            self._abandon()
            raise KafkaWriteError(
                f"could not send to Kafka topic {spec.topic} at {spec.bootstrap_servers} ({exc}); "
                "the bundle will be retried; check that the topic exists and the broker is up"
            ) from exc
        try:
            failed, sent, first = producer.flush(spec.timeout_s + 40)
        except producer.errors as exc:
            self._abandon()
            raise KafkaWriteError(
                f"Kafka did not acknowledge writes to topic {spec.topic} at {spec.bootstrap_servers} "
                f"({type(exc).__name__}); the bundle will be retried; check the broker"
            ) from exc
        if failed:
            self._abandon()
            raise KafkaWriteError(
                f"Kafka did not acknowledge {failed} of {sent} records to topic "
                f"{spec.topic} ({first}); the bundle will be retried; check the broker and topic"
            )

    def finish_bundle(self) -> None:
        self._flush()
        producer, spec = self._producer, self._spec
        if not self._in_transaction or producer is None:
            return
        try:
            producer.commit(spec.timeout_s + 40)
        except producer.errors as exc:
            self._abandon()
            raise KafkaWriteError(
                f"Kafka did not commit the transaction of this bundle's records to topic {spec.topic} at "
                f"{spec.bootstrap_servers} ({exc!r}); it is aborted and the bundle will be retried; check the "
                "broker, and that a bundle fits in the transaction timeout (producer_config "
                "transaction_timeout_ms / transaction.timeout.ms)"
            ) from exc
        self._in_transaction = False

    def _abandon(self) -> None:
        """Abort the open transaction (if any) and drop the producer; the next bundle makes a new one."""
        producer, self._producer = self._producer, None
        in_transaction, self._in_transaction = self._in_transaction, False
        self._pending = []
        if producer is None:
            return
        if in_transaction:
            try:
                producer.abort(self._spec.timeout_s)
            except producer.errors as exc:
                # Still never committed: the next producer with this id fences it,
                # or the broker aborts it at the transaction timeout.
                _LOG.warning("Kafka transaction %s not aborted yet: %r", self._transactional_id, exc)
        producer.discard()

    def teardown(self) -> None:
        if self._in_transaction:
            self._abandon()
        if self._producer is not None:
            self._producer.close(self._spec.timeout_s)
            self._producer = None


def _check_producer_settings(spec: _WriteSpec) -> None:
    """Reject producer_config that the writer's own settings conflict with, now rather than on a worker."""
    config = dict(spec.producer_config)
    if spec.client == "confluent":
        ck = _confluent()
        settings = _confluent_producer_settings(spec, "beamline-check" if spec.exactly_once else None)
        # Without servers (and quiet) the check never connects; librdkafka checks every name and value.
        del settings["bootstrap.servers"], settings["logger"]
        try:
            ck.Producer({**settings, "log_level": 0})
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"invalid confluent-kafka producer setting ({exc}); fix producer_config (the writer is "
                f"idempotent{' and transactional' if spec.exactly_once else ''}, so acks must stay all; "
                "with exactly_once=False, enable.idempotence=False allows others)"
            ) from None
        return
    acks = config.get("acks", -1)
    if spec.exactly_once and acks not in (-1, "all"):
        raise ConfigError(f"exactly_once needs acks=-1 (all); got acks={acks!r} in producer_config")


class WriteToKafka(beam.PTransform):
    """Writes elements to one Kafka topic, acknowledged before each bundle commits.

    Without ``key_fn``/``value_fn`` the elements are ``(key, value)`` pairs of
    bytes (or None); otherwise ``key_fn(element)`` and ``value_fn(element)``
    give the bytes (``value_fn`` defaults to the element itself). A bundle
    whose records the broker does not acknowledge fails (:class:`KafkaWriteError`)
    and is retried; no record is dropped silently. The producer is idempotent,
    so a send the client retries (a broker restart) is not written twice.

    ``exactly_once`` (the default) writes each bundle in one Kafka transaction,
    committed when the bundle finishes: a bundle that fails is aborted, so its
    retry does not duplicate it for read_committed readers (ReadFromKafka's
    default; plain Kafka consumers must set isolation_level=read_committed).
    Transactional ids are ``transactional_id_prefix`` (default
    ``beamline-<topic>``) plus a random suffix per worker DoFn; the broker needs
    transactions enabled for them (ACLs, and a transaction state log it can
    replicate). If a worker dies mid-bundle, its open transaction holds back
    read_committed readers of the partitions it wrote until the broker aborts
    it at the transaction timeout (2 min here; producer_config
    ``transaction_timeout_ms`` / ``transaction.timeout.ms`` changes it, and a
    bundle must commit within it). Beam gives sinks no two-phase commit: if a
    runner lost a bundle after it finished and ran it again, its records would
    be written twice; and a pipeline started again from the start of its input
    writes its output again. With ``exactly_once=False`` writes are plainly
    at-least-once: a retried bundle writes its records again.

    Records wait in the worker until the bundle ends or ``max_pending`` of
    them wait; then they are sent back to back and acknowledged.

    ``client`` is ``"kafka-python"`` (default) or ``"confluent"``;
    ``producer_config`` uses that client's setting names.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        key_fn: Callable[[Any], bytes | None] | None = None,
        value_fn: Callable[[Any], bytes | None] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        timeout_s: float = 10.0,
        max_pending: int = 50_000,
        validate: bool = True,
        client: str = "kafka-python",
        exactly_once: bool = True,
        transactional_id_prefix: str | None = None,
    ) -> None:
        super().__init__()
        servers = bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        if not servers:
            raise ConfigError("bootstrap_servers is empty; pass HOST:PORT of a Kafka broker")
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"topic must be a non-empty name; got {topic!r}")
        config = dict(producer_config or {})
        owned = sorted(set(config) & _TRANSACTIONAL_ID_KEYS)
        if owned:
            raise ConfigError(
                f"producer setting {', '.join(owned)} is managed by Beamline; pass exactly_once=True "
                "and transactional_id_prefix instead"
            )
        _check_client_config(client, config, "producer")
        if timeout_s <= 0 or max_pending <= 0:
            raise ConfigError("timeout_s and max_pending must be positive")
        prefix = f"beamline-{topic}" if transactional_id_prefix is None else transactional_id_prefix
        if not isinstance(prefix, str) or not prefix.strip():
            raise ConfigError(f"transactional_id_prefix must be a non-empty string; got {transactional_id_prefix!r}")
        write_spec = _WriteSpec(
            servers, topic, tuple(sorted(config.items())), float(timeout_s), client, bool(exactly_once), prefix
        )
        _check_producer_settings(write_spec)
        self._fn = _WriteFn(write_spec, key_fn, value_fn, max_pending)
        if validate:
            if client == "confluent":
                shared = {k: v for k, v in config.items() if k.startswith(_CONFLUENT_SHARED_PREFIXES)}
            else:
                shared = {k: v for k, v in config.items() if k in _SHARED_CLIENT_KEYS}
            spec = _ReadSpec(
                bootstrap_servers=servers,
                topics=(topic,),
                start="earliest",
                start_fallback="earliest",
                stop=None,
                consumer_config=tuple(sorted(shared.items())),
                commit_offsets=False,
                allowed_skew_s=0.0,
                resume_delay_s=1.0,
                max_bundle_s=1.0,
                discovery_interval_s=1.0,
                timeout_s=float(timeout_s),
                client=client,
            )
            consumer = _new_consumer(spec)
            try:
                _check_topics(consumer, spec)
            finally:
                consumer.close()

    def expand(self, pcoll: beam.PCollection[Any]) -> beam.pvalue.PDone:
        pcoll | "Write" >> beam.ParDo(self._fn)
        return beam.pvalue.PDone(pcoll.pipeline)
