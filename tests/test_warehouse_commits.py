"""The commit protocol: crashes at every step, concurrent writers without a lock, damaged hints.

Real files, real processes. A writer is stopped between two steps of a commit
by wrapping that step function of :mod:`warehouse.protocol` (in a child
process killed with SIGKILL there, or in this process by raising), never by a
switch in product code. Expected values come from the rows the tests write.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import multiprocessing.context
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import BeamlineError
from readside.query import run_query
from tests.commit_worker import STEPS, InjectedFault, after_step, commit_until, inventory_rows
from warehouse import protocol
from warehouse.check import check_warehouse
from warehouse.format import (
    CURRENT_FILE,
    SNAPSHOTS_DIR,
    SnapshotExpired,
    WarehouseInconsistent,
    expired_error,
    list_snapshots,
    load_snapshot,
    manifest_id,
    oldest_snapshot,
    verify_snapshots,
)
from warehouse.reader import Reader
from warehouse.writer import Warehouse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UTC = dt.timezone.utc


def inventory(root: Path) -> dict[str, int]:
    """The inventory view as item -> events, checked to be whole rows (every number equals events)."""
    rows = run_query("SELECT item_id, on_hand, shipped, events FROM inventory", root).to_pylist()
    assert all(r["on_hand"] == r["shipped"] == r["events"] for r in rows), rows
    return {r["item_id"]: r["events"] for r in rows}


def manifest_ids(root: Path) -> list[int]:
    """Ids of every manifest in snapshots/, expired or not."""
    return sorted(i for i in map(manifest_id, os.listdir(root / SNAPSHOTS_DIR)) if i is not None)


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def upsert(model: dict[str, int], pairs: list[tuple[str, int]]) -> dict[str, int]:
    """The version rule, independently: a row replaces its key's row only with a higher version."""
    out = dict(model)
    for item, events in pairs:
        if events > out.get(item, 0):
            out[item] = events
    return out


def random_pairs(rng: random.Random, model: dict[str, int], n: int) -> list[tuple[str, int]]:
    """Rows for some stored items (older, equal or newer versions) and one new item, so something is fresh."""
    stored = rng.sample(sorted(model.items()), min(4, len(model)))
    pairs = [(item, max(1, events + rng.randint(-2, 3))) for item, events in stored]
    return [*pairs, (f"i{n:03d}", rng.randint(1, 9))]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    wh = Warehouse(tmp_path / "wh")
    wh.commit("inventory", inventory_rows([("i000", 5), ("i001", 3), ("i002", 7)]))
    wh.close()
    yield tmp_path / "wh"


# -- a writer stopped at every step of a commit ----------------------------------------
def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


@pytest.fixture(scope="module")
def children() -> multiprocessing.context.ForkServerContext:
    """Child processes forked from a server that has the warehouse imported already (~20 ms a start, not ~1 s)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.commit_worker", "warehouse.writer"])
    return ctx


def _kill_at(ctx: multiprocessing.context.ForkServerContext, root: Path, step: str, pairs: list[Any]) -> None:
    """A child process commits ``pairs`` and is killed with SIGKILL right after ``step``."""
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=commit_until, args=(str(root), step, json.dumps({"inventory": pairs}), send.send))
    child.start()
    try:
        assert receive.poll(60), f"the child did not reach {step}"
        assert receive.recv() == f"at {step}"
    finally:
        child.kill()
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


def _raise_at(root: Path, step: str, pairs: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process commits ``pairs`` and an exception is raised right after ``step``."""
    wh = Warehouse(root, max_files_per_view=3)

    def fail() -> None:
        raise InjectedFault(f"after {step}")

    with monkeypatch.context() as patch:
        patch.setattr(protocol, *after_step(step, fail))
        with pytest.raises(InjectedFault):
            wh.commit("inventory", inventory_rows(pairs))
    # The same writer object goes on: its next commit must not trust what it remembered.
    wh.commit("inventory", inventory_rows([("i000", 1)]))  # stale: nothing changes
    wh.close()


