"""The confluent-kafka side of the client interface (see :mod:`transforms.kafka.clients`): consumer, producer, admin.

confluent-kafka wraps librdkafka (C): faster than kafka-python, installed
separately (``pip install 'beamline[confluent]'``). Each class takes the
connection and the settings of its role, in librdkafka's names; librdkafka's
own log lines go to this module's logger.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from core.errors import ConfigError
from transforms.kafka.config import TRANSACTION_TIMEOUT_MS, client_error_text, import_confluent
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.records import _TP, KafkaRecord

__all__ = [
    "FETCH_TUNING",
    "ConfluentAdmin",
    "ConfluentConsumer",
    "ConfluentProducer",
    "errors",
    "not_ready",
    "producer_settings",
]

_LOG = logging.getLogger(__name__)

# Large fetches, as kafka_python.FETCH_TUNING; the benchmarks' plain confluent loop uses the same.
FETCH_TUNING = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    # Once a partition's local queue holds queued.min.messages (100k), librdkafka
    # waits this long before fetching it again; its default of 1 s left a
    # fast reader idle half of the time.
    "fetch.queue.backoff.ms": 10,
}

# librdkafka reports these when the broker is away; it reconnects on its own.
_RETRIABLE_CODES = ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_WAIT_COORD", "_RESOLVE")
# ... and these too when the broker, or its transaction coordinator, is not ready yet.
_NOT_READY_CODES = (
    "COORDINATOR_LOAD_IN_PROGRESS",
    "COORDINATOR_NOT_AVAILABLE",
    "NOT_COORDINATOR",
    "CONCURRENT_TRANSACTIONS",
    *_RETRIABLE_CODES,
)


def errors() -> tuple[type[BaseException], ...]:
    """The exception types confluent-kafka raises for broker and protocol errors."""
    return (import_confluent().KafkaException,)


def _codes(names: tuple[str, ...]) -> set[Any]:
    ck = import_confluent()
    return {getattr(ck.KafkaError, name, None) for name in names} - {None}


def _retriable(exc: BaseException, codes: set[Any]) -> bool:
    error: Any = exc.args[0] if exc.args else None
    if not callable(getattr(error, "code", None)):  # not a KafkaError
        return False
    return bool(error.retriable()) or error.code() in codes


def not_ready(exc: BaseException) -> bool:
    """Whether ``exc`` means the broker, or its transaction coordinator, is away or still starting."""
    return _retriable(exc, _codes(_NOT_READY_CODES))


def _made(exc: BaseException, settings: Mapping[str, Any], what: str) -> ConfigError:
    return ConfigError(
        f"invalid Kafka {what} settings: {client_error_text(exc, settings)}; fix {what}_config or the connection's"
    )


def consumer_settings(connection: KafkaConnection, config: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
    """The read's consumer defaults in librdkafka's names, then the connection's settings, then ``config``."""
    timeout_ms = int(timeout_s * 1000)
    settings: dict[str, Any] = {
        "bootstrap.servers": connection.bootstrap_servers,
        # librdkafka wants a group even for assigned partitions; nothing is
        # committed to it unless commit_offsets names the user's group.
        "group.id": "beamline-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "socket.timeout.ms": max(timeout_ms, 5000),
        **FETCH_TUNING,
        "fetch.wait.max.ms": 100,
        "isolation.level": "read_committed",  # librdkafka's default too; see kafka_python.consumer_settings
        "logger": _LOG,
    }
    return {**settings, **connection.settings_for("consumer"), **config}


