"""WriteToKafka: elements to one Kafka topic, acknowledged (and by default committed as a transaction) per bundle.

A public PTransform over one private DoFn. The producer is whichever client
the connection names (:mod:`transforms.kafka.clients`); the DoFn holds a
bundle's records, sends them back to back, waits out a broker that stopped
answering and sends again, and fails the bundle unless the broker
acknowledged every one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from core.errors import BeamlineError, ConfigError, KafkaUnavailable
from transforms.kafka.admin import wait_for_kafka
from transforms.kafka.clients import (
    _Producer,
    broker_not_ready,
    check_topics,
    client_errors,
    new_consumer,
    new_producer,
)
from transforms.kafka.config import ClientSettings, client_error_text, confluent_refusal
from transforms.kafka.confluent import producer_settings
from transforms.kafka.connection import KafkaConnection

__all__ = ["OUTAGE_S", "KafkaSender", "KafkaWriteError", "WriteToKafka"]

_LOG = logging.getLogger(__name__)
# How long a write waits out a broker that stopped answering before its bundle fails
# (as long as a backfill's read waits); a streaming pipeline's writes wait for ever.
OUTAGE_S = 120.0
# Failures in a row while the broker answers at once: not an outage (a refused record,
# a missing topic, an ACL), so the bundle fails. A restarted broker may refuse a
# few requests while it takes its partitions back.
_FAILURES_WITH_BROKER_UP = 5
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
# librdkafka settings a producer config shares with the topic check's consumer.
_CONFLUENT_SHARED_PREFIXES = ("client.", "security.", "ssl.", "sasl.", "socket.", "broker.", "api.version")
# The same for kafka-python: connection and security settings.
_KAFKA_PYTHON_SHARED_PREFIXES = ("client_id", "security_", "ssl_", "sasl_", "api_version")


class KafkaWriteError(BeamlineError):
    """The broker did not acknowledge written records; the bundle fails and is retried."""


@dataclass(frozen=True)
class _WriteSpec:
    """Everything a writer needs; small, frozen and picklable (its ``repr`` hides secrets)."""

    connection: KafkaConnection
    topic: str
    producer_config: ClientSettings
    timeout_s: float
    # One Kafka transaction per bundle; ids are "<prefix>-<random per DoFn instance>".
    exactly_once: bool = False
    transactional_id_prefix: str = ""
    # How long a write waits for a broker that stopped answering; None: as long as it takes.
    outage_s: float | None = OUTAGE_S

    @property
    def servers(self) -> str:
        return self.connection.bootstrap_servers


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
        # Records sent in the open transaction: sent again if it has to be aborted.
        self._transaction_records: list[tuple[bytes | None, bytes | None]] = []
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
        client = spec.connection.client
        # Right after a broker (re)start its transaction coordinator is still
        # loading: try again for as long as a send may wait for its acknowledgement
        # (and no longer than the write waits out an outage).
        wait_s = spec.timeout_s + 40 if spec.outage_s is None else min(spec.timeout_s + 40, spec.outage_s)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return new_producer(
                    spec.connection, spec.topic, spec.producer_config, spec.timeout_s, self._transactional_id
                )
            except client_errors(client) as exc:
                if time.monotonic() < deadline and broker_not_ready(client, exc):
                    _LOG.warning("Kafka writer for %s waiting for the broker: %r", spec.topic, exc)
                    time.sleep(1.0)
                    continue
                if isinstance(exc, KafkaUnavailable):
                    raise
                raise KafkaWriteError(
                    f"could not start Kafka transactions as {self._transactional_id} at {spec.servers} "
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
        records, self._pending = self._pending, []
        if records:
            self._deliver(records, commit=False)

    def finish_bundle(self) -> None:
        records, self._pending = self._pending, []
        self._deliver(records, commit=True)

    def _deliver(self, records: list[tuple[bytes | None, bytes | None]], commit: bool) -> None:
        """Send ``records`` (and commit the bundle's transaction if asked), waiting out a broker outage.

        A failed attempt drops the producer (aborting its transaction) and, once
        the broker answers again, sends again: the records of this attempt and,
        with transactions, every record of the aborted transaction. Raises
        KafkaWriteError (the bundle fails) when the failure is not an outage.
        """
        outage = _OutageWait(self._spec)
        while True:
            try:
                self._attempt(records, commit)
                return
            except (KafkaWriteError, KafkaUnavailable) as exc:
                replay = self._transaction_records
                self._abandon()
                outage.wait_or_raise(exc)
                records = replay + records

    def _attempt(self, records: list[tuple[bytes | None, bytes | None]], commit: bool) -> None:
        """One try: send, wait for every acknowledgement, commit if asked; KafkaWriteError on any failure."""
        spec = self._spec
        if records:
            if self._producer is None:
                self._producer = self._new_producer()
            producer = self._producer
            try:
                if spec.exactly_once and not self._in_transaction:
                    producer.begin()
                    self._in_transaction = True
                for key, value in records:
                    producer.send(key, value)
            except producer.errors as exc:
                raise KafkaWriteError(
                    f"could not send to Kafka topic {spec.topic} at {spec.servers} ({exc}); "
                    "check that the topic exists and the broker is up"
                ) from exc
            try:
                failed, sent, first = producer.flush(spec.timeout_s + 40)
            except producer.errors as exc:
                raise KafkaWriteError(
                    f"Kafka did not acknowledge writes to topic {spec.topic} at {spec.servers} "
                    f"({type(exc).__name__}); check the broker"
                ) from exc
            if failed:
                raise KafkaWriteError(
                    f"Kafka did not acknowledge {failed} of {sent} records to topic "
                    f"{spec.topic} ({first}); check the broker and topic"
                )
            if self._in_transaction:
                self._transaction_records.extend(records)
        producer_now = self._producer
        if not commit or not self._in_transaction or producer_now is None:
            return
        try:
            producer_now.commit(spec.timeout_s + 40)
        except producer_now.errors as exc:
            raise KafkaWriteError(
                f"Kafka did not commit the transaction of this bundle's records to topic {spec.topic} at "
                f"{spec.servers} ({exc!r}); check the broker, and that a bundle fits in the transaction "
                "timeout (producer_config transaction_timeout_ms / transaction.timeout.ms)"
            ) from exc
        self._in_transaction = False
        self._transaction_records = []

    def _abandon(self) -> None:
        """Abort the open transaction (if any) and drop the producer; the next bundle makes a new one."""
        producer, self._producer = self._producer, None
        in_transaction, self._in_transaction = self._in_transaction, False
        self._transaction_records = []
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


class _OutageWait:
    """Decides, after a failed write, whether to wait for the broker and send again or to fail the bundle."""

    def __init__(self, spec: _WriteSpec) -> None:
        self._spec = spec
        self._started = time.monotonic()
        self._failures_with_broker_up = 0

    def wait_or_raise(self, exc: BaseException) -> None:
        """Return once the broker answers (send again); raise ``exc`` if this is no outage or it lasts too long."""
        spec = self._spec
        away = False
        while True:
            waited = time.monotonic() - self._started
            if spec.outage_s is not None and waited >= spec.outage_s:
                raise KafkaWriteError(
                    f"{exc}; gave up after waiting {waited:.0f} s for the broker at {spec.servers}"
                ) from exc
            budget = 30.0 if spec.outage_s is None else max(1.0, min(30.0, spec.outage_s - waited))
            try:
                wait_for_kafka(spec.connection, timeout_s=budget)
                break
            except KafkaUnavailable:
                away = True
                _LOG.warning(
                    "Kafka write to %s waiting for the broker at %s (%.0f s so far): %s",
                    spec.topic,
                    spec.servers,
                    time.monotonic() - self._started,
                    exc,
                )
        self._failures_with_broker_up = 0 if away else self._failures_with_broker_up + 1
        if self._failures_with_broker_up >= _FAILURES_WITH_BROKER_UP:
            raise exc
        pause = _BACKOFF_S[min(self._failures_with_broker_up, len(_BACKOFF_S) - 1)]
        _LOG.warning("Kafka write to %s failed (%s); sending again in %.1f s", spec.topic, exc, pause)
        time.sleep(pause)


def _check_producer_settings(spec: _WriteSpec) -> None:
    """Reject producer_config that the writer's own settings conflict with, now rather than on a worker."""
    if spec.connection.client == "confluent":
        transactional_id = "beamline-check" if spec.exactly_once else None
        settings = producer_settings(spec.connection, spec.producer_config, spec.timeout_s, transactional_id)
        # Without servers (and quiet) the check never connects; librdkafka checks every name and value.
        del settings["bootstrap.servers"], settings["logger"]
        refused = confluent_refusal(settings, "producer")
        if refused is not None:
            raise ConfigError(
                f"invalid confluent-kafka producer setting ({client_error_text(refused, settings)}); fix "
                f"producer_config (the writer is idempotent{' and transactional' if spec.exactly_once else ''}, "
                "so acks must stay all; with exactly_once=False, enable.idempotence=False allows others)"
            )
        return
    acks = spec.producer_config.get("acks", -1)
    if spec.exactly_once and acks not in (-1, "all"):
        raise ConfigError(f"exactly_once needs acks=-1 (all); got acks={acks!r} in producer_config")


def _shared_settings(client: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection and security settings of a producer config, which the topic check's consumer needs too."""
    prefixes = _CONFLUENT_SHARED_PREFIXES if client == "confluent" else _KAFKA_PYTHON_SHARED_PREFIXES
    return {name: value for name, value in config.items() if name.startswith(prefixes)}


class WriteToKafka(beam.PTransform):
    """Writes elements to one Kafka topic, acknowledged before each bundle commits.

    ``connection``: a :class:`KafkaConnection` (brokers, client, settings), or
    only the brokers (``"host:9092"``) for kafka-python without settings.
    ``producer_config`` holds this write's producer settings, in the client's
    names or Kafka's.

    Without ``key_fn``/``value_fn`` the elements are ``(key, value)`` pairs of
    bytes (or None); otherwise ``key_fn(element)`` and ``value_fn(element)``
    give the bytes (``value_fn`` defaults to the element itself). No record is
    dropped silently. A write waits out a broker that stopped answering (a
    restart, an outage) and then sends again, for up to ``outage_timeout_s``
    (``None``: as long as it takes, which is what a streaming pipeline wants,
    since its read waits too). A bundle whose records the broker still does not
    acknowledge, or refuses while it answers (a missing topic, a record too
    large, an ACL), fails with :class:`KafkaWriteError`. The producer is
    idempotent, so a send the client itself retries is not written twice.

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
    at-least-once: a retried bundle, or records sent again after an outage,
    may be written twice.

    Records wait in the worker until the bundle ends or ``max_pending`` of
    them wait; then they are sent back to back and acknowledged. ``validate``
    checks that the topic exists when the pipeline is built, waiting at most
    ``timeout_s`` for the broker.
    """

    def __init__(
        self,
        connection: KafkaConnection | str | Sequence[str],
        topic: str,
        *,
        key_fn: Callable[[Any], bytes | None] | None = None,
        value_fn: Callable[[Any], bytes | None] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        exactly_once: bool = True,
        transactional_id_prefix: str | None = None,
        timeout_s: float = 10.0,
        outage_timeout_s: float | None = OUTAGE_S,
        max_pending: int = 50_000,
        validate: bool = True,
    ) -> None:
        super().__init__()
        kafka = KafkaConnection.of(connection)
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"topic must be a non-empty name; got {topic!r}")
        config = kafka.role_settings(producer_config, "producer")
        if timeout_s <= 0 or max_pending <= 0:
            raise ConfigError("timeout_s and max_pending must be positive")
        if outage_timeout_s is not None and outage_timeout_s < 0:
            raise ConfigError(f"outage_timeout_s must be 0 or more seconds, or None; got {outage_timeout_s!r}")
        prefix = f"beamline-{topic}" if transactional_id_prefix is None else transactional_id_prefix
        if not isinstance(prefix, str) or not prefix.strip():
            raise ConfigError(f"transactional_id_prefix must be a non-empty string; got {transactional_id_prefix!r}")
        outage_s = None if outage_timeout_s is None else float(outage_timeout_s)
        write_spec = _WriteSpec(kafka, topic, config, float(timeout_s), bool(exactly_once), prefix, outage_s)
        _check_producer_settings(write_spec)
        self._spec = write_spec
        self._fn = _WriteFn(write_spec, key_fn, value_fn, max_pending)
        if validate:
            consumer = new_consumer(kafka, _shared_settings(kafka.client, config), float(timeout_s))
            try:
                check_topics(consumer, (topic,), kafka)
            finally:
                consumer.close()

    def expand(self, pcoll: beam.PCollection[Any]) -> beam.pvalue.PDone:
        pcoll | "Write" >> beam.ParDo(self._fn)
        return beam.pvalue.PDone(pcoll.pipeline)

    def display_data(self) -> dict[str, Any]:
        """What runners show of the write; settings with ``***`` for secrets."""
        spec = self._spec
        return {
            "bootstrap_servers": spec.servers,
            "client": spec.connection.client,
            "topic": spec.topic,
            "exactly_once": spec.exactly_once,
            "outage_timeout_s": "none" if spec.outage_s is None else spec.outage_s,
            "settings": repr(spec.connection.settings),
            "producer_config": repr(spec.producer_config),
        }


class KafkaSender:
    """Records to one topic from plain code, each :meth:`send` acknowledged before it returns.

    For work that must publish right after something else is durable (a
    warehouse commit), in the same step: the producer, checks and errors of
    :class:`WriteToKafka`, without transactions (at least once: a retried
    step sends again, which a consumer that keeps the highest version per key
    absorbs). Waits out a broker outage as :class:`WriteToKafka` does; raises
    :class:`KafkaWriteError` if the broker did not acknowledge every record.
    """

    def __init__(
        self,
        connection: KafkaConnection | str | Sequence[str],
        topic: str,
        *,
        timeout_s: float = 10.0,
        outage_timeout_s: float | None = OUTAGE_S,
    ) -> None:
        kafka = KafkaConnection.of(connection)
        outage_s = None if outage_timeout_s is None else float(outage_timeout_s)
        spec = _WriteSpec(kafka, topic, kafka.role_settings(None, "producer"), float(timeout_s), outage_s=outage_s)
        self._fn = _WriteFn(spec, None, None, max_pending=50_000)
        self._fn.setup()

    def send(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Send ``(key, value)`` records and wait until the broker acknowledged each."""
        self._fn.start_bundle()
        for record in records:
            self._fn.process(record)
        self._fn.finish_bundle()

    def close(self) -> None:
        self._fn.teardown()
