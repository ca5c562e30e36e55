"""`transferlab sweep`: a grid over any config fields, one run per point, tabulated.

The 2018 study's optimiser tables, one command each::

    transferlab sweep --config configs/study.yaml --entry inception_v3_transfer --out sweeps/head \\
        --grid stages.0.optimizer=rmsprop,sgd,adam --grid stages.0.lr=1e-2,1e-3,1e-4
    transferlab sweep --config configs/study.yaml --entry inception_v3_transfer --out sweeps/finetune \\
        --grid stages.1.optimizer=rmsprop,sgd,adam --grid stages.1.lr=1e-3,1e-4,1e-5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.commands.compare import add_shared_flags, shared_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `sweep` sub-command."""
    parser = subparsers.add_parser(
        "sweep",
        help="train one model over a grid of config values and tabulate accuracy and time",
        description="Train one run per point of a grid over any config fields (the Cartesian "
        "product of every --grid) and write sweep.json and sweep.csv. Finished points are "
        "skipped on a re-run; an interrupted point is resumed.",
    )
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help="a train config, or a compare config together with --entry")
    parser.add_argument("--entry", default=None, metavar="NAME",
                        help="the model of a compare config to sweep (e.g. inception_v3)")
    parser.add_argument("--grid", action="append", default=[], required=True, metavar="KEY=V1,V2",
                        help="a config field and its values, e.g. stages.0.lr=1e-2,1e-3 "
                        "(repeatable: the grid is the product)")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder")
    add_shared_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the grid and print its table."""
    from transferlab.report.tables import fmt_pct, fmt_seconds
    from transferlab.sweep import load_base_config, parse_grid, run_sweep

    grid = parse_grid(args.grid)
    base = load_base_config(args.config, args.entry, shared_overrides(args), args.sets)
    rows = run_sweep(base, grid, args.out)
    keys = list(grid)
    print("  ".join([*keys, "test top-1", "s/epoch"]))
    for row in rows:
        print("  ".join([*(str(row.params[k]) for k in keys), fmt_pct(row.test_acc1),
                         fmt_seconds(row.epoch_time_s)]))
    print(f"wrote {args.out / 'sweep.csv'}; `transferlab report {args.out} --out DIR` tabulates it")
    return 0
