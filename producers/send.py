"""Send generated or file records to Kafka, creating topics when missing.

Every call first checks, with a bounded wait, that a broker answers: with no
broker the user gets one line saying what to start instead of a client that
retries forever. Records go out through kafka-python's producer, with the
connection's settings (security included) in kafka-python's names.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from core.errors import ConfigError, KafkaUnavailable
from producers.retail import GeneratedRecord
from transforms.kafka import KafkaConnection, client_config, ensure_topics, wait_for_kafka

__all__ = ["ProduceSummary", "ensure_topics", "file_records", "send_records"]

CONNECT_TIMEOUT_S = 10.0


@dataclass
class ProduceSummary:
    """What was sent, per topic and per kind of record."""

    sent: int = 0
    elapsed_s: float = 0.0
    by_topic: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        topics = ", ".join(f"{t}={n}" for t, n in sorted(self.by_topic.items()))
        kinds = Counter({k.split(":")[0]: 0 for k in self.by_kind})
        for kind, n in self.by_kind.items():
            kinds[kind.split(":")[0]] += n
        kind_text = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return f"{self.sent} events produced in {self.elapsed_s:.1f}s ({rate:,.0f}/s): {topics} [{kind_text}]"


def _producer_settings(connection: KafkaConnection) -> dict[str, Any]:
    """The connection's settings that kafka-python's producer takes, in its names (whatever the connection's client)."""
    from kafka import KafkaProducer

    settings = client_config("kafka-python", connection.settings)
    return {name: value for name, value in settings.items() if name in KafkaProducer.DEFAULT_CONFIG}


def send_records(
    connection: KafkaConnection | str,
    records: Iterable[GeneratedRecord],
    *,
    total: int | None = None,
    rate: float | None = None,
    progress: TextIO | None = sys.stderr,
) -> ProduceSummary:
    """Send records in order, at most ``rate`` per second; wait for every ack.

    Progress goes to ``progress`` about once a second. A record the broker does
    not acknowledge raises: nothing is reported as produced that was not.
    ``connection`` is a :class:`KafkaConnection`, or only the brokers.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    kafka = KafkaConnection.of(connection)
    wait_for_kafka(kafka, timeout_s=CONNECT_TIMEOUT_S)
    settings: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "enable_idempotence": True,
        **_producer_settings(kafka),
    }
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, **settings)
    summary = ProduceSummary()
    started = time.monotonic()
    last_report = started
    futures = []
    try:
        for record in records:
            if rate:
                # Pace against the schedule, not per record, so the average holds.
                due = started + summary.sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            futures.append(producer.send(record.topic, key=record.key, value=record.value))
            summary.sent += 1
            summary.by_topic[record.topic] += 1
            summary.by_kind[record.kind] += 1
            if len(futures) >= 10_000:
                for future in futures:
                    future.get(timeout=60)
                futures.clear()
            now = time.monotonic()
            if progress is not None and now - last_report >= 1.0:
                last_report = now
                of_total = f"/{total}" if total else ""
                print(
                    f"  produced {summary.sent}{of_total} ({summary.sent / (now - started):,.0f}/s)",
                    file=progress,
                )
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=60)
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"the broker at {kafka.bootstrap_servers} did not acknowledge a record ({type(exc).__name__}: {exc}); "
            "check that it is running and the topic exists"
        ) from None
    finally:
        producer.close(timeout=10)
    summary.elapsed_s = time.monotonic() - started
    return summary


def file_records(path: Path, topic: str) -> list[GeneratedRecord]:
    """One record per line of a text or JSON-lines file (the line, without its newline)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = data.splitlines()
    return [GeneratedRecord(topic, None, line, "line") for line in lines]
