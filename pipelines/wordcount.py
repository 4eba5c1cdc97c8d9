"""Word count: lines of text into running totals per word.

    text-lines ─ ReadLines ─ CountWords ─┬─ WriteWordCounts   (view word_counts)
                                         └─ WordCountsToKafka (topic word-counts)
    undecodable lines ─ dead letters (view dead_letters + topic dead-letters)

Streaming, ``CountWords`` is ``StreamWordCounts``: it commits the totals, the
dead letters and the offsets they cover to the warehouse itself, and a
restart resumes from them (``transforms/wordcount_state.py``).

Run it with ``python -m pipelines.wordcount --mode batch|streaming [Beam options]``
or ``beamline run wordcount ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from core.views import DEAD_LETTERS, WORD_COUNTS
from pipelines.inventory import dead_letters_to_kafka, read_log, start_of, write_dead_letters
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
from transforms.checkpoint import GroupOffsets, start_run
from transforms.counts import CountWords, word_count_to_kafka
from transforms.kafka import WriteToKafka, ensure_topics
from transforms.sinks import WriteToWarehouse
from transforms.wordcount_state import DEFAULT_WORD_SHARDS, StreamWordCounts

__all__ = ["PIPELINE", "build", "main", "run"]

# The name this pipeline's resume point has in the warehouse.
PIPELINE = "wordcount"


def build(pipeline: beam.Pipeline, options: PipelineOptions) -> GroupOffsets | None:
    """Add the word count's steps to ``pipeline``; a streaming run also returns what runs beside it."""
    kafka = options.view_as(KafkaOptions)
    warehouse = options.view_as(WarehouseOptions).warehouse
    connection = kafka_connection(options)
    ensure_topics(connection, [kafka.word_counts_topic])
    tables = run_tables(options, PIPELINE)
    changes = changes_topics(options, tables)
    if options.view_as(BeamlineOptions).mode == "batch":
        lines = read_log(pipeline, "ReadLines", kafka.text_topic, options)
        counts, dead = lines | "CountWords" >> CountWords(mode="batch")
        _ = counts | "WriteWordCounts" >> WriteToWarehouse(warehouse, tables[WORD_COUNTS.name], changes=changes)
        write_dead_letters([dead], options, tables[DEAD_LETTERS.name])
        beside = None
    else:
        # The warehouse is the checkpoint, as for the inventory (transforms/wordcount_state.py).
        checkpoint = start_run(connection, warehouse, tables, [kafka.text_topic], DEFAULT_WORD_SHARDS)
        print(f"beamline: {checkpoint.describe()}", file=sys.stderr)
        lines = read_log(
            pipeline,
            "ReadLines",
            kafka.text_topic,
            options,
            start=start_of(checkpoint, kafka.text_topic),
            commit_offsets=False,
        )
        counts, dead = lines | "CountWords" >> StreamWordCounts(checkpoint, changes=changes)
        dead_letters_to_kafka([dead], options)
        beside = GroupOffsets(connection, checkpoint, kafka.consumer_group or f"beamline-{tables.pipeline}")
    _ = (
        counts
        | "WordCountRecords" >> beam.Map(word_count_to_kafka)
        | "WordCountsToKafka"
        >> WriteToKafka(connection, kafka.word_counts_topic, outage_timeout_s=kafka_outage_s(options))
    )
    return beside


def topics_read(options: PipelineOptions) -> list[str]:
    """The topics this pipeline reads (for progress lines)."""
    kafka = options.view_as(KafkaOptions)
    return [kafka.text_topic]


def run(argv: Sequence[str] | None = None) -> RunSummary:
    """Run the word count with Beam-style arguments; return its summary."""
    return run_pipeline(build, argv, progress_topics=topics_read)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(build, argv, topics_read, prog="python -m pipelines.wordcount")


if __name__ == "__main__":
    sys.exit(main())
