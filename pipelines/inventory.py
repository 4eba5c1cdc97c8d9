"""Retail inventory: shipments and sales into stock per store and item.

Wiring only; the work is in ``transforms/``. Streaming::

    shipments ─ ReadShipments ─ DecodeShipments ─┐           ┌─ WriteInventory      (view inventory)
                                                 ├─ Retail ──┤
    sales ───── ReadSales ───── DecodeSales ─────┘           └─ WriteSalesByWindow  (view sales_by_window)
    dead letters, in each step that makes them ─ WriteDeadLetters (view dead_letters) + DeadLettersToKafka

``Retail`` (``StreamRetail``) is ComputeInventory and SalesByWindow as one
stateful step, keyed by a shard of (store_id, item_id) (``--state_shards``):
the same rows, with a few state round trips per shard and bundle.

Batch (a backfill) reads both topics in one read (``ReadLog``) to the end
offsets seen at start and computes the same views with ``BackfillRetail``, the
plain recompute of the log as two combines (no per-event state; each poll is
decoded and deduped on the worker that read it).

Run it with ``python -m pipelines.inventory --mode batch|streaming [Beam options]``
or ``beamline run inventory ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import timedelta

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from core.errors import ConfigError
from pipelines.options import BeamlineOptions, KafkaOptions, WarehouseOptions, kafka_connection
from pipelines.runner import RunSummary, main_for, run_pipeline
from transforms.backfill import BackfillRetail
from transforms.events import DecodeEvents, dead_letter_to_kafka, dead_letter_to_row, event_time_of
from transforms.kafka import EventTimeOf, FetchRecords, ReadFromKafka, WriteToKafka, ensure_topics
from transforms.retail import StreamRetail
from transforms.sinks import WriteToWarehouse

__all__ = ["build", "main", "run"]


def read_log(
    pipeline: beam.Pipeline,
    label: str,
    topic: str | list[str],
    options: PipelineOptions,
    *,
    batched: bool = False,
    event_time: EventTimeOf | None = None,
) -> beam.PCollection:
    """A topic (or several) from its earliest offset: to the end offsets seen at start (batch) or forever.

    ``batched`` hands over whole polls (``KafkaBatch``) for a step that loops
    over their records itself, as the backfill does. ``event_time`` makes the
    read keep time by the records' event times (see ``ReadFromKafka``).
    """
    kafka = options.view_as(KafkaOptions)
    batch = options.view_as(BeamlineOptions).mode == "batch"
    # A backfill on the FnApiRunner's worker processes gives each an equal share to read.
    readers = max(1, options.view_as(DirectOptions).direct_num_workers or 1) if batch else 1
    group_key = "group.id" if kafka.kafka_client == "confluent" else "group_id"
    consumer_config = {group_key: kafka.consumer_group} if kafka.consumer_group else None
    return pipeline | label >> ReadFromKafka(
        kafka_connection(options),
        topic,
        start="earliest",
        stop="end" if batch else None,
        consumer_config=consumer_config,
        commit_offsets=bool(kafka.consumer_group),
        batched=batched,
        event_time=event_time,
        gc_threshold=options.view_as(BeamlineOptions).gc_threshold or None,
        readers=readers,
    )


def write_dead_letters(dead_letters: Sequence[beam.PCollection], options: PipelineOptions) -> None:
    """Every dead letter goes to the dead_letters view and the dead-letters topic.

    Each collection is written in the step that makes it, not flattened first:
    on Prism a Flatten and the steps after it form stages of their own, and
    while a stage without outputs runs a bundle, Prism polls it without pause
    (a runner thread busy for the bundle's whole length: here a warehouse
    commit or a broker round trip, many times a second).
    """
    kafka = options.view_as(KafkaOptions)
    warehouse = options.view_as(WarehouseOptions).warehouse
    connection = kafka_connection(options)
    ensure_topics(connection, [kafka.dead_letter_topic])
    for n, letters in enumerate(dead_letters):
        suffix = str(n) if n else ""
        _ = (
            letters
            | f"DeadLetterRows{suffix}" >> beam.Map(dead_letter_to_row)
            | f"WriteDeadLetters{suffix}" >> WriteToWarehouse(warehouse, "dead_letters")
        )
        _ = (
            letters
            | f"DeadLetterRecords{suffix}" >> beam.Map(dead_letter_to_kafka)
            | f"DeadLettersToKafka{suffix}" >> WriteToKafka(connection, kafka.dead_letter_topic)
        )


def build(pipeline: beam.Pipeline, options: PipelineOptions) -> None:
    """Add the inventory pipeline's steps to ``pipeline``."""
    kafka = options.view_as(KafkaOptions)
    settings = options.view_as(BeamlineOptions)
    warehouse = options.view_as(WarehouseOptions).warehouse
    mode = settings.mode
    if kafka.shipments_topic == kafka.sales_topic:
        raise ConfigError(
            f"--shipments_topic and --sales_topic both name {kafka.shipments_topic!r}; "
            "shipments and sales need a topic each"
        )

    if mode == "batch":
        # The whole log is here: the views are its plain recompute (transforms/backfill.py).
        # One read of both topics: each poll is decoded and deduped where it was read.
        records = read_log(pipeline, "ReadLog", [kafka.shipments_topic, kafka.sales_topic], options, batched=True)
        views = records | "Backfill" >> BackfillRetail(
            window_size=timedelta(seconds=settings.window_size),
            topics={kafka.shipments_topic: "shipment", kafka.sales_topic: "sale"},
            refetch=FetchRecords(kafka_connection(options)),
        )
        _ = views.inventory | "WriteInventory" >> WriteToWarehouse(warehouse, "inventory")
        _ = views.windows | "WriteSalesByWindow" >> WriteToWarehouse(warehouse, "sales_by_window")
        write_dead_letters([views.dead_letters], options)
        return

    # Time is event time (the payload's event_time), for the watermark as for
    # windows and the dedupe horizon; record timestamps are not used.
    shipments = read_log(
        pipeline, "ReadShipments", kafka.shipments_topic, options, event_time=event_time_of
    ) | "DecodeShipments" >> DecodeEvents("shipment", stamped_by_read=True)
    sales = read_log(pipeline, "ReadSales", kafka.sales_topic, options, event_time=event_time_of) | (
        "DecodeSales" >> DecodeEvents("sale", stamped_by_read=True)
    )
    views = (shipments.events, sales.events) | "Retail" >> StreamRetail(
        horizon=timedelta(seconds=settings.dedupe_horizon),
        window_size=timedelta(seconds=settings.window_size),
        allowed_lateness=timedelta(seconds=settings.allowed_lateness),
        early_delay=timedelta(seconds=settings.early_firing) if settings.early_firing > 0 else None,
        shards=settings.state_shards,
    )
    _ = views.inventory | "WriteInventory" >> WriteToWarehouse(warehouse, "inventory")
    _ = views.windows | "WriteSalesByWindow" >> WriteToWarehouse(warehouse, "sales_by_window")
    write_dead_letters([shipments.dead_letters, sales.dead_letters, *views.dead_letter_parts], options)


def topics_read(options: PipelineOptions) -> list[str]:
    """The topics this pipeline reads (for progress lines)."""
    kafka = options.view_as(KafkaOptions)
    return [kafka.shipments_topic, kafka.sales_topic]


def run(argv: Sequence[str] | None = None) -> RunSummary:
    """Run the inventory pipeline with Beam-style arguments; return its summary."""
    return run_pipeline(build, argv, progress_topics=topics_read)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(build, argv, topics_read, prog="python -m pipelines.inventory")


if __name__ == "__main__":
    sys.exit(main())
