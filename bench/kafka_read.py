"""Throughput of a bounded ReadFromKafka against a plain kafka-python consumer loop.

Run with ``python -m bench.kafka_read``. It starts its own broker in a temp
folder, produces small records to a 4-partition topic, then reads them all
twice in the same run: once with a plain consumer loop (the ceiling, since
both decode with kafka-python) and once with ``ReadFromKafka(stop="end")`` plus
a count on the FnApiRunner. The figures go to ``bench/results/kafka_read.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from infra.kafka_broker import KafkaBroker, free_port
from transforms.kafka import ReadFromKafka

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
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=10_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    started, cpu_started = time.perf_counter(), time.process_time()
    seen = 0
    while seen < count:
        for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
            for _rec in records:
                seen += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    consumer.close(autocommit=False)
    return elapsed, cpu


def _beam_read(bootstrap: str, topic: str, count: int, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds of ReadFromKafka + Count; CPU covers this process only (1 worker)."""
    options = PipelineOptions(
        direct_num_workers=workers, direct_running_mode="multi_processing" if workers > 1 else "in_memory"
    )
    with tempfile.TemporaryDirectory(prefix="kafka-bench-count-") as out_dir:
        out = Path(out_dir) / "count.txt"
        started, cpu_started = time.perf_counter(), time.process_time()
        with beam.Pipeline("FnApiRunner", options=options) as pipeline:
            total = pipeline | ReadFromKafka(bootstrap, topic, stop="end") | beam.combiners.Count.Globally()
            total | beam.Map(lambda n: out.write_text(str(n)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        counted = out.read_text() if out.exists() else "nothing"
    if counted != str(count):
        raise SystemExit(f"ReadFromKafka counted {counted}, expected {count}")
    return elapsed, cpu


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _crc_impl() -> str:
    """Which CRC32C kafka-python uses: it checks every fetched batch with it."""
    from kafka.record import util

    if getattr(util, "crc32c_c", None) is not None:
        return "C extension (crc32c package)"
    return "pure Python (the crc32c package is not installed; both readers pay this)"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1, help="direct_num_workers for the Beam read")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each reader, alternated")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kafka-bench-") as data_dir:
        broker = KafkaBroker(data_dir)
        broker.start(free_port())
        try:
            bootstrap = broker.status().bootstrap_servers or ""
            topic = "bench-read"
            produce_s = _produce(bootstrap, topic, args.records)
            print(f"produced {args.records} records in {produce_s:.1f}s", flush=True)
            # Alternate the two readers so a busy neighbour on the machine hurts both alike.
            plain_runs, beam_runs = [], []
            for _ in range(args.rounds):
                plain_runs.append(_plain_loop(bootstrap, topic, args.records))
                print(f"plain loop: {args.records / plain_runs[-1][0]:,.0f} records/s", flush=True)
                beam_runs.append(_beam_read(bootstrap, topic, args.records, args.workers))
                print(f"ReadFromKafka: {args.records / beam_runs[-1][0]:,.0f} records/s", flush=True)
        finally:
            broker.stop()

    plain_s, beam_s = min(w for w, _ in plain_runs), min(w for w, _ in beam_runs)
    plain_rate = args.records / plain_s
    beam_rate = args.records / beam_s
    ratio = beam_rate / plain_rate
    round_ratios = [p[0] / b[0] for p, b in zip(plain_runs, beam_runs, strict=True)]
    plain_cpu, beam_cpu = min(c for _, c in plain_runs), min(c for _, c in beam_runs)
    cpu_ratio = plain_cpu / beam_cpu
    print(f"ratio ReadFromKafka / plain loop = {ratio:.2f} (goal >= 0.80); by CPU time {cpu_ratio:.2f}")

    def rates(runs: list[tuple[float, float]]) -> str:
        return ", ".join(f"{args.records / w:,.0f}" for w, _ in runs)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Bounded ReadFromKafka vs a plain kafka-python consumer loop\n\n"
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
        f"Machine: {os.cpu_count()} CPUs, {_cpu_model()}  \n"
        f"Python {platform.python_version()}, apache-beam {beam.__version__}, "
        f"kafka-python {__import__('kafka').__version__}  \n"
        f"Workload: {args.records:,} records of ~100 bytes in {PARTITIONS} partitions, "
        f"one local broker; FnApiRunner with direct_num_workers={args.workers}; the Beam "
        "time includes pipeline start-up and the count.\n\n"
        "| reader | best seconds | best records/s | every run, records/s |\n|---|---:|---:|---|\n"
        f"| plain kafka-python loop | {plain_s:.1f} | {plain_rate:,.0f} | {rates(plain_runs)} |\n"
        f"| ReadFromKafka + Count | {beam_s:.1f} | {beam_rate:,.0f} | {rates(beam_runs)} |\n\n"
        f"Ratio of the best runs: **{ratio:.2f}** (goal >= 0.80); per round: "
        f"{', '.join(f'{r:.2f}' for r in round_ratios)}.  \n"
        f"CPU seconds per 1M records (best run, this process): plain loop "
        f"{plain_cpu * 1e6 / args.records:.1f}, ReadFromKafka {beam_cpu * 1e6 / args.records:.1f}; "
        f"ratio by CPU **{cpu_ratio:.2f}** (robust when the machine is shared).  \n"
        f"Load average when the run ended: {load}.  \n"
        f"CRC32C checks: {_crc_impl()}.\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
