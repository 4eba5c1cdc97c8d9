"""``beamline run --runner flink`` up to the point where Beam starts its Flink job server, without Flink.

Beam's Flink job server jar is not available here, so no Beam pipeline runs on
Flink in these tests (see docs/flink.md). What they show: with no jar anywhere
and no network the run stops with one line; with a jar supplied, Beam's own
FlinkRunner code builds the documented job server command line from the
options Beamline passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.flink_runner import FlinkJarJobServer

from cli.main import build_parser
from cli.run import pipeline_argv
from infra.flink_cluster import BEAM_VERSION, JAVA_MODULE_OPTS, JOB_SERVER_JAR_NAME
from infra.process import free_port
from tests.cli_helpers import PROJECT_ROOT, assert_one_line_error, run_cli

#: What the environment of a machine without Maven Central looks like to Beam: every fetch is refused.
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No jar in Beamline's cache, none in Beam's (a fresh HOME), none named, and no route out."""
    env = {name: value for name, value in os.environ.items() if name not in _PROXY_VARIABLES}
    env.pop("BEAMLINE_FLINK_JOB_SERVER_JAR", None)
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    env.update(
        HOME=str(tmp_path / "home"),
        BEAMLINE_CACHE_DIR=str(tmp_path / "cache"),
        BEAMLINE_HOME=str(tmp_path / "state"),
        https_proxy=refused,
        http_proxy=refused,
    )
    return env


@pytest.mark.processes
def test_with_no_jar_anywhere_and_no_network_the_run_stops_in_one_line(tmp_path: Path) -> None:
    result = run_cli("run", "inventory", "--runner", "flink", env=_offline_env(tmp_path))

    line = assert_one_line_error(result, JOB_SERVER_JAR_NAME, "BEAMLINE_FLINK_JOB_SERVER_JAR", "Connection refused")
    assert result.returncode == 1
    assert "Beam could not fetch" in line
    assert not (tmp_path / "home" / ".apache_beam" / "cache" / "jars" / JOB_SERVER_JAR_NAME).exists()


@pytest.mark.processes
def test_the_pipeline_module_on_flink_with_no_jar_is_one_line_too(
    tmp_path: Path, bootstrap_servers: str, make_topic: Callable[..., str]
) -> None:
    """Beam's own entry point: its FlinkRunner fetches the jar while it runs, and that failure is one line."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.inventory",
            "--runner=FlinkRunner",
            "--mode=batch",
            f"--bootstrap_servers={bootstrap_servers}",
            f"--shipments_topic={make_topic()}",
            f"--sales_topic={make_topic()}",
            f"--dead_letter_topic={make_topic()}",
            f"--warehouse={tmp_path / 'warehouse'}",
        ],
        cwd=PROJECT_ROOT,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if "apitools" not in line]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("beamline: error: "), result.stderr[-2000:]
    assert "Beam could not fetch its Flink job server jar" in lines[0] and "--flink_job_server_jar" in lines[0]


@pytest.mark.processes
def test_a_variable_naming_no_file_is_one_line(tmp_path: Path) -> None:
    env = {**_offline_env(tmp_path), "BEAMLINE_FLINK_JOB_SERVER_JAR": str(tmp_path / "missing.jar")}
    result = run_cli("run", "inventory", "--runner", "flink", env=env)
    assert_one_line_error(result, "BEAMLINE_FLINK_JOB_SERVER_JAR", "missing.jar", "not a file", BEAM_VERSION)


def test_with_a_jar_supplied_beam_gets_the_documented_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jar = tmp_path / JOB_SERVER_JAR_NAME
    jar.write_bytes(b"")  # only its path matters: nothing is started
    monkeypatch.setenv("BEAMLINE_FLINK_JOB_SERVER_JAR", str(jar))
    monkeypatch.setenv("BEAMLINE_HOME", str(tmp_path / "state"))
    args, extra = build_parser().parse_known_args(["run", "inventory", "--runner", "flink", "--mode", "streaming"])

    argv = pipeline_argv(args, [*extra, f"--artifacts_dir={tmp_path / 'artifacts'}"])

    # The options of docs/flink.md ("--runner flink adds these Beam options").
    assert argv[:6] == [
        "--mode=streaming",
        "--runner=FlinkRunner",
        "--flink_version=2.2",
        "--flink_master=[local]",
        f"--flink_job_server_jar={jar}",
        "--environment_type=LOOPBACK",
    ]
    assert argv[6:] == [
        "--job_server_jvm_property=-Xmx768m",
        *(f"--job_server_jvm_property={opt}" for opt in JAVA_MODULE_OPTS),
        f"--artifacts_dir={tmp_path / 'artifacts'}",
    ]
    # What Beam's FlinkRunner then runs (docs/flink.md, "the job server's command line").
    command, endpoint = FlinkJarJobServer(PipelineOptions(argv)).subprocess_cmd_and_endpoint()
    command = [str(part) for part in command]  # Beam passes the ports as numbers
    job_port = endpoint.rsplit(":", 1)[1]
    assert command == [
        "java",
        "-Xmx768m",
        *JAVA_MODULE_OPTS,
        "-jar",
        str(jar),
        "--flink-master",
        "[local]",
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
        "--job-port",
        job_port,
        "--artifact-port",
        "0",
        "--expansion-port",
        "0",
    ]


def test_options_given_to_beam_win_over_beamlines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"")
    monkeypatch.setenv("BEAMLINE_FLINK_JOB_SERVER_JAR", str(jar))
    given = ["--environment_type=EXTERNAL", "--environment_config=worker-host:50000", "--parallelism=4"]
    args, extra = build_parser().parse_known_args(["run", "inventory", "--runner", "flink", *given])

    argv = pipeline_argv(args, extra)

    assert [arg for arg in argv if arg.startswith(("--environment_", "--parallelism"))] == given
