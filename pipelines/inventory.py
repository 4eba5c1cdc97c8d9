"""Retail inventory: shipments and sales into stock per store and item.

Wiring only; the work is in ``transforms/``. Streaming::

    shipments ─ ReadShipments ─ DecodeShipments ─┐            views, state and offsets, one snapshot
                                                 ├─ Retail ──  per bundle (the resume point)
    sales ───── ReadSales ───── DecodeSales ─────┘             dead letters also ─ DeadLettersToKafka

``Retail`` (``StreamRetail``) is ComputeInventory and SalesByWindow as one
stateful step, keyed by a shard of (store_id, item_id) (``--state_shards``):
the same rows, with a few state round trips per shard and bundle. It commits
to the warehouse itself: the views, the state that made them and the offsets
they cover, together, so a restart resumes from them instead of reading the
log from offset 0 (``transforms/checkpoint.py``). The decode's dead letters
go through it for the same reason.

Batch (a backfill) reads both topics in one read (``ReadLog``) to the end
offsets seen at start and computes the same views with ``BackfillRetail``, the
plain recompute of the log as two combines (no per-event state; each poll is
decoded and deduped on the worker that read it).

Every table it writes is at one version of the views: ``--view_version v2``
writes ``inventory@v2``, ``sales_by_window@v2``, ``dead_letters@v2`` and a
resume point of their own (``inventory@v2``) beside the version readers see;
without it, the version each view shows (``warehouse/versions.py``).

Run it with ``python -m pipelines.inventory --mode batch|streaming [Beam options]``
or ``beamline run inventory ...``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from core.errors import ConfigError
from core.views import DEAD_LETTERS, INVENTORY, INVENTORY_IDS, SALES_BY_WINDOW
from pipelines.options import (
    BeamlineOptions,
    KafkaOptions,
    WarehouseOptions,
    changes_topics,
    kafka_connection,
    kafka_outage_s,
    run_tables,
)
from pipelines.runner import RunSummary, main_for, run_pipeline
from transforms.backfill import BackfillRetail
from transforms.checkpoint import Checkpoint, GroupOffsets, commit_catch_up, start_run
from transforms.events import (
    DecodeEvents,
    EventKind,
    dead_letter_to_kafka,
    dead_letter_to_row,
    duration_micros,
    event_time_of,
)
from transforms.kafka import (
    EventTimeOf,
    FetchRecords,
    ReadFromKafka,
    StartAt,
    StopAt,
    WriteToKafka,
    ensure_topics,
    partition_offsets,
)
from transforms.retail import StreamRetail
from transforms.sinks import WriteToWarehouse
from warehouse.resume import hold_run_lock, recorded_run
from warehouse.versions import RunTables

__all__ = ["PIPELINE", "build", "main", "run"]

# The name this pipeline's resume point has in the warehouse (a version's: inventory@v2).
PIPELINE = "inventory"


def read_log(
    pipeline: beam.Pipeline,
    label: str,
    topic: str | list[str],
    options: PipelineOptions,
    *,
    batched: bool = False,
    event_time: EventTimeOf | None = None,
    start: StartAt | str = "earliest",
    stop: StopAt | str = "end",
    commit_offsets: bool = True,
) -> beam.PCollection:
    """A topic (or several) from ``start``: to the end offsets seen at start (batch) or forever.

    ``commit_offsets=False``: the read never commits to ``--consumer_group``
    (a step that commits to the warehouse commits the offsets it covers).
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
        start=start,
        stop=stop if batch else None,
        consumer_config=consumer_config,
        commit_offsets=commit_offsets and bool(kafka.consumer_group),
        batched=batched,
        event_time=event_time,
        gc_threshold=options.view_as(BeamlineOptions).gc_threshold or None,
        readers=readers,
    )


def dead_letters_to_kafka(dead_letters: Sequence[beam.PCollection], options: PipelineOptions) -> None:
    """Every dead letter to the dead-letters topic (a step that commits its own rows wrote the view)."""
    kafka = options.view_as(KafkaOptions)
    connection = kafka_connection(options)
    ensure_topics(connection, [kafka.dead_letter_topic])
    for n, letters in enumerate(dead_letters):
        suffix = str(n) if n else ""
        _ = (
            letters
            | f"DeadLetterRecords{suffix}" >> beam.Map(dead_letter_to_kafka)
            | f"DeadLettersToKafka{suffix}"
            >> WriteToKafka(connection, kafka.dead_letter_topic, outage_timeout_s=kafka_outage_s(options))
        )


