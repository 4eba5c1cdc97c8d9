"""End to end: a view upgraded with no downtime, from a live v1 to a v2 with 30-minute sales windows.

Real broker, real ``beamline`` processes (two streaming pipelines on Prism,
``beamline serve``, the ``views`` verbs), compared with :mod:`tests.truth`, an
independent recompute of the whole log. While v2 catches up beside v1 (and is
killed with -9 in its catch-up, and restarted), is force-promoted, rolled
back and promoted for good, eight readers ask ``beamline serve`` in a loop:
every answer must come whole from the version its snapshot shows (the
windows are one hour long in v1 and 30 minutes in v2, so one answer mixing
them would show both lengths). A consumer of the changes topics, reading from
the beginning and keeping the highest version per key, must end with the
promoted views.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from core.views import get_view
from producers.retail import RetailConfig
from readside.query import format_result, run_query
from readside.versions import version_lag
from tests.cli_helpers import PROJECT_ROOT, assert_one_line_error, run_cli
from tests.e2e_helpers import RetailLog, kill_group, stop_pipeline
from tests.test_serve_process import start_serve
from tests.truth import read_topic, recompute_retail
from transforms.kafka import KafkaConnection
from warehouse.format import load_snapshot
from warehouse.resume import recorded_run
from warehouse.versions import table_rows

pytestmark = pytest.mark.slow

V1_WINDOW, V2_WINDOW = 3600, 1800
READERS = 8


@pytest.fixture
def retail_log(bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path) -> RetailLog:
    return RetailLog(bootstrap_servers, make_topic, tmp_path / "warehouse")


def expected(log: RetailLog, window_s: int) -> dict[str, Any]:
    """The views a version with ``window_s`` windows must hold for the log as it is now."""
    truth = recompute_retail(read_topic(log.bootstrap, log.shipments), read_topic(log.bootstrap, log.sales), window_s)
    return {
        "inventory": {k: (r["on_hand"], r["shipped"], r["sold"], r["events"]) for k, r in truth.inventory.items()},
        "windows": {(start, s, i, window_s): units for (start, s, i), units in truth.sales_by_window.items()},
        "dead": set(truth.dead_letters),
    }


def held(warehouse: Path, version: str) -> dict[str, Any]:
    """What ``version``'s own tables hold now, whichever version readers see."""
    snap = load_snapshot(warehouse)
    suffix = "" if version == "v1" else f"@{version}"
    inventory = table_rows(snap, f"inventory{suffix}").to_pylist()
    windows = table_rows(snap, f"sales_by_window{suffix}").to_pylist()
    dead = table_rows(snap, f"dead_letters{suffix}").to_pylist()
    return {
        "inventory": {
            (r["store_id"], r["item_id"]): (r["on_hand"], r["shipped"], r["sold"], r["events"]) for r in inventory
        },
        "windows": {
            (r["window_start"], r["store_id"], r["item_id"], (r["window_end"] - r["window_start"]).seconds): r["units"]
            for r in windows
        },
        "dead": {(r["source_topic"], r["partition"], r["offset"]) for r in dead},
    }


def wait_until(what: str, check: Callable[[], bool], processes: list[subprocess.Popen], timeout_s: float = 240) -> None:
    """Poll ``check`` (a commit or a line of a pipeline's) until it holds; fail if a pipeline exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"a pipeline exited with {process.returncode} while waiting for {what}"
        if check():
            return
        time.sleep(0.2)  # polling interval
    raise AssertionError(f"no {what} within {timeout_s}s")


def converged(warehouse: Path, version: str, want: dict[str, Any]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return held(warehouse, version) == want
        except Exception:  # a table not written yet
            return False

    return check


def start(log: RetailLog, stderr: Path, *extra: str) -> subprocess.Popen:
    """``beamline run inventory --mode streaming ...`` in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *log.run_args("streaming"), *extra],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(stderr, "ab"),
        start_new_session=True,
    )


