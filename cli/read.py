"""The ``query``, ``lookup`` and ``status`` verbs of the ``beamline`` command line.

Handlers return an exit code; any Beamline error becomes one line on stderr and
a non-zero code, and Ctrl-C stops the running query and exits 130, never with a
traceback. Each query runs within limits a user can raise: ``--memory-limit``,
``--timeout`` and, for the table format, ``--max-rows``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cli.options import add_bootstrap, add_client_settings, add_warehouse, connection
from core.arguments import whole_number
from core.errors import report_errors
from readside.query import DEFAULT_LIMITS, DEFAULT_MAX_ROWS, FORMATS, QueryLimits, Reader, format_result
from warehouse.reader import MAX_TIMEOUT_S, parse_memory_limit

__all__ = ["add_commands", "lookup_command", "query_command", "status_command"]


def _guarded(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return report_errors(lambda: body(args))

    return handler


def _reader(args: argparse.Namespace) -> Reader:
    limits = QueryLimits(memory_limit=args.memory_limit, timeout=args.timeout or None)
    return Reader(args.warehouse, args.as_of, limits=limits)


def _query(args: argparse.Namespace) -> int:
    reader = _reader(args)
    params = list(args.param) or None
    try:
        if args.format == "table":
            table, left_out = reader.query_capped(args.sql, params, args.max_rows or None)
        else:
            table, left_out = reader.query(args.sql, params), 0
    finally:
        reader.close()
    sys.stdout.write(format_result(table, args.format, left_out=left_out))
    return 0


def _lookup(args: argparse.Namespace) -> int:
    reader = _reader(args)
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


def _status(args: argparse.Namespace) -> int:
    import json

    from readside.status import format_status, pipeline_status

    statuses = pipeline_status(args.warehouse, None if args.no_broker else connection(args))
    if args.format == "json":
        print(json.dumps([s.as_json() for s in statuses], indent=2))
    else:
        sys.stdout.write(format_status(statuses, args.warehouse))
    return 0


query_command = _guarded(_query)
lookup_command = _guarded(_lookup)
status_command = _guarded(_status)


def _memory_limit(text: str) -> str:
    return parse_memory_limit(text, "--memory-limit")


_memory_limit.__name__ = "size"


def _common(parser: argparse.ArgumentParser) -> None:
    add_warehouse(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    parser.add_argument(
        "--as-of",
        dest="as_of",
        metavar="TIMESTAMP",
        help="answer from the views as they were at this time (RFC 3339, e.g. 2026-11-26T10:00:00Z)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--memory-limit",
        type=_memory_limit,
        default=DEFAULT_LIMITS.memory_limit,
        metavar="SIZE",
        help="memory DuckDB may use for the query, e.g. 512MB, 8GB (default %(default)s)",
    )
    limits.add_argument(
        "--timeout",
        type=whole_number("--timeout", 0, MAX_TIMEOUT_S),
        default=int(DEFAULT_LIMITS.timeout or 0),
        metavar="SECONDS",
        help="stop the query after this many seconds; 0: no limit (default %(default)s)",
    )
    limits.add_argument(
        "--max-rows",
        type=whole_number("--max-rows", 0),
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help="the table format shows at most N rows and says how many more there are; csv and json "
        "show every row; 0: no limit (default %(default)s)",
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

    status = subparsers.add_parser(
        "status",
        help="each streaming pipeline's snapshot, the offsets its views cover, and its lag behind the log",
        description="Per pipeline with a resume point in the warehouse: the snapshot its views are at, when it "
        "was committed, the offsets per topic it covers and the records in the log after them (lag).",
    )
    add_warehouse(status)
    add_bootstrap(status)
    add_client_settings(status)
    status.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format (default %(default)s)"
    )
    status.add_argument("--no-broker", action="store_true", help="do not ask the broker for end offsets (no lag)")
    status.set_defaults(func=status_command, command_name="status")
