"""The plain kafka-python consumer every baseline loop reads with, with ReadFromKafka's poll and fetch sizes."""

from __future__ import annotations

from typing import Any

__all__ = ["plain_consumer"]


def plain_consumer(bootstrap: str, topics: list[str]) -> tuple[Any, list[Any]]:
    """A consumer assigned every partition of ``topics`` from their start, and those partitions."""
    from kafka import KafkaConsumer, TopicPartition

    from transforms.kafka.kafka_python import FETCH_TUNING

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **FETCH_TUNING)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer, tps
