"""The command line as a user meets it: one line for every bad value, defaults shown in --help.

Most tests drive ``cli.main.main`` in this process (fast, no services); the one
that runs a pipeline uses the session broker and a real warehouse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main
from tests.cli_helpers import PROJECT_ROOT, assert_one_line_error, run_cli


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """``beamline ARGV`` exits non-zero with exactly one line on stderr naming each needle."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "apitools" not in line]
    assert code != 0
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["run", "inventory", "--dedupe_horizon", "0"], ["--dedupe_horizon", "at least 1"]),
        (["run", "inventory", "--dedupe-horizon=-3600"], ["--dedupe_horizon", "-3,600"]),
        (["run", "inventory", "--allowed_lateness=-1"], ["--allowed_lateness", "at least 0"]),
        (["run", "inventory", "--early_firing=soon"], ["--early_firing", "whole number"]),
        (["run", "inventory", "--kafka_client=kafka-go"], ["--kafka_client", "kafka-go", "confluent"]),
        (["run", "inventory", "--window_size=10000000000000"], ["--window_size", "at most"]),
        (["run", "inventory", "--window_size=0"], ["--window_size", "at least 1"]),
        (["run", "wordcount", "--state_shards=0"], ["--state_shards"]),
        (["run", "inventory", "--gc_threshold=-1"], ["--gc_threshold"]),
        (["produce", "retail", "--events", "10", "--stores", "0"], ["--stores", "at least 1"]),
        (["produce", "retail", "--events", "10", "--invalid-rate", "2"], ["--invalid-rate", "between 0 and 1"]),
        (["produce", "retail", "--events", "10", "--start-time", "tuesday"], ["--start-time", "tuesday"]),
        (["produce", "retail", "--events", "10", "--rate", "0"], ["--rate"]),
        (["kafka", "start", "--port", "70000"], ["--port", "65,535"]),
        (["flink", "start", "--taskmanagers", "0"], ["--taskmanagers"]),
        (["prism", "start", "--job-port", "70000"], ["--job-port", "65,535"]),
        (["workers", "start", "--port", "0"], ["--port", "at least 1"]),
    ],
)
def test_a_bad_value_is_one_line_and_a_non_zero_exit(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    line = one_line_error(capsys, argv, *needles)
    assert line.startswith("beamline: error:")


def test_a_bad_environment_default_is_one_line_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BEAMLINE_KAFKA_CLIENT", "kafka-go")
    one_line_error(capsys, ["run", "inventory"], "BEAMLINE_KAFKA_CLIENT", "kafka-go")
    monkeypatch.setenv("BEAMLINE_KAFKA_CLIENT", "kafka-python")
    monkeypatch.setenv("BEAMLINE_GC_THRESHOLD", "lots")
    one_line_error(capsys, ["run", "inventory"], "BEAMLINE_GC_THRESHOLD")


@pytest.mark.processes
def test_the_pipeline_module_gives_the_same_one_line() -> None:
    result = run_cli("run", "inventory", "--dedupe_horizon=0")
    module = subprocess.run(
        [sys.executable, "-m", "pipelines.inventory", "--dedupe_horizon=0"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_one_line_error(result, "--dedupe_horizon")
    assert module.returncode == result.returncode == 1
    assert [line for line in module.stderr.splitlines() if "apitools" not in line] == result.stderr.splitlines()


def help_text(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")  # no wrapping inside a value
        with pytest.raises(SystemExit) as stopped:
            main([*argv, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = {
        "BEAMLINE_WAREHOUSE": str(tmp_path / "views"),
        "BEAMLINE_BOOTSTRAP_SERVERS": "broker.example:19092",
        "BEAMLINE_HOME": str(tmp_path / "home"),
        "BEAMLINE_KAFKA_CLIENT": "confluent",
        "BEAMLINE_GC_THRESHOLD": "1234",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.mark.parametrize(
    ("argv", "variables"),
    [
        (["query", "SELECT 1"], ["BEAMLINE_WAREHOUSE"]),
        (["lookup", "inventory"], ["BEAMLINE_WAREHOUSE"]),
        (["produce", "retail"], ["BEAMLINE_BOOTSTRAP_SERVERS"]),
        (["produce", "file"], ["BEAMLINE_BOOTSTRAP_SERVERS"]),
        (["kafka"], ["BEAMLINE_HOME"]),
        (["flink"], ["BEAMLINE_HOME"]),
        (["prism"], ["BEAMLINE_HOME"]),
        (["workers"], ["BEAMLINE_HOME"]),
        (
            ["run"],
            [
                "BEAMLINE_WAREHOUSE",
                "BEAMLINE_BOOTSTRAP_SERVERS",
                "BEAMLINE_KAFKA_CLIENT",
                "BEAMLINE_GC_THRESHOLD",
            ],
        ),
    ],
)
def test_help_shows_each_variable_and_the_default_in_force(
    capsys: pytest.CaptureFixture[str], environment: dict[str, str], argv: list[str], variables: list[str]
) -> None:
    text = help_text(capsys, argv)
    for name in variables:
        assert f"env {name}={environment[name]}" in text, name


def test_run_help_lists_every_pipeline_option_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.options import BeamlineOptions, KafkaOptions, WarehouseOptions

    text = help_text(capsys, ["run"])
    options = {**BeamlineOptions([]).get_all_options(current_only=True)}
    for options_class in (KafkaOptions, WarehouseOptions):
        options.update(options_class([]).get_all_options(current_only=True))
    assert len(options) >= 14
    for name, default in options.items():
        assert f"--{name}" in text, name
        if default is not None:
            assert str(default) in text, (name, default)


def test_pipeline_module_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines import inventory

    assert inventory.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("--dedupe_horizon", "--bootstrap_servers", "--warehouse", "--kafka_client", "--window_size"):
        assert name in text


@pytest.mark.processes
def test_the_environment_names_one_warehouse_for_run_and_query(
    bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    shipments, sales = make_topic(partitions=1), make_topic(partitions=1)
    produced = run_cli(
        "produce", "retail", "--events", "40", "--shipments-topic", shipments, "--sales-topic", sales,
        "--bootstrap-servers", bootstrap_servers, "--quiet",
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    env = {**os.environ, "BEAMLINE_WAREHOUSE": str(tmp_path / "x")}
    env["BEAMLINE_BOOTSTRAP_SERVERS"] = bootstrap_servers
    ran = run_cli(
        "run", "inventory", "--mode", "batch", f"--shipments_topic={shipments}", f"--sales_topic={sales}",
        f"--dead_letter_topic={make_topic(partitions=1)}", env=env, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "x").is_dir()
    queried = run_cli("query", "SELECT sum(events) AS events FROM inventory", "--format", "json", env=env)
    assert queried.returncode == 0, queried.stderr
    assert int(json.loads(queried.stdout)[0]["events"]) == 40


# -- client settings for real clusters -------------------------------------------------------------
SECRET = "s3cr3t-Pa55"
JAAS = f'org.apache.kafka.common.security.plain.PlainLoginModule required username="alice" password="{SECRET}";'


def test_pipeline_options_carry_a_properties_file_and_settings_over_it(tmp_path: Path) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import kafka_connection

    properties = tmp_path / "client.properties"
    properties.write_text(f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.jaas.config={JAAS}\nclient.id=a\n")
    options = PipelineOptions(
        [
            "--bootstrap_servers=broker:9093",
            f"--kafka_config_file={properties}",
            "--kafka_config=client.id=b",
            "--kafka-config",
            "ssl.ca.location=/etc/ca.pem",
        ]
    )
    connection = kafka_connection(options)
    assert connection.bootstrap_servers == "broker:9093"
    assert dict(connection.settings) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
        "client_id": "b",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert SECRET not in repr(connection)


def test_the_runner_never_sees_a_setting_given_on_the_command_line() -> None:
    import apache_beam as beam

    from pipelines.runner import run_pipeline

    seen: dict[str, object] = {}

    def build(pipeline: beam.Pipeline, options: object) -> None:
        seen["runner"] = pipeline.options.get_all_options()["kafka_config"]
        seen["pipeline"] = options.get_all_options()["kafka_config"]  # type: ignore[attr-defined]
        _ = pipeline | beam.Create([1])

    run_pipeline(build, [f"--kafka_config=sasl.password={SECRET}", "--kafka-config", f"sasl.jaas.config={JAAS}"])
    assert seen["pipeline"] == [f"sasl.password={SECRET}", f"sasl.jaas.config={JAAS}"]
    assert seen["runner"] == ["sasl.password=***", "sasl.jaas.config=***"]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--kafka-config", "security.protocol"], ["KEY=VALUE"]),
        (["--kafka-config-file", "/no/such/file.properties"], ["/no/such/file.properties"]),
        (["--kafka-config", "ssl.truststore.location=/etc/trust.jks"], ["ssl.truststore.location"]),
        (["--kafka-config", f"sasl.jaas.config=nonsense password={SECRET}"], ["sasl.jaas.config"]),
    ],
)
def test_a_bad_client_setting_is_one_line_without_the_secret(
    capsys: pytest.CaptureFixture[str], extra: list[str], needles: list[str]
) -> None:
    line = one_line_error(capsys, ["produce", "retail", "--events", "1", *extra], *needles)
    assert SECRET not in line
    flag, value = extra
    line = one_line_error(capsys, ["run", "inventory", f"--{flag[2:].replace('-', '_')}={value}"], *needles)
    assert SECRET not in line


def test_an_empty_bootstrap_address_is_refused_not_replaced_by_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "inventory", "--bootstrap-servers", ""]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bootstrap_servers is empty" in err[0], err
