"""A client of Beam's job service API (``JobService`` in ``beam_job_api.proto``).

Every portable runner's job server speaks it: Prism's (``beamline prism
start``), Beam's Flink job server, Dataflow's local one. ``beamline jobs``
lists and cancels jobs through it, and ``beamline prism start`` waits until
its job port answers a ``GetJobs`` call: a port that accepts connections is
not yet a service that answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from core.errors import ServiceError

__all__ = ["TERMINAL_STATES", "JobInfo", "JobServiceClient"]

#: States a job never leaves.
TERMINAL_STATES = frozenset({"DONE", "FAILED", "CANCELLED", "DRAINED", "UPDATED"})
_POLL_S = 0.2


@dataclass(frozen=True)
class JobInfo:
    """One job as the job service reports it."""

    job_id: str
    name: str
    state: str


class JobServiceClient:
    """Calls to the job service at ``endpoint`` (``HOST:PORT``); failures are one-line ServiceErrors."""

    def __init__(self, endpoint: str, *, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = beam_job_api_pb2_grpc.JobServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> JobServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answers(self, timeout_s: float = 1.0) -> bool:
        """Whether a job service answers ``GetJobs`` within ``timeout_s``."""
        try:
            self._stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return True

    def jobs(self) -> list[JobInfo]:
        """Every job the service knows, running or finished, in its order."""
        response = self._call(self._stub.GetJobs, beam_job_api_pb2.GetJobsRequest())
        return [JobInfo(info.job_id, info.job_name, _state_name(info.state)) for info in response.job_info]

    def state(self, job_id: str) -> str:
        """The job's state (``RUNNING``, ``DONE``, ...); ServiceError naming the job if it is unknown."""
        event = self._call(self._stub.GetState, beam_job_api_pb2.GetJobStateRequest(job_id=job_id), job_id=job_id)
        return _state_name(event.state)

    def cancel(self, job_id: str, *, timeout_s: float = 60.0) -> str:
        """Cancel the job and wait until it has stopped; its final state.

        A job already finished is left as it is. Asked first, because a job
        service may answer a cancel of an unknown id without an error.
        """
        state = self.state(job_id)
        if state in TERMINAL_STATES:
            return state
        self._call(self._stub.Cancel, beam_job_api_pb2.CancelJobRequest(job_id=job_id), job_id=job_id)
        deadline = time.monotonic() + timeout_s
        while (state := self.state(job_id)) not in TERMINAL_STATES:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"job {job_id} is still {state} {timeout_s:.0f}s after it was cancelled; "
                    f"see the job service's log ({self.endpoint})"
                )
            time.sleep(_POLL_S)
        return state

    def _call(self, method: Callable[..., Any], request: Any, *, job_id: str | None = None) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServiceError(
                    f"no job service answers at {self.endpoint}; start one with `beamline prism start` "
                    "or pass --job-endpoint HOST:PORT"
                ) from None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if job_id is not None and "not found" in (detail or ""):
                raise ServiceError(
                    f"the job service at {self.endpoint} has no job {job_id}; `beamline jobs list` shows its jobs"
                ) from None
            raise ServiceError(f"the job service at {self.endpoint} refused the call: {detail}") from None


def _state_name(value: int) -> str:
    return beam_job_api_pb2.JobState.Enum.Name(value)
