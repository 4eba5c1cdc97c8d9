"""A real standalone Apache Flink session cluster, run with ``java`` on this machine.

One JobManager (``StandaloneSessionClusterEntrypoint``) and one or more
TaskManagers (``TaskManagerRunner``) run as separate ``java`` processes from
the jars that ``make setup`` puts in the cache; beside them a Beam Python SDK
worker pool (:class:`infra.worker_pool.WorkerPool`) serves the EXTERNAL environment. Flink's
configuration is generated into the state folder, so a folder describes its
cluster and ``status``/``stop`` work from any process.

Layout of a state folder::

    cluster.json           ports and JVM settings chosen at start
    conf/config.yaml       Flink configuration (JobManager and TaskManagers)
    conf/log4j.properties  one log file per process
    jobmanager.pid|.log    the JobManager (.out: its stdout/stderr)
    taskmanager-N.pid|.log TaskManager number N (1, 2, ...; never reused)
    worker-pool.pid|.log   the Python SDK worker pool
    job-server.pid|.log    Beam's Flink job server, when started here
    checkpoints/           checkpoint storage (file://)
    tmp/                   Flink's io.tmp.dirs and web upload folder

Beam talks to the cluster through Beam's Flink job server jar
(:class:`FlinkJobServer`, or ``FlinkRunner`` given ``--flink_job_server_jar``),
which submits the translated job to the JobManager's REST port. That jar
comes from the cache (``make setup`` tries Maven once), from
``$BEAMLINE_FLINK_JOB_SERVER_JAR``, or from Beam's own download
(:func:`require_job_server_jar`). The package registry this project fetches
from does not serve it, so the Beam-on-Flink path (:func:`flink_runner_args`,
:class:`FlinkJobServer`) has not run here.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import settings
from core.errors import ServiceError, SetupMissing, download_failure, quiet_beam_downloads
from core.settings import cache_dir, state_dir
from infra.process import (
    ManagedProcess,
    find_java,
    free_port,
    last_log_line,
    port_open,
    prepare_folder,
    read_pid,
    require_free_port,
    spawn,
    terminate,
)
from infra.submit import flag_of, host_port, not_given, staging_args
from infra.worker_pool import WorkerPool

__all__ = [
    "BEAM_VERSION",
    "FLINK_LINE",
    "FLINK_VERSION",
    "JAVA_MODULE_OPTS",
    "JOB_SERVER_JAR_NAME",
    "ClusterStatus",
    "FlinkCluster",
    "FlinkClusterConfig",
    "FlinkJobServer",
    "cached_job_server_jar",
    "flink_libs_dir",
    "flink_pipeline_args",
    "flink_runner_args",
    "local_job_server_jar",
    "require_job_server_jar",
]

#: Flink release whose jars ``infra/flink/pom.xml`` resolves.
FLINK_VERSION = "2.2.1"
#: The Flink line in Beam's artifact names and ``--flink_version``.
FLINK_LINE = "2.2"
#: The Beam release whose Flink job server runs the pipelines.
BEAM_VERSION = "2.77.0"
#: Maven artifact ``org.apache.beam:beam-runners-flink-2.2-job-server:2.77.0``, as a file.
JOB_SERVER_JAR_NAME = f"beam-runners-flink-{FLINK_LINE}-job-server-{BEAM_VERSION}.jar"

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
#: Names under which ``flink_runner_args`` recognises the cluster of ``beamline flink start``.
_LOCAL_HOSTS = ("localhost", "127.0.0.1")

_ENTRYPOINT_JM = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
_ENTRYPOINT_TM = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
_BASH_JAVA_UTILS = "org.apache.flink.runtime.util.bash.BashJavaUtils"
_UTILS_PREFIX = "BASH_JAVA_UTILS_EXEC_RESULT:"

#: JVM flags Flink's launch scripts add on Java 17+ (``env.java.default-opts.all``).
JAVA_MODULE_OPTS = [
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    *(
        f"--add-opens=java.base/{pkg}=ALL-UNNAMED"
        for pkg in (
            "java.lang",
            "java.lang.reflect",
            "java.net",
            "java.io",
            "java.nio",
            "sun.nio.ch",
            "java.text",
            "java.time",
            "java.util",
            "java.util.concurrent",
            "java.util.concurrent.atomic",
            "java.util.concurrent.locks",
        )
    ),
]


def flink_libs_dir() -> Path:
    """Jars of the Flink session cluster, resolved by Maven during set-up."""
    return cache_dir() / "flink" / "libs"


def cached_job_server_jar() -> Path:
    """Where ``make setup`` puts Beam's Flink job server jar when Maven can fetch it."""
    return cache_dir() / "flink" / "job-server" / JOB_SERVER_JAR_NAME


