"""The ``warehouse`` verbs of the ``beamline`` command line: ``beamline warehouse check``.

``check`` reads every file of the newest snapshot (``--all``: of every kept
snapshot) and prints one line per problem, naming the file and its view, then a
summary line; it exits 0 when nothing is wrong and 1 otherwise. It changes
nothing and takes no lock, so it can run beside a streaming pipeline.
"""

from __future__ import annotations

import argparse

from cli.options import add_warehouse
from warehouse.check import check_warehouse

__all__ = ["add_commands", "check_command"]


def check_command(args: argparse.Namespace) -> int:
    """Check the warehouse; exit 0 when clean, 1 when a file is broken."""
    report = check_warehouse(args.warehouse, all_snapshots=args.all_snapshots)
    for problem in report.problems:
        print(problem)
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary())
    return 0 if report.ok else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``warehouse check`` on the ``beamline`` subparsers."""
    warehouse = subparsers.add_parser(
        "warehouse", help="look after the warehouse folder (check its files)", description=__doc__
    )
    verbs = warehouse.add_subparsers(dest="warehouse_verb", required=True, metavar="VERB")
    check = verbs.add_parser(
        "check",
        help="verify the files of the newest snapshot: manifests, Parquet files, schemas, row counts",
        description=__doc__,
    )
    add_warehouse(check)
    check.add_argument(
        "--all",
        dest="all_snapshots",
        action="store_true",
        help="check every kept snapshot (everything time travel can reach), not only the newest",
    )
    check.set_defaults(func=check_command, command_name="warehouse check")
