"""`transferlab compare --config FILE --out DIR`: several models on the same data, one report.

Example (the README's main job, sized for a 2-core CPU)::

    transferlab compare --config configs/quick.yaml --dataset folder:../shared/data/cifar10-jpeg.tar.gz \\
        --weights-dir ../shared/weights --out runs/quick
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transferlab.commands._common import config_flag, positive_int

# Flags shared by compare and sweep: they set the same TrainConfig field on every run.
SHARED_FLAGS = ("dataset", "data_root", "cache_dir", "weights_dir", "device", "train_fraction", "exclude",
                "quiet")


def add_shared_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags that override a field of every run (help from the config), plus --set."""
    for name in SHARED_FLAGS:
        config_flag(parser, name)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override applied to every run, e.g. stages.0.epochs=1")


def shared_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields set by the shared flags (None = not given)."""
    return {name: getattr(args, name) for name in SHARED_FLAGS}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `compare` sub-command."""
    parser = subparsers.add_parser(
        "compare",
        help="train several models on the same data and write one comparison and report",
        description="Train every model of a compare config on the same data and splits, then "
        "write comparison.json/.csv, REPORT.md and report.html. Finished models are skipped on "
        "a re-run and an interrupted one is resumed.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE",
                        help="compare config (e.g. configs/quick.yaml)")
    source.add_argument("--from-rank", type=Path, metavar="RANK_DIR",
                        help="fine-tune the --top best backbones of a `transferlab rank` folder, "
                        "on the images they were ranked on, with the default recipe (--set changes it)")
    parser.add_argument("--top", type=positive_int, default=None, metavar="K",
                        help="with --from-rank: how many of the best-ranked backbones (default 3)")
    parser.add_argument("--out", type=Path, required=True, help="comparison folder")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="runs per model with seeds seed, seed+1, ... (mean and std reported)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="train only these models")
    parser.add_argument("--no-report", action="store_true", help="skip REPORT.md and report.html")
    add_shared_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train the comparison and print where it went."""
    from transferlab.api import compare_models

    compare_models(args.config, args.out, from_rank=args.from_rank, top=args.top, seeds=args.seeds,
            only=args.only, report=not args.no_report, sets=args.sets,
            **{k: v for k, v in shared_overrides(args).items() if v is not None})
    out = Path(args.out)
    print(f"wrote {out / 'comparison.csv'}" + ("" if args.no_report else
          f", {out / 'REPORT.md'} and {out / 'report.html'}"))
    return 0