def local_job_server_jar() -> Path | None:
    """The job server jar on this machine: ``$BEAMLINE_FLINK_JOB_SERVER_JAR``, else the cached copy, else None.

    A variable naming no file is an error (one line), not a reason to look elsewhere.
    """
    named = settings.flink_job_server_jar()
    if named is not None:
        if not named.is_file():
            raise SetupMissing(
                f"BEAMLINE_FLINK_JOB_SERVER_JAR names {named}, which is not a file; point it at "
                f"Beam's Flink job server jar for {BEAM_VERSION} ({JOB_SERVER_JAR_NAME})"
            )
        return named
    cached = cached_job_server_jar()
    return cached if cached.is_file() else None


def require_job_server_jar() -> Path:
    """The job server jar: a local one, else the one Beam fetches itself, as its FlinkRunner would.

    Beam downloads the jar of its own release from Maven Central into its jar
    cache (``~/.apache_beam/cache/jars``) on first use; Beamline calls that same
    download before submitting, so a machine that cannot reach Maven Central
    gets one line saying so and how to supply the jar, not a traceback from
    inside the run.
    """
    local = local_job_server_jar()
    if local is not None:
        return local
    from apache_beam.utils.subprocess_server import JavaJarServer

    url = JavaJarServer.path_to_beam_jar(f":runners:flink:{FLINK_LINE}:job-server:shadowJar")
    try:
        with quiet_beam_downloads():
            return Path(JavaJarServer.local_jar(url))
    except (RuntimeError, OSError) as exc:
        raise SetupMissing(
            f"Beam could not fetch its Flink job server jar {JOB_SERVER_JAR_NAME} ({download_failure(exc)}); "
            "download it where Maven Central is reachable and point env BEAMLINE_FLINK_JOB_SERVER_JAR at it, "
            f"or put it in {cached_job_server_jar().parent}"
        ) from None


def flink_pipeline_args(
    *,
    flink_master: str = "[local]",
    environment: str = "LOOPBACK",
    worker_pool: str | None = None,
    parallelism: int | None = None,
    checkpointing_interval_ms: int | None = None,
    streaming: bool = False,
    job_server_jar: Path | str | None = None,
    job_server_heap: str = "768m",
) -> list[str]:
    """Beam options that run a Python pipeline on Flink with the job server jar given.

    ``flink_master`` is ``[local]`` (Flink embedded in the job server) or the
    ``HOST:PORT`` of a session cluster's REST API. ``environment`` is LOOPBACK
    (workers inside the submitting process) or EXTERNAL (``worker_pool`` names
    a running :class:`WorkerPool`, ``HOST:PORT``). The job server runs with a
    small heap and the module openings Flink needs on Java 17.
    """
    jar = Path(job_server_jar) if job_server_jar else require_job_server_jar()
    args = [
        "--runner=FlinkRunner",
        f"--flink_version={FLINK_LINE}",
        f"--flink_master={flink_master}",
        f"--flink_job_server_jar={jar}",
        f"--environment_type={environment}",
        f"--job_server_jvm_property=-Xmx{job_server_heap}",
        *(f"--job_server_jvm_property={opt}" for opt in JAVA_MODULE_OPTS),
    ]
    if environment == "EXTERNAL":
        if not worker_pool:
            raise ValueError("environment EXTERNAL needs worker_pool=HOST:PORT")
        args.append(f"--environment_config={worker_pool}")
    if parallelism:
        args.append(f"--parallelism={parallelism}")
    if checkpointing_interval_ms:
        args.append(f"--checkpointing_interval={checkpointing_interval_ms}")
    if streaming:
        args.append("--streaming")
    return args


