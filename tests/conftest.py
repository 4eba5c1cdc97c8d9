"""Shared fixtures: one real Kafka broker per test session, unique topics per test.

The broker is the same :class:`infra.kafka_broker.KafkaBroker` that
``beamline kafka start`` runs, on a free port with its data in a temp folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.settings import prism_binary
from infra.kafka_broker import KafkaBroker, free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start(free_port())
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap_servers(kafka_broker: KafkaBroker) -> str:
    bootstrap = kafka_broker.status().bootstrap_servers
    assert bootstrap, "session broker has no port"
    return bootstrap


@pytest.fixture
def make_topic(bootstrap_servers: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: ``make_topic(partitions=4)`` creates a topic with a unique name."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    request.addfinalizer(admin.close)
    prefix = request.node.name.split("[")[0][:40].replace("_", "-")

    def create(partitions: int = 4, name: str | None = None) -> str:
        topic = name or f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, partitions, 1)])
        return topic

    return create


@pytest.fixture(scope="session")
def prism_location() -> str:
    path = prism_binary()
    if not Path(path).is_file():
        pytest.fail(f"Prism not found at {path}; run `make setup`")
    return str(path)


# Fixtures that need a running service; a test using one is marked so `make test-unit` can leave it out.
_SERVICE_FIXTURES = {
    "kafka_broker": "kafka",
    "bootstrap_servers": "kafka",
    "make_topic": "kafka",
    "prism_location": "services",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a service fixture (``kafka``, ``services``), however indirectly."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = _SERVICE_FIXTURES.get(fixture)
            if marker:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the test item, so a fixture's teardown can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def body_failed(request: pytest.FixtureRequest) -> bool:
    """Whether the requesting test's body failed, counting a failure an xfail mark expected."""
    report = getattr(request.node, "report_call", None)
    return report is not None and (report.failed or (report.skipped and hasattr(report, "wasxfail")))