def write_dead_letters(dead_letters: Sequence[beam.PCollection], options: PipelineOptions, table: str) -> None:
    """Every dead letter goes to the dead_letters view (its ``table``: the run's version) and the dead-letters topic.

    Each collection is written in the step that makes it, not flattened first:
    on Prism a Flatten and the steps after it form stages of their own, and
    while a stage without outputs runs a bundle, Prism polls it without pause
    (a runner thread busy for the bundle's whole length: here a warehouse
    commit or a broker round trip, many times a second).
    """
    warehouse = options.view_as(WarehouseOptions).warehouse
    for n, letters in enumerate(dead_letters):
        suffix = str(n) if n else ""
        _ = (
            letters
            | f"DeadLetterRows{suffix}" >> beam.Map(dead_letter_to_row)
            | f"WriteDeadLetters{suffix}" >> WriteToWarehouse(warehouse, table)
        )
    dead_letters_to_kafka(dead_letters, options)


def build_backfill(
    pipeline: beam.Pipeline,
    options: PipelineOptions,
    stop: StopAt | str = "end",
    remember_since: int | None = None,
    tables: RunTables | None = None,
) -> None:
    """The batch pipeline: the plain recompute of the log up to ``stop`` (transforms/backfill.py).

    One read of both topics: each poll is decoded and deduped where it was
    read. ``remember_since``: also write the identities a streaming run would
    remember from then on (a catch-up's, see :func:`catch_up`). ``tables``:
    those the run writes (a catch-up's are its stream's), else resolved here.
    """
    kafka = options.view_as(KafkaOptions)
    settings = options.view_as(BeamlineOptions)
    warehouse = options.view_as(WarehouseOptions).warehouse
    tables = tables or announced_tables(options)
    changes = changes_topics(options, tables)
    records = read_log(
        pipeline, "ReadLog", [kafka.shipments_topic, kafka.sales_topic], options, batched=True, stop=stop
    )
    views = records | "Backfill" >> BackfillRetail(
        window_size=timedelta(seconds=settings.window_size),
        topics={kafka.shipments_topic: "shipment", kafka.sales_topic: "sale"},
        refetch=FetchRecords(kafka_connection(options)),
        remember_since=remember_since,
    )
    _ = views.inventory | "WriteInventory" >> WriteToWarehouse(warehouse, tables[INVENTORY.name], changes=changes)
    _ = views.windows | "WriteSalesByWindow" >> WriteToWarehouse(
        warehouse, tables[SALES_BY_WINDOW.name], changes=changes
    )
    if views.ids is not None:
        _ = views.ids | "WriteRememberedIds" >> WriteToWarehouse(warehouse, tables[INVENTORY_IDS.name])
    write_dead_letters([views.dead_letters], options, tables[DEAD_LETTERS.name])


def announced_tables(options: PipelineOptions) -> RunTables:
    """The tables this run writes; said on stderr when they are not the plain ones."""
    tables = run_tables(options, PIPELINE)
    if tables.versioned():
        print(f"beamline: {tables.describe()}", file=sys.stderr)
    return tables


def catch_up(options: PipelineOptions, argv: Sequence[str]) -> None:
    """A streaming start with no resume point and a long log: a batch backfill first, then its resume point.

    The backfill reads to the end offsets seen now and writes the views and the
    identities still inside the dedupe horizon; one commit then records the
    state a streaming run would hold there and the resume point (until that
    commit, a restart catches up again: the views' upserts make that
    harmless). The streaming run that follows resumes from it.
    """
    settings = options.view_as(BeamlineOptions)
    if settings.mode != "streaming" or not settings.catch_up_records:
        return
    warehouse = options.view_as(WarehouseOptions).warehouse
    tables = run_tables(options, PIPELINE)
    hold_run_lock(warehouse, tables.pipeline)  # kept by the streaming run that follows
    if recorded_run(warehouse, tables.pipeline) is not None:
        return
    log = partition_offsets(kafka_connection(options), topics_read(options))
    records = sum(end - first for first, end in log.values())
    if records < settings.catch_up_records:
        return
    print(
        f"beamline: no {tables.pipeline} resume point in {warehouse} and {records:,} records in the log: catching "
        "up in batch first (--catch_up_records=0 streams from the earliest offsets instead)",
        file=sys.stderr,
    )
    horizon = timedelta(seconds=settings.dedupe_horizon)
    remember_since = time.time_ns() // 1_000 - duration_micros(horizon)
    stops = {tp: end for tp, (_, end) in log.items()}
    # Attached even for a detached run: its resume point is committed once the backfill is done.
    attached = [arg for arg in argv if arg.split("=", 1)[0] != "--detach"]
    run_pipeline(
        functools.partial(build_backfill, stop=StopAt(stops), remember_since=remember_since, tables=tables),
        [*attached, "--mode=batch"],
        progress_topics=topics_read,
    )
    run = commit_catch_up(
        warehouse,
        tables,
        stops,
        settings.state_shards,
        remember_since=remember_since,
        horizon=horizon,
        window_size=timedelta(seconds=settings.window_size),
        allowed_lateness=timedelta(seconds=settings.allowed_lateness),
        settings=state_settings(options),
    )
    print(f"beamline: caught up to {records:,} records; streaming on from there (run {run})", file=sys.stderr)


