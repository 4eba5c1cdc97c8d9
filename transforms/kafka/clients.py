"""One small client interface over kafka-python and confluent-kafka, and the factory that picks one.

The read, the write and the admin helpers drive whichever client the
connection names through :class:`_Consumer`, :class:`_Producer` and
:class:`_Admin`; the two implementations live in
:mod:`transforms.kafka.kafka_python` and :mod:`transforms.kafka.confluent`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from core.errors import ConfigError, KafkaUnavailable
from transforms.kafka import confluent, kafka_python
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.records import _TP, KafkaRecord

__all__ = [
    "broker_not_ready",
    "check_topics",
    "client_errors",
    "first_record_from",
    "new_admin",
    "new_consumer",
    "new_producer",
    "topic_partitions",
]


class _Consumer(Protocol):
    """What the read needs from a Kafka consumer; one partition is assigned at a time.

    Offsets are "next offset to read" throughout, as Kafka defines them.
    ``errors`` are the client's own exception types; ``retriable`` says
    whether one means "the broker is away, try again later".
    """

    errors: tuple[type[BaseException], ...]

    def retriable(self, exc: BaseException) -> bool: ...

    def topics(self) -> set[str]:
        """Topic names, from a fresh metadata request."""
        ...

    def partitions(self, topic: str) -> set[int]:
        """Partitions of ``topic`` as of the last :meth:`topics` call (empty if unknown)."""
        ...

    def beginning_offsets(self, tps: list[_TP]) -> dict[_TP, int]: ...

    def end_offsets(self, tps: list[_TP]) -> dict[_TP, int]: ...

    def offsets_for_times(self, tps: list[_TP], millis: int) -> dict[_TP, int | None]:
        """The first offset at or after ``millis``; None where there is none."""
        ...

    def committed(self, tp: _TP) -> int | None: ...

    def assigned(self) -> _TP | None: ...

    def assign(self, tp: _TP) -> None: ...

    def seek(self, tp: _TP, offset: int) -> None: ...

    def poll_batch(self, tp: _TP, timeout_s: float) -> list[KafkaRecord]:
        """Records of ``tp`` in offset order: waits up to ``timeout_s`` for the first."""
        ...

    def position(self, tp: _TP) -> int | None: ...

    def highwater(self, tp: _TP) -> int | None:
        """The end offset the broker last reported in a fetch, without asking again."""
        ...

    def commit(self, tp: _TP, offset: int) -> None: ...

    def close(self) -> None: ...


class _Producer(Protocol):
    """What the sink needs from a Kafka producer: send, then flush and count failures.

    ``flush`` waits for every record sent since the last flush and returns
    ``(failed, sent, first error)``; ``errors`` are the client's exception types.
    A producer made with a transactional id has already registered it with the
    broker (which fenced any earlier producer with that id and aborted its open
    transaction); ``begin``, ``commit`` and ``abort`` then bound one transaction.
    ``discard`` drops the producer without waiting for anything.
    """

    errors: tuple[type[BaseException], ...]

    def send(self, key: bytes | None, value: bytes | None) -> None: ...

    def flush(self, timeout_s: float) -> tuple[int, int, str]: ...

    def begin(self) -> None: ...

    def commit(self, timeout_s: float) -> None:
        """Commit the open transaction: its records become visible to read_committed readers."""
        ...

    def abort(self, timeout_s: float) -> None: ...

    def close(self, timeout_s: float) -> None: ...

    def discard(self) -> None: ...


class _Admin(Protocol):
    """What the admin helpers need: the topics there are, and creating more."""

    errors: tuple[type[BaseException], ...]

    def topics(self) -> set[str]: ...

    def create(
        self, names: list[str], partitions: int, replication: int, configs: Mapping[str, str] | None = None
    ) -> None:
        """Create topics (with topic ``configs``); one that exists by now (another client made it) is no error."""
        ...

    def close(self) -> None: ...


def new_consumer(connection: KafkaConnection, config: Mapping[str, Any], timeout_s: float) -> _Consumer:
    """A consumer of the connection's client; an unreachable broker is an error, not a hang."""
    if connection.client == "confluent":
        return confluent.ConfluentConsumer(connection, config, timeout_s)
    return kafka_python.KafkaPythonConsumer(connection, config, timeout_s)


def new_producer(
    connection: KafkaConnection,
    topic: str,
    config: Mapping[str, Any],
    timeout_s: float,
    transactional_id: str | None = None,
) -> _Producer:
    """A producer of the connection's client for ``topic``, transactional when given an id."""
    if connection.client == "confluent":
        return confluent.ConfluentProducer(connection, topic, config, timeout_s, transactional_id)
    return kafka_python.KafkaPythonProducer(connection, topic, config, timeout_s, transactional_id)


def new_admin(connection: KafkaConnection, timeout_s: float) -> _Admin:
    """An admin client of the connection's client; each of its requests waits at most ``timeout_s``."""
    if connection.client == "confluent":
        return confluent.ConfluentAdmin(connection, timeout_s)
    return kafka_python.KafkaPythonAdmin(connection, timeout_s)


def client_errors(client: str) -> tuple[type[BaseException], ...]:
    """The exception types ``client`` raises for broker and protocol errors, and KafkaUnavailable."""
    errors = confluent.errors() if client == "confluent" else kafka_python.errors()
    return (*errors, KafkaUnavailable)


def broker_not_ready(client: str, exc: BaseException) -> bool:
    """Whether making a client failed because the broker is away or still starting."""
    if isinstance(exc, KafkaUnavailable):
        return True
    return confluent.not_ready(exc) if client == "confluent" else kafka_python.not_ready(exc)


def topic_partitions(consumer: _Consumer, topics: Iterable[str]) -> dict[str, list[_TP]]:
    """The partitions of each topic, from a fresh metadata request (a topic that does not exist has none)."""
    consumer.topics()  # a fresh metadata request: picks up new topics and partitions
    return {topic: [_TP(topic, p) for p in sorted(consumer.partitions(topic))] for topic in topics}


def first_record_from(consumer: _Consumer, tp: _TP, offset: int, wait_s: float) -> KafkaRecord | None:
    """The first record of ``tp`` at or after ``offset`` (None if none arrives within ``wait_s``)."""
    if consumer.assigned() != tp:
        consumer.assign(tp)
    consumer.seek(tp, offset)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        at_or_after = [record for record in consumer.poll_batch(tp, 0.5) if record.offset >= offset]
        if at_or_after:
            return at_or_after[0]
    return None


def check_topics(consumer: _Consumer, topics: Iterable[str], connection: KafkaConnection) -> None:
    """Raise one ConfigError naming the topics that do not exist."""
    existing = consumer.topics()
    missing = [t for t in topics if t not in existing]
    if missing:
        raise ConfigError(
            f"Kafka topic(s) {', '.join(missing)} do not exist at {connection.bootstrap_servers}; "
            "create them or fix the topic names"
        )
