"""The ``query`` and ``lookup`` verbs of the ``beamline`` command line.

Handlers return an exit code; any Beamline error becomes one line on stderr and
a non-zero code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cli.options import add_warehouse
from core.errors import BeamlineError
from readside.query import FORMATS, Reader, format_result

__all__ = ["add_commands", "lookup_command", "query_command"]


def _guarded(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except BeamlineError as e:
            print(f"beamline {args.command_name}: {e}", file=sys.stderr)
            return 2

    return handler


def _query(args: argparse.Namespace) -> int:
    reader = Reader(args.warehouse, args.as_of)
    try:
        table = reader.query(args.sql, list(args.param) or None)
    finally:
        reader.close()
    sys.stdout.write(format_result(table, args.format))
    return 0


def _lookup(args: argparse.Namespace) -> int:
    reader = Reader(args.warehouse, args.as_of)
    try:
        row = reader.lookup_inventory(args.store, args.item)
    finally:
        reader.close()
    if row is None:
        print(
            f"beamline lookup: no inventory row for store {args.store!r} item {args.item!r}; "
            "list keys with `beamline query 'SELECT store_id, item_id FROM inventory LIMIT 20'`",
            file=sys.stderr,
        )
        return 1
    import pyarrow as pa

    sys.stdout.write(format_result(pa.Table.from_pylist([row]), args.format))
    return 0


query_command = _guarded(_query)
lookup_command = _guarded(_lookup)


def _common(parser: argparse.ArgumentParser) -> None:
    add_warehouse(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    parser.add_argument(
        "--as-of",
        dest="as_of",
        metavar="TIMESTAMP",
        help="answer from the views as they were at this time (RFC 3339, e.g. 2026-11-26T10:00:00Z)",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``query`` and ``lookup`` on the ``beamline`` subparsers."""
    query = subparsers.add_parser(
        "query", help="run one read-only SQL SELECT on the warehouse views", description=__doc__
    )
    query.add_argument("sql", help="one SELECT over inventory, sales_by_window, word_counts, dead_letters")
    query.add_argument(
        "--param", action="append", default=[], metavar="VALUE", help="bind $1, $2, ... in order (repeatable)"
    )
    _common(query)
    query.set_defaults(func=query_command, command_name="query")

    lookup = subparsers.add_parser("lookup", help="point lookup: stock of one item at one store")
    lookup.add_argument("view", choices=["inventory"], help="the view to look up")
    lookup.add_argument("--store", required=True, help="store_id")
    lookup.add_argument("--item", required=True, help="item_id")
    _common(lookup)
    lookup.set_defaults(func=lookup_command, command_name="lookup")
