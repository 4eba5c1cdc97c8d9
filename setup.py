"""Packaging for Beamline.

Installs the packages and the ``beamline`` command. Also usable as Beam's
``--setup_file`` so remote workers (Flink task managers, a worker pool) get the
same transforms and pinned dependencies.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-r"))]


setup(
    name="beamline",
    version="0.1.0",
    description="Event-sourced, CQRS-style views from Kafka topics on Apache Beam",
    python_requires=">=3.10",
    packages=find_packages(
        include=["cli*", "core*", "pipelines*", "transforms*", "warehouse*", "infra*", "producers*", "readside*"]
    ),
    # The live page's HTML, CSS and JS, served by `beamline serve`.
    package_data={"readside.serve": ["static/*"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "dev": read_requirements("requirements-dev.txt"),
        "confluent": read_requirements("requirements-confluent.txt"),
        # Benchmark baselines only; conflicts with "confluent" (quixstreams pins confluent-kafka<2.13),
        # which is why `make bench` installs it into a virtualenv of its own.
        "bench": read_requirements("requirements-bench.txt"),
    },
    entry_points={"console_scripts": ["beamline=cli.main:main"]},
)
