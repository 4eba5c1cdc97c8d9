"""Changes topics: every commit of a view's rows, published to a compacted Kafka topic for consumers to follow.

Enabled with ``--publish_changes``, or ``--changes_topic NAME`` where
``{view}`` stands for the view (default ``{view}-changes``: ``inventory-changes``,
``sales_by_window-changes``, ``word_counts-changes``). Dead letters have their
own topic already and are not published here. Each message is::

    key:   the view's key as a JSON array              ["store-001","item-0042"]
    value: {"view": "inventory", "view_version": "v2", "snapshot_id": 17,
            "version": 1000000000043, "row": {...the view's columns...}}

``"row": null`` says the key left the view (below). ``version`` is the
alias's generation times 10^12, plus one, plus the row's own version
(``events``, the hidden ``sales``, ``count``): it grows with each change of a
key, and every promote or rollback starts a higher range. A consumer that
keeps per key the message with the highest version, in whatever order they
come, holds exactly the view as readers see it once it has read the topic to
its end; compaction keeps the newest message per key, which for one publisher
is that one.

Who publishes what:

* A pipeline step publishes each commit's rows right after the commit is
  durable, when its table is the version the committed snapshot shows; a
  version built beside the promoted one publishes nothing. A retried step
  publishes the same rows with the same versions again.
* A promote or a rollback (``beamline views promote|rollback``, after its
  commit) republishes the version it made visible, whole, at the new
  generation, and ``"row": null`` at the lowest version of that generation
  for each key only the version it replaced held. So rows the old version
  published before, or still publishes while it races the promote, lose to
  the new version's, and keys the new version lacks are removed.
* A run that creates a changes topic first publishes the view's promoted
  version into it, so a consumer from the beginning starts from the whole view.

The topics each view publishes to are recorded in the warehouse (the hidden
``_changes_topics``), so a promote knows where to republish.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from core.errors import ConfigError
from core.views import CHANGES_TOPICS, FIRST_VERSION, USER_VIEWS, get_view, split_name, table_name
from transforms.kafka import KafkaConnection, KafkaSender, ensure_topics
from warehouse.format import Snapshot, WarehouseMissing, load_snapshot
from warehouse.resume import query_tables
from warehouse.versions import table_rows
from warehouse.writer import Held, Warehouse

__all__ = [
    "DEFAULT_CHANGES_TOPIC",
    "GENERATION_STEP",
    "ChangesPublisher",
    "ChangesTopics",
    "change_version",
    "prepare_changes",
    "publishable",
    "registered_topics",
    "republish",
]

_LOG = logging.getLogger(__name__)

DEFAULT_CHANGES_TOPIC = "{view}-changes"
# A promote's rows outrank every row of the generations before it: a row's own version stays below this.
GENERATION_STEP = 10**12
# Compacted: the topic keeps the newest message per key for ever, so a new consumer reads the whole view.
TOPIC_CONFIG = {"cleanup.policy": "compact"}


def publishable(view: str) -> bool:
    """Whether ``view``'s commits go to a changes topic: views whose rows change (dead letters have their topic)."""
    spec = USER_VIEWS.get(view)
    return spec is not None and spec.version_column is not None


def change_version(generation: int, row_version: int) -> int:
    """The version a consumer orders a key's messages by: the generation first, then the row's own version."""
    return generation * GENERATION_STEP + 1 + row_version


@dataclass(frozen=True)
class ChangesTopics:
    """Where a run publishes its views' changes: each view's topic, on which brokers; small and picklable."""

    connection: KafkaConnection
    topics: tuple[tuple[str, str], ...]  # view -> topic

    def topic_of(self, view: str) -> str | None:
        return dict(self.topics).get(view)


def _topic_names(template: str, views: Sequence[str]) -> dict[str, str]:
    """``--changes_topic``'s name for each view that publishes (one line naming the problem if it cannot)."""
    published = [view for view in views if publishable(view)]
    if "{view}" not in template and len(published) > 1:
        raise ConfigError(
            f"--changes_topic {template!r} would send {', '.join(published)} to one topic; put {{view}} in the name "
            f"(default {DEFAULT_CHANGES_TOPIC})"
        )
    names = {view: template.replace("{view}", view) for view in published}
    for name in names.values():
        if not name or len(name) > 249 or not all(c.isalnum() or c in "._-" for c in name):
            raise ConfigError(
                f"--changes_topic gives {name!r}, which Kafka cannot name a topic: use letters, digits, '.', '_', '-'"
            )
    return names


