"""Run every benchmark, then assemble ``bench/RESULTS.md`` (``make bench``).

Each benchmark module (``bench.kafka_read``, ``bench.warehouse``,
``bench.backfill``, ``bench.restart``, ``bench.streaming``, ``bench.stream_commits``,
``bench.serve``) runs in its own subprocess, one after
another, and writes ``bench/results/<name>.md``. A benchmark that fails is
reported as failed and the others still run. ``--quick`` runs each at a small
size and writes into a scratch folder (for checking the harness, not for figures);
``--assemble-only`` rebuilds RESULTS.md from the result files already present.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.machine import cpu_model, memory_gib

__all__ = ["BENCHMARKS", "Benchmark", "Headline", "main"]

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


@dataclass(frozen=True)
class Headline:
    """One figure read back from a result file with ``pattern`` (group 1 = the value)."""

    label: str
    pattern: str
    goal: str
    met: str  # a Python comparison on ``x`` (the value as float), e.g. "x >= 1.0"


@dataclass(frozen=True)
class Benchmark:
    name: str
    quick_args: tuple[str, ...]
    headlines: tuple[Headline, ...]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "kafka_read",
        ("--records", "20000", "--rounds", "1"),
        (
            Headline(
                "bounded ReadFromKafka(kafka-python) / plain kafka-python loop",
                r"(?:Ratio of the best runs: |ReadFromKafka\(kafka-python\) / plain kafka-python loop \| )"
                r"\*\*([\d.]+)\*\*",
                ">= 0.80x",
                "x >= 0.8",
            ),
            Headline(
                "the same, against the plain loop run with the reader's GC threshold",
                r"ReadFromKafka\(kafka-python\) / plain loop with the same GC threshold \| \*\*([\d.]+)\*\*",
                "(figure)",
                "True",
            ),
            Headline(
                "bounded ReadFromKafka(kafka-python), 2 worker processes / plain kafka-python loop",
                r"ReadFromKafka\(kafka-python\), 2 worker processes / plain kafka-python loop \| \*\*([\d.]+)\*\*",
                ">= 0.80x",
                "x >= 0.8",
            ),
            Headline(
                "bounded ReadFromKafka(confluent) / ReadFromKafka(kafka-python)",
                r"ReadFromKafka\(confluent\) / ReadFromKafka\(kafka-python\) \| \*\*([\d.]+)\*\*",
                ">= 3.0x",
                "x >= 3.0",
            ),
        ),
    ),
    Benchmark(
        "warehouse",
        ("--rows", "20000", "--lookups", "200"),
        (
            Headline(
                "point lookup p99 on the inventory view", r"\| point lookup p99 \| ([\d.]+) ms", "< 20 ms", "x < 20"
            ),
            Headline(
                "upsert throughput (rows/s)",
                r"\| upsert throughput [^|]*\| ([\d,]+) rows/s",
                ">= 200,000",
                "x >= 200000",
            ),
        ),
    ),
    Benchmark(
        "backfill",
        ("--events", "20000"),
        (
            Headline(
                "backfill: Beamline / plain kafka-python loop",
                r"Beamline / \(a\): \*\*([\d.]+)x",
                ">= 1.0x",
                "x >= 1.0",
            ),
            Headline("backfill: Beamline / DuckDB SQL", r"Beamline / \(b\): \*\*([\d.]+)x", ">= 0.5x", "x >= 0.5"),
            Headline(
                "backfill, one process / plain kafka-python loop",
                r"with `--direct_num_workers=1` \(one process\): Beamline / \(a\) \*\*([\d.]+)x",
                "(figure)",
                "True",
            ),
            Headline(
                "backfill, confluent client / plain kafka-python loop",
                r"with `--kafka_client=confluent`: Beamline / \(a\) \*\*([\d.]+)x",
                "(figure)",
                "True",
            ),
            Headline(
                "backfill, confluent client, one process / plain kafka-python loop",
                r"with `--kafka_client=confluent --direct_num_workers=1` \(one process\): "
                r"Beamline / \(a\) \*\*([\d.]+)x",
                "(figure)",
                "True",
            ),
            Headline(
                "backfill: Beamline events/s",
                r"\| Beamline batch backfill [^|]*\| [\d.]+ \| ([\d,]+) \|",
                "(figure)",
                "True",
            ),
            Headline("backfill: Beamline peak RSS (MiB)", r"Beamline peak RSS: \*\*([\d,]+) MiB", "(figure)", "True"),
        ),
    ),
    Benchmark(
        "restart",
        ("--sizes", "20000,40000"),
        (
            Headline(
                "streaming restart to 1,000 new events visible (s), worst size",
                r"restart to visible < 15 s at every size \| \*\*([\d.]+)\*\*",
                "< 15 s",
                "x < 15",
            ),
            Headline(
                "restart time, largest log / smallest",
                r"restart time, [\d,]+ / [\d,]+ events < 1.5 \| \*\*([\d.]+)\*\*",
                "< 1.5",
                "x < 1.5",
            ),
            Headline(
                "streaming first start / backfill, largest log",
                r"first start / backfill at [\d,]+ events <= 1.5 \| \*\*([\d.]+)\*\*",
                "<= 1.5",
                "x <= 1.5",
            ),
        ),
    ),
    Benchmark(
        "streaming",
        ("--quick",),
        (
            Headline(
                "streaming: Beamline p99 produce-to-visible latency at 5k events/s (s)",
                r"Beamline p99 at 5k events/s: \*\*>? ?([\d.]+) s\*\*",
                "< 1 s, below Quix",
                "x < 1",
            ),
            Headline(
                "streaming: Beamline p99 at 1k events/s (s)",
                r"\| Beamline \| 1k \|(?:[^|]*\|){6} ([\d.]+) \|",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: Quix Streams p99 at 5k events/s (s)",
                r"\| \(a\) Quix Streams \| 5k \|(?:[^|]*\|){6} ([\d.]+) \|",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: peak RSS of all processes, Beamline / Quix Streams (1k, 5k, max)",
                r"Beamline / \(a\) Quix Streams: \*\*([\d.]+)x\*\* \(goal <=",
                "<= 1.0x",
                "x <= 1.0",
            ),
            Headline(
                "streaming: peak RSS, 30-minute-equivalent stream, Beamline / Quix Streams",
                r"peak of the sampled sums, Beamline / \(a\) Quix Streams: \*\*([\d.]+)x",
                "<= 1.0x",
                "x <= 1.0",
            ),
            Headline(
                "streaming: Beamline / Quix Streams, sustained events/s at max",
                r"Beamline / \(a\) Quix Streams, sustained events/s at max: \*\*([\d.]+)x",
                ">= 1.0x",
                "x >= 1.0",
            ),
            Headline(
                "streaming: Beamline / plain kafka-python loop, sustained events/s at max",
                r"Beamline / \(b\) plain loop, sustained events/s at max: \*\*([\d.]+)x",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: Beamline sustained events/s at max",
                r"Beamline sustained events/s at max: \*\*([\d,]+)\*\*",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: Beamline peak RSS, 30-minute-equivalent stream (MiB)",
                r"peak of the sampled sums: \*\*([\d,]+) MiB",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: Beamline RSS growth, second half of that stream (MiB)",
                r"second half of the stream: RSS ([+-][\d,]+) MiB",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: an idle Beam job on Prism, peak RSS (MiB)",
                r"## Memory floor: an idle Beam streaming job on Prism\n\n[^\n]*\n- peak of the sampled sums: "
                r"\*\*([\d,]+) MiB",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: an idle Beam job on Prism / Quix Streams, peak RSS on the 30-minute stream "
                "(above 1.0x, no Beam job on Prism can meet the RSS goal there)",
                r"idle Beam job on Prism, peak RSS / Quix Streams' peak on the 30-minute stream: \*\*([\d.]+)x",
                "(figure)",
                "True",
            ),
            Headline(
                "streaming: Quix Streams RSS growth, second half of the same stream (MiB)",
                r"second half of the stream: Beamline [^,]*, \(a\) Quix Streams ([+-][\d,]+) MiB",
                "(figure)",
                "True",
            ),
        ),
    ),
    Benchmark(
        "stream_commits",
        ("--bundles", "40", "--events-per-bundle", "2000", "--rounds", "1"),
        (
            Headline(
                "a stream's bundle commits: p99 wait, after / before (compaction in the background, id columns)",
                r"commit p99, after / before \(best round of each\): \*\*([\d.]+)x",
                "< 1.0x",
                "x < 1.0",
            ),
            Headline(
                "the same: process CPU, after / before",
                r"process CPU, after / before: \*\*([\d.]+)x",
                "<= 1.0x",
                "x <= 1.0",
            ),
        ),
    ),
    Benchmark(
        "serve",
        ("--quick",),
        (
            Headline(
                "serve: point lookup p99 at 2,000 lookups/s, 16 clients (ms)",
                r"\| point lookup p99 at 2,000 lookups/s offered \(16 clients\) \| ([\d.]+) ms",
                "< 5 ms",
                "x < 5",
            ),
            Headline(
                "serve: point lookups/s, 16 clients flat out",
                r"\| point lookups/s, 16 clients flat out \| ([\d,]+) \|",
                ">= 2,000",
                "x >= 2000",
            ),
            Headline(
                "serve: freshness p99, commit to answer (ms)",
                r"\| freshness p99: commit to the service answering from it \| ([\d,]+) ms",
                "< 200 ms",
                "x < 200",
            ),
            Headline(
                "serve: lookups/s, service / one DuckDB query per request",
                r"service / baseline \(a\), lookups/s flat out \| \*\*([\d.]+)x",
                "(figure)",
                "True",
            ),
        ),
    ),
)


def _versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for module, label in (("apache_beam", "apache-beam"), ("kafka", "kafka-python"), ("duckdb", "duckdb")):
        try:
            parts.append(f"{label} {__import__(module).__version__}")
        except Exception:  # a missing package is reported, not fatal
            parts.append(f"{label} (not importable)")
    return ", ".join(parts)


def run_one(bench: Benchmark, results_dir: Path, quick: bool, timeout_s: float) -> tuple[str, float]:
    """Run one benchmark in a subprocess; return ("ok" | "failed: ...", seconds)."""
    if quick:
        # Small sizes write into results_dir, never over the real result files.
        target = results_dir / f"{bench.name}.md"
        code = (
            "import sys, pathlib, importlib\n"
            f"m = importlib.import_module('bench.{bench.name}')\n"
            f"m.RESULTS = pathlib.Path({str(target)!r})\n"
            "sys.exit(m.main(sys.argv[1:]) or 0)\n"
        )
        args = list(bench.quick_args)
        if bench.name in ("warehouse", "backfill", "streaming"):
            args += ["--output", str(target)]
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "-m", f"bench.{bench.name}"]
    print(f"== bench.{bench.name}: {' '.join(command[1:3])} ...", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=BENCH_DIR.parent, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"failed: timed out after {timeout_s:.0f}s", time.monotonic() - started
    except OSError as exc:
        return f"failed: {exc}", time.monotonic() - started
    elapsed = time.monotonic() - started
    return ("ok" if done.returncode == 0 else f"failed: exit status {done.returncode}"), elapsed


def _headline_rows(bench: Benchmark, text: str | None, status: str) -> list[str]:
    rows = []
    for h in bench.headlines:
        match = re.search(h.pattern, text) if text else None
        if match is None:
            value, verdict = "-", "failed" if status.startswith("failed") else "not found"
        else:
            value = match.group(1)
            x = float(value.replace(",", ""))
            verdict = "-" if h.goal == "(figure)" else ("met" if eval(h.met, {}, {"x": x}) else "MISSED")
        rows.append(f"| {h.label} | {value} | {h.goal} | {verdict} |")
    return rows


PROFILES_FILE = "profiles.md"


def assemble(results_dir: Path, statuses: dict[str, tuple[str, float]], output: Path) -> str:
    """Write the summary: header, headline table, then each result file in full."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Beamline benchmark results",
        "",
        f"- assembled: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, {memory_gib():.1f} GiB RAM; load average now {load}",
        f"- {_versions()}",
        "- each section below carries its own date, load average and versions; baselines in a section",
        "  were measured in the same run as the figure they are compared with",
        "",
        "| benchmark | status | headline | value | goal | verdict |",
        "|---|---|---|---:|---|---|",
    ]
    sections = []
    for bench in BENCHMARKS:
        path = results_dir / f"{bench.name}.md"
        text = path.read_text() if path.exists() else None
        status, seconds = statuses.get(bench.name, ("not rerun here: figures from the run dated in its section", 0.0))
        if status == "ok":
            status = f"ok ({seconds:.0f}s)"
        if text is None and not status.startswith("failed"):
            status = "no result file"
        for i, row in enumerate(_headline_rows(bench, text, status)):
            name, shown = (f"`bench.{bench.name}`", status) if i == 0 else ("", "")
            lines.append(f"| {name} | {shown} {row}")
        if text is None:
            sections.append(f"## bench.{bench.name}\n\nNo result: {status}.\n")
        else:
            stale = (
                " (FAILED in this run; the file below is from an earlier run)" if status.startswith("failed") else ""
            )
            body = re.sub(r"^# ", "### ", text.strip(), count=1, flags=re.MULTILINE)
            sections.append(f"## bench.{bench.name}{stale}\n\n{body}\n")
    # Profiles (where the time and the memory go) are written by hand from profiler runs, not by a benchmark.
    profiles = results_dir / PROFILES_FILE
    if profiles.exists():
        sections.append(re.sub(r"^# ", "## ", profiles.read_text().strip(), count=1, flags=re.MULTILINE) + "\n")
    lines += ["", *sections]
    out = "\n".join(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (all, or those named) and write RESULTS.md; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, results in a scratch folder")
    parser.add_argument("--assemble-only", action="store_true", help="only rebuild RESULTS.md from result files")
    parser.add_argument("--output", type=Path, help="where to write RESULTS.md")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)
    known = {b.name for b in BENCHMARKS}
    unknown = sorted(set(args.names) - known)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    scratch = tempfile.mkdtemp(prefix="beamline-bench-quick-") if args.quick else None
    results_dir = Path(scratch) if scratch else RESULTS_DIR
    output = args.output or (results_dir / "RESULTS.md" if scratch else RESULTS_MD)
    statuses: dict[str, tuple[str, float]] = {}
    if not args.assemble_only:
        for bench in BENCHMARKS:
            if args.names and bench.name not in args.names:
                continue
            statuses[bench.name] = run_one(bench, results_dir, args.quick, args.timeout)
            print(f"== bench.{bench.name}: {statuses[bench.name][0]}", flush=True)
    assemble(results_dir, statuses, output)
    print(f"wrote {output}")
    return 1 if any(s.startswith("failed") for s, _ in statuses.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
