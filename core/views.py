"""The registry of views: one frozen spec per table a user queries.

A view is defined once here (name, contract columns with Arrow types, key, and
what orders its updates) so the sinks, the read side and the tests agree on it.
The version column decides which of two rows for the same key wins: a row
replaces the stored one only if its version is higher, which is what makes
replays and retried bundles harmless. A *hidden* version column is stored in
the Parquet files but never shown to users; ``None`` means insert-once.

A *hidden* table is stored and versioned like a view, in the same snapshots,
but no reader shows it: the resume state of a streaming pipeline (where each
partition's read stands, each key's state, the event ids still deduped), which
must be exactly as old as the views it belongs to. Expiry, time travel and the
commit protocol cover it because it is an ordinary table of the snapshot.

A view has *versions*: a corrected or changed computation is built beside the
one readers see, as its own table named ``<view>@<version>`` (``inventory@v2``)
with the view's columns, then promoted. The first version, ``v1``, is the table
under the plain name, so a warehouse from before versions existed is its
``v1`` without a migration. :func:`get_view` resolves a versioned name to the
view's spec under the table's name; which version readers see is the
warehouse's alias (:mod:`warehouse.format`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pyarrow as pa

from core.errors import ConfigError

__all__ = [
    "CHANGES_TOPICS",
    "DEAD_LETTERS",
    "FIRST_VERSION",
    "INVENTORY",
    "INVENTORY_IDS",
    "INVENTORY_STATE",
    "PIPELINE_STATE",
    "PIPELINE_VIEWS",
    "RESUME_OFFSETS",
    "RESUME_RUNS",
    "SALES_BY_WINDOW",
    "USER_VIEWS",
    "VIEWS",
    "WORD_COUNTS",
    "ViewSpec",
    "check_version",
    "get_view",
    "is_version",
    "led_by",
    "promotion_group",
    "split_name",
    "table_name",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ViewSpec:
    """A view: contract columns, key, and the column that orders its updates."""

    name: str
    columns: tuple[tuple[str, pa.DataType], ...]
    key: tuple[str, ...]
    version_column: str | None
    version_hidden: bool = False
    # Resume state, never shown to readers (see the module docstring).
    hidden: bool = False
    # Rows are appended as they come: no check against stored rows (duplicates are harmless to the reader).
    append_only: bool = False
    # Compaction keeps only the rows this SQL condition holds for: ``t`` is the row, ``needs`` the
    # tables of the same snapshot the condition reads (so rows the state no longer needs are dropped).
    retain_sql: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """The contract columns, in the order users see them."""
        return tuple(name for name, _ in self.columns)

    @property
    def schema(self) -> pa.Schema:
        """The contract schema users see when they query the view."""
        return pa.schema([pa.field(name, dtype) for name, dtype in self.columns])

    @property
    def storage_schema(self) -> pa.Schema:
        """The schema of the Parquet files: contract columns plus a hidden version."""
        if self.version_hidden and self.version_column:
            return self.schema.append(pa.field(self.version_column, pa.int64()))
        return self.schema


INVENTORY = ViewSpec(
    name="inventory",
    columns=(
        ("store_id", pa.string()),
        ("item_id", pa.string()),
        ("on_hand", pa.int64()),
        ("shipped", pa.int64()),
        ("sold", pa.int64()),
        ("events", pa.int64()),
        ("last_event_time", TIMESTAMP),
    ),
    key=("store_id", "item_id"),
    # The number of distinct events applied to the key only grows.
    version_column="events",
)

SALES_BY_WINDOW = ViewSpec(
    name="sales_by_window",
    columns=(
        ("window_start", TIMESTAMP),
        ("window_end", TIMESTAMP),
        ("store_id", pa.string()),
        ("item_id", pa.string()),
        ("units", pa.int64()),
    ),
    key=("window_start", "window_end", "store_id", "item_id"),
    # How many distinct sales the window holds when the row is emitted. Like units it
    # only grows with the log's content (never with retries or restarts), so a
    # replay, a restart or a batch backfill after streaming can only move a window
    # forward; a pane index would restart at 1 after a crash and be ignored.
    version_column="sales",
    version_hidden=True,
)

WORD_COUNTS = ViewSpec(
    name="word_counts",
    columns=(("word", pa.string()), ("count", pa.int64())),
    key=("word",),
    version_column="count",
)

DEAD_LETTERS = ViewSpec(
    name="dead_letters",
    columns=(
        ("source_topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("error", pa.string()),
        ("payload", pa.binary()),
    ),
    key=("source_topic", "partition", "offset"),
    # A record's position in the log identifies it: written once, never replaced.
    version_column=None,
)

# Where a streaming pipeline's read stands: per (pipeline, topic, partition,
# shard of the state step), the next offset below which every record's outcome
# is committed (``next_offset``) and the committed ranges above it
# (``pending``, JSON [[first, last], ...]); ``start_offset``: where the run
# started the partition. ``run`` numbers the pipeline's
# streaming starts; a start writes a row for each of its shards and
# partitions before it reads, so the rows of the newest run are complete.
RESUME_OFFSETS = ViewSpec(
    name="_resume_offsets",
    columns=(
        ("pipeline", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("shard", pa.int32()),
        ("run", pa.int64()),
        ("shards", pa.int32()),
        ("start_offset", pa.int64()),
        ("next_offset", pa.int64()),
        ("pending", pa.string()),
        ("version", pa.int64()),
    ),
    key=("pipeline", "topic", "partition", "shard"),
    version_column="version",
    hidden=True,
)

# Each streaming run of a pipeline: its number and the settings its state depends on (JSON; a
# run with other settings, a window size say, would read the state wrongly, and is refused).
RESUME_RUNS = ViewSpec(
    name="_resume_runs",
    columns=(
        ("pipeline", pa.string()),
        ("run", pa.int64()),
        ("settings", pa.string()),
    ),
    key=("pipeline",),
    version_column="run",
    hidden=True,
)

# Each (store_id, item_id)'s state in the streaming inventory step: totals,
# dedupe frontier and open windows (``state``, JSON). ``expired_before`` is
# out of the JSON so a restore can drop forgotten ids in SQL.
INVENTORY_STATE = ViewSpec(
    name="_inventory_state",
    columns=(
        ("store_id", pa.string()),
        ("item_id", pa.string()),
        ("expired_before", pa.int64()),
        ("state", pa.string()),
        ("version", pa.int64()),
    ),
    key=("store_id", "item_id"),
    version_column="version",
    hidden=True,
)

# The event identities each (store_id, item_id) remembers for dedupe, as the
# step added them (forgotten ones are dropped on restore by ``expired_before``).
# ``ident_hash``: a 64-bit hash of (kind, event_id), which a restore keeps in
# arrays instead of millions of Python strings.
INVENTORY_IDS = ViewSpec(
    name="_inventory_ids",
    columns=(
        ("store_id", pa.string()),
        ("item_id", pa.string()),
        ("kind", pa.string()),
        ("event_id", pa.string()),
        ("ident_hash", pa.int64()),
        ("event_time", pa.int64()),
        ("quantity", pa.int64()),
    ),
    key=("store_id", "item_id", "kind", "event_id"),
    version_column=None,
    hidden=True,
    append_only=True,
    # Ids their key has forgotten (older than its expired_before) go at compaction, so the table
    # stays the size of the dedupe horizon, not of the log.
    retain_sql='t.event_time >= coalesce((SELECT s.expired_before FROM "_inventory_state" s '
    "WHERE s.store_id = t.store_id AND s.item_id = t.item_id), -9223372036854775808)",
    needs=("_inventory_state",),
)

# The changes topics a view's commits are published to (``--changes_topic``): a promote republishes the
# version it makes visible to each, so their consumers follow it.
CHANGES_TOPICS = ViewSpec(
    name="_changes_topics",
    columns=(("view", pa.string()), ("topic", pa.string()), ("since", TIMESTAMP)),
    key=("view", "topic"),
    version_column=None,
    hidden=True,
)

VIEWS: dict[str, ViewSpec] = {
    v.name: v
    for v in (
        INVENTORY,
        SALES_BY_WINDOW,
        WORD_COUNTS,
        DEAD_LETTERS,
        RESUME_OFFSETS,
        RESUME_RUNS,
        INVENTORY_STATE,
        INVENTORY_IDS,
        CHANGES_TOPICS,
    )
}
# The views readers show (the contract's); hidden tables are not among them.
USER_VIEWS: dict[str, ViewSpec] = {name: spec for name, spec in VIEWS.items() if not spec.hidden}


# What each pipeline writes, its main view first: a run writes them all at one version, and promoting
# the main view moves them together (dead_letters is written by both pipelines).
PIPELINE_VIEWS: dict[str, tuple[str, ...]] = {
    "inventory": (INVENTORY.name, SALES_BY_WINDOW.name, DEAD_LETTERS.name),
    "wordcount": (WORD_COUNTS.name, DEAD_LETTERS.name),
}
# The hidden tables of each pipeline's resume point, versioned with its views (its offsets are rows of
# _resume_offsets under the pipeline's name: ``inventory``, ``inventory@v2``).
PIPELINE_STATE: dict[str, tuple[str, ...]] = {"inventory": (INVENTORY_STATE.name, INVENTORY_IDS.name)}

# The version a view starts at: its table has the view's plain name.
FIRST_VERSION = "v1"
# Versions name folders and tables: short, lower case, no separators a path or SQL would read.
_VERSION = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def is_version(text: str) -> bool:
    """Whether ``text`` can name a version (``v2``, ``window-30m``)."""
    return _VERSION.fullmatch(text) is not None


def check_version(version: str) -> str:
    """``version`` if it can name a version, else a one-line ConfigError."""
    if not is_version(version):
        raise ConfigError(
            f"{version!r} cannot name a view version: use 1 to 32 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. v2)"
        )
    return version


def split_name(name: str) -> tuple[str, str | None]:
    """``inventory@v2`` -> (``inventory``, ``v2``); a plain name -> (name, None)."""
    base, at, version = name.partition("@")
    return (base, version) if at else (name, None)


def table_name(view: str, version: str | None) -> str:
    """The table holding ``version`` of ``view``: the plain name for the first version (and for None)."""
    if version is None or version == FIRST_VERSION:
        return view
    return f"{view}@{check_version(version)}"


def get_view(name: str) -> ViewSpec:
    """The spec of view ``name``, or a one-line error listing the views that exist.

    A versioned name (``inventory@v2``) gives the view's spec named after its
    table (``inventory@v1`` is the table ``inventory``).
    """
    base, version = split_name(name)
    spec = VIEWS.get(base)
    if spec is None:
        raise ConfigError(f"unknown view {base!r}; views: {', '.join(USER_VIEWS)}")
    if version is None:
        return spec
    table = table_name(base, version)
    return spec if table == base else replace(spec, name=table)


def led_by(view: str) -> str | None:
    """The pipeline whose main view ``view`` is (None: it is no pipeline's main view)."""
    return next((pipeline for pipeline, views in PIPELINE_VIEWS.items() if views[0] == view), None)


def promotion_group(view: str) -> tuple[str, ...]:
    """The views a promote of ``view`` moves: a pipeline's main view moves all its views, any other only itself."""
    pipeline = led_by(view)
    return PIPELINE_VIEWS[pipeline] if pipeline is not None else (view,)