def build(pipeline: beam.Pipeline, options: PipelineOptions) -> GroupOffsets | None:
    """Add the inventory pipeline's steps to ``pipeline``; a streaming run also returns what runs beside it."""
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
        build_backfill(pipeline, options)
        return None

    # The warehouse is the checkpoint: each partition starts where the views'
    # resume point says (the earliest offset on a first start), and the state
    # step commits views, state and offsets together (transforms/checkpoint.py).
    topics = [kafka.shipments_topic, kafka.sales_topic]
    tables = announced_tables(options)
    checkpoint = start_run(
        kafka_connection(options), warehouse, tables, topics, settings.state_shards, state_settings(options)
    )
    print(f"beamline: {checkpoint.describe()}", file=sys.stderr)
    # Time is event time (the payload's event_time), for the watermark as for
    # windows and the dedupe horizon; record timestamps are not used.
    reads: tuple[tuple[EventKind, str, str], ...] = (
        ("shipment", "Shipments", kafka.shipments_topic),
        ("sale", "Sales", kafka.sales_topic),
    )
    shipments, sales = (
        read_log(
            pipeline,
            f"Read{label}",
            topic,
            options,
            event_time=event_time_of,
            start=start_of(checkpoint, topic),
            commit_offsets=False,
        )
        | f"Decode{label}" >> DecodeEvents(kind, stamped_by_read=True)
        for kind, label, topic in reads
    )
    views = (shipments.events, sales.events, shipments.dead_letters, sales.dead_letters) | "Retail" >> StreamRetail(
        horizon=timedelta(seconds=settings.dedupe_horizon),
        window_size=timedelta(seconds=settings.window_size),
        allowed_lateness=timedelta(seconds=settings.allowed_lateness),
        early_delay=timedelta(seconds=settings.early_firing) if settings.early_firing > 0 else None,
        shards=settings.state_shards,
        checkpoint=checkpoint,
        changes=changes_topics(options, tables),
    )
    dead_letters_to_kafka(views.dead_letter_parts, options)
    # The offsets the warehouse covers, to the consumer group, for Kafka's lag tools.
    return GroupOffsets(kafka_connection(options), checkpoint, kafka.consumer_group or f"beamline-{tables.pipeline}")


def state_settings(options: PipelineOptions) -> dict[str, object]:
    """The options the streaming state depends on: a resume with others is refused."""
    settings = options.view_as(BeamlineOptions)
    return {
        "window_size": settings.window_size,
        "allowed_lateness": settings.allowed_lateness,
        "dedupe_horizon": settings.dedupe_horizon,
    }


def start_of(checkpoint: Checkpoint, topic: str) -> StartAt:
    """Where one topic's read starts in this run (a partition not listed: at its earliest offset)."""
    return StartAt({tp: offset for tp, offset in checkpoint.starts if tp[0] == topic}, fallback="earliest")


def topics_read(options: PipelineOptions) -> list[str]:
    """The topics this pipeline reads (for progress lines)."""
    kafka = options.view_as(KafkaOptions)
    return [kafka.shipments_topic, kafka.sales_topic]


def run(argv: Sequence[str] | None = None) -> RunSummary:
    """Run the inventory pipeline with Beam-style arguments; return its summary."""
    return run_pipeline(build, argv, progress_topics=topics_read, prepare=catch_up)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(build, argv, topics_read, prog="python -m pipelines.inventory", prepare=catch_up)


if __name__ == "__main__":
    sys.exit(main())