class Readers:
    """Eight threads asking ``beamline serve`` in a loop: half a query over a view, half a page of it."""

    LENGTHS = "SELECT DISTINCT epoch(window_end) - epoch(window_start) AS s FROM sales_by_window"

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, frozenset[int]]] = []  # (snapshot, window lengths seen)
        self.errors: list[str] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(READERS)]

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _ask(self, n: int) -> tuple[int, frozenset[int]]:
        if n % 2:
            request = urllib.request.Request(
                self.url + "/v1/query",
                data=json.dumps({"sql": self.LENGTHS}).encode(),
                headers={"Content-Type": "application/json"},
            )
        else:
            request = urllib.request.Request(self.url + "/v1/views/sales_by_window?limit=200")
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        if n % 2:
            lengths = frozenset(int(r["s"]) for r in body["rows"])
        else:
            lengths = frozenset(
                int((datetime.fromisoformat(r["window_end"]) - datetime.fromisoformat(r["window_start"])).seconds)
                for r in body["rows"]
            )
        return body["snapshot"]["id"], lengths

    def _loop(self, n: int) -> None:
        while not self.done.is_set():
            try:
                self.answers.append(self._ask(n))
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                self.errors.append(f"reader {n}: {exc!r}")
            self.done.wait(0.05)  # the pace of each reader: eight of them on two cores beside two pipelines

    def seen_after(self, snapshot_id: int) -> int:
        return sum(1 for sid, _ in list(self.answers) if sid >= snapshot_id)


def promoted_at(output: str) -> int:
    """The snapshot a promote or rollback printed it committed."""
    line = next(ln for ln in output.splitlines() if " in snapshot " in ln)
    return int(line.split(" in snapshot ")[1].split(":")[0])


