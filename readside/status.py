"""Where each streaming pipeline's views stand: the snapshot, the offsets they cover, and the lag behind the log.

Read from the warehouse's resume point (``_resume_offsets``: per partition,
the offset below which every record's outcome is in the views) and from the
broker's end offsets now. Lag is records: those in the log that the views do
not cover yet. Without a broker the rest is still shown, lag unknown.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from core.errors import BeamlineError
from core.views import PIPELINE_VIEWS, RESUME_OFFSETS, split_name, table_name
from transforms.kafka import KafkaConnection, partition_offsets
from warehouse.format import EPOCH, load_snapshot
from warehouse.resume import RecordedRun, query_tables, recorded_run

__all__ = ["PipelineStatus", "TopicStatus", "format_status", "pipeline_status", "views_of"]


def views_of(pipeline: str) -> tuple[str, ...]:
    """The tables a resume point covers: its pipeline's views, at its version (``inventory@v2``: theirs at v2)."""
    base, version = split_name(pipeline)
    return tuple(table_name(view, version) for view in PIPELINE_VIEWS.get(base, ()))


@dataclass
class TopicStatus:
    topic: str
    # partition -> (offset the views cover up to, end offset now or None)
    partitions: dict[int, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def covered(self) -> int:
        return sum(covered for covered, _ in self.partitions.values())

    @property
    def end(self) -> int | None:
        ends = [end for _, end in self.partitions.values()]
        return None if any(end is None for end in ends) else sum(e for e in ends if e is not None)

    @property
    def lag(self) -> int | None:
        ends = [(covered, end) for covered, end in self.partitions.values()]
        if any(end is None for _, end in ends):
            return None
        return sum(max(0, end - covered) for covered, end in ends if end is not None)


@dataclass
class PipelineStatus:
    pipeline: str
    views: tuple[str, ...]
    run: int
    shards: int
    snapshot_id: int
    committed_at: dt.datetime
    topics: list[TopicStatus]
    broker_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "views": list(self.views),
            "run": self.run,
            "shards": self.shards,
            "snapshot_id": self.snapshot_id,
            "committed_at": self.committed_at.isoformat(),
            "broker_error": self.broker_error,
            "topics": [
                {
                    "topic": t.topic,
                    "covered": t.covered,
                    "end": t.end,
                    "lag": t.lag,
                    "partitions": [
                        {"partition": p, "covered": covered, "end": end}
                        for p, (covered, end) in sorted(t.partitions.items())
                    ],
                }
                for t in self.topics
            ],
        }


def pipeline_status(warehouse: str | os.PathLike[str], connection: KafkaConnection | None) -> list[PipelineStatus]:
    """Every pipeline with a resume point in the warehouse, and its lag when a broker answers."""
    load_snapshot(warehouse)  # a missing warehouse is one clear error, saying what to run
    _, (names,) = query_tables(
        warehouse, f"SELECT DISTINCT pipeline FROM {RESUME_OFFSETS.name} ORDER BY pipeline", [RESUME_OFFSETS.name]
    )
    found = []
    for name in names.column("pipeline").to_pylist():
        recorded = recorded_run(warehouse, name)
        if recorded is not None:
            found.append(_status(name, recorded, connection))
    return found


def _status(name: str, recorded: RecordedRun, connection: KafkaConnection | None) -> PipelineStatus:
    ends: dict[tuple[str, int], tuple[int, int]] = {}
    error = None
    if connection is not None:
        try:
            ends = partition_offsets(connection, sorted(recorded.topics), timeout_s=5.0)
        except BeamlineError as exc:
            error = str(exc)
    topics: dict[str, TopicStatus] = {}
    for (topic, partition), covered in sorted(recorded.offsets.items()):
        end = ends.get((topic, partition))
        topics.setdefault(topic, TopicStatus(topic)).partitions[partition] = (covered, end[1] if end else None)
    return PipelineStatus(
        pipeline=name,
        views=views_of(name),
        run=recorded.run,
        shards=recorded.shards,
        snapshot_id=recorded.snapshot_id,
        committed_at=EPOCH + dt.timedelta(microseconds=recorded.committed_at_us),
        topics=list(topics.values()),
        broker_error=error,
    )


def format_status(statuses: list[PipelineStatus], warehouse: str, now: dt.datetime | None = None) -> str:
    """The statuses as text for a terminal."""
    if not statuses:
        return (
            f"no streaming resume point in {warehouse}: run `beamline run inventory --mode streaming` "
            "to record one (batch runs do not)\n"
        )
    now = now or dt.datetime.now(dt.timezone.utc)
    lines = []
    for status in statuses:
        age = (now - status.committed_at).total_seconds()
        lines.append(
            f"{status.pipeline}: views {', '.join(status.views) or '-'}; snapshot {status.snapshot_id} committed "
            f"{status.committed_at.isoformat(timespec='seconds')} ({age:,.0f}s ago); run {status.run}, "
            f"{status.shards} shards"
        )
        lines.append(f"  {'topic':<24} {'partitions':>10} {'covered':>14} {'end':>14} {'lag':>12}")
        for t in status.topics:
            end = "?" if t.end is None else f"{t.end:,}"
            lag = "?" if t.lag is None else f"{t.lag:,}"
            lines.append(f"  {t.topic:<24} {len(t.partitions):>10} {t.covered:>14,} {end:>14} {lag:>12}")
        if status.broker_error:
            lines.append(f"  lag unknown: {status.broker_error}")
    return "\n".join(lines) + "\n"
