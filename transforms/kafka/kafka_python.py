"""The kafka-python side of the client interface (see :mod:`transforms.kafka.clients`): consumer, producer, admin.

kafka-python is pure Python and always installed; its consumer polls go through
Beamline's record decoder (:mod:`transforms.kafka.records`). Each class takes
the connection and the settings of its role, in kafka-python's keyword names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from core.errors import ConfigError
from transforms.kafka.config import TRANSACTION_TIMEOUT_MS
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.records import _TP, KafkaRecord
from transforms.kafka.records import install as install_decoder

__all__ = ["FETCH_TUNING", "KafkaPythonAdmin", "KafkaPythonConsumer", "KafkaPythonProducer", "errors", "not_ready"]

# Large polls and fetches keep the per-record cost in the decoder, not in round
# trips. The benchmarks' plain consumer loops use the same, to compare like with like.
FETCH_TUNING = {
    "max_poll_records": 10_000,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
}


def errors() -> tuple[type[BaseException], ...]:
    """The exception types kafka-python raises for broker and protocol errors."""
    from kafka.errors import KafkaError

    return (KafkaError,)


def not_ready(exc: BaseException) -> bool:
    """Whether ``exc`` means the broker is away or still starting (kafka-python marks those retriable)."""
    return bool(getattr(exc, "retriable", False))


@contextlib.contextmanager
def _made(connection: KafkaConnection, timeout_s: float, what: str) -> Iterator[None]:
    """Turn kafka-python's errors while making a client into Beamline's: bad settings, or no broker."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    try:
        yield
    except KafkaConfigurationError as exc:
        raise ConfigError(f"invalid Kafka {what} settings: {exc}; fix {what}_config or the connection's") from None
    except (KafkaError, OSError) as exc:
        raise connection.unavailable(timeout_s, exc) from None


def consumer_settings(connection: KafkaConnection, config: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
    """What a read's consumer runs with: Beamline's defaults, then the connection's settings, then ``config``."""
    timeout_ms = int(timeout_s * 1000)
    settings: dict[str, Any] = {
        "bootstrap_servers": connection.bootstrap_servers.split(","),
        "enable_auto_commit": False,
        # Only reached when retention deleted the offsets a restriction starts
        # at: continue from the oldest record still in the log.
        "auto_offset_reset": "earliest",
        "bootstrap_timeout_ms": timeout_ms,
        "request_timeout_ms": max(timeout_ms, 5000),
        **FETCH_TUNING,
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
    return {**settings, **connection.settings_for("consumer"), **config}


class KafkaPythonConsumer:
    """kafka-python's KafkaConsumer; its connect is bounded, so a missing broker fails here."""

    def __init__(self, connection: KafkaConnection, config: Mapping[str, Any], timeout_s: float) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaConnectionError, KafkaError

        self.errors: tuple[type[BaseException], ...] = (KafkaError,)
        self._connection_error = KafkaConnectionError
        self._tp = TopicPartition
        self._timeout_ms = int(timeout_s * 1000)
        self._assigned: Any = None
        with _made(connection, timeout_s, "consumer"):
            self._c = KafkaConsumer(**consumer_settings(connection, config, timeout_s))
        # Polls return KafkaRecord tuples decoded by Beamline: a third of the cost.
        self._tuples = install_decoder(self._c)

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
        offset: int | None = self._c.committed(self._tp(*tp), timeout_ms=self._timeout_ms)
        return offset

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
            return list(batch)
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
        offset: int | None = self._c.position(self._tp(*tp), timeout_ms=self._timeout_ms)
        return offset

    def highwater(self, tp: _TP) -> int | None:
        offset: int | None = self._c.highwater(self._tp(*tp))
        return offset

    def commit(self, tp: _TP, offset: int) -> None:
        from kafka.structs import OffsetAndMetadata

        self._c.commit({self._tp(*tp): OffsetAndMetadata(offset, "", -1)})

    def close(self) -> None:
        self._c.close(autocommit=False)


class KafkaPythonProducer:
    """kafka-python's KafkaProducer, idempotent; with a transactional id its transactions are registered."""

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        config: Mapping[str, Any],
        timeout_s: float,
        transactional_id: str | None = None,
    ) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError, KafkaTimeoutError

        self.errors: tuple[type[BaseException], ...] = (KafkaError,)
        self._timeout_error = KafkaTimeoutError
        self._topic = topic
        self._pending: list[Any] = []
        timeout_ms = int(timeout_s * 1000)
        settings: dict[str, Any] = {
            "bootstrap_servers": connection.bootstrap_servers.split(","),
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
            settings["transaction_timeout_ms"] = TRANSACTION_TIMEOUT_MS
            # A transaction's first request is refused while the broker still
            # writes the previous commit's markers; the sender waits this long to
            # ask again (100 ms by default, which doubled the cost of a bundle).
            settings["retry_backoff_ms"] = 20
        settings.update(connection.settings_for("producer"))
        settings.update(config)
        if transactional_id:
            settings["transactional_id"] = transactional_id
        with _made(connection, timeout_s, "producer"):
            self._p = KafkaProducer(**settings)
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


class KafkaPythonAdmin:
    """kafka-python's KafkaAdminClient: list and create topics; each request waits at most ``timeout_s``."""

    def __init__(self, connection: KafkaConnection, timeout_s: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        self.errors: tuple[type[BaseException], ...] = (KafkaError,)
        timeout_ms = max(1000, int(timeout_s * 1000))
        settings = {
            "bootstrap_servers": connection.bootstrap_servers,
            "request_timeout_ms": timeout_ms,
            "bootstrap_timeout_ms": min(timeout_ms, 3000),
            **connection.settings_for("admin"),
        }
        with _made(connection, timeout_s, "admin"):
            self._a = KafkaAdminClient(**settings)

    def topics(self) -> set[str]:
        return set(self._a.list_topics())

    def create(
        self, names: list[str], partitions: int, replication: int, configs: Mapping[str, str] | None = None
    ) -> None:
        from kafka.errors import TopicAlreadyExistsError

        spec = {"num_partitions": partitions, "replication_factor": replication, "configs": dict(configs or {})}
        specs = {name: spec for name in names}
        with contextlib.suppress(TopicAlreadyExistsError):  # another client created one since our listing
            self._a.create_topics(specs)

    def close(self) -> None:
        self._a.close()
