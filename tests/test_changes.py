"""Changes topics against the session's real broker: what a consumer that keeps the highest version per key holds.

The warehouse is written with the writer's own API and the publisher is the
one the pipeline steps use, so the races a pipeline meets (an old version's
commit published after a promote, a retried publish) are played in order here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType

from core.errors import ConfigError
from readside.query import format_result, run_query
from transforms.changes import ChangesPublisher, prepare_changes, republish
from transforms.kafka import KafkaConnection
from warehouse.versions import promote, rollback
from warehouse.writer import GroupCommitter, Warehouse

T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.timezone.utc)


def stock(item: str, events: int, on_hand: int) -> dict[str, Any]:
    return {
        "store_id": "s1",
        "item_id": item,
        "on_hand": on_hand,
        "shipped": on_hand,
        "sold": 0,
        "events": events,
        "last_event_time": T0,
    }


def consumed(bootstrap: str, topic: str) -> tuple[list[tuple[bytes, dict[str, Any]]], dict[bytes, dict[str, Any]]]:
    """Every message of ``topic`` from the beginning, and the table a consumer keeping the highest version holds."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )  # fmt: skip
    messages = [(m.key, json.loads(m.value)) for m in consumer]
    consumer.close()
    best: dict[bytes, dict[str, Any]] = {}
    for key, value in messages:
        if key not in best or value["version"] > best[key]["version"]:
            best[key] = value
    return messages, {key: value["row"] for key, value in best.items() if value["row"] is not None}


def shown(root: Path) -> dict[bytes, dict[str, Any]]:
    """The inventory view as readers see it, keyed as the topic keys it."""
    rows = json.loads(format_result(run_query("SELECT * FROM inventory", root), "json"))
    return {json.dumps([r["store_id"], r["item_id"]], separators=(",", ":")).encode(): r for r in rows}


def test_a_consumer_keeping_the_highest_version_ends_with_the_view_readers_see(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    root = tmp_path / "wh"
    writer = GroupCommitter(Warehouse(root))
    writer.commit("inventory", [stock("a", 1, 10), stock("b", 1, 10)])
    writer.commit("inventory@v2", [stock("b", 2, 20), stock("c", 2, 20)])
    template = f"{{view}}-changes-{uuid.uuid4().hex[:8]}"
    topic = template.replace("{view}", "inventory")
    changes = prepare_changes(KafkaConnection(bootstrap_servers), str(root), ["inventory", "dead_letters"], template)
    assert changes.topics == ((("inventory", topic)),)  # dead letters have a topic of their own
    publisher = ChangesPublisher(changes)
    try:
        assert consumed(bootstrap_servers, topic)[1] == shown(root)  # a new topic starts from the whole view
        publisher.publish(writer.commit("inventory", [stock("a", 3, 13)]))
        before_promote = writer.commit("inventory", [stock("b", 4, 14)])  # committed before the promote ...
        publisher.publish(writer.commit("inventory@v2", [stock("c", 5, 25)]))  # not shown: not published
        assert {v["view_version"] for _, v in consumed(bootstrap_servers, topic)[0]} == {"v1"}

        promote(root, "inventory", "v2")
        assert republish(str(root), KafkaConnection(bootstrap_servers), ["inventory"]) == {topic: 3}  # b, c; a gone
        publisher.publish(before_promote)  # ... and published after it: its lower generation loses
        publisher.publish(writer.commit("inventory@v2", [stock("d", 6, 26)]))
        publisher.publish(writer.commit("inventory", [stock("e", 7, 17)]))  # v1 goes on, unseen: not published
        messages, table = consumed(bootstrap_servers, topic)
        assert table == shown(root) and set(table) == {b'["s1","b"]', b'["s1","c"]', b'["s1","d"]'}
        assert run_query("SELECT min(on_hand) AS n FROM inventory", root).to_pylist() == [{"n": 20}]

        def sent_for_d(found: list[tuple[bytes, dict[str, Any]]]) -> list[tuple[int, Any]]:
            return [(v["version"], v["row"]) for k, v in found if k == b'["s1","d"]']

        retried = writer.commit("inventory@v2", [stock("d", 6, 26)])  # a retried bundle: nothing new to commit
        publisher.publish(retried)
        again = sent_for_d(consumed(bootstrap_servers, topic)[0])
        assert again == sent_for_d(messages) * 2  # the same message once more: the same version

        rollback(root, "inventory")
        republish(str(root), KafkaConnection(bootstrap_servers), ["inventory"])
        assert consumed(bootstrap_servers, topic)[1] == shown(root)
        assert {json.loads(k)[1] for k in shown(root)} == {"a", "b", "e"}
    finally:
        publisher.close()
        writer.warehouse.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        assert "'cleanup.policy': {'value': 'compact'" in str(described), described
    finally:
        admin.close()


def test_a_changes_topic_name_kafka_cannot_take_is_one_line(tmp_path: Path) -> None:
    connection = KafkaConnection("127.0.0.1:1")
    with pytest.raises(ConfigError, match="put \\{view\\} in the name"):
        prepare_changes(connection, str(tmp_path), ["inventory", "sales_by_window"], "all-changes")
    with pytest.raises(ConfigError, match="cannot name a topic"):
        prepare_changes(connection, str(tmp_path), ["word_counts"], "{view} changes")
