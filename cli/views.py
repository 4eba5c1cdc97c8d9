"""The ``views`` verbs: list a view's versions, promote one, roll back, drop one.

``beamline views promote inventory v2`` moves the alias readers follow from
the version ``inventory`` shows to ``v2``, with ``sales_by_window`` and
``dead_letters`` (the inventory pipeline's views move together), in one
warehouse commit: every reader sees one version or the other for a whole
query. It is refused, in one line, while v2 lags the log by more than
``--max-lag`` (from v2's resume point against the broker's end offsets), unless
``--force``. ``rollback`` moves the aliases back; ``drop`` takes a version out
(never the promoted one) and expiry frees its files. An unknown view or
version is one line and exit 1. After a promote or a rollback, each moved
view's changes topic (if a run publishes one) gets the version now shown,
whole; promoting the version a view already shows publishes it again. See
docs/upgrades.md for the whole procedure.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.options import add_bootstrap, add_client_settings, add_warehouse, connection
from core.arguments import duration
from core.errors import BeamlineError, ConfigError
from core.views import promotion_group

__all__ = ["DEFAULT_MAX_LAG_S", "add_commands"]

# A stream commits about every second; a version this close to the log's end has caught up.
DEFAULT_MAX_LAG_S = 5.0


def _list(args: argparse.Namespace) -> int:
    from readside.versions import format_versions, list_versions

    snap, statuses = list_versions(args.warehouse, None if args.no_broker else connection(args))
    if args.format == "json":
        print(json.dumps({"snapshot_id": snap.snapshot_id, "versions": [s.as_json() for s in statuses]}, indent=2))
    else:
        sys.stdout.write(format_versions(snap, statuses))
    return 0


def _check_lag(args: argparse.Namespace) -> None:
    """Refuse, in one line, a promote of a version that lags the log by more than ``--max-lag``."""
    from readside.versions import version_lag

    lag = version_lag(args.warehouse, args.view, args.version, connection(args))
    bound = f"--max-lag {args.max_lag:g}s"
    if lag is None:
        raise ConfigError(
            f"refused: {args.view} {args.version} has no resume point, so its lag behind the log is unknown "
            f"(a batch run records none); stream it with --view-version {args.version} until it catches up, "
            "or pass --force"
        )
    if lag.records is None:
        raise ConfigError(
            f"refused: the lag of {args.view} {args.version} is unknown ({lag.error}); make the broker reachable "
            "(--bootstrap-servers), or pass --force"
        )
    if lag.records and (lag.seconds is None or lag.seconds > args.max_lag):
        raise ConfigError(
            f"refused: {args.view} {args.version} is {lag.describe()}, more than {bound}; wait for it to catch up "
            "(beamline views list), or pass --force"
        )


def _republish(args: argparse.Namespace, views: list[str], done: str, version: str) -> None:
    """After a promote or rollback: the version now shown, whole, to each of its views' changes topics."""
    from transforms.changes import registered_topics, republish

    if not any(registered_topics(args.warehouse).get(view) for view in views):
        return
    try:
        sent = republish(args.warehouse, connection(args), views)
    except BeamlineError as exc:
        raise BeamlineError(
            f"{done}, but its changes topics are not republished yet ({exc}); run `beamline views promote "
            f"{args.view} {version}` to publish them"
        ) from None
    for topic, messages in sorted(sent.items()):
        print(f"published {messages:,} messages to changes topic {topic}")


