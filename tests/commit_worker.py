"""Test-only writer and reader processes for ``tests/test_warehouse_commits.py``.

``python -m tests.commit_worker fault ROOT STEP ROWS_JSON`` (or
:func:`commit_until` in a child process) opens the warehouse, then commits
ROWS_JSON (``{"inventory": [[item, events], ...]}``) with a hook on one step
of the commit protocol: once that step has run, the process says ``at STEP``
and blocks, so the test can kill it with SIGKILL right there. The hook wraps
the step function of :mod:`warehouse.protocol`, the same functions the writer
calls; product code has no switch for tests.

``python -m tests.commit_worker write ROOT WRITER FIRST LAST`` commits
numbers FIRST..LAST for one writer and prints ``ack N SNAPSHOT GLOBAL`` once
commit N has returned (the acknowledgement). ``python -m tests.commit_worker
read ROOT STOP_FILE`` queries until STOP_FILE exists and prints one JSON line:
queries, errors and torn answers (a snapshot that is not a whole prefix of
every writer's commits).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# The protocol's steps, in commit order, by the name the tests give them.
STEPS = {
    "data": "write_data_file",  # after the commit's Parquet file is written and fsynced
    "folders": "sync_folders",  # after the data folders are fsynced
    "manifest": "put_manifest",  # after the manifest is linked: the commit point
    "fsync": "sync_manifest",  # after snapshots/ is fsynced
    "pointer": "write_pointer",  # after CURRENT and catalog.sql are replaced and the root fsynced
}
ROWS_PER_COMMIT = 3
T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.timezone.utc)


class InjectedFault(RuntimeError):
    """The exception a test injects after a step of a commit."""


def after_step(step: str, action: Callable[[], None]) -> tuple[str, Callable[..., Any]]:
    """(name in warehouse.protocol, replacement) running the step, then ``action`` the first time only."""
    from warehouse import protocol

    name = STEPS[step]
    original = getattr(protocol, name)
    fired = False

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        result = original(*args, **kwargs)
        if not fired:
            fired = True
            action()
        return result

    return name, wrapped


def inventory_rows(pairs: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    """Inventory rows of store s1 whose every number is the row's version (events)."""
    return [
        {
            "store_id": "s1",
            "item_id": item,
            "on_hand": events,
            "shipped": events,
            "sold": 0,
            "events": events,
            "last_event_time": T0 + dt.timedelta(seconds=events),
        }
        for item, events in pairs
    ]


def commit_until(root: str, step: str, rows_json: str, report: Callable[[str], None]) -> None:
    """Commit the rows; right after ``step``, ``report("at STEP")`` and block until killed."""
    from warehouse import protocol
    from warehouse.writer import Warehouse

    wh = Warehouse(root, max_files_per_view=3)  # compaction in some commits too

    def block() -> None:
        report(f"at {step}")
        time.sleep(600)  # until the test's SIGKILL

    name, wrapped = after_step(step, block)
    setattr(protocol, name, wrapped)
    wh.commit("inventory", inventory_rows(json.loads(rows_json)["inventory"]))
    report("committed")  # the step was not reached: the test fails on this


def _fault(root: str, step: str, rows_json: str) -> None:
    commit_until(root, step, rows_json, lambda line: print(line, flush=True))


def writer_rows(writer: int, n: int, global_value: int) -> list[dict[str, Any]]:
    """Commit ``n`` of ``writer``: its own words, its newest number, and a word every writer contends for."""
    rows = [{"word": f"w{writer}-{n:05d}-{j}", "count": 1} for j in range(ROWS_PER_COMMIT)]
    rows.append({"word": f"last-w{writer}", "count": n})
    rows.append({"word": "global", "count": global_value})
    return rows


def _write(root: str, writer: str, first: str, last: str) -> None:
    from warehouse.writer import Warehouse

    wh = Warehouse(root, max_files_per_view=8)
    for n in range(int(first), int(last) + 1):
        value = time.time_ns()
        result = wh.commit("word_counts", writer_rows(int(writer), n, value))
        print(f"ack {n} {result.snapshot_id} {value}", flush=True)
        if n % 50 == 0 and int(writer) == 0:
            # Expiry runs beside the commits as one more commit; readers never query a snapshot this old.
            wh.expire_snapshots(dt.timedelta(seconds=5))


_WORD = re.compile(r"w(\d+)-(\d+)-(\d+)")


def torn(counts: Mapping[str, int]) -> str:
    """Why a word_counts answer is not a whole snapshot of the writers' commits ('' if it is one)."""
    numbers: dict[int, dict[int, int]] = {}
    for word in counts:
        match = _WORD.fullmatch(word)
        if match:
            writer, n, _ = map(int, match.groups())
            numbers.setdefault(writer, {}).setdefault(n, 0)
            numbers[writer][n] += 1
    writers = set(numbers) | {int(w[len("last-w") :]) for w in counts if w.startswith("last-w")}
    for writer in writers:
        seen = numbers.get(writer, {})
        last = counts.get(f"last-w{writer}", 0)
        if sorted(seen) != list(range(1, last + 1)):
            return f"writer {writer}: commits {sorted(seen)[:3]}... for newest {last}"
        if any(k != ROWS_PER_COMMIT for k in seen.values()):
            return f"writer {writer}: a commit with some of its rows only"
    if writers and "global" not in counts:
        return "no global row"
    return ""


def _read(root: str, stop_file: str) -> None:
    from warehouse.reader import Reader

    queries = errors = torn_answers = 0
    first_error = ""
    reader = Reader(root)
    stop = Path(stop_file)
    last = False
    while not last:
        last = stop.exists()  # one more query after the writers finished
        try:
            answer = reader.query("SELECT word, count FROM word_counts").to_pylist()
            queries += 1
            why = torn({r["word"]: r["count"] for r in answer})
            if why:
                torn_answers += 1
                first_error = first_error or f"torn: {why}"
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    reader.close()
    print(json.dumps({"queries": queries, "errors": errors, "torn": torn_answers, "first_error": first_error}))


def main(argv: list[str]) -> int:
    command, *args = argv
    {"fault": _fault, "write": _write, "read": _read}[command](*args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
