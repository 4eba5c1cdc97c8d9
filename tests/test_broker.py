"""The local broker: durability across restarts and one-line answers to bad calls."""

from __future__ import annotations

import os
import socket
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from infra.kafka_broker import KafkaBroker, free_port
from tests.cli_helpers import assert_one_line_error, run_cli


def _read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[tuple[int, int, bytes]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    seen: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend((r.partition, r.offset, r.value) for r in records)
    finally:
        consumer.close()
    return seen


@pytest.mark.services
def test_records_survive_a_stop_and_start_on_the_same_data_dir(tmp_path):
    broker = KafkaBroker(tmp_path / "data", heap="512m")
    port = free_port()
    bootstrap = broker.start(port).bootstrap_servers
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("durable", 3, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        sent = {f"record-{i}".encode() for i in range(2_000)}
        for value in sorted(sent):
            producer.send("durable", value=value)
        producer.flush()
        producer.close()

        assert broker.stop() is True
        assert not broker.status().running
        assert (tmp_path / "data" / "logs").is_dir()

        bootstrap = broker.start(port).bootstrap_servers
        back = _read_all(bootstrap, "durable", expected=len(sent))
        assert {value for _, _, value in back} == sent
        assert len(back) == len(sent)  # no record twice
    finally:
        broker.stop()


@pytest.mark.services
def test_a_broker_started_with_auto_create_topics_creates_a_topic_a_producer_asks_for(tmp_path):
    broker = KafkaBroker(tmp_path / "data", heap="512m")
    bootstrap = broker.start(free_port(), auto_create_topics=True).bootstrap_servers
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=30_000)
        sent = producer.send("never-created", value=b"one").get(timeout=30)
        producer.close()
        assert (sent.topic, sent.offset) == ("never-created", 0)
    finally:
        broker.stop()
    assert "auto.create.topics.enable=true\n" in broker.config_file.read_text()


def test_the_broker_creates_no_topic_on_demand_by_default(kafka_broker):
    # A typo in a topic name must be an error, not a new topic.
    assert "auto.create.topics.enable=false\n" in kafka_broker.config_file.read_text()


def test_status_reports_the_running_session_broker(kafka_broker):
    status = kafka_broker.status()
    assert status.running and status.pid
    result = run_cli("kafka", "status", "--data-dir", str(kafka_broker.data_dir))
    assert result.returncode == 0, result.stderr
    assert status.bootstrap_servers in result.stdout


def test_starting_twice_is_refused_in_one_line(kafka_broker):
    port = kafka_broker.status().port
    result = run_cli("kafka", "start", "--data-dir", str(kafka_broker.data_dir), "--port", str(port))
    assert_one_line_error(result, "already running", "beamline kafka stop")
    assert kafka_broker.status().running  # the running broker was left alone


@pytest.mark.services  # needs the broker jars: the port is checked when the broker would start
def test_a_taken_port_is_refused_in_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("kafka", "start", "--data-dir", str(tmp_path / "d"), "--port", str(port))
    assert_one_line_error(result, f"port {port}", "--port")


def test_missing_java_is_reported_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java on this PATH
    result = run_cli("kafka", "start", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()), env=env)
    assert_one_line_error(result, "Java not found", "JAVA_HOME")


@pytest.mark.services  # needs the broker jars and Java
def test_an_unusable_data_dir_is_reported_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("kafka", "start", "--data-dir", str(blocker / "data"), "--port", str(free_port()))
    assert_one_line_error(result, "data dir", "--data-dir")


@pytest.mark.kafka  # waits out the bounded connect timeout (about 10 s)
@pytest.mark.parametrize("verb", [["retail", "--events", "10"], ["file", "{lines}", "--topic", "t"]])
def test_produce_without_a_broker_fails_fast_in_one_line(verb, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\n")
    verb = [part.format(lines=lines) for part in verb]
    port = free_port()  # nothing listens here
    started = time.monotonic()
    result = run_cli("produce", *verb, "--bootstrap-servers", f"127.0.0.1:{port}", timeout=60)
    assert_one_line_error(result, f"127.0.0.1:{port}", "beamline kafka start")
    assert time.monotonic() - started < 45  # bounded wait, not a hang