@pytest.mark.processes
@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_writer_stopped_after_any_step_loses_no_snapshot(
    root: Path, how: str, monkeypatch: pytest.MonkeyPatch, children: multiprocessing.context.ForkServerContext
) -> None:
    """25 stops per way (5 per step): readers see the old or the new snapshot whole, and writing goes on."""
    rng = random.Random(f"{how}-2026")
    model = {"i000": 5, "i001": 3, "i002": 7}
    n = 10
    for _round in range(5):
        for step in STEPS:
            before = load_snapshot(root).snapshot_id
            pairs = random_pairs(rng, model, n)
            n += 1
            if how == "kill":
                _kill_at(children, root, step, pairs)
            else:
                _raise_at(root, step, pairs, monkeypatch)
            snap = load_snapshot(root)
            published = step in ("manifest", "fsync", "pointer")  # the link is the commit point
            assert snap.snapshot_id == before + published, step
            seen = inventory(root)
            assert seen == (upsert(model, pairs) if published else model), step
            reader = Reader(root)
            assert reader.snapshot().snapshot_id == snap.snapshot_id
            reader.close()
            model = seen
            # The next commit, by a new writer as after a restart, succeeds on top of it.
            nxt = random_pairs(rng, model, n)
            n += 1
            wh = Warehouse(root, max_files_per_view=3)
            assert wh.commit("inventory", inventory_rows(nxt)).snapshot_id == snap.snapshot_id + 1
            wh.close()
            model = upsert(model, nxt)
            assert inventory(root) == model  # no row of any earlier snapshot lost
    assert manifest_ids(root) == list(range(len(manifest_ids(root))))  # unique and gapless
    assert [s[0] for s in list_snapshots(root)] == manifest_ids(root)
    verify_snapshots(root)  # every kept snapshot's files are there
    assert (root / CURRENT_FILE).read_text() == list_snapshots(root)[-1][2]


# -- several writer processes, no lock -------------------------------------------------
COMMITS_PER_WRITER = 200
WRITERS = 4


