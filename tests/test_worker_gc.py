"""The garbage-collector threshold a Kafka read sets in its worker process.

Given CPython's default collector settings, when a read starts in a worker,
then the young-generation threshold is the read's, unless someone else already
chose one or the read was told to leave it alone.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import apache_beam as beam
import pytest
from kafka import KafkaProducer

from core.errors import ConfigError
from core.settings import WORKER_GC_THRESHOLD, gc_threshold
from pipelines.options import BeamlineOptions
from transforms.kafka import ReadFromKafka
from transforms.kafka.worker_gc import CPYTHON_DEFAULT_THRESHOLD, tune_worker_gc


@pytest.fixture
def default_gc() -> Iterator[None]:
    """This process with CPython's default thresholds for the test; the old ones after it."""
    saved, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(CPYTHON_DEFAULT_THRESHOLD, *saved[1:])
    gc.enable()
    yield
    gc.set_threshold(*saved)
    if not enabled:
        gc.disable()


def test_raises_the_young_threshold_from_the_default_and_keeps_the_others(default_gc: None) -> None:
    older = gc.get_threshold()[1:]
    assert tune_worker_gc(20_000)
    assert gc.get_threshold() == (20_000, *older)


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda: gc.set_threshold(5_000), id="owner-chose-a-threshold"),
        pytest.param(gc.disable, id="collector-disabled"),
    ],
)
def test_leaves_a_collector_someone_configured(default_gc: None, setup: Callable[[], None]) -> None:
    setup()
    before = gc.get_threshold()
    assert not tune_worker_gc(20_000)
    assert gc.get_threshold() == before


@pytest.mark.parametrize("threshold", [None, 500, CPYTHON_DEFAULT_THRESHOLD])
def test_never_lowers_the_threshold_and_none_means_hands_off(default_gc: None, threshold: int | None) -> None:
    assert not tune_worker_gc(threshold)
    assert gc.get_threshold()[0] == CPYTHON_DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    ("env", "want"),
    [("", WORKER_GC_THRESHOLD), (" 12000 ", 12_000), ("0", 0)],
)
def test_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch, env: str, want: int) -> None:
    monkeypatch.setenv("BEAMLINE_GC_THRESHOLD", env)
    assert gc_threshold() == want


@pytest.mark.parametrize("env", ["lots", "-5", "1.5"])
def test_a_bad_environment_value_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("BEAMLINE_GC_THRESHOLD", env)
    with pytest.raises(ConfigError, match="BEAMLINE_GC_THRESHOLD"):
        gc_threshold()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_read_refuses_a_bad_threshold(bad: object) -> None:
    with pytest.raises(ConfigError, match="gc_threshold"):
        ReadFromKafka("127.0.0.1:9", "any", gc_threshold=bad, validate=False)  # type: ignore[arg-type]


def test_pipeline_option_takes_zero_or_more() -> None:
    assert BeamlineOptions(["--gc_threshold=0"]).gc_threshold == 0
    assert BeamlineOptions(["--gc-threshold=9000"]).gc_threshold == 9000
    with pytest.raises(ConfigError, match="--gc_threshold must be at least 0"):
        BeamlineOptions(["--gc_threshold=-1"]).view_as(BeamlineOptions).gc_threshold  # noqa: B018


@pytest.mark.parametrize(("given", "want"), [(30_000, 30_000), (None, CPYTHON_DEFAULT_THRESHOLD)])
def test_a_read_sets_the_threshold_in_its_worker(
    default_gc: None, bootstrap_servers: str, make_topic: Callable[..., str], given: int | None, want: int
) -> None:
    # The FnApiRunner's default worker runs in this process: what the read's
    # setup did to the collector is visible here once the pipeline ends.
    topic = make_topic(partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    producer.send(topic, b"one").get(timeout=10)
    producer.close()
    with beam.Pipeline("FnApiRunner") as pipeline:
        _ = pipeline | ReadFromKafka(bootstrap_servers, topic, stop="end", gc_threshold=given)
    assert gc.get_threshold()[0] == want