def _promote(args: argparse.Namespace) -> int:
    from warehouse.format import load_snapshot
    from warehouse.versions import check_present, check_view, promote

    snap = load_snapshot(args.warehouse)
    check_present(snap, check_view(args.view), args.version)
    shown = [view for view in promotion_group(args.view) if snap.promoted(view) == args.version]
    if not args.force and shown != list(promotion_group(args.view)):
        _check_lag(args)
    moved = promote(args.warehouse, args.view, args.version)
    if moved.snapshot is None:
        # Shown already: published again, as it is (this finishes a promote stopped before its topics were).
        print(f"{args.view} already shows {args.version}; nothing changed")
        views = shown
    else:
        what = ", ".join(f"{view} {before} -> {after}" for view, (before, after) in moved.aliases.items())
        print(f"promoted in snapshot {moved.snapshot.snapshot_id}: {what}")
        views = list(moved.aliases)
    _republish(args, views, f"{args.view} shows {args.version}", args.version)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from warehouse.versions import rollback

    moved = rollback(args.warehouse, args.view)
    assert moved.snapshot is not None  # a rollback always moves the named view
    what = ", ".join(f"{view} {before} -> {after}" for view, (before, after) in moved.aliases.items())
    print(f"rolled back in snapshot {moved.snapshot.snapshot_id}: {what}")
    shown = moved.aliases[args.view][1]
    _republish(args, list(moved.aliases), f"{args.view} shows {shown} again", shown)
    return 0


def _drop(args: argparse.Namespace) -> int:
    from warehouse.versions import drop

    moved = drop(args.warehouse, args.view, args.version)
    if moved.snapshot is None:
        print(f"{args.view} {args.version} holds nothing to drop")
    else:
        print(
            f"dropped in snapshot {moved.snapshot.snapshot_id}: {', '.join(moved.dropped) or 'its rollback target'}; "
            "older snapshots still list its files, which snapshot expiry deletes with them"
        )
    return 0


def _with_broker(parser: argparse.ArgumentParser) -> None:
    add_warehouse(parser)
    add_bootstrap(parser)
    add_client_settings(parser)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``views list|promote|rollback|drop`` on the ``beamline`` subparsers."""
    views = subparsers.add_parser(
        "views", help="versions of the views: list, promote, roll back, drop", description=__doc__
    )
    verbs = views.add_subparsers(dest="views_verb", required=True, metavar="VERB")

    listing = verbs.add_parser(
        "list", help="every view and version: rows, last commit, lag behind the log, which one is promoted"
    )
    _with_broker(listing)
    listing.add_argument("--format", choices=["table", "json"], default="table", help="default %(default)s")
    listing.add_argument("--no-broker", action="store_true", help="do not ask the broker for end offsets (no lag)")
    listing.set_defaults(func=_list, command_name="views list")

    promote = verbs.add_parser(
        "promote",
        help="make VERSION the one VIEW shows (a pipeline's main view moves its other views with it)",
        description="Move the alias of VIEW (and, for a pipeline's main view, of its other views) to VERSION "
        "in one warehouse commit, once VERSION's lag behind the log is within --max-lag.",
    )
    promote.add_argument("view", help="the view, by its plain name (inventory)")
    promote.add_argument("version", help="the version to show (v2)")
    promote.add_argument(
        "--max-lag",
        type=duration("--max-lag"),
        default=DEFAULT_MAX_LAG_S,
        metavar="DURATION",
        help="refuse while the oldest record the version does not cover is older than this (1s, 500ms, 2m; "
        "default %(default)gs)",
    )
    promote.add_argument("--force", action="store_true", help="promote without looking at the lag")
    _with_broker(promote)
    promote.set_defaults(func=_promote, command_name="views promote")

    rollback = verbs.add_parser("rollback", help="show the version VIEW showed before its last promote")
    rollback.add_argument("view", help="the view, by its plain name (inventory)")
    _with_broker(rollback)
    rollback.set_defaults(func=_rollback, command_name="views rollback")

    drop = verbs.add_parser(
        "drop", help="take a version out of the warehouse (never the promoted one); expiry frees its files"
    )
    drop.add_argument("view", help="the view, by its plain name (inventory)")
    drop.add_argument("version", help="the version to drop (v1)")
    _with_broker(drop)
    drop.set_defaults(func=_drop, command_name="views drop")
