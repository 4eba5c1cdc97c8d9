"""Streaming word counts that resume from the warehouse, as the inventory step does.

The running total per word is the ``word_counts`` view itself, so the state to
restore is the view, plus where the read stands (``_resume_offsets``, see
:mod:`transforms.checkpoint`). :class:`StreamWordCounts` keys the words by a
shard of the word: the keying step sums each bundle's words per shard and
tells every shard every offset the bundle held (lines that hold no word and
undecodable ones too, whose dead letters the shard commits); each shard
commits, per bundle and in one snapshot, its changed totals, its dead letters
and the offsets they cover. A restart reads from the lowest offset every shard
committed: a line read again after it was counted would count twice, so the
offsets a shard has committed beyond that point are skipped by that shard
(``Progress.done``).
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.views import WORD_COUNTS
from transforms.changes import ChangesTopics
from transforms.checkpoint import Checkpoint, Progress, claims_of
from transforms.counts import DEAD_LETTERS_TAG, split_line
from transforms.events import DeadLetter, dead_letter_to_row
from transforms.inventory import VersionedCache
from transforms.kafka import GLOBAL_WINDOWS, KafkaRecord
from transforms.params import TIMESTAMP_PARAM
from transforms.sinks import WarehouseOutlet
from warehouse.resume import progress_version, query_tables

__all__ = ["DEFAULT_WORD_SHARDS", "ShardLines", "StreamWordCounts", "word_shard"]

DEFAULT_WORD_SHARDS = 4

WORD_HEAD = ReadModifyWriteStateSpec("word_head", PickleCoder())
_HEAD = beam.DoFn.StateParam(WORD_HEAD)

Partition = tuple[str, int]


def word_shard(word: str, shards: int) -> int:
    """The shard of a word: the same in every process and run."""
    return zlib.crc32(word.encode("utf-8")) % shards


@dataclass
class ShardLines:
    """What one upstream bundle holds for one shard: its words per line, dead letters, and every offset read."""

    # (topic, partition, offset, this shard's words of that line and their counts)
    lines: list[tuple[str, int, int, dict[str, int]]] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    # Every record of the bundle, for every shard: what the shard's commit covers.
    records: tuple[tuple[str, int, int], ...] = ()


@dataclass
class _Head:
    version: int = 0
    committed: int = 0  # version of the shard's last commit to the warehouse


@dataclass
class _Shard:
    counts: dict[str, int] = field(default_factory=dict)
    progress: dict[Partition, Progress] = field(default_factory=dict)
    commits: int = 0


_CACHE = VersionedCache(size=lambda shard: len(shard.counts))


class _KeyLinesByShard(beam.DoFn):
    """Lines -> (shard, ShardLines) once per shard and bundle; every shard learns every offset read."""

    def __init__(self, shards: int) -> None:
        self._shards = shards
        self._parts: dict[int, ShardLines] = {}
        self._positions: list[tuple[str, int, int]] = []
        self._stamp: Timestamp | None = None

    def start_bundle(self) -> None:
        self._parts, self._positions, self._stamp = {}, [], None

    def process(self, record: KafkaRecord, stamp: Timestamp = TIMESTAMP_PARAM) -> None:
        position = (record.topic, record.partition, record.offset)
        self._positions.append(position)
        self._stamp = stamp if self._stamp is None or stamp < self._stamp else self._stamp
        mine: dict[int, dict[str, int]] = {}
        for out in split_line(record):
            if isinstance(out, beam.pvalue.TaggedOutput):
                self._parts.setdefault(record.partition % self._shards, ShardLines()).letters.append(out.value)
            else:
                word, n = out
                mine.setdefault(word_shard(word, self._shards), {})[word] = n
        for shard, words in mine.items():
            self._parts.setdefault(shard, ShardLines()).lines.append((*position, words))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if not self._positions:
            return
        records = tuple(self._positions)
        stamp = self._stamp if self._stamp is not None else Timestamp(0)
        for shard in range(self._shards):
            part = self._parts.get(shard) or ShardLines()
            part.records = records
            yield WindowedValue((shard, part), stamp, GLOBAL_WINDOWS)
        self._parts, self._positions, self._stamp = {}, [], None


class _ShardedWordCountFn(beam.DoFn):
    """(shard, ShardLines) -> word_counts rows; dead letters tagged; commits both with its offsets."""

    def __init__(self, checkpoint: Checkpoint, shards: int, changes: ChangesTopics | None = None) -> None:
        self._checkpoint = checkpoint
        self._shards = shards
        self._outlet = WarehouseOutlet(checkpoint.warehouse, changes)
        self._step = uuid.uuid4().hex
        self._version = 0
        self._open: dict[int, tuple[_Head, _Shard]] = {}
        self._changed: dict[str, int] = {}
        self._letters: list[dict[str, Any]] = []

    def setup(self) -> None:
        self._outlet.open()

    def teardown(self) -> None:
        self._outlet.close()

    def start_bundle(self) -> None:
        self._version = int.from_bytes(os.urandom(8), "big") | 1
        self._open, self._changed, self._letters = {}, {}, []
        _CACHE.trim()

    def _load(self, shard: int, head_state: Any) -> tuple[_Head, _Shard]:
        opened = self._open.get(shard)
        if opened is not None:
            return opened
        head: _Head = head_state.read() or _Head()
        data = _CACHE.get((self._step, shard), head.version)
        if data is None:
            data = self._restore(shard, head)
        head.version = self._version
        _CACHE.put((self._step, shard), self._version, data)
        head_state.write(head)
        self._open[shard] = (head, data)
        return head, data

    def _restore(self, shard: int, head: _Head) -> _Shard:
        """The shard's totals and offsets as the newest snapshot has them (never behind its last good bundle)."""
        checkpoint = self._checkpoint
        _, (counts, progress) = query_tables(
            checkpoint.warehouse,
            [
                f"SELECT word, count FROM {WORD_COUNTS.name}",
                "SELECT topic, partition, start_offset, next_offset, pending, version FROM _resume_offsets "
                "WHERE pipeline = $pipeline AND run = $run AND shard = $shard",
            ],
            {WORD_COUNTS.name: checkpoint.table(WORD_COUNTS.name), "_resume_offsets": "_resume_offsets"},
            {"pipeline": checkpoint.pipeline, "run": checkpoint.run, "shard": shard},
        )
        data = _Shard()
        version = 0
        for row in progress.to_pylist():
            tp = (row["topic"], int(row["partition"]))
            found = Progress.from_row(row)
            data.progress[tp] = found
            version = max(version, int(row["version"]))
        for tp, start in checkpoint.starts:
            data.progress.setdefault(tp, Progress(start))
        if version < head.committed:
            raise RuntimeError(f"word count shard {shard}: the warehouse is behind its last commit; retrying")
        data.commits = version - progress_version(checkpoint.run, 0) if version >> 32 == checkpoint.run else 0
        for word, count in zip(counts.column("word").to_pylist(), counts.column("count").to_pylist(), strict=True):
            if word_shard(word, self._shards) == shard:
                data.counts[word] = count
        return data

    def process(self, element: tuple[int, ShardLines], head_state: Any = _HEAD) -> Iterator[Any]:
        shard, part = element
        _, data = self._load(shard, head_state)

        def done(topic: str, partition: int, offset: int) -> bool:
            # A line this shard counted already (read again after a restart from a lower floor) counts once.
            return data.progress.setdefault((topic, partition), Progress(0)).done(offset)

        for topic, partition, offset, words in part.lines:
            if not done(topic, partition, offset):
                for word, n in words.items():
                    data.counts[word] = data.counts.get(word, 0) + n
                    self._changed[word] = data.counts[word]
        for letter in part.letters:
            if not done(letter.source_topic, letter.partition, letter.offset):
                self._letters.append(dead_letter_to_row(letter))
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, letter)
        for (topic, partition), runs in claims_of(part.records):
            for first, last in runs:
                data.progress[(topic, partition)].claim(first, last)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if not self._open:
            return
        checkpoint, outlet = self._checkpoint, self._outlet
        offsets: list[dict[str, Any]] = []
        for shard, (head, data) in sorted(self._open.items()):
            data.commits += 1
            head.committed = progress_version(checkpoint.run, data.commits)
            offsets.extend(
                progress.row(checkpoint.pipeline, tp, shard, self._shards, checkpoint.run, data.commits)
                for tp, progress in sorted(data.progress.items())
            )
        rows = [{"word": word, "count": count} for word, count in self._changed.items()]
        table = checkpoint.table
        outlet.commit({table(WORD_COUNTS.name): rows, table("dead_letters"): self._letters, "_resume_offsets": offsets})
        for row in rows:
            yield WindowedValue(row, Timestamp.now(), GLOBAL_WINDOWS)


class StreamWordCounts(beam.PTransform):
    """Text-line KafkaRecords -> word_counts rows (main) and dead letters, checkpointed to the warehouse.

    ``rows, dead = records | StreamWordCounts(checkpoint)``; the step commits
    both itself, with the offsets they cover, so a restart resumes from them;
    with ``changes``, each commit's rows go to the changes topics once durable.
    """

    def __init__(
        self, checkpoint: Checkpoint, shards: int = DEFAULT_WORD_SHARDS, *, changes: ChangesTopics | None = None
    ) -> None:
        super().__init__()
        self._checkpoint = checkpoint
        self._shards = shards
        self._changes = changes

    def expand(self, records: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        keyed = records | "KeyLinesByShard" >> beam.ParDo(_KeyLinesByShard(self._shards)).with_output_types(
            tuple[int, Any]
        )
        out = keyed | "CountOnce" >> beam.ParDo(
            _ShardedWordCountFn(self._checkpoint, self._shards, self._changes)
        ).with_outputs(DEAD_LETTERS_TAG, main="rows")
        return out.rows, out[DEAD_LETTERS_TAG]
