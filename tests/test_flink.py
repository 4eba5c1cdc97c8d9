"""Flink: a real standalone session cluster, driven as an operator would.

The cluster is started with ``beamline flink start`` (JobManager and a
TaskManager as separate ``java`` processes on free ports, a Python SDK worker
pool, state in a temp folder) and inspected through
:class:`infra.flink_cluster.FlinkCluster`. Plain Flink jobs prove that it runs
work across its slots and restores a streaming job from a checkpoint after a
TaskManager is killed; a Beam pipeline proves the worker pool serves the
EXTERNAL environment. Beam pipelines on Flink itself need Beam's Flink job
server jar, which this project cannot fetch: ``tests/test_flink_submit.py``
shows what ``--runner flink`` does without it and with a jar supplied.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from core.errors import ServiceError
from core.settings import PROJECT_ROOT
from infra.flink_cluster import (
    JAVA_MODULE_OPTS,
    FlinkCluster,
    FlinkClusterConfig,
    flink_libs_dir,
    flink_runner_args,
)
from infra.process import find_java, free_port
from tests.cli_helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow

SMOKE_JOB = PROJECT_ROOT / "infra" / "flink" / "smoke" / "SmokeJob.java"


def _env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="module")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkCluster]:
    """A cluster started by `beamline flink start` in ``<temp home>/flink``, the default state folder there."""
    if not any(flink_libs_dir().glob("flink-runtime-*.jar")):
        pytest.fail(f"Flink jars not found in {flink_libs_dir()}; run `make setup`")
    folder = tmp_path_factory.mktemp("home") / "flink"
    config = FlinkClusterConfig(rest_port=free_port(), worker_pool_port=free_port(), slots_per_taskmanager=2)
    cluster = FlinkCluster(folder, config)
    try:
        result = run_cli(
            "flink",
            "start",
            "--state-dir",
            str(folder),
            "--rest-port",
            str(config.rest_port),
            "--worker-pool-port",
            str(config.worker_pool_port),
            "--slots",
            "2",
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        assert f"--flink-master localhost:{config.rest_port}" in result.stdout
        yield cluster
    finally:
        cluster.stop()


# -- the cluster ----------------------------------------------------------------------


def test_cluster_reports_its_taskmanager_slots_and_worker_pool(flink_cluster: FlinkCluster) -> None:
    status = flink_cluster.status()

    assert status.running
    assert len(status.taskmanager_pids) == 1
    assert (status.taskmanagers_registered, status.slots_total) == (1, 2)
    assert status.worker_pool_pid is not None
    assert flink_cluster.rest("/config")["flink-version"]
    with socket.create_connection(("127.0.0.1", status.worker_pool_port), timeout=2):
        pass
    result = run_cli("flink", "status", "--state-dir", str(flink_cluster.folder))
    assert result.returncode == 0, result.stderr
    assert f"http://localhost:{status.rest_port}" in result.stdout
    assert "1 TaskManager(s) with 2 slots" in result.stdout


def test_second_start_on_a_running_cluster_is_refused_in_one_line(flink_cluster: FlinkCluster) -> None:
    result = run_cli("flink", "start", "--state-dir", str(flink_cluster.folder))
    assert_one_line_error(result, "already running", "beamline flink stop")
    assert flink_cluster.status().running


def test_taskmanager_can_be_added_and_killed(flink_cluster: FlinkCluster) -> None:
    index = flink_cluster.add_taskmanager()
    grown = flink_cluster.wait_for_slots(4, timeout_s=30)
    assert (grown.taskmanagers_registered, grown.slots_total) == (2, 4)

    flink_cluster.kill_taskmanager(index)

    shrunk = flink_cluster.wait_for_slots(2, timeout_s=60)
    assert index not in shrunk.taskmanager_pids
    assert shrunk.taskmanagers_registered == 1


@pytest.fixture(scope="module")
def smoke_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """infra/flink/smoke/SmokeJob.java compiled against the cluster's jars."""
    folder = tmp_path_factory.mktemp("smoke")
    jdk_bin = Path(find_java()).parent
    javac = shutil.which("javac") or str(jdk_bin / "javac")
    jar_tool = shutil.which("jar") or str(jdk_bin / "jar")
    subprocess.run([javac, "-cp", f"{flink_libs_dir()}/*", "-d", str(folder / "classes"), str(SMOKE_JOB)], check=True)
    jar = folder / "smoke.jar"
    subprocess.run([jar_tool, "cf", str(jar), "-C", str(folder / "classes"), "."], check=True)
    return jar


