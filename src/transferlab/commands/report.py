"""`transferlab report RUN_DIR... --out DIR`: REPORT.md and a self-contained report.html."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `report` sub-command."""
    parser = subparsers.add_parser(
        "report",
        help="write REPORT.md and report.html from runs, compares and sweeps",
        description="Write a report from finished runs: the comparison table beside the 2018 "
        "study's numbers, learning curves, accuracy against time per epoch, confusion matrices, "
        "most-confused pairs, data figures, sweep tables, configs and environment. Each path is "
        "a run directory, a folder of runs (a compare) or a sweep folder.",
    )
    parser.add_argument("paths", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run directories, compare folders or sweep folders")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--title", default="transferlab report", help="report title")
    parser.add_argument("--no-data-figures", action="store_true",
                        help="skip the data figures (they load the dataset)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the report and print where it went."""
    from transferlab.report import write_report

    paths = write_report(args.paths, args.out, title=args.title,
                         data_figures=not args.no_data_figures)
    print(f"wrote {paths.markdown} and {paths.html}")
    return 0
