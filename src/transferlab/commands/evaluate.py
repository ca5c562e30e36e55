"""`transferlab evaluate RUN_DIR`: top-1/top-5, per-class accuracy, confusion matrix, confusions."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.commands._common import non_negative_int
from transferlab.evaluation import EVALUATION_DIR


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `evaluate` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a finished run on its test split",
        description="Evaluate a run directory: test top-1 and top-5, per-class accuracy, the "
        "confusion matrix (CSV and PNG; CIFAR-100 also by superclass) and the most-confused "
        "class pairs. Uses RUN_DIR/predictions_test.npz when present, else predicts with best.pt.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory to evaluate")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default RUN_DIR/{EVALUATION_DIR})")
    parser.add_argument("--pairs", type=non_negative_int, default=20, help="most-confused pairs to list (default 20)")
    parser.add_argument("--device", default=None,
                        help="device for predicting from best.pt (default cuda if available, else cpu)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG heatmaps")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the files and print the headline numbers."""
    from transferlab.evaluation import evaluate_run, write_evaluation
    from transferlab.io import check_dir_path
    from transferlab.report.tables import fmt_pct

    check_dir_path(args.out or args.run_dir / EVALUATION_DIR, "--out")  # before the predictions
    result = evaluate_run(args.run_dir, device=args.device, num_pairs=args.pairs)
    out = write_evaluation(result, args.out or args.run_dir / EVALUATION_DIR,
                           title=args.run_dir.resolve().name, figures=not args.no_figures)
    top5 = f"  top-5 {fmt_pct(result.test_acc5)}" if result.test_acc5 is not None else ""
    print(f"test top-1 {fmt_pct(result.test_acc1)}{top5}  "
          f"({int(result.confusion.sum()):,} images, from {result.source})")
    if result.confused_pairs:
        print("most-confused pairs (true -> predicted: images):")
        for pair in result.confused_pairs[: min(10, len(result.confused_pairs))]:
            print(f"  {pair.true} -> {pair.predicted}: {pair.count}")
    print(f"wrote {out}")
    return 0
