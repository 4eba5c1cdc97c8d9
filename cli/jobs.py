"""``beamline jobs list|cancel``: the jobs of a job service, over Beam's job API.

A job submitted with ``beamline run ... --runner portable --detach`` keeps
running in the job service (``beamline prism start``); these verbs find it
again by its id and stop it.
"""

from __future__ import annotations

import argparse

from core.errors import ConfigError

__all__ = ["add_commands"]


def _jobs(args: argparse.Namespace) -> int:
    from infra.job_service import JobServiceClient
    from infra.prism import default_job_endpoint

    if args.action == "cancel" and not args.job_id:
        raise ConfigError("beamline jobs cancel needs the JOB_ID to cancel; `beamline jobs list` shows them")
    endpoint = args.job_endpoint or default_job_endpoint()
    with JobServiceClient(endpoint) as client:
        if args.action == "list":
            jobs = sorted(client.jobs(), key=lambda job: job.job_id)
            if not jobs:
                print(f"no jobs on the job service at {endpoint}")
            width = max((len(job.job_id) for job in jobs), default=0)
            for job in jobs:
                print(f"{job.job_id:<{width}}  {job.state:<10}  {job.name}")
            return 0
        before = client.state(args.job_id)
        state = client.cancel(args.job_id)
    if before != state:
        print(f"job {args.job_id} {state.lower()} (was {before.lower()})")
    else:
        print(f"job {args.job_id} had already ended: {state.lower()}")
    return 0


def add_commands(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline jobs list|cancel``."""
    jobs = verbs.add_parser(
        "jobs",
        help="list or cancel the jobs of a job service (beamline prism start)",
        description="List the jobs of a Beam job service, or cancel one and wait until it has stopped.",
    )
    jobs.add_argument("action", choices=["list", "cancel"])
    jobs.add_argument("job_id", nargs="?", metavar="JOB_ID", help="the job to cancel (as `list` shows it)")
    jobs.add_argument(
        "--job-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="the job service (default: the one `beamline prism start` runs, localhost:8073)",
    )
    jobs.set_defaults(func=_jobs)
