"""A real Apache Kafka broker (KRaft, one node) run with ``java``.

The broker is the event log, so its data lives on disk in a data folder that
outlives the process: ``stop`` keeps it and ``start`` on the same folder brings
every record back. The jars come from the project cache (``make setup``); the
broker's configuration is written into the data folder, so a folder is
self-describing and can be started again without remembering options.

Layout of a data folder::

    server.properties    broker + controller configuration
    log4j2.properties    logging to broker.log
    broker.pid           pid of the running broker (absent when stopped)
    broker.log           the broker's own log
    logs/                Kafka's log segments (the data)
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.errors import ServiceError, SetupMissing
from core.settings import kafka_libs_dir, state_dir
from infra.process import (
    find_java,
    free_port,
    port_is_free,
    read_pid,
    require_free_port,
    spawn,
    terminate,
    wait_started,
)

__all__ = [
    "BrokerStatus",
    "KafkaBroker",
    "find_java",
    "free_port",
    "port_is_free",
]

DEFAULT_PORT = 9092
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


def default_data_dir() -> Path:
    return state_dir() / "kafka"


def _answers(bootstrap_servers: str, timeout_s: float) -> bool:
    """Whether a broker at ``bootstrap_servers`` answers a metadata request within ``timeout_s``.

    The broker's own readiness probe, with kafka-python directly: infra knows
    nothing of Beamline's Kafka package (``transforms.kafka.wait_for_kafka``
    waits for any cluster, with its settings).
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(1000, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=min(timeout_ms, 5000),
            bootstrap_timeout_ms=min(timeout_ms, 3000),
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path

    @property
    def bootstrap_servers(self) -> str | None:
        return f"127.0.0.1:{self.port}" if self.port else None


def _random_cluster_id() -> str:
    """Kafka's cluster id format: 16 random bytes, URL-safe base64, no padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # a leading dash would read as an option
            return cluster_id


class KafkaBroker:
    """Start, stop and inspect one local KRaft broker rooted in ``data_dir``."""

    def __init__(self, data_dir: Path | str | None = None, *, heap: str = "1g") -> None:
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.heap = heap

    # -- files in the data folder -------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def segments_dir(self) -> Path:
        return self.data_dir / "logs"

    def _configured_port(self) -> int | None:
        try:
            for line in self.config_file.read_text().splitlines():
                if line.startswith("advertised.listeners="):
                    return int(line.rsplit(":", 1)[1])
        except (OSError, ValueError):
            return None
        return None

    # -- public API ---------------------------------------------------------------
    def status(self) -> BrokerStatus:
        pid = read_pid(self.pid_file)
        return BrokerStatus(pid is not None, pid, self._configured_port(), self.data_dir)

    def start(
        self, port: int = DEFAULT_PORT, *, timeout_s: float = READY_TIMEOUT_S, auto_create_topics: bool = False
    ) -> BrokerStatus:
        """Start the broker and return once it answers metadata requests.

        ``auto_create_topics`` lets the broker create a topic that a client
        asks for and that does not exist (``auto.create.topics.enable``), as
        clients that produce to a new topic without creating it first expect:
        without it they wait a minute for the topic and fail. It is off by
        default: Beamline creates its topics explicitly, and a typo in a topic
        name should be an error, not a new, empty topic.
        """
        current = self.status()
        if current.running:
            raise ServiceError(
                f"a broker is already running from {self.data_dir} (pid {current.pid}, "
                f"port {current.port}); use it, or run `beamline kafka stop` first"
            )
        java = find_java()
        libs = kafka_libs_dir()
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise SetupMissing(f"Kafka broker jars not found in {libs}; run `make setup` first")
        require_free_port(port, hint="pass --port with a free port")
        self._prepare_data_dir()
        controller_port = free_port()
        self._write_config(port, controller_port, auto_create_topics=auto_create_topics)
        if not (self.segments_dir / "meta.properties").exists():
            self._format_storage(java, libs)

        cmd = [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.config_file),
        ]
        process = spawn(cmd, self.log_file, self.pid_file)
        bootstrap = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        wait_started(
            process,
            lambda: _answers(bootstrap, min(5.0, max(1.0, deadline - time.monotonic()))),
            what="the Kafka broker",
            expectation=f"answer on {bootstrap}",
            log_file=self.log_file,
            pid_file=self.pid_file,
            stop=self.stop,
            timeout_s=timeout_s,
        )
        return self.status()

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the broker cleanly (SIGTERM, then wait). Returns False if none ran."""
        return terminate(self.pid_file, timeout_s)

    def kill(self) -> None:
        """Kill the broker without a clean shutdown (SIGKILL), as a crash would."""
        terminate(self.pid_file, STOP_TIMEOUT_S, hard=True)

    # -- helpers ------------------------------------------------------------------
    def _prepare_data_dir(self) -> None:
        try:
            self.segments_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ServiceError(
                f"data dir {self.data_dir} is unusable ({exc.strerror or exc}); pass --data-dir with a writable folder"
            ) from None

    def _write_config(self, port: int, controller_port: int, *, auto_create_topics: bool = False) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.segments_dir),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true" if auto_create_topics else "false",
            # The log is the source of truth: keep it until someone decides otherwise.
            "log.retention.ms": "-1",
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.data_dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = file\n"
        )

    def _format_storage(self, java: str, libs: Path) -> None:
        result = subprocess.run(
            [
                java,
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={_random_cluster_id()}",
                "-c",
                str(self.config_file),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ServiceError(
                f"could not format Kafka storage in {self.segments_dir}: "
                f"{detail[-1] if detail else 'exit ' + str(result.returncode)}"
            )
