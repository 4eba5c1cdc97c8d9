"""The ``serve`` verb: the read service over HTTP, a JSON API and a live page.

``beamline serve`` answers from the warehouse read-only (the same sandbox as
``beamline query``) until Ctrl-C or SIGTERM, then exits 0. It binds 127.0.0.1
unless told otherwise; any other address needs a token (``BEAMLINE_TOKEN``,
or ``--token``), which every request must then carry. A missing warehouse, a
taken port or a bad option is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cli.options import add_warehouse
from core import settings
from core.arguments import whole_number
from core.errors import report_errors
from warehouse.reader import MAX_TIMEOUT_S, QueryLimits, parse_memory_limit

if TYPE_CHECKING:
    from readside.serve import ServeConfig
    from readside.serve.routes import Service

__all__ = ["add_commands", "announce", "config_of", "serve_command"]

DEFAULT_RATE_LIMIT = 100


def config_of(args: argparse.Namespace) -> ServeConfig:
    """The service's config from ``beamline serve``'s options (ConfigError, one line, if one is wrong)."""
    from readside.serve import ServeConfig

    limits = QueryLimits(memory_limit=args.memory_limit, timeout=args.query_timeout or None)
    return ServeConfig(
        warehouse=args.warehouse,
        host=args.host,
        port=args.port,
        token=args.token or settings.serve_token(),
        cors_origins=tuple(args.cors_origin),
        page_size=min(args.page_size, args.max_rows),
        max_rows=args.max_rows,
        limits=limits,
        rate_limit=float(args.rate_limit),
    )


def announce(url: str, service: Service) -> None:
    """What ``beamline serve`` prints once it listens."""
    config = service.config
    current = service.watcher.current
    access = (
        "every request needs the token (Authorization: Bearer <token>; a browser asks for it as a password)"
        if config.token
        else "no token: loopback clients only"
    )
    print(
        f"beamline serve: {url}/ (live page) · API {url}/v1/ · docs {url}/docs\n"
        f"  warehouse {config.warehouse} at snapshot {current.snapshot_id}, "
        f"{len(current.index):,} inventory rows in memory\n"
        f"  {access}; Ctrl-C stops it",
        flush=True,
    )


def _serve(args: argparse.Namespace) -> int:
    from readside.serve import run

    run(config_of(args), announce, access_log=args.access_log)
    print("beamline serve: stopped", flush=True)
    return 0


def serve_command(args: argparse.Namespace) -> int:
    return report_errors(lambda: _serve(args))


def _memory_limit(text: str) -> str:
    return parse_memory_limit(text, "--memory-limit")


_memory_limit.__name__ = "size"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``beamline serve`` (``beamline demo`` shares their defaults)."""
    add_warehouse(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=whole_number("--port", 0, 65535), default=8000, help="0 picks a free port (default %(default)s)"
    )
    token_state = "set" if settings.serve_token() else "not set"
    parser.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help=f"bearer token every request must carry; required to bind a non-loopback address (env BEAMLINE_TOKEN, "
        f"{token_state}; prefer the variable: a command line is visible to other users)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages of this origin (https://host[:port]) call the API; repeatable (default: CORS off)",
    )
    parser.add_argument(
        "--rate-limit",
        type=whole_number("--rate-limit", 0, 1_000_000),
        default=DEFAULT_RATE_LIMIT,
        metavar="N",
        help="requests a second per client address, twice that in a burst; 0: no limit (default %(default)s)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--page-size",
        type=whole_number("--page-size", 1, 1_000_000),
        default=100,
        metavar="N",
        help="rows per page of /v1/views/{view} unless limit= says (default %(default)s)",
    )
    limits.add_argument(
        "--max-rows",
        type=whole_number("--max-rows", 1, 1_000_000),
        default=1000,
        metavar="N",
        help="the most rows one answer holds: a page's limit=, a query's rows (default %(default)s)",
    )
    limits.add_argument(
        "--query-timeout",
        type=whole_number("--query-timeout", 0, MAX_TIMEOUT_S),
        default=5,
        metavar="SECONDS",
        help="stop a query after this many seconds (answer 408); 0: no limit (default %(default)s)",
    )
    limits.add_argument(
        "--memory-limit",
        type=_memory_limit,
        default="1GB",
        metavar="SIZE",
        help="memory DuckDB may use for one query (default %(default)s)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request on stderr")


def add_commands(verbs: argparse._SubParsersAction) -> None:
    """Register ``beamline serve``."""
    serve = verbs.add_parser(
        "serve",
        help="serve the views read-only over HTTP: a JSON API and a live page",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(serve)
    serve.set_defaults(func=serve_command, command_name="serve")