def prepare_changes(connection: KafkaConnection, warehouse: str, views: Sequence[str], template: str) -> ChangesTopics:
    """Before a run publishes: its topics made (compacted), recorded in the warehouse, and new ones seeded.

    A topic this call creates gets the view's promoted version first (see the
    module docstring), so it never starts with only the changes after it.
    """
    names = _topic_names(template, views)
    created = set(ensure_topics(connection, sorted(set(names.values())), configs=TOPIC_CONFIG))
    now = dt.datetime.now(dt.timezone.utc)
    writer = Warehouse(warehouse)
    try:
        writer.commit(CHANGES_TOPICS.name, [{"view": v, "topic": t, "since": now} for v, t in names.items()])
    finally:
        writer.close()
    seeded = {view: topic for view, topic in names.items() if topic in created}
    if seeded:
        republish(warehouse, connection, list(seeded), only=seeded)
    return ChangesTopics(connection, tuple(sorted(names.items())))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(type(value).__name__)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _records(
    view: str, version: str, snapshot_id: int, generation: int, rows: pa.Table
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages for rows of ``view`` (the storage schema: the row's version column included)."""
    spec = USER_VIEWS[view]
    assert spec.version_column is not None  # only views whose rows change publish
    for row in rows.to_pylist():
        value = {
            "view": view,
            "view_version": version,
            "snapshot_id": snapshot_id,
            "version": change_version(generation, int(row[spec.version_column])),
            "row": {column: row[column] for column in spec.column_names},
        }
        yield _dumps([row[k] for k in spec.key]), _dumps(value)


def _removals(
    view: str, version: str, snapshot_id: int, generation: int, keys: Iterable[bytes]
) -> Iterator[tuple[bytes, bytes]]:
    """``"row": null`` messages at the lowest version of ``generation``: any row of it outranks them."""
    value = {"view": view, "view_version": version, "snapshot_id": snapshot_id, "version": generation * GENERATION_STEP}
    body = _dumps({**value, "row": None})
    for key in keys:
        yield key, body


class ChangesPublisher:
    """Publishes the committed rows of the version readers see to each view's changes topic; one per worker step."""

    def __init__(self, topics: ChangesTopics) -> None:
        self._topics = topics
        self._senders: dict[str, KafkaSender] = {}

    def publish(self, held: Held | None) -> None:
        """Send ``held``'s rows of every publishing view whose table its snapshot shows; wait for the acks."""
        if held is None:
            return
        snap = held.snapshot
        for table, rows in held.tables.items():
            view, version = split_name(table)
            topic = self._topics.topic_of(view)
            shown = snap.alias(view)
            if topic is None or shown.version != (version or FIRST_VERSION):
                continue  # not published, or not the version readers see
            self._sender(topic).send(_records(view, shown.version, snap.snapshot_id, shown.generation, rows))

    def _sender(self, topic: str) -> KafkaSender:
        sender = self._senders.get(topic)
        if sender is None:
            sender = self._senders[topic] = KafkaSender(self._topics.connection, topic)
        return sender

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()


def registered_topics(warehouse: str) -> dict[str, list[str]]:
    """The changes topics each view publishes to, as runs recorded them (empty: none, or no warehouse)."""
    try:
        _, (rows,) = query_tables(warehouse, f"SELECT view, topic FROM {CHANGES_TOPICS.name}", [CHANGES_TOPICS.name])
    except WarehouseMissing:
        return {}
    found: dict[str, list[str]] = {}
    for row in rows.to_pylist():
        found.setdefault(row["view"], []).append(row["topic"])
    return found


def republish(
    warehouse: str,
    connection: KafkaConnection,
    views: Sequence[str],
    *,
    only: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Publish the version each of ``views`` shows now, whole, with removals of what the version before held.

    To every topic recorded for the view (``only``: to that one topic per
    view). What a promote or rollback runs after its commit, and what seeds a
    new topic; running it again publishes the same messages (or newer ones).
    Returns the messages sent per topic.
    """
    topics = only or {}
    recorded = {} if only else registered_topics(warehouse)
    snap: Snapshot = load_snapshot(warehouse)
    sent: dict[str, int] = {}
    for view in views:
        targets = [topics[view]] if view in topics else recorded.get(view, [])
        if not targets or not publishable(view):
            continue
        alias = snap.alias(view)
        rows = table_rows(snap, table_name(view, alias.version))
        messages = list(_records(view, alias.version, snap.snapshot_id, alias.generation, rows))
        if alias.previous is not None:
            kept = {key for key, _ in messages}
            before = table_rows(snap, table_name(view, alias.previous)).select(list(get_view(view).key))
            gone = [key for key in (_dumps(list(r.values())) for r in before.to_pylist()) if key not in kept]
            messages += _removals(view, alias.version, snap.snapshot_id, alias.generation, gone)
        for topic in targets:
            sender = KafkaSender(connection, topic)
            try:
                sender.send(messages)
            finally:
                sender.close()
            sent[topic] = len(messages)
            _LOG.info("published %d messages of %s %s to %s", len(messages), view, alias.version, topic)
    return sent
