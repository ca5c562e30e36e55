"""`transferlab evaluate RUN_DIR`: accuracy, per-class scores, calibration, coverage, confusions
and the error gallery with heatmaps."""

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
        description="Evaluate a run directory: test top-1 (and top-5 above 5 classes), balanced "
        "accuracy, macro-F1, per-class precision/recall/F1, calibration (expected calibration "
        "error and a reliability diagram, before and after the run's temperature), the "
        "accuracy/coverage table that helps choose `predict --min-confidence`, the confusion "
        "matrix (CSV and PNG; CIFAR-100 also by superclass), the most-confused class pairs and an "
        "error gallery of the worst test photos with Grad-CAM heatmaps. Uses "
        "RUN_DIR/predictions_test.npz when present, else predicts with best.pt.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory to evaluate")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default RUN_DIR/{EVALUATION_DIR})")
    parser.add_argument("--pairs", type=non_negative_int, default=20, help="most-confused pairs to list (default 20)")
    parser.add_argument("--device", default=None,
                        help="device for best.pt (default auto: cuda, then mps, then cpu)")
    parser.add_argument("--no-figures", action="store_true",
                        help="skip the PNG figures (confusion, reliability, gallery)")
    parser.add_argument("--no-gallery", action="store_true",
                        help="skip the error gallery (it loads best.pt and the run's dataset)")
    parser.add_argument("--no-heatmaps", action="store_true",
                        help="draw the gallery without Grad-CAM heatmaps")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the files and print the tables."""
    from transferlab.api import Run
    from transferlab.errors import TransferlabError
    from transferlab.evaluation import write_evaluation
    from transferlab.evaluation.gallery import gallery_for_run
    from transferlab.evaluation.text import evaluation_text
    from transferlab.io import check_dir_path

    check_dir_path(args.out or args.run_dir / EVALUATION_DIR, "--out")  # before the predictions
    result = Run(args.run_dir).evaluate(device=args.device, pairs=args.pairs)
    gallery_note = ""
    if not (args.no_gallery or args.no_figures):
        if (args.run_dir / "best.pt").is_file():
            try:
                result.gallery = gallery_for_run(
                    args.run_dir, result.labels, result.logits, result.classes,
                    result.confused_pairs, result.calibration.temperature, device=args.device,
                    heatmaps=not args.no_heatmaps)
                gallery_note = result.gallery.note
            except (TransferlabError, OSError) as err:
                gallery_note = f"error gallery skipped: {err}"
        else:
            gallery_note = "error gallery skipped: the run has no best.pt"
    out = write_evaluation(result, args.out or args.run_dir / EVALUATION_DIR,
                           title=args.run_dir.resolve().name, figures=not args.no_figures)
    print(evaluation_text(result))
    if gallery_note:
        print(gallery_note)
    print(f"wrote {out}")
    return 0