def _isolated_host_command() -> list[str]:
    """``unshare -n``: a writer in its own network namespace, as on another host; [] if it cannot be had."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return []
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
    return [unshare, "-n"] if probe.returncode == 0 else []


class _Writer(threading.Thread):
    """Runs writer ``index`` until all its commits are acknowledged, killing it with SIGKILL now and then."""

    def __init__(self, root: Path, index: int, env: dict[str, str], prefix: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.root, self.index, self.env, self.prefix = root, index, env, prefix
        self.rng = random.Random(seed)
        self.acks: dict[int, tuple[int | None, int]] = {}  # commit -> (snapshot id, global value)
        self.kills = 0
        self.error = ""

    def run(self) -> None:
        try:
            while len(self.acks) < COMMITS_PER_WRITER:
                self._run_once()
        except Exception as exc:  # handed to the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _run_once(self) -> None:
        first = len(self.acks) + 1  # after a kill: again from the first unacknowledged commit
        command = [sys.executable, "-m", "tests.commit_worker", "write", str(self.root), str(self.index)]
        proc = subprocess.Popen(
            [*self.prefix, *command, str(first), str(COMMITS_PER_WRITER)],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_after = self.rng.randint(10, 120) if self.kills < 3 else None  # acks before a SIGKILL
        acked = 0
        while True:
            line = _read_line(proc, 120)
            if not line:
                break
            _, n, sid, value = line.split()
            self.acks[int(n)] = (None if sid == "None" else int(sid), int(value))
            acked += 1
            if kill_after is not None and acked >= kill_after:
                time.sleep(self.rng.uniform(0, 0.05))  # somewhere inside the next commit
                proc.kill()
                self.kills += 1
                break
        proc.wait(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"writer {self.index} exited {proc.returncode}: {err[-2000:]}")


def _run_writers_and_readers(root: Path, tmp_path: Path, *, separate_hosts: bool) -> None:
    Warehouse(root).close()
    prefix = _isolated_host_command() if separate_hosts else []
    if separate_hosts and not prefix:
        pytest.skip("network namespaces need `unshare -n` as root, not available here")
    stop = tmp_path / "stop"
    base_env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    readers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.commit_worker", "read", str(root), str(stop)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    writers = []
    for index in range(WRITERS):
        env = dict(base_env)
        if separate_hosts:  # nothing shared but the warehouse folder: state, temp files, network
            home = tmp_path / f"host-{index}"
            (home / "tmp").mkdir(parents=True)
            env.update(BEAMLINE_HOME=str(home), TMPDIR=str(home / "tmp"))
        writers.append(_Writer(root, index, env, prefix, seed=index + 100 * separate_hosts))
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=600)
    stop.touch()
    reports = [json.loads(r.communicate(timeout=120)[0].strip().splitlines()[-1]) for r in readers]

    assert [w.error for w in writers] == [""] * WRITERS
    assert all(len(w.acks) == COMMITS_PER_WRITER for w in writers)
    assert sum(w.kills for w in writers) >= WRITERS * 2
    # Readers: no errors, no torn answer, and they really ran beside the writers.
    assert [r["errors"] for r in reports] == [0, 0], [r["first_error"] for r in reports]
    assert [r["torn"] for r in reports] == [0, 0], [r["first_error"] for r in reports]
    assert all(r["queries"] > 10 for r in reports)
    # Every acknowledged commit is there, whole.
    counts = {r["word"]: r["count"] for r in run_query("SELECT word, count FROM word_counts", root).to_pylist()}
    for w in writers:
        for n in range(1, COMMITS_PER_WRITER + 1):
            assert all(f"w{w.index}-{n:05d}-{j}" in counts for j in range(3)), (w.index, n)
        assert counts[f"last-w{w.index}"] == COMMITS_PER_WRITER
    # The contended row holds the highest value any acknowledged commit wrote, or a later one.
    assert counts["global"] >= max(v for w in writers for _, v in w.acks.values())
    # Snapshot ids: each acknowledged id made by one commit only, all ids gapless, times increasing.
    acked_ids = [sid for w in writers for sid, _ in w.acks.values() if sid is not None]
    assert len(acked_ids) == len(set(acked_ids))
    ids = manifest_ids(root)
    assert ids == list(range(len(ids)))
    assert len(ids) > WRITERS * COMMITS_PER_WRITER  # expiry made snapshots too
    snaps = verify_snapshots(root)  # consistent, every kept file present
    assert [s.committed_at_us for s in snaps] == sorted({s.committed_at_us for s in snaps})
    assert snaps[-1].expired_through > 0  # expiry ran beside the writers


@pytest.mark.slow
def test_four_writer_processes_killed_at_random_lose_no_acknowledged_commit(tmp_path: Path) -> None:
    _run_writers_and_readers(tmp_path / "wh", tmp_path, separate_hosts=False)


@pytest.mark.slow
def test_writers_that_share_only_the_warehouse_folder_as_on_several_hosts(tmp_path: Path) -> None:
    """Separate BEAMLINE_HOMEs, temp folders and network namespaces: only the file system is shared."""
    _run_writers_and_readers(tmp_path / "wh", tmp_path, separate_hosts=True)


# -- a lost race re-applies the version rule ------------------------------------------
def _before_link(action: Any) -> Any:
    """``put_manifest`` running ``action`` first, the first time only."""
    original, fired = protocol.put_manifest, []

    def put_manifest(*args: Any, **kwargs: Any) -> None:
        if not fired:
            fired.append(True)
            action()
        original(*args, **kwargs)

    return put_manifest


@pytest.mark.parametrize("when", ["while-planning", "before-the-link"])
def test_a_writer_that_loses_the_race_reapplies_the_version_rule(
    root: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Another commit lands while the slow writer plans (it plans again) or just before its link (it loses the id)."""
    slow, fast = Warehouse(root), Warehouse(root)

    def other_writer_first() -> None:
        assert fast.commit("inventory", inventory_rows([("i000", 9), ("i009", 2)])).snapshot_id == 2

    if when == "while-planning":  # after the slow writer's data file and folder sync
        monkeypatch.setattr(protocol, *after_step("folders", other_writer_first))
    else:
        monkeypatch.setattr(protocol, "put_manifest", _before_link(other_writer_first))
    result = slow.commit("inventory", inventory_rows([("i000", 6), ("i001", 4), ("i009", 1)]))
    assert result.snapshot_id == 3 and result.rows_written == 1  # i000@6 and i009@1 are older now
    assert slow.lost_races == (when == "before-the-link")
    assert inventory(root) == {"i000": 9, "i001": 4, "i002": 7, "i009": 2}
    assert manifest_ids(root) == [0, 1, 2, 3]
    used = {rel for s in verify_snapshots(root) for e in s.files.values() for rel, _ in e}
    assert {str(p.relative_to(root)) for p in root.glob("data/*/*.parquet")} == used  # the stale file is gone
    assert not list((root / SNAPSHOTS_DIR).glob(".*"))  # and no temporary manifest is left
    slow.close()
    fast.close()