class ConfluentConsumer:
    """confluent-kafka's Consumer (librdkafka). It connects lazily, so the first request bounds the wait."""

    def __init__(self, connection: KafkaConnection, config: Mapping[str, Any], timeout_s: float) -> None:
        ck = import_confluent()
        self._ck = ck
        self.errors: tuple[type[BaseException], ...] = (ck.KafkaException,)
        self._connection = connection
        self._timeout_s = timeout_s
        self._metadata: Any = None
        self._assigned: _TP | None = None
        self._seeked: int | None = None
        settings = consumer_settings(connection, config, timeout_s)
        try:
            self._c = ck.Consumer(settings)
        except (ck.KafkaException, ValueError) as exc:
            raise _made(exc, settings, "consumer") from None
        self._retriable_codes = _codes(_RETRIABLE_CODES)

    def retriable(self, exc: BaseException) -> bool:
        return _retriable(exc, self._retriable_codes)

    def _tp(self, tp: _TP, offset: int | None = None) -> Any:
        if offset is None:
            return self._ck.TopicPartition(tp[0], tp[1])
        return self._ck.TopicPartition(tp[0], tp[1], offset)

    def topics(self) -> set[str]:
        try:
            self._metadata = self._c.list_topics(timeout=self._timeout_s)
        except self._ck.KafkaException as exc:
            raise self._connection.unavailable(self._timeout_s, exc) from None
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
            raise self._connection.unavailable(self._timeout_s, TimeoutError())
        low, high = found
        return low, high

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
            return int(found.offset)
        # Nothing consumed since the seek: the next offset to read is where it went.
        return self._seeked if self._assigned == tp else None

    def highwater(self, tp: _TP) -> int | None:
        # Cached: updated by every fetch response, no request is made.
        high = self._c.get_watermark_offsets(self._tp(tp), cached=True)
        return int(high[1]) if high is not None and high[1] >= 0 else None

    def commit(self, tp: _TP, offset: int) -> None:
        self._c.commit(offsets=[self._tp(tp, offset)], asynchronous=False)

    def close(self) -> None:
        self._c.close()


def producer_settings(
    connection: KafkaConnection, config: Mapping[str, Any], timeout_s: float, transactional_id: str | None = None
) -> dict[str, Any]:
    """A writer's producer settings: idempotent, ``acks=all``, transactional with an id; then the user's."""
    timeout_ms = int(timeout_s * 1000)
    settings: dict[str, Any] = {
        "bootstrap.servers": connection.bootstrap_servers,
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
        settings["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
    given = {**connection.settings_for("producer"), **config}
    settings.update(given)
    if transactional_id:
        settings["transactional.id"] = transactional_id
        # librdkafka refuses delivery and socket timeouts longer than a transaction's.
        txn_ms = int(settings["transaction.timeout.ms"])
        for key, most in (("message.timeout.ms", txn_ms), ("socket.timeout.ms", txn_ms + 100)):
            if key not in given:
                settings[key] = min(settings[key], most)
    return settings


class ConfluentProducer:
    """confluent-kafka's Producer; with a transactional id its transactions are registered."""

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        config: Mapping[str, Any],
        timeout_s: float,
        transactional_id: str | None = None,
    ) -> None:
        ck = import_confluent()
        self.errors: tuple[type[BaseException], ...] = (ck.KafkaException,)
        self._topic = topic
        self._sent = 0
        self._failures: list[str] = []
        settings = producer_settings(connection, config, timeout_s, transactional_id)
        try:
            self._p = ck.Producer(settings)
        except (ck.KafkaException, ValueError) as exc:
            raise _made(exc, settings, "producer") from None
        if transactional_id:
            try:
                # Fences an earlier producer with this id and aborts the transaction it left open.
                self._p.init_transactions(timeout_s)
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


class ConfluentAdmin:
    """confluent-kafka's AdminClient: list and create topics; each request waits at most ``timeout_s``."""

    def __init__(self, connection: KafkaConnection, timeout_s: float) -> None:
        ck = import_confluent()
        from confluent_kafka.admin import AdminClient

        self._ck = ck
        self.errors: tuple[type[BaseException], ...] = (ck.KafkaException,)
        self._timeout_s = timeout_s
        settings: dict[str, Any] = {
            "bootstrap.servers": connection.bootstrap_servers,
            **connection.settings_for("admin"),
        }
        config: dict[str, Any] = {**settings, "logger": _LOG}
        try:
            self._a = AdminClient(config)
        except (ck.KafkaException, ValueError) as exc:
            raise _made(exc, settings, "admin") from None

    def topics(self) -> set[str]:
        metadata = self._a.list_topics(timeout=self._timeout_s)
        return {name for name, meta in metadata.topics.items() if meta.error is None}

    def create(
        self, names: list[str], partitions: int, replication: int, configs: Mapping[str, str] | None = None
    ) -> None:
        from confluent_kafka.admin import NewTopic

        specs = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication, config=dict(configs or {}))
            for name in names
        ]
        for future in self._a.create_topics(specs, request_timeout=self._timeout_s).values():
            try:
                future.result()
            except self._ck.KafkaException as exc:
                if exc.args[0].code() != self._ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise  # TOPIC_ALREADY_EXISTS: another client created it since our listing

    def close(self) -> None:
        """Nothing to release: librdkafka's handle goes with the object."""
