"""Throughput of a bounded ReadFromKafka, per Kafka client, against plain consumer loops.

Run with ``python -m bench.kafka_read``. It starts its own broker in a temp
folder, produces small records to a 4-partition topic, then reads them all
in the same run with each reader, alternated round by round: a plain
kafka-python consumer loop (Python's default garbage-collector settings, as a
user's script runs), the same loop with the GC threshold ReadFromKafka sets in
its worker (to show what that setting alone is worth), ``ReadFromKafka(stop="end")``
plus a count on the FnApiRunner with the kafka-python client (in this process
and with two worker processes), the same with ``client="confluent"``, and a
plain confluent-kafka consumer loop (each plain loop is the ceiling for its
client). The confluent readers are skipped when confluent-kafka is not
installed. The figures go to ``bench/results/kafka_read.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bench.consumers import plain_consumer
from bench.machine import cpu_model
from infra.kafka_broker import KafkaBroker, free_port
from transforms.kafka import KafkaConnection, ReadFromKafka
from transforms.kafka.worker_gc import WORKER_GC_THRESHOLD

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "kafka_read.md"
PARTITIONS = 4


def _produce(bootstrap: str, topic: str, count: int) -> float:
    """Fill the topic with ~100-byte records; returns seconds taken."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1, compression_type=None
    )
    started = time.perf_counter()
    payload = b"x" * 80
    for i in range(count):
        producer.send(topic, key=b"k%07d" % i, value=payload + b"%010d" % i, partition=i % PARTITIONS)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def _plain_loop(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    """The baseline: one consumer, all partitions, poll until every record is seen."""
    consumer, _ = plain_consumer(bootstrap, [topic])
    started, cpu_started = time.perf_counter(), time.process_time()
    seen = 0
    while seen < count:
        for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
            for _rec in records:
                seen += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    consumer.close(autocommit=False)
    return elapsed, cpu


@contextlib.contextmanager
def _gc_thresholds_restored() -> Iterator[None]:
    """Whatever the block does to the GC thresholds, the next reader starts from the same ones."""
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _plain_loop_tuned_gc(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    """The plain loop with the garbage-collector threshold ReadFromKafka sets in its worker."""
    with _gc_thresholds_restored():
        gc.set_threshold(WORKER_GC_THRESHOLD, *gc.get_threshold()[1:])
        return _plain_loop(bootstrap, topic, count)


def _plain_confluent_loop(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    """The confluent baseline: one consumer, all partitions, consume batches until every record is seen."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from transforms.kafka.confluent import FETCH_TUNING

    # ReadFromKafka's fetch settings: large fetches, and no 1 s pause per 100k records queued.
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-plain-loop", "enable.auto.commit": False, **FETCH_TUNING}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    started, cpu_started = time.perf_counter(), time.process_time()
    seen = 0
    while seen < count:
        for msg in consumer.consume(10_000, 0.5):
            if msg.error() is None:
                seen += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    consumer.close()
    return elapsed, cpu


def _beam_read(bootstrap: str, topic: str, count: int, workers: int, client: str) -> tuple[float, float]:
    """Wall and CPU seconds of ReadFromKafka + Count; CPU covers this process only (1 worker).

    With one worker the read runs in this process and raises its GC threshold;
    it is put back afterwards, so the plain loops measured next run with
    Python's default, as a user's script would.
    """
    options = PipelineOptions(
        direct_num_workers=workers, direct_running_mode="multi_processing" if workers > 1 else "in_memory"
    )
    with _gc_thresholds_restored(), tempfile.TemporaryDirectory(prefix="kafka-bench-count-") as out_dir:
        out = Path(out_dir) / "count.txt"
        started, cpu_started = time.perf_counter(), time.process_time()
        with beam.Pipeline("FnApiRunner", options=options) as pipeline:
            read = ReadFromKafka(KafkaConnection(bootstrap, client=client), topic, stop="end")
            total = pipeline | read | beam.combiners.Count.Globally()
            total | beam.Map(lambda n: out.write_text(str(n)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        counted = out.read_text() if out.exists() else "nothing"
    if counted != str(count):
        raise SystemExit(f"ReadFromKafka(client={client!r}) counted {counted}, expected {count}")
    return elapsed, cpu


def _crc_impl() -> str:
    """Which CRC32C kafka-python uses: it checks every fetched batch with it."""
    from kafka.record import util

    if getattr(util, "crc32c_c", None) is not None:
        return "C extension (crc32c package)"
    return "pure Python (the crc32c package is not installed; both readers pay this)"


def _confluent_version() -> str | None:
    try:
        import confluent_kafka
    except ImportError:
        return None
    version = confluent_kafka.version()  # a (text, number) pair in some releases, text in others
    text = version[0] if isinstance(version, tuple) else version
    return f"{text} (librdkafka {confluent_kafka.libversion()[0]})"


# The readers, in the order each round runs them: (label, results key).
_READERS = (
    ("plain kafka-python loop", "plain"),
    (f"plain kafka-python loop, GC threshold {WORKER_GC_THRESHOLD:,} (as ReadFromKafka's worker)", "plain_gc"),
    ("ReadFromKafka(client='kafka-python') + Count", "beam"),
    ("ReadFromKafka(client='kafka-python') + Count, 2 worker processes", "beam_2w"),
    ("ReadFromKafka(client='confluent') + Count", "beam_confluent"),
    ("plain confluent-kafka loop", "plain_confluent"),
)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1, help="direct_num_workers for the Beam read")
    parser.add_argument(
        "--parallel-workers", type=int, default=2, help="worker processes of the extra parallel read (0: skip it)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each reader, alternated")
    args = parser.parse_args(argv)
    confluent = _confluent_version()
    readers = [
        (label.replace("2 worker", f"{args.parallel_workers} worker"), key)
        for label, key in _READERS
        if (confluent or "confluent" not in key) and (args.parallel_workers > 1 or key != "beam_2w")
    ]
    measure = {
        "plain": lambda b, t: _plain_loop(b, t, args.records),
        "plain_gc": lambda b, t: _plain_loop_tuned_gc(b, t, args.records),
        "beam": lambda b, t: _beam_read(b, t, args.records, args.workers, "kafka-python"),
        "beam_2w": lambda b, t: _beam_read(b, t, args.records, args.parallel_workers, "kafka-python"),
        "beam_confluent": lambda b, t: _beam_read(b, t, args.records, args.workers, "confluent"),
        "plain_confluent": lambda b, t: _plain_confluent_loop(b, t, args.records),
    }
    runs: dict[str, list[tuple[float, float]]] = {key: [] for _, key in readers}
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="kafka-bench-") as data_dir:
        broker = KafkaBroker(data_dir)
        broker.start(free_port())
        try:
            bootstrap = broker.status().bootstrap_servers or ""
            topic = "bench-read"
            produce_s = _produce(bootstrap, topic, args.records)
            print(f"produced {args.records} records in {produce_s:.1f}s", flush=True)
            # Alternate the readers so a busy neighbour on the machine hurts all alike.
            for _ in range(args.rounds):
                for label, key in readers:
                    runs[key].append(measure[key](bootstrap, topic))
                    print(f"{label}: {args.records / runs[key][-1][0]:,.0f} records/s", flush=True)
        finally:
            broker.stop()
    load_after = os.getloadavg()

    best = {key: min(w for w, _ in rs) for key, rs in runs.items()}
    best_cpu = {key: min(c for _, c in rs) for key, rs in runs.items()}

    def rate(key: str) -> float:
        return args.records / best[key]

    def rates(key: str) -> str:
        return ", ".join(f"{args.records / w:,.0f}" for w, _ in runs[key])

    def per_round(num: str, den: str) -> str:
        return ", ".join(f"{d[0] / n[0]:.2f}" for n, d in zip(runs[num], runs[den], strict=True))

    def ratio_line(num: str, den: str, what: str, goal: str) -> str:
        by_wall = rate(num) / rate(den)
        by_cpu = best_cpu[den] / best_cpu[num]
        print(f"ratio {what} = {by_wall:.2f} ({goal}); by CPU time {by_cpu:.2f}")
        return f"| {what} | **{by_wall:.2f}** | {per_round(num, den)} | {by_cpu:.2f} | {goal} |\n"

    ratios = ratio_line("beam", "plain", "ReadFromKafka(kafka-python) / plain kafka-python loop", "goal >= 0.80")
    ratios += ratio_line(
        "beam", "plain_gc", "ReadFromKafka(kafka-python) / plain loop with the same GC threshold", "no goal"
    )
    if "beam_2w" in runs:
        # The partitions spread over worker processes, as a backfill on every core runs;
        # the plain loop has one process by nature. CPU time covers the parent only, so none.
        by_wall = rate("beam_2w") / rate("plain")
        print(f"ratio parallel read / plain = {by_wall:.2f}")
        ratios += (
            f"| ReadFromKafka(kafka-python), {args.parallel_workers} worker processes / plain kafka-python loop "
            f"| **{by_wall:.2f}** | {per_round('beam_2w', 'plain')} | - | goal >= 0.80 (same goal, every core) |\n"
        )
    if confluent:
        ratios += ratio_line(
            "beam_confluent", "beam", "ReadFromKafka(confluent) / ReadFromKafka(kafka-python)", "goal >= 3.0"
        )
        ratios += ratio_line(
            "beam_confluent", "plain_confluent", "ReadFromKafka(confluent) / plain confluent-kafka loop", "no goal"
        )
        ratios += ratio_line("beam_confluent", "plain", "ReadFromKafka(confluent) / plain kafka-python loop", "no goal")
    table = "".join(
        f"| {label} | {best[key]:.1f} | {rate(key):,.0f} | {rates(key)} | "
        f"{'- (in workers)' if key == 'beam_2w' else f'{best_cpu[key] * 1e6 / args.records:.1f}'} |\n"
        for label, key in readers
    )

    def load(avg: tuple[float, float, float]) -> str:
        return ", ".join(f"{x:.1f}" for x in avg)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Bounded ReadFromKafka, per Kafka client, vs plain consumer loops\n\n"
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}, shared with other work  \n"
        f"Python {platform.python_version()}, apache-beam {beam.__version__}, "
        f"kafka-python {__import__('kafka').__version__}, "
        f"confluent-kafka {confluent or 'not installed (confluent readers skipped)'}  \n"
        f"Workload: {args.records:,} records of ~100 bytes in {PARTITIONS} partitions, "
        f"one local broker; FnApiRunner with direct_num_workers={args.workers}; the Beam "
        f"times include pipeline start-up and the count; {args.rounds} rounds, the readers "
        "alternated within each round.  \n"
        f"Load average (1, 5, 15 min) before the run: {load(load_before)}; after: {load(load_after)}.\n\n"
        "| reader | best seconds | best records/s | every run, records/s | CPU s per 1M records (best) |\n"
        "|---|---:|---:|---|---:|\n"
        f"{table}\n"
        "| ratio (records/s) | best runs | per round | by CPU time | goal |\n|---|---:|---|---:|---|\n"
        f"{ratios}\n"
        "CPU time is this process's (all its threads, librdkafka's included), robust when the machine "
        "is shared.  \n"
        f"CRC32C checks (kafka-python readers only; librdkafka has its own): {_crc_impl()}.\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
