"""One object for where the brokers are and how to talk to them: :class:`KafkaConnection`.

A read, a write and the admin helpers (``ensure_topics``, ``count_records``,
``wait_for_kafka``) all take a connection, so a cluster's address, the client
that talks to it and its security settings are given once. Settings are
checked when the connection (or the read or write using it) is built, not on a
worker: an unknown name, a setting Beamline manages itself, a value the client
refuses are each one-line ConfigErrors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError, KafkaUnavailable
from transforms.kafka.config import (
    KAFKA_CLIENTS,
    ClientSettings,
    check_client,
    client_config,
    client_error_text,
    confluent_refusal,
    kafka_python_keys,
)

__all__ = ["KafkaConnection"]

# Settings Beamline sets itself, in both clients' names, and why.
_RAW_BYTES = "records are raw bytes"
_COMMITS = "offsets are committed once output is durable (commit_offsets)"
_POSITIONS = "where a read starts is its start= position"
_TRANSACTIONS = "exactly_once=True and transactional_id_prefix name the transactions"
_OWNED = {
    "key_deserializer": _RAW_BYTES,
    "value_deserializer": _RAW_BYTES,
    "key_serializer": _RAW_BYTES,
    "value_serializer": _RAW_BYTES,
    "enable_auto_commit": _COMMITS,
    "enable.auto.commit": _COMMITS,
    "enable.auto.offset.store": _COMMITS,
    "auto_offset_reset": _POSITIONS,
    "auto.offset.reset": _POSITIONS,
    "on_delivery": "the writer waits for every acknowledgement itself",
    "transactional_id": _TRANSACTIONS,
    "transactional.id": _TRANSACTIONS,
}
_BOOTSTRAP_KEYS = ("bootstrap_servers", "bootstrap.servers")


def refuse_owned(settings: Mapping[str, Any]) -> None:
    """Reject settings Beamline manages, now rather than deep inside a worker."""
    owned = sorted(set(settings) & set(_OWNED))
    if owned:
        reasons = "; ".join(dict.fromkeys(_OWNED[name] for name in owned))
        raise ConfigError(f"setting(s) {', '.join(owned)} are managed by Beamline; remove them ({reasons})")


@dataclass(frozen=True)
class KafkaConnection:
    """The brokers, the client that talks to them, and the settings every client of theirs takes.

    ``client`` is ``"kafka-python"`` (the default, always installed) or
    ``"confluent"`` (confluent-kafka, built on librdkafka; faster, installed
    separately). ``settings`` are in Kafka's standard names or the client's own
    (see :func:`~transforms.kafka.config.client_config`): security, ``client.id``,
    timeouts. Each client takes those it knows (kafka-python's consumers ignore
    producer settings); settings of one read or write (a consumer group,
    ``acks``) may also go in ``consumer_config``/``producer_config``. The
    settings are kept in the client's dialect; ``repr`` shows ``***`` for secrets.
    """

    bootstrap_servers: str
    client: str = KAFKA_CLIENTS[0]
    settings: Mapping[str, Any] = field(default_factory=ClientSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers is empty; pass HOST:PORT of a Kafka broker")
        for server in self.bootstrap_servers.split(","):
            host, colon, port = server.strip().rpartition(":")
            if colon and (not host or not port.isdigit() or not 0 < int(port) < 65536):
                raise ConfigError(f"bootstrap server {server.strip()!r} is not HOST:PORT (a port is 1 to 65535)")
        check_client(self.client)
        settings = client_config(self.client, self.settings)
        given = [name for name in _BOOTSTRAP_KEYS if name in settings]
        if given:
            raise ConfigError(f"{given[0]} is the connection's bootstrap_servers (--bootstrap-servers), not a setting")
        refuse_owned(settings)
        object.__setattr__(self, "settings", ClientSettings(settings))

    @classmethod
    def of(cls, given: KafkaConnection | str | Sequence[str]) -> KafkaConnection:
        """``given`` itself, or a kafka-python connection to the brokers it names (``"host:9092"``)."""
        if isinstance(given, KafkaConnection):
            return given
        if isinstance(given, str):
            return cls(given)
        return cls(",".join(given))

    def settings_for(self, role: str) -> dict[str, Any]:
        """The settings a ``consumer``, ``producer`` or ``admin`` client takes (librdkafka's take them all)."""
        if self.client == "confluent":
            return dict(self.settings)
        known = kafka_python_keys(role)
        return {name: value for name, value in self.settings.items() if name in known}

    def role_settings(self, config: Mapping[str, Any] | None, role: str) -> ClientSettings:
        """``config`` of one consumer or producer, in the client's dialect, checked against this connection's."""
        settings = client_config(self.client, config or {})
        if self.client == "kafka-python":
            unknown = sorted(set(settings) - kafka_python_keys(role))
            if unknown:
                raise ConfigError(
                    f"unknown kafka-python {role} setting(s) {', '.join(unknown)}; "
                    f"use kafka-python {role} names such as security_protocol, sasl_mechanism, client_id"
                )
        refuse_owned(settings)
        if self.client == "confluent":
            self._try_confluent(role, settings)
        return ClientSettings(settings)

    def _try_confluent(self, role: str, config: Mapping[str, Any]) -> None:
        settings = {**self.settings, **config}
        refused = confluent_refusal(settings, role)
        if refused is not None:
            raise ConfigError(
                f"invalid confluent-kafka {role} setting ({client_error_text(refused, settings)}); "
                "use librdkafka names such as security.protocol, sasl.mechanism, client.id"
            )

    def unavailable(self, timeout_s: float, exc: BaseException | None = None) -> KafkaUnavailable:
        """The error for brokers that did not answer within ``timeout_s``."""
        cause = type(exc).__name__ if exc is not None else "timeout"
        return KafkaUnavailable(
            f"no Kafka broker answered at {self.bootstrap_servers} within {timeout_s:.0f}s ({cause}); "
            "start one with `beamline kafka start` or pass --bootstrap-servers HOST:PORT"
        )