def test_a_commit_that_always_loses_gives_up_in_one_line_and_leaves_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(root)
    monkeypatch.setattr(protocol, "COMMIT_ATTEMPTS", 3)
    monkeypatch.setattr(protocol, "BACKOFF_CAP_S", 0.001)

    def taken(root: Path, snapshot_id: int, document: bytes) -> None:
        raise protocol.CommitConflict(f"snapshot {snapshot_id} was published by another writer")

    monkeypatch.setattr(protocol, "put_manifest", taken)
    wh = Warehouse(root)
    with pytest.raises(protocol.CommitGaveUp, match="other writers published first 3 times") as err:
        wh.commit("inventory", inventory_rows([("i005", 1)]))
    assert "\n" not in str(err.value)
    assert tree(root) == before
    wh.close()


def test_a_publish_wrapper_that_returns_nothing_still_commits(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrappers of ``Warehouse._publish`` (tests/sink_fault.py has one) need not pass its result on."""
    publish = Warehouse._publish

    def wrapped(self: Warehouse, *args: Any, **kwargs: Any) -> None:
        publish(self, *args, **kwargs)

    monkeypatch.setattr(Warehouse, "_publish", wrapped)
    wh = Warehouse(root, max_files_per_view=2)
    assert wh.commit("inventory", inventory_rows([("i003", 1)])).snapshot_id == 2
    assert wh.commit("inventory", inventory_rows([("i004", 1)])).snapshot_id == 3  # and a compaction after it
    wh.close()
    verify_snapshots(root)  # every file a kept snapshot lists is there
    assert inventory(root) == {"i000": 5, "i001": 3, "i002": 7, "i003": 1, "i004": 1}


def test_a_missing_data_file_of_the_newest_snapshot_fails_a_commit_in_one_line(root: Path) -> None:
    next(root.glob("data/inventory/*.parquet")).unlink()
    wh = Warehouse(root)
    with pytest.raises(WarehouseInconsistent, match=r"which snapshot 1 of .* needs, is missing") as err:
        wh.commit("inventory", inventory_rows([("i003", 1)]))
    assert "\n" not in str(err.value)
    assert manifest_ids(root) == [0, 1]
    wh.close()


def test_commit_times_grow_even_when_the_clock_goes_back(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = load_snapshot(root).committed_at_us
    monkeypatch.setattr(protocol.time, "time_ns", lambda: (last - 10_000_000) * 1000)  # ten seconds back
    wh = Warehouse(root)
    wh.commit("inventory", inventory_rows([("i007", 1)]))
    wh.commit("inventory", inventory_rows([("i008", 1)]))
    wh.close()
    monkeypatch.undo()
    assert [s[1] for s in list_snapshots(root)][-3:] == [last, last + 1, last + 2]


# -- the reproductions of issue 21 ------------------------------------------------------
def test_deleting_current_loses_nothing_and_reuses_no_id(root: Path) -> None:
    (root / CURRENT_FILE).unlink()
    assert inventory(root) == {"i000": 5, "i001": 3, "i002": 7}  # readers find the newest by listing
    wh = Warehouse(root)  # used to publish an empty snapshot 0 here
    assert (root / CURRENT_FILE).read_text() == list_snapshots(root)[-1][2]  # rewritten
    result = wh.commit("inventory", inventory_rows([("i000", 1), ("i003", 2)]))
    wh.close()
    assert result.snapshot_id == 2 and result.rows_written == 1  # events=1 does not replace events=5
    assert inventory(root) == {"i000": 5, "i001": 3, "i002": 7, "i003": 2}
    assert manifest_ids(root) == [0, 1, 2]


@pytest.mark.parametrize("garbage", ["", "\x00\x01garbage", "snapshot-000000000000.json", "../CURRENT"])
def test_a_garbage_current_is_only_a_wrong_hint(root: Path, garbage: str) -> None:
    (root / CURRENT_FILE).write_text(garbage)  # garbage, or behind: recovered from (ahead: see below)
    assert inventory(root) == {"i000": 5, "i001": 3, "i002": 7}
    wh = Warehouse(root)
    assert (root / CURRENT_FILE).read_text() == "snapshot-000000000001.json"
    assert wh.commit("inventory", inventory_rows([("i001", 4)])).snapshot_id == 2
    assert wh.expire_snapshots(dt.timedelta(days=7)) == 0  # nothing is old: nothing goes
    assert manifest_ids(root) == [0, 1, 2]
    assert wh.expire_snapshots(dt.timedelta(0)) == 3  # the present stays
    wh.close()
    assert inventory(root) == {"i000": 5, "i001": 4, "i002": 7}
    assert [s[0] for s in list_snapshots(root)] == [3]


def _six_snapshots(root: Path) -> None:
    wh = Warehouse(root)
    for k in range(4):  # snapshots 2..5: inventory in 5, dead_letters in 4, as in the review
        view = "dead_letters" if k == 2 else "inventory"
        wh.commit(view, _dead_letters(k) if view == "dead_letters" else inventory_rows([("i000", 6 + k)]))
    wh.close()
    assert (root / CURRENT_FILE).read_text() == "snapshot-000000000005.json"


def _dead_letters(k: int) -> list[dict[str, Any]]:
    return [{"source_topic": "t", "partition": 0, "offset": k, "error": "bad", "payload": b"x"}]


def _restore_old_snapshots_folder(root: Path) -> None:
    for sid in (4, 5):
        (root / SNAPSHOTS_DIR / f"snapshot-{sid:012d}.json").unlink()


def _point_far_ahead(root: Path) -> None:
    (root / CURRENT_FILE).write_text("snapshot-000000000099.json\n")


def _orphans_far_ahead(root: Path) -> None:
    """Manifests 4 and 5 lost and CURRENT gone too: the data files of snapshot 5 still tell."""
    _restore_old_snapshots_folder(root)
    (root / CURRENT_FILE).unlink()


@pytest.mark.parametrize(
    ("damage", "newest"), [(_restore_old_snapshots_folder, 3), (_point_far_ahead, 5), (_orphans_far_ahead, 3)]
)
def test_lost_newest_manifests_stop_writers_and_expiry(root: Path, damage: Any, newest: int) -> None:
    _six_snapshots(root)
    early = Warehouse(root)  # opened before the damage, as a long-running pipeline's writer
    damage(root)
    before = tree(root)
    for attempt in (
        lambda: Warehouse(root),
        lambda: early.commit("inventory", inventory_rows([("i009", 1)])),
        lambda: early.expire_snapshots(dt.timedelta(days=7), orphan_grace=dt.timedelta(0)),
        lambda: early.expire_snapshots(dt.timedelta(0), orphan_grace=dt.timedelta(0)),
        lambda: early.compact(),
    ):
        with pytest.raises(WarehouseInconsistent) as err:
            attempt()
        line = str(err.value)
        assert "\n" not in line and f"newest manifest is {newest}" in line, line
        assert "restore the missing manifests" in line and "Lost manifests" in line, line
        assert tree(root) == before  # nothing deleted, nothing rewritten (not even CURRENT), no id reused
    early.close()
    report = check_warehouse(root)
    assert not report.ok and any("lost" in p.reason.lower() for p in report.problems), report.problems
    assert inventory(root)["i000"] == (7 if newest == 3 else 9)  # readers still answer from the manifests there are


def test_giving_up_lost_manifests_as_documented_lets_writers_go_on(root: Path, tmp_path: Path) -> None:
    _six_snapshots(root)
    _restore_old_snapshots_folder(root)
    with pytest.raises(WarehouseInconsistent):
        Warehouse(root)
    # docs/warehouse.md, "Lost manifests": delete CURRENT, move the files of snapshots above the newest away.
    (root / CURRENT_FILE).unlink()
    moved = tmp_path / "lost"
    moved.mkdir()
    for path in root.glob("data/*/*.parquet"):
        if int(path.name.split("-")[0]) > 3:
            shutil.move(path, moved / f"{path.parent.name}-{path.name}")
    assert sorted(p.name.split("-")[1] for p in moved.iterdir()) == ["000000000004", "000000000005"]
    wh = Warehouse(root)
    assert wh.commit("inventory", inventory_rows([("i009", 1)])).snapshot_id == 4
    wh.expire_snapshots(dt.timedelta(0), orphan_grace=dt.timedelta(0))
    wh.close()
    assert inventory(root) == {"i000": 7, "i001": 3, "i002": 7, "i009": 1}


def test_a_current_that_is_a_folder_is_one_line_and_leaves_no_temp_file(root: Path) -> None:
    (root / CURRENT_FILE).unlink()
    (root / CURRENT_FILE).mkdir()
    for _ in range(2):
        with pytest.raises(BeamlineError) as err:
            Warehouse(root)
        line = str(err.value)
        assert "\n" not in line and "CURRENT is a folder" in line and "rm -r" in line, line
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert inventory(root) == {"i000": 5, "i001": 3, "i002": 7}  # readers only take it as a missing hint
    (root / CURRENT_FILE).rmdir()
    wh = Warehouse(root)
    assert wh.commit("inventory", inventory_rows([("i001", 4)])).snapshot_id == 2
    wh.close()


def test_a_hint_that_cannot_be_replaced_leaves_no_temp_file(root: Path) -> None:
    wh = Warehouse(root)
    (root / "catalog.sql").unlink()
    (root / "catalog.sql").mkdir()
    with pytest.raises(BeamlineError, match=r"catalog\.sql is a folder"):
        wh.commit("inventory", inventory_rows([("i001", 4)]))  # published; only the hint failed
    wh.close()
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert inventory(root)["i001"] == 4


def _damage_manifest(root: Path) -> None:
    (root / SNAPSHOTS_DIR / "snapshot-000000000001.json").write_text('{"snapshot_id": 1, "views": {')


def _lose_a_manifest(root: Path) -> None:
    (root / SNAPSHOTS_DIR / "snapshot-000000000002.json").unlink()


def _lose_a_data_file(root: Path) -> None:
    next(iter(root.glob("data/inventory/*.parquet"))).unlink()


def _stray_file(root: Path) -> None:
    (root / SNAPSHOTS_DIR / "snapshot-final-v2.json").write_text("{}")


@pytest.mark.parametrize("damage", [_damage_manifest, _lose_a_manifest, _lose_a_data_file, _stray_file])
def test_expiry_on_an_inconsistent_warehouse_deletes_nothing(root: Path, damage: Any) -> None:
    wh = Warehouse(root)
    for events in (8, 9, 10):
        wh.commit("inventory", inventory_rows([("i000", events)]))
    damage(root)
    before = tree(root)
    with pytest.raises(WarehouseInconsistent) as err:
        wh.expire_snapshots(dt.timedelta(0), orphan_grace=dt.timedelta(0))
    assert "\n" not in str(err.value)
    assert tree(root) == before
    wh.close()


def test_ids_are_never_reused_when_every_hint_is_gone(root: Path) -> None:
    for name in (CURRENT_FILE, "catalog.sql"):
        (root / name).unlink()
    writers = [Warehouse(root) for _ in range(3)]
    for k, wh in enumerate(writers * 2):
        wh.commit("inventory", inventory_rows([(f"j{k}", 1)]))
    for wh in writers:
        wh.close()
    assert manifest_ids(root) == list(range(8))
    with pytest.raises(WarehouseInconsistent, match="holds no manifest although"):
        shutil.rmtree(root / SNAPSHOTS_DIR)
        (root / SNAPSHOTS_DIR).mkdir()
        Warehouse(root)  # a warehouse whose manifests are gone is not new: no snapshot 0 again
    assert manifest_ids(root) == []


# -- expiry ---------------------------------------------------------------------------
def test_an_expired_snapshot_is_named_with_the_oldest_kept(root: Path) -> None:
    wh = Warehouse(root)
    early = dt.datetime.now(UTC)
    for events in (8, 9, 10):
        wh.commit("inventory", inventory_rows([("i000", events)]))
    pinned = Reader(root, as_of=dt.datetime.now(UTC))
    assert pinned.snapshot().snapshot_id == 4
    wh.commit("inventory", inventory_rows([("i000", 11), ("i005", 1)]))
    assert wh.compact() == 6
    assert wh.expire_snapshots(dt.timedelta(0)) == 7  # 0..6; 7 is the expiry's own snapshot
    wh.close()
    oldest = oldest_snapshot(root)
    assert oldest.snapshot_id == 7 and oldest.expired_through == 6
    expired = expired_error(root, 4)
    assert isinstance(expired, SnapshotExpired)
    assert "snapshot 4 has expired" in str(expired) and "oldest kept snapshot is 7" in str(expired)
    assert expired_error(root, 7) is None
    with pytest.raises(SnapshotExpired, match="oldest kept snapshot is 7"):
        load_snapshot(root, (early - dt.datetime.fromtimestamp(0, UTC)) // dt.timedelta(microseconds=1))
    with pytest.raises(BeamlineError, match="oldest kept snapshot is 7"):
        run_query("SELECT * FROM inventory", root, as_of=early)
    # Only the present's files are left, and they answer.
    assert len(list(root.glob("data/inventory/*.parquet"))) == 1
    assert inventory(root) == {"i000": 11, "i001": 3, "i002": 7, "i005": 1}
    pinned.close()


def test_time_travel_within_the_retention_survives_expiry(root: Path) -> None:
    wh = Warehouse(root)
    wh.commit("inventory", inventory_rows([("i000", 8)]))
    time.sleep(0.3)
    inside = dt.datetime.now(UTC)  # the answer at this time is the snapshot just committed, older than 0.2 s
    time.sleep(0.3)
    wh.commit("inventory", inventory_rows([("i000", 9)]))
    wh.expire_snapshots(dt.timedelta(seconds=0.45))
    wh.close()
    assert run_query("SELECT events FROM inventory WHERE item_id = 'i000'", root, as_of=inside).to_pylist() == [
        {"events": 8}
    ]


def test_leftovers_of_crashed_commits_go_only_after_the_grace(root: Path) -> None:
    orphan = root / "data" / "inventory" / "000000000002-crashed.parquet"  # it tried parent 1 + 1
    shutil.copy(next(root.glob("data/inventory/*.parquet")), orphan)
    temp = root / SNAPSHOTS_DIR / ".tmp-000000000009-crashed.json"
    temp.write_text("{")
    wh = Warehouse(root)
    wh.expire_snapshots(dt.timedelta(days=7))
    assert orphan.exists() and temp.exists()  # may belong to a commit in flight elsewhere
    wh.expire_snapshots(dt.timedelta(days=7), orphan_grace=dt.timedelta(0))
    assert not orphan.exists() and not temp.exists()
    wh.close()
    assert inventory(root) == {"i000": 5, "i001": 3, "i002": 7}


# -- format 1 warehouses -----------------------------------------------------------------
def _format_1_warehouse(root: Path, times: list[int]) -> None:
    """A warehouse as format 1 wrote it: names with the commit time, a lock file, CURRENT."""
    (root / SNAPSHOTS_DIR).mkdir(parents=True)
    for view in ("inventory", "sales_by_window", "word_counts", "dead_letters"):
        (root / "data" / view).mkdir(parents=True)
    (root / ".lock").touch()
    for sid, us in enumerate(times):
        doc = {"snapshot_id": sid, "committed_at_us": us, "views": {"inventory": []}}
        (root / SNAPSHOTS_DIR / f"snapshot-{sid:012d}-{us}.json").write_text(json.dumps(doc))
    (root / CURRENT_FILE).write_text(f"snapshot-{len(times) - 1:012d}-{times[-1]}.json")
    (root / "beamline-warehouse.json").write_text('{"format": "beamline-warehouse", "format_version": 1}')


def test_a_format_1_warehouse_is_read_and_upgraded_in_place(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    now = time.time_ns() // 1000
    _format_1_warehouse(root, [now - 3_000_000, now - 2_000_000, now - 1_000_000])
    assert [s[0] for s in list_snapshots(root)] == [0, 1, 2]
    assert load_snapshot(root).snapshot_id == 2
    wh = Warehouse(root)
    assert json.loads((root / "beamline-warehouse.json").read_text())["format_version"] == 2
    assert wh.commit("inventory", inventory_rows([("i000", 1)])).snapshot_id == 3
    wh.close()
    assert [s[2] for s in list_snapshots(root)][-2:] == [
        f"snapshot-000000000002-{now - 1_000_000}.json",
        "snapshot-000000000003.json",
    ]
    assert load_snapshot(root, now - 1_500_000).snapshot_id == 1  # time travel across both namings
    verify_snapshots(root)
