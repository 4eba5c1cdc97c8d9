"""Beam options that submit a pipeline to a runner outside this process.

``beamline run --runner portable`` submits to a job service (Prism's from
``beamline prism start``, or any portable runner's) with Beam's
``PortableRunner``; ``--runner flink`` builds on the same rules
(:func:`infra.flink_cluster.flink_runner_args`). Two rules hold for both: an
option the user gives among the Beam options wins over the one Beamline would
add, and workers outside this process (EXTERNAL) get Beamline from the
package the job stages (``--setup_file``), not from a checkout.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from core.errors import ConfigError
from core.settings import PROJECT_ROOT
from infra.prism import default_job_endpoint
from infra.worker_pool import WorkerPool

__all__ = ["ENVIRONMENTS", "flag_of", "host_port", "not_given", "portable_runner_args", "staging_args"]

#: ``--environment`` values of ``beamline run --runner portable``.
ENVIRONMENTS = ("external", "loopback")


def host_port(address: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (an ``http://`` prefix allowed) as a pair, or ConfigError naming ``option``."""
    host, _, port = address.split("://")[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{option} {address!r} is not HOST:PORT; e.g. localhost:8081")
    return host, int(port)


def flag_of(arg: str) -> str:
    """``--name`` of ``--name=value``."""
    return arg.split("=", 1)[0]


def not_given(args: Sequence[str], extra: Sequence[str], *, repeatable: Collection[str] = ()) -> list[str]:
    """``args`` without the options ``extra`` sets itself (options in ``repeatable`` are kept).

    An ``--environment_type`` in ``extra`` also drops our ``--environment_config``:
    the two go together.
    """
    given = {flag_of(arg) for arg in extra if arg.startswith("--")} - set(repeatable)
    if "--environment_type" in given:
        given.add("--environment_config")
    return [arg for arg in args if flag_of(arg) not in given]


def staging_args() -> list[str]:
    """``--setup_file`` of this checkout, so EXTERNAL workers import Beamline from the staged package.

    An installed Beamline has no ``setup.py`` beside it: then nothing is added
    and the workers' Python must have Beamline installed.
    """
    setup_file = PROJECT_ROOT / "setup.py"
    return [f"--setup_file={setup_file}"] if setup_file.is_file() else []


def portable_runner_args(
    job_endpoint: str | None,
    environment: str | None,
    environment_config: str | None,
    extra: Sequence[str],
) -> list[str]:
    """Beam options for ``beamline run --runner portable``; an option already in ``extra`` wins.

    ``job_endpoint`` defaults to the job service of ``beamline prism start``
    (``localhost:8073`` when none runs, so the error names it).
    ``environment`` defaults to ``external`` when ``environment_config`` is
    given or ``beamline workers start`` runs a pool from the default state
    folder, else ``loopback`` (workers inside this process, which then must
    stay up until the job ends).
    """
    if environment is not None and environment not in ENVIRONMENTS:
        raise ConfigError(f"--environment must be one of {', '.join(ENVIRONMENTS)}; got {environment!r}")
    if environment == "loopback" and environment_config:
        raise ConfigError("--environment-config names a worker pool: it goes with --environment external")
    endpoint = job_endpoint or default_job_endpoint()
    host_port(endpoint, "--job-endpoint")
    pool = None if environment == "loopback" else environment_config or WorkerPool().status().endpoint
    if environment == "external" and not pool:
        raise ConfigError(
            "--environment external needs a worker pool: pass --environment-config HOST:PORT, "
            "or start one with `beamline workers start`"
        )
    if pool:
        host_port(pool, "--environment-config")
        args = ["--environment_type=EXTERNAL", f"--environment_config={pool}", *staging_args()]
    else:
        args = ["--environment_type=LOOPBACK"]
    return not_given(["--runner=PortableRunner", f"--job_endpoint={endpoint}", *args], extra)