def _smoke_job(cluster: FlinkCluster, jar: Path, mode: str, n: int) -> subprocess.Popen:
    java = [find_java(), "-Xmx256m", *JAVA_MODULE_OPTS, "-cp", f"{flink_libs_dir()}/*:{jar}"]
    rest_port = str(cluster.status().rest_port)
    return subprocess.Popen(
        [*java, "SmokeJob", mode, "localhost", rest_port, str(n), str(jar)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(job: subprocess.Popen, timeout_s: float = 180) -> str:
    try:
        out, err = job.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    assert job.returncode == 0, err[-2000:]
    return out


def _running_job(cluster: FlinkCluster, name: str, *, checkpoints: int, timeout_s: float = 90) -> str:
    """The id of running job ``name`` once it has completed ``checkpoints`` checkpoints."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in cluster.rest("/jobs/overview")["jobs"]:
            if job["name"] == name and job["state"] == "RUNNING":
                counts = cluster.rest(f"/jobs/{job['jid']}/checkpoints")["counts"]
                if counts["completed"] >= checkpoints:
                    return job["jid"]
        time.sleep(0.2)
    raise AssertionError(f"job {name} did not complete {checkpoints} checkpoints in {timeout_s}s")


def test_cluster_runs_a_flink_job_across_two_slots(flink_cluster: FlinkCluster, smoke_jar: Path) -> None:
    n = 100_000

    out = _finish(_smoke_job(flink_cluster, smoke_jar, "batch", n))

    assert f"SUM={sum(x * x for x in range(1, n + 1))}" in out
    jobs = flink_cluster.rest("/jobs/overview")["jobs"]
    assert [job["state"] for job in jobs if job["name"] == "beamline-smoke-batch"] == ["FINISHED"]


def test_streaming_job_survives_a_killed_taskmanager(flink_cluster: FlinkCluster, smoke_jar: Path) -> None:
    n = 3000  # 10 s at the source's 300 records/s
    job = _smoke_job(flink_cluster, smoke_jar, "streaming", n)
    jid = _running_job(flink_cluster, "beamline-smoke-streaming", checkpoints=2)

    flink_cluster.kill_taskmanager()
    flink_cluster.add_taskmanager()
    out = _finish(job)

    assert f"SUM={n * (n + 1) // 2}" in out
    restored = flink_cluster.rest(f"/jobs/{jid}/checkpoints")["latest"]["restored"]
    assert restored and restored["external_path"].startswith("file:")
    assert flink_cluster.rest(f"/jobs/{jid}")["state"] == "FINISHED"


def test_start_refuses_a_taken_rest_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("flink", "start", "--state-dir", str(tmp_path), "--rest-port", str(port))
    assert_one_line_error(result, f"port {port}", "Flink REST/UI")
    assert not FlinkCluster(tmp_path).status().running


def test_start_without_jars_says_run_make_setup_in_one_line(tmp_path: Path) -> None:
    env = _env(BEAMLINE_CACHE_DIR=str(tmp_path / "empty-cache"))
    result = run_cli("flink", "start", "--state-dir", str(tmp_path / "state"), "--rest-port", str(free_port()), env=env)
    assert_one_line_error(result, "Flink jars not found", "make setup")


# -- Beam ------------------------------------------------------------------------------


def test_worker_pool_runs_a_pipeline_in_the_external_environment(
    flink_cluster: FlinkCluster, prism_location: str
) -> None:
    """The cluster's worker pool serves SDK workers to a portable runner (Prism here)."""
    rng = random.Random(7)
    words = [rng.choice(["kafka", "beam", "flink", "view", "log", "event", "store", "item"]) for _ in range(3000)]
    options = PipelineOptions(
        [
            "--runner=PrismRunner",
            f"--prism_location={prism_location}",
            "--environment_type=EXTERNAL",
            f"--environment_config={flink_cluster.status().worker_pool}",
        ]
    )
    with beam.Pipeline(options=options) as pipeline:
        counts = pipeline | "Words" >> beam.Create(words) | "Count" >> beam.combiners.Count.PerElement()
        assert_that(counts, equal_to(list(Counter(words).items())))
    assert "Starting worker" in flink_cluster.worker_pool.log_file.read_text()


def test_runner_args_use_the_local_cluster_and_defer_to_given_options(
    flink_cluster: FlinkCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the options are checked: the job server jar itself is not available to run."""
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"")
    monkeypatch.setenv("BEAMLINE_FLINK_JOB_SERVER_JAR", str(jar))
    monkeypatch.setenv("BEAMLINE_HOME", str(flink_cluster.folder.parent))
    status = flink_cluster.wait_for_slots(2, timeout_s=60)
    assert status.flink_master

    args = flink_runner_args(status.flink_master, [])
    assert {"--runner=FlinkRunner", "--flink_version=2.2", f"--flink_master={status.flink_master}"} <= set(args)
    assert "--job_server_jvm_property=-Xmx768m" in args
    assert f"--flink_job_server_jar={jar}" in args
    assert "--environment_type=EXTERNAL" in args
    assert f"--environment_config={status.worker_pool}" in args
    assert "--parallelism=2" in args

    given = ["--parallelism=1", "--environment_type=LOOPBACK", "--job_server_jvm_property=-Xmx2g"]
    args = flink_runner_args(status.flink_master, given)
    assert not [
        arg for arg in args if arg.startswith(("--parallelism", "--environment_", "--job_server_jvm_property=-Xmx"))
    ]
    assert f"--job_server_jvm_property={JAVA_MODULE_OPTS[0]}" in args

    assert "--environment_type=LOOPBACK" in flink_runner_args("[local]", [])
    with pytest.raises(ServiceError, match="beamline flink start"):
        flink_runner_args(f"localhost:{free_port()}", [])


def test_stop_ends_every_process(flink_cluster: FlinkCluster) -> None:
    before = flink_cluster.status()

    result = run_cli("flink", "stop", "--state-dir", str(flink_cluster.folder))

    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    after = flink_cluster.status()
    assert not after.running and not after.taskmanager_pids and after.worker_pool_pid is None
    assert before.jobmanager_pid is not None
    assert run_cli("flink", "status", "--state-dir", str(flink_cluster.folder)).returncode == 3
    assert not flink_cluster.stop()