def flink_runner_args(flink_master: str, extra: Sequence[str]) -> list[str]:
    """Beam options for ``beamline run --runner flink``; an option already in ``extra`` wins.

    ``[local]`` runs Flink embedded in Beam's job server, with LOOPBACK
    workers. ``HOST:PORT`` submits to a session cluster's REST endpoint: when
    that is the cluster ``beamline flink start`` runs from the default state
    folder, its worker pool serves the EXTERNAL environment and the
    parallelism defaults to its task slots; any other cluster gets LOOPBACK
    workers (its TaskManagers must reach this machine) unless ``extra`` names
    ``--environment_type``. Checkpointing options in ``extra`` pass through.
    """
    environment, worker_pool, parallelism = "LOOPBACK", None, None
    if flink_master not in ("[local]", "[auto]"):
        host, port = host_port(flink_master, "--flink-master")
        if not port_open(port, host):
            raise ServiceError(
                f"no Flink REST endpoint answers at {flink_master}; start a local session cluster "
                "with `beamline flink start`, or pass --flink-master [local] for embedded Flink"
            )
        local = FlinkCluster().status()
        if local.running and local.rest_port == port and local.worker_pool and host in _LOCAL_HOSTS:
            environment, worker_pool, parallelism = "EXTERNAL", local.worker_pool, local.slots_total or None
    args = flink_pipeline_args(
        flink_master=flink_master,
        environment=environment,
        worker_pool=worker_pool,
        parallelism=parallelism,
        job_server_jar=require_job_server_jar(),
    )
    if environment == "EXTERNAL":
        args.extend(staging_args())
    return _not_given(args, extra)


def _not_given(args: list[str], extra: Sequence[str]) -> list[str]:
    """``args`` without the options ``extra`` sets itself.

    ``--job_server_jvm_property`` may repeat: ours are dropped only when the
    same value is given, and our heap only when ``extra`` sets one.
    """
    user_heap = any(arg.startswith("--job_server_jvm_property=-Xmx") for arg in extra)
    kept = [
        arg
        for arg in args
        if not (
            flag_of(arg) == "--job_server_jvm_property"
            and (arg in extra or (user_heap and arg.startswith("--job_server_jvm_property=-Xmx")))
        )
    ]
    return not_given(kept, extra, repeatable={"--job_server_jvm_property"})


# -- configuration and status ---------------------------------------------------------


@dataclass(frozen=True)
class FlinkClusterConfig:
    """How big the cluster is and where it listens."""

    rest_port: int = 8081
    taskmanagers: int = 1
    slots_per_taskmanager: int = 2
    jobmanager_memory: str = "768m"
    taskmanager_memory: str = "1280m"
    worker_pool_port: int | None = 50000
    #: Extra Flink settings, flat keys (``{"state.backend.type": "rocksdb"}``).
    flink_conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterStatus:
    """What runs from one state folder, and what the REST API reports."""

    running: bool
    state_dir: Path
    rest_port: int | None
    jobmanager_pid: int | None
    taskmanager_pids: dict[int, int]
    worker_pool_port: int | None
    worker_pool_pid: int | None
    taskmanagers_registered: int = 0
    slots_total: int = 0
    slots_available: int = 0
    jobs_running: int = 0

    @property
    def flink_master(self) -> str | None:
        """``HOST:PORT`` to pass as ``--flink_master``."""
        return f"localhost:{self.rest_port}" if self.rest_port else None

    @property
    def worker_pool(self) -> str | None:
        """``HOST:PORT`` to pass as ``--environment_config`` (EXTERNAL)."""
        return f"localhost:{self.worker_pool_port}" if self.worker_pool_pid else None


