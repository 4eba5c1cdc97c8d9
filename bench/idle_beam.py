"""An idle Beam streaming job on Prism: the memory any job with a Beam SDK worker and Prism holds.

``python -m bench.idle_beam --seconds S`` runs, on Prism with the SDK worker in
this process (LOOPBACK, as ``beamline run --mode streaming`` does), a
``PeriodicImpulse`` that fires once a second into a step that does nothing,
and ends after ``S`` seconds. It reads no Kafka, keeps no state and imports
nothing of Beamline's but the location of the Prism binary, so the resident
memory of its processes (sampled by ``bench.streaming``) is a floor under any
streaming job on this stack: what a job costs before its own code and data.
"""

from __future__ import annotations

import argparse
import time


def _nothing(_: object) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the job runs")
    args = parser.parse_args(argv)

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    from core.settings import prism_binary

    options = PipelineOptions(
        [
            "--runner=PrismRunner",
            f"--prism_location={prism_binary()}",
            "--streaming",
            "--environment_type=LOOPBACK",
        ]
    )
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Tick" >> PeriodicImpulse(fire_interval=1.0, stop_timestamp=time.time() + args.seconds)
            | "Nothing" >> beam.Map(_nothing)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
