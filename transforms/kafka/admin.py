"""Topics and the brokers themselves: wait for a broker, create topics, count records, with either client.

What a command or a pipeline asks of the cluster before it reads or writes.
Each helper takes a :class:`KafkaConnection` (or only the brokers, for
kafka-python without settings), so it talks to the cluster the way the
pipeline's reads and writes do, security settings included; and each waits a
bounded time, so no broker is one clear error instead of a client that
retries for ever.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from transforms.kafka.clients import client_errors, first_record_from, new_admin, new_consumer, topic_partitions
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.records import _TP

__all__ = [
    "commit_group_offsets",
    "count_records",
    "ensure_topics",
    "first_record_times",
    "partition_offsets",
    "wait_for_kafka",
]

_ATTEMPT_S = 5.0  # the longest one metadata request of wait_for_kafka may take
_RETRY_S = 0.2


def wait_for_kafka(connection: KafkaConnection | str | Sequence[str], timeout_s: float = 10.0) -> None:
    """Block until a broker answers a metadata request, or raise KafkaUnavailable after ``timeout_s``."""
    kafka = KafkaConnection.of(connection)
    errors: tuple[type[BaseException], ...] = (*client_errors(kafka.client), OSError, ValueError)
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        attempt_s = max(1.0, min(_ATTEMPT_S, deadline - time.monotonic()))
        try:
            admin = new_admin(kafka, attempt_s)
        except errors as exc:
            last_error = exc.__context__ or exc  # the client's own error, not the KafkaUnavailable made of it
            time.sleep(_RETRY_S)
            continue
        try:
            admin.topics()
            return
        except errors as exc:
            last_error = exc
            time.sleep(_RETRY_S)
        finally:
            admin.close()
    raise kafka.unavailable(timeout_s, last_error)


def ensure_topics(
    connection: KafkaConnection | str | Sequence[str],
    names: Iterable[str],
    partitions: int = 4,
    *,
    timeout_s: float = 10.0,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (one replica each, with ``configs``); return the names created."""
    kafka = KafkaConnection.of(connection)
    wait_for_kafka(kafka, timeout_s=timeout_s)
    admin = new_admin(kafka, timeout_s)
    try:
        missing = sorted(set(names) - admin.topics())
        if missing:
            admin.create(missing, partitions, 1, configs)
        return missing
    finally:
        admin.close()


def partition_offsets(
    connection: KafkaConnection | str | Sequence[str], names: Iterable[str], *, timeout_s: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """Each partition of the topics: (earliest offset, end offset) now, as a read sees them (read_committed)."""
    kafka = KafkaConnection.of(connection)
    wait_for_kafka(kafka, timeout_s=timeout_s)
    consumer = new_consumer(kafka, {}, timeout_s)
    try:
        tps = [tp for found in topic_partitions(consumer, names).values() for tp in found]
        if not tps:
            return {}
        starts = consumer.beginning_offsets(tps)
        ends = consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in tps}
    finally:
        consumer.close()


def first_record_times(
    connection: KafkaConnection | str | Sequence[str],
    positions: Mapping[tuple[str, int], int],
    *,
    timeout_s: float = 10.0,
) -> dict[tuple[str, int], int]:
    """Per partition, the timestamp (ms) of the first record at or after its offset in ``positions``.

    What a reader that stands at those offsets has not read yet began then; a
    partition whose record does not arrive within ``timeout_s`` is left out.
    """
    kafka = KafkaConnection.of(connection)
    consumer = new_consumer(kafka, {}, timeout_s)
    found: dict[tuple[str, int], int] = {}
    try:
        for (topic, partition), offset in sorted(positions.items()):
            record = first_record_from(consumer, _TP(topic, partition), offset, timeout_s)
            if record is not None:
                found[(topic, partition)] = record.timestamp
        return found
    finally:
        consumer.close()


def commit_group_offsets(
    connection: KafkaConnection | str | Sequence[str],
    group: str,
    offsets: Mapping[tuple[str, int], int],
    *,
    timeout_s: float = 10.0,
) -> None:
    """Commit ``offsets`` (the next offset to read, per partition) as consumer group ``group``'s.

    For Kafka's own tools (``kafka-consumer-groups --describe``) to show a
    pipeline's lag; the pipeline itself resumes from its warehouse.
    """
    kafka = KafkaConnection.of(connection)
    group_key = "group.id" if kafka.client == "confluent" else "group_id"
    consumer = new_consumer(kafka, {group_key: group}, timeout_s)
    try:
        for (topic, partition), offset in sorted(offsets.items()):
            consumer.commit(_TP(topic, partition), offset)
    finally:
        consumer.close()


def count_records(
    connection: KafkaConnection | str | Sequence[str], names: Iterable[str], *, timeout_s: float = 10.0
) -> int:
    """Records between the earliest and the end offsets of the topics now, as a read sees them (read_committed)."""
    return sum(end - start for start, end in partition_offsets(connection, names, timeout_s=timeout_s).values())