def changes_table(bootstrap: str, topic: str) -> dict[bytes, dict[str, Any]]:
    """What a consumer reading ``topic`` from the beginning, keeping the highest version per key, holds."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )  # fmt: skip
    best: dict[bytes, dict[str, Any]] = {}
    for message in consumer:
        value = json.loads(message.value)
        if message.key not in best or value["version"] > best[message.key]["version"]:
            best[message.key] = value
    consumer.close()
    return {key: value["row"] for key, value in best.items() if value["row"] is not None}


def view_table(warehouse: Path, view: str) -> dict[bytes, dict[str, Any]]:
    """The view as readers see it, keyed as its changes topic keys it."""
    rows = json.loads(format_result(run_query(f"SELECT * FROM {view}", warehouse), "json"))
    key = get_view(view).key
    return {json.dumps([r[k] for k in key], separators=(",", ":")).encode(): r for r in rows}


def followed(log: RetailLog, view: str, topic: str) -> Callable[[], bool]:
    """Whether a consumer of ``topic`` from the beginning holds exactly ``view`` as readers see it."""
    return lambda: changes_table(log.bootstrap, topic) == view_table(log.warehouse, view)


def lag_s(log: RetailLog) -> float:
    """How far v2 is behind the log, in seconds (0 while unknown)."""
    lag = version_lag(log.warehouse, "inventory", "v2", KafkaConnection(log.bootstrap))
    return 0.0 if lag is None or lag.seconds is None else lag.seconds


def covers_log(log: RetailLog) -> bool:
    """Whether v2's resume point covers every record of the log (what a promote's lag bound reads).

    It may trail the views a little: every shard commits the offsets of every
    upstream bundle, and a shard none of whose keys the last records touched
    may commit them in a later bundle than the one that put those records in
    the views (and a promote reads the lag from the resume point).
    """
    lag = version_lag(log.warehouse, "inventory", "v2", KafkaConnection(log.bootstrap))
    return lag is not None and lag.records == 0


def test_v2_catches_up_beside_a_live_v1_and_is_promoted_while_readers_read(retail_log: RetailLog, tmp_path: Path):
    warehouse = retail_log.warehouse
    now = datetime.now(timezone.utc)
    retail_log.produce(RetailConfig(events=3_000, seed=71, invalid_rate=0.01, duplicate_rate=0.03, start_time=now,
                                    mean_gap_s=0.5))  # fmt: skip
    changes = f"--changes_topic={{view}}-changes-{uuid.uuid4().hex[:8]}"
    topic = changes.split("=", 1)[1].replace("{view}", "inventory")
    v1_log, v2_log = tmp_path / "v1.log", tmp_path / "v2.log"
    v2_args = ("--view-version", "v2", f"--window_size={V2_WINDOW}", "--catch_up_records=1000", changes)
    views = ["views", "promote", "inventory", "v2", "--warehouse", str(warehouse), "--bootstrap-servers",
             retail_log.bootstrap]  # fmt: skip
    live = [start(retail_log, v1_log, changes)]
    served = None
    try:
        wait_until("v1 equal to the recompute", converged(warehouse, "v1", expected(retail_log, V1_WINDOW)), live)
        served = start_serve("--warehouse", str(warehouse), "--rate-limit", "0")
        with Readers(served.url) as readers:
            # v2 catches up in batch beside v1, and is killed (-9) in the middle of it.
            v2 = start(retail_log, v2_log, *v2_args)
            wait_until("v2's catch-up", lambda: "catching up in batch" in v2_log.read_text(), [*live, v2])
            kill_group(v2)
            assert recorded_run(warehouse, "inventory@v2") is None  # killed before its resume point
            assert_one_line_error(run_cli(*views[:3], "v3", *views[4:]), "no version 'v3'")

            # Started again, it catches up again (harmlessly: upserts) and streams on beside v1.
            v2 = start(retail_log, v2_log, *v2_args)
            live.append(v2)
            wait_until("v2 equal to the recompute", converged(warehouse, "v2", expected(retail_log, V2_WINDOW)), live)
            retail_log.produce(RetailConfig(events=400, seed=72, start_time=datetime.now(timezone.utc), mean_gap_s=0.5))
            wait_until("v1 to follow live events", converged(warehouse, "v1", expected(retail_log, V1_WINDOW)), live)
            wait_until("v2 to follow live events", converged(warehouse, "v2", expected(retail_log, V2_WINDOW)), live)

            # v2 stopped, the log moves on: v2 lags, and a promote is refused in one line unless forced.
            assert stop_pipeline(live.pop()) == 0, v2_log.read_text()[-3000:]
            retail_log.produce(RetailConfig(events=300, seed=73, start_time=datetime.now(timezone.utc), mean_gap_s=0.5))
            wait_until("v1 to follow", converged(warehouse, "v1", expected(retail_log, V1_WINDOW)), live)
            wait_until("v2 to lag more than a second", lambda: lag_s(retail_log) > 1.5, live)
            refused = run_cli(*views, "--max-lag", "1s")
            assert_one_line_error(refused, "refused", "records", "behind the log", "--max-lag 1s")
            forced = run_cli(*views, "--force")
            assert forced.returncode == 0, forced.stderr
            forced_at = promoted_at(forced.stdout)
            rolled = run_cli("views", "rollback", "inventory", *views[4:])
            assert rolled.returncode == 0, rolled.stderr
            rolled_at = promoted_at(rolled.stdout)

            # Started once more, v2 resumes from its resume point, catches up, and is promoted for good.
            v2 = start(retail_log, v2_log, *v2_args)
            live.append(v2)
            wait_until("v2 to catch up", converged(warehouse, "v2", expected(retail_log, V2_WINDOW)), live)
            wait_until("v2's resume point to cover the log", lambda: covers_log(retail_log), live)
            assert v2_log.read_text().count("catching up in batch") == 2  # the last start resumed instead
            assert v2_log.read_text().count("inventory@v2: resuming from snapshot") == 2
            promoted = run_cli(*views, "--max-lag", "5s")
            assert promoted.returncode == 0, promoted.stderr
            final_at = promoted_at(promoted.stdout)
            wait_until("every reader to read the promoted version", lambda: readers.seen_after(final_at) >= 40, live)

        assert not readers.errors, readers.errors[:5]
        for sid, lengths in readers.answers:  # each answer whole, from the version its snapshot shows
            shows_v2 = forced_at <= sid < rolled_at or sid >= final_at
            assert lengths == {V2_WINDOW if shows_v2 else V1_WINDOW}, (sid, lengths, forced_at, rolled_at, final_at)
        assert {lengths for _, lengths in readers.answers} == {frozenset({V1_WINDOW}), frozenset({V2_WINDOW})}
        print(f"readers: {len(readers.answers)} answers, 0 errors")  # for the record (pytest -s)

        # Both streams keep going; the changes topics follow the promoted version.
        retail_log.produce(RetailConfig(events=200, seed=74, start_time=datetime.now(timezone.utc), mean_gap_s=0.5))
        want = expected(retail_log, V2_WINDOW)
        wait_until("v2 to follow after the promote", converged(warehouse, "v2", want), live)
        assert run_query(Readers.LENGTHS, warehouse).to_pylist() == [{"s": V2_WINDOW}]
        for view in ("inventory", "sales_by_window"):
            view_topic = topic.replace("inventory", view, 1)
            wait_until(f"{view_topic} to equal the promoted view", followed(retail_log, view, view_topic), live, 60)
        for process, log in zip(live, (v1_log, v2_log), strict=True):
            assert stop_pipeline(process) == 0, log.read_text()[-3000:]
        code, _, err = served.stop()
        assert code == 0, err[-2000:]
    finally:
        for process in live:
            kill_group(process)
        if served is not None and served.process.poll() is None:
            served.process.kill()
            served.process.communicate(timeout=30)