class FlinkCluster:
    """Start, stop and inspect one standalone Flink session cluster rooted in ``folder``."""

    def __init__(
        self,
        folder: Path | str | None = None,
        config: FlinkClusterConfig | None = None,
        *,
        libs_dir: Path | str | None = None,
    ) -> None:
        self.folder = Path(folder) if folder else state_dir() / "flink"
        self.config = config or FlinkClusterConfig()
        self.libs_dir = Path(libs_dir) if libs_dir else flink_libs_dir()
        self.worker_pool = WorkerPool(self.folder)

    # -- files in the state folder ------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        return self.folder / "conf"

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def jobmanager_log(self) -> Path:
        return self.folder / "jobmanager.log"

    def taskmanager_log(self, index: int) -> Path:
        return self.folder / f"taskmanager-{index}.log"

    def _jm_pid_file(self) -> Path:
        return self.folder / "jobmanager.pid"

    def _tm_pid_file(self, index: int) -> Path:
        return self.folder / f"taskmanager-{index}.pid"

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / "cluster.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        (self.folder / "cluster.json").write_text(json.dumps(state, indent=2) + "\n")

    def _tm_indexes(self) -> list[int]:
        indexes = []
        for pid_file in self.folder.glob("taskmanager-*.pid"):
            try:
                indexes.append(int(pid_file.stem.rsplit("-", 1)[1]))
            except ValueError:
                continue
        return sorted(indexes)

    # -- public API ---------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        port = self._state().get("rest_port", self.config.rest_port)
        return f"http://localhost:{port}"

    def rest(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET ``path`` from the JobManager's REST API and decode the JSON."""
        with urllib.request.urlopen(self.rest_url + path, timeout=timeout_s) as response:
            return json.loads(response.read())

    def status(self) -> ClusterStatus:
        """Processes alive from this folder, plus the REST overview when it answers."""
        state = self._state()
        jm_pid = read_pid(self._jm_pid_file())
        tms = {i: pid for i in self._tm_indexes() if (pid := read_pid(self._tm_pid_file(i))) is not None}
        overview: dict[str, Any] = {}
        if jm_pid is not None:
            try:
                overview = self.rest("/overview", timeout_s=2.0)
            except (OSError, ValueError):
                overview = {}
        return ClusterStatus(
            running=jm_pid is not None,
            state_dir=self.folder,
            rest_port=state.get("rest_port"),
            jobmanager_pid=jm_pid,
            taskmanager_pids=tms,
            worker_pool_port=state.get("worker_pool_port"),
            worker_pool_pid=self.worker_pool.pid(),
            taskmanagers_registered=int(overview.get("taskmanagers", 0)),
            slots_total=int(overview.get("slots-total", 0)),
            slots_available=int(overview.get("slots-available", 0)),
            jobs_running=int(overview.get("jobs-running", 0)),
        )

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> ClusterStatus:
        """Start JobManager, TaskManagers and worker pool; return once every TaskManager has registered."""
        current = self.status()
        if current.running or current.taskmanager_pids:
            raise ServiceError(
                f"a Flink cluster is already running from {self.folder} (REST port "
                f"{current.rest_port}); use it, or run `beamline flink stop` first"
            )
        java = find_java()
        if not any(self.libs_dir.glob("flink-runtime-*.jar")):
            raise SetupMissing(f"Flink jars not found in {self.libs_dir}; run `make setup` first")
        cfg = self.config
        require_free_port(cfg.rest_port, "Flink REST/UI")
        if cfg.worker_pool_port is not None:
            require_free_port(cfg.worker_pool_port, "Python SDK worker pool")
        self._prepare_folder()
        for stale in self.folder.glob("taskmanager-*.pid"):
            stale.unlink()
        rpc_port = free_port()
        self._write_config(rpc_port)
        state: dict[str, Any] = {
            "flink_version": FLINK_VERSION,
            "rest_port": cfg.rest_port,
            "rpc_port": rpc_port,
            "worker_pool_port": cfg.worker_pool_port,
            "jobmanager_jvm": self._resource_params(java, "GET_JM_RESOURCE_PARAMS"),
            "taskmanager_jvm": self._resource_params(java, "GET_TM_RESOURCE_PARAMS"),
        }
        self._save_state(state)

        jvm, dynamic = state["jobmanager_jvm"]
        jm = spawn(
            [*self._java_cmd(java, jvm, self.jobmanager_log), _ENTRYPOINT_JM, *self._conf_args(dynamic)],
            self.folder / "jobmanager.out",
            self._jm_pid_file(),
        )
        try:
            indexes = [self._spawn_taskmanager(java) for _ in range(cfg.taskmanagers)]
            if cfg.worker_pool_port is not None:
                self.worker_pool.start(cfg.worker_pool_port)
            self._wait_ready(indexes, timeout_s, jm)
        except BaseException:
            self.stop()
            raise
        return self.status()

    def add_taskmanager(self, *, timeout_s: float = READY_TIMEOUT_S) -> int:
        """Start one more TaskManager (e.g. to replace a killed one); return its number."""
        status = self.status()
        if not status.running:
            raise ServiceError(f"no Flink cluster runs from {self.folder}; run `beamline flink start` first")
        index = self._spawn_taskmanager(find_java())
        self._wait_ready([index], timeout_s, None)
        return index

    def kill_taskmanager(self, index: int | None = None) -> int:
        """SIGKILL one TaskManager (the newest by default), as a crash would; return its number."""
        alive = self.status().taskmanager_pids
        if not alive:
            raise ServiceError(f"no TaskManager runs from {self.folder}")
        index = max(alive) if index is None else index
        if index not in alive:
            raise ServiceError(f"TaskManager {index} is not running (running: {sorted(alive)})")
        terminate(self._tm_pid_file(index), STOP_TIMEOUT_S, hard=True)
        return index

    def wait_for_slots(self, slots: int, *, timeout_s: float = READY_TIMEOUT_S) -> ClusterStatus:
        """Block until the REST API reports exactly ``slots`` registered slots."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status.slots_total == slots:
                return status
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the Flink cluster reports {status.slots_total} slots, not {slots}, "
                    f"after {timeout_s:.0f}s; see {self.jobmanager_log}"
                )
            time.sleep(0.2)

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop worker pool, job server, TaskManagers and JobManager. False if none ran."""
        stopped = self.worker_pool.stop()
        stopped |= FlinkJobServer(self.folder).stop()
        for index in self._tm_indexes():
            stopped |= terminate(self._tm_pid_file(index), timeout_s)
        stopped |= terminate(self._jm_pid_file(), timeout_s)
        return stopped

    # -- helpers ------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        prepare_folder(self.folder, self.conf_dir, self.checkpoint_dir, self.folder / "tmp")

    def _write_config(self, rpc_port: int) -> None:
        cfg = self.config
        tmp = self.folder / "tmp"
        settings: dict[str, str] = {
            "jobmanager.rpc.address": "localhost",
            "jobmanager.rpc.port": str(rpc_port),
            "jobmanager.bind-host": "localhost",
            "jobmanager.memory.process.size": cfg.jobmanager_memory,
            "taskmanager.bind-host": "localhost",
            "taskmanager.host": "localhost",
            "taskmanager.numberOfTaskSlots": str(cfg.slots_per_taskmanager),
            "taskmanager.memory.process.size": cfg.taskmanager_memory,
            # Beam's operators live on the task heap; keep managed memory modest.
            "taskmanager.memory.managed.fraction": "0.2",
            "rest.address": "localhost",
            "rest.bind-address": "localhost",
            "rest.port": str(cfg.rest_port),
            "parallelism.default": "1",
            "io.tmp.dirs": str(tmp),
            "web.tmpdir": str(tmp),
            "web.upload.dir": str(tmp),
            "blob.storage.directory": str(tmp),
            "state.backend.type": "hashmap",
            "execution.checkpointing.dir": f"file://{self.checkpoint_dir}",
            "execution.checkpointing.savepoint-dir": f"file://{self.checkpoint_dir}/savepoints",
            # A killed TaskManager is noticed within seconds, not the default 50s.
            "heartbeat.interval": "2000",
            "heartbeat.timeout": "15000",
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": "20",
            "restart-strategy.fixed-delay.delay": "2 s",
            **cfg.flink_conf,
        }
        # config.yaml accepts flat keys; quote values so YAML keeps them strings.
        lines = [f"{key}: {json.dumps(value)}" for key, value in settings.items()]
        (self.conf_dir / "config.yaml").write_text("\n".join(lines) + "\n")
        (self.conf_dir / "log4j.properties").write_text(
            "monitorInterval = 30\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = MainAppender\n"
            "appender.main.name = MainAppender\n"
            "appender.main.type = File\n"
            "appender.main.append = true\n"
            "appender.main.fileName = ${sys:log.file}\n"
            "appender.main.layout.type = PatternLayout\n"
            "appender.main.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n\n"
            "logger.netty.name = org.jboss.netty.channel.DefaultChannelPipeline\n"
            "logger.netty.level = OFF\n"
        )

    def _resource_params(self, java: str, command: str) -> list[list[str]]:
        """Flink's own memory arithmetic (what its launch scripts run)."""
        result = subprocess.run(
            [
                java,
                "-Xmx128m",
                "-cp",
                f"{self.libs_dir}/*",
                _BASH_JAVA_UTILS,
                command,
                "--configDir",
                str(self.conf_dir),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [ln[len(_UTILS_PREFIX) :] for ln in result.stdout.splitlines() if ln.startswith(_UTILS_PREFIX)]
        if result.returncode != 0 or len(lines) < 2:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ServiceError(
                f"Flink rejected the memory settings in {self.conf_dir / 'config.yaml'}: "
                f"{detail[-1] if detail else 'exit ' + str(result.returncode)}"
            )
        return [lines[-2].split(), lines[-1].split()]

    def _java_cmd(self, java: str, jvm_params: list[str], log_file: Path) -> list[str]:
        return [
            java,
            *jvm_params,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *JAVA_MODULE_OPTS,
            f"-Dlog.file={log_file}",
            f"-Dlog4j.configurationFile=file:{self.conf_dir / 'log4j.properties'}",
            "-cp",
            f"{self.libs_dir}/*",
        ]

    def _conf_args(self, dynamic: list[str]) -> list[str]:
        return ["--configDir", str(self.conf_dir), *dynamic]

    def _spawn_taskmanager(self, java: str) -> int:
        """Start the next TaskManager; numbers are never reused, so logs stay apart."""
        state = self._state()
        index = int(state.get("taskmanagers_started", 0)) + 1
        state["taskmanagers_started"] = index
        self._save_state(state)
        jvm, dynamic = state["taskmanager_jvm"]
        spawn(
            [
                *self._java_cmd(java, jvm, self.taskmanager_log(index)),
                _ENTRYPOINT_TM,
                *self._conf_args(dynamic),
                "-D",
                f"taskmanager.resource-id=taskmanager-{index}",
            ],
            self.folder / f"taskmanager-{index}.out",
            self._tm_pid_file(index),
        )
        return index

    def _registered_taskmanagers(self) -> set[str]:
        try:
            return {tm["id"] for tm in self.rest("/taskmanagers", timeout_s=2.0).get("taskmanagers", [])}
        except (OSError, ValueError, KeyError):
            return set()

    def _wait_ready(self, indexes: list[int], timeout_s: float, jobmanager: subprocess.Popen | None) -> None:
        """Block until TaskManagers ``indexes`` are registered with the JobManager."""
        wanted = {f"taskmanager-{index}" for index in indexes}
        deadline = time.monotonic() + timeout_s
        while True:
            if jobmanager is not None and jobmanager.poll() is not None:
                raise ServiceError(
                    f"the Flink JobManager exited with code {jobmanager.returncode} while starting; "
                    f"see {self.jobmanager_log}: {last_log_line(self.jobmanager_log)}"
                )
            for index in indexes:
                if read_pid(self._tm_pid_file(index)) is None:
                    self._tm_pid_file(index).unlink(missing_ok=True)
                    log = self.taskmanager_log(index)
                    raise ServiceError(
                        f"Flink TaskManager {index} exited while starting; see {log}: {last_log_line(log)}"
                    )
            missing = wanted - self._registered_taskmanagers()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"Flink TaskManager(s) {', '.join(sorted(missing))} did not register with the "
                    f"JobManager within {timeout_s:.0f}s; see {self.jobmanager_log}"
                )
            time.sleep(0.2)


class FlinkJobServer(ManagedProcess):
    """Beam's Flink job server as a long-lived process (for PortableRunner submissions).

    ``FlinkRunner`` given ``--flink_job_server_jar`` starts and stops its own job
    server per pipeline; this one outlives the submitting program, so a
    detached streaming job can be submitted with ``--runner=PortableRunner
    --job_endpoint=localhost:JOB_PORT``. Untested here: the jar it runs is
    not available to this project (see :func:`require_job_server_jar`).
    """

    NAME = "job-server"
    WHAT = "Beam Flink job server"
    STOP_TIMEOUT_S = 15.0

    def __init__(self, folder: Path | str | None = None) -> None:
        super().__init__(folder or state_dir() / "flink")

    def start(
        self,
        flink_master: str,
        *,
        job_port: int = 8099,
        artifact_port: int = 8098,
        expansion_port: int = 8097,
        heap: str = "512m",
        timeout_s: float = 90.0,
    ) -> str:
        """Start the job server against ``flink_master`` (``[local]`` or HOST:PORT); return its endpoint."""
        self._refuse_second_start()
        java = find_java()
        jar = require_job_server_jar()
        for port, what in ((job_port, "job"), (artifact_port, "artifact"), (expansion_port, "expansion")):
            require_free_port(port, f"Beam job server {what} service")
        artifacts = self.folder / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        process = spawn(
            [
                java,
                f"-Xmx{heap}",
                *JAVA_MODULE_OPTS,
                "-jar",
                str(jar),
                # The same arguments, in the same form, as FlinkRunner passes.
                "--flink-master",
                flink_master,
                "--artifacts-dir",
                str(artifacts),
                "--job-port",
                str(job_port),
                "--artifact-port",
                str(artifact_port),
                "--expansion-port",
                str(expansion_port),
            ],
            self.log_file,
            self.pid_file,
        )
        self._wait_listening(process, job_port, timeout_s)
        return f"localhost:{job_port}"
