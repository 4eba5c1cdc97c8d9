"""One SDK worker of Beamline's worker pool: wait warm, then provision, stage and run Beam's SDK harness.

The pool (:mod:`infra.worker_pool_main`) runs this file's text with
``python -c`` in the worker's own folder, so nothing of a checkout is on the
worker's ``sys.path``: it imports Apache Beam and nothing of Beamline. It does,
in one Python process, what Beam's SDK container boot program does:

1. import Beam (seconds of CPU), then create ``ready`` in its folder: a warm worker;
2. read one line from stdin: the pool's JSON of a ``StartWorkerRequest``;
3. ask the runner's provision service for the job's options and artifacts;
4. fetch every artifact into ``staged/`` (where Beam's harness looks for a
   pickled main session) and unpack the package ``--setup_file`` staged
   (``workflow.tar.gz``) into ``packages/``, first on ``sys.path``: the job's
   code (``transforms``, ``pipelines``...) is imported from there;
5. run Beam's SDK harness (``sdk_worker_main``) until the runner lets go.

Staged requirements and extra packages are not installed (that needs an
index): the workers' Python must already have them, Beam first.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tarfile
from pathlib import Path

import grpc
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
    beam_runner_api_pb2,
    endpoints_pb2,
)
from google.protobuf import json_format, text_format

READY_FILE = "ready"
STAGED_DIR = "staged"
PACKAGES_DIR = "packages"
#: The file Beam's stager gives the package it builds from ``--setup_file``.
WORKFLOW_TARBALL = "workflow.tar.gz"

_LOG = logging.getLogger("beamline.worker")


def _metadata(worker_id: str) -> list[tuple[str, str]]:
    # A runner may serve many workers on one port (Prism does) and tells them apart by this.
    return [("worker_id", worker_id)]


def _descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def _staged_name(artifact: beam_runner_api_pb2.ArtifactInformation, index: int) -> str:
    if artifact.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
        payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
        return os.path.basename(payload.staged_name)
    return f"artifact-{index}"


def fetch_artifacts(
    endpoint: str, worker_id: str, artifacts: list[beam_runner_api_pb2.ArtifactInformation], folder: Path
) -> list[Path]:
    """Write each artifact the runner holds for the job into ``folder``, under its staged name."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with grpc.insecure_channel(endpoint) as channel:
        retrieval = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        for index, artifact in enumerate(artifacts):
            path = folder / _staged_name(artifact, index)
            request = beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)
            with open(path, "wb") as out:
                for chunk in retrieval.GetArtifact(request, metadata=_metadata(worker_id)):
                    out.write(chunk.data)
            written.append(path)
    return written


def unpack_package(tarball: Path, folder: Path) -> Path:
    """Unpack a source package and return its root, the folder that holds its packages."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(folder, filter="data")
    roots = [entry for entry in folder.iterdir() if entry.is_dir()]
    return roots[0] if len(roots) == 1 else folder


def run_worker(request: dict[str, str], folder: Path) -> None:
    """Provision, stage and run the SDK harness for one ``StartWorkerRequest``."""
    worker_id = request["worker_id"]
    with grpc.insecure_channel(request["provision_endpoint"]) as channel:
        provision = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        info = provision.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=_metadata(worker_id)
        ).info
    artifact_endpoint = info.artifact_endpoint.url or request["artifact_endpoint"]
    staged = fetch_artifacts(artifact_endpoint, worker_id, list(info.dependencies), folder / STAGED_DIR)
    _LOG.info("worker %s: staged %s", worker_id, ", ".join(path.name for path in staged) or "nothing")
    for path in staged:
        if path.name == WORKFLOW_TARBALL:
            root = unpack_package(path, folder / PACKAGES_DIR)
            sys.path.insert(0, str(root))
            _LOG.info("worker %s: the staged package is unpacked in %s, first on sys.path", worker_id, root)
    os.environ.update(
        WORKER_ID=worker_id,
        CONTROL_API_SERVICE_DESCRIPTOR=_descriptor(info.control_endpoint.url or request["control_endpoint"]),
        LOGGING_API_SERVICE_DESCRIPTOR=_descriptor(info.logging_endpoint.url or request["logging_endpoint"]),
        PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
        SEMI_PERSISTENT_DIRECTORY=str(folder),
        RUNNER_CAPABILITIES=" ".join(info.runner_capabilities),
    )
    # Imported only now: Beam's harness reads WORKER_ID from the environment when its modules load.
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main([])


def main() -> int:
    """Wait warm for one assignment on stdin; exit 0 without one (the pool closed the pipe)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    folder = Path.cwd()
    (folder / READY_FILE).touch()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    request = json.loads(line)
    run_worker(request, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
