"""`transferlab data info|plot|audit`: look at a dataset before training on it."""

from __future__ import annotations

import argparse
from typing import Any

from transferlab.choices import AUGMENTATIONS
from transferlab.commands._common import (
    add_dataset_args,
    dataset_from_args,
    non_negative_int,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="inspect a dataset: counts and figures")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    info = actions.add_parser("info", help="print images per split and per class")
    add_dataset_args(info)
    _add_split_args(info)
    info.set_defaults(func=run_info)

    plot = actions.add_parser("plot", help="write class-count, sample and augmentation figures (PNG)")
    add_dataset_args(plot)
    _add_split_args(plot)
    plot.add_argument("--out", required=True, help="directory for the PNG files")
    plot.add_argument("--augment", choices=AUGMENTATIONS[1:], default="study",
                      help="augmentation preset to preview on sample images [default study]")
    plot.set_defaults(func=run_plot)

    audit = actions.add_parser(
        "audit", help="find duplicates and train/test leakage, likely wrong labels and odd images",
        description="Audit a dataset before trusting a score: exact and near-duplicate images within "
                    "and across splits (leakage), likely label errors (confident learning on "
                    "out-of-sample probe predictions), outliers, blank, tiny and oddly shaped images, "
                    "and the class balance. Writes audit.json, audit.csv (one row per finding; pass "
                    "it to train/compare/rank --exclude) and audit.html (thumbnails). The images are "
                    "described by a pretrained backbone: give its weights.")
    add_dataset_args(audit)
    audit.add_argument("--out", default="audit", metavar="DIR",
                       help="folder for audit.json, audit.csv and audit.html [default ./audit]")
    audit.add_argument("--model", default=None, metavar="NAME",
                       help="pretrained backbone that describes the images [default mobilenet_v2]")
    audit.add_argument("--weights", metavar="FILE", help="its weights file (.safetensors)")
    audit.add_argument("--weights-dir", metavar="DIR",
                       help="a folder holding its weights file (found by the file's metadata)")
    audit.add_argument("--pretrained", action="store_true", help="download its weights (online)")
    audit.add_argument("--input-size", type=positive_int, default=None, metavar="PX",
                       help="model input size [default: the model's own, at most 3x the images' size]")
    audit.add_argument("--device", default="auto", help="auto | cpu | cuda [default auto]")
    audit.add_argument("--pixel-check", action="store_true",
                       help="also compare the pixels of feature neighbours: finds heavily re-encoded "
                            "small copies, but pairs different photos of objects on a plain background")
    audit.add_argument("--no-labels", action="store_true",
                       help="skip the label check (the slowest part on large datasets)")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.set_defaults(func=run_audit)


def _add_split_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--val-fraction", type=float, default=None, help="also show a stratified validation split of this share of the training set")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="share of the remaining training images kept (the study used 0.5)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the split")


def _run_splits(args: argparse.Namespace, labels: Any) -> dict[str, Any] | None:
    from transferlab.data import make_splits

    if args.val_fraction is None and args.train_fraction == 1.0:
        return None
    idx = make_splits(labels, args.val_fraction or 0.0, args.train_fraction, args.seed)
    return {"train": labels[idx.train], "val": labels[idx.val]}


def run_info(args: argparse.Namespace) -> int:
    from transferlab.api import data_info

    print(data_info(args.dataset, data_root=args.data_root, image_size=args.image_size,
                    labels=args.labels, workers=args.workers, val_fraction=args.val_fraction,
                    train_fraction=args.train_fraction, seed=args.seed,
                    max_image_pixels=args.max_image_pixels))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from transferlab.data.plots import plot_class_counts, plot_dataset

    ds = dataset_from_args(args)
    paths = plot_dataset(ds, args.out, augment=args.augment)
    carved = _run_splits(args, ds["train"].labels)
    if carved:
        test = {k: v.labels for k, v in ds.splits.items() if k != "train"}
        paths.append(plot_class_counts(ds, paths[0].with_name("class_counts_splits.png"), {**carved, **test}))
    for p in paths:
        print(p)
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferlab.api import audit_data
    from transferlab.audit import AuditOptions, summary_lines

    result = audit_data(args.dataset, out=args.out, weights=args.weights, weights_dir=args.weights_dir,
                   pretrained=args.pretrained, data_root=args.data_root, image_size=args.image_size,
                   workers=args.workers, model=args.model or AuditOptions.model,
                   input_size=args.input_size, device=args.device, label_issues=not args.no_labels,
                   pixel_check=args.pixel_check,
                   max_image_pixels=args.max_image_pixels, quiet=args.quiet)
    for line in summary_lines(result):
        print(line)
    out = Path(args.out)
    print(f"wrote {out / 'audit.html'} (open it in a browser), {out / 'audit.csv'} and {out / 'audit.json'}")
    if any(result.count(k) for k in ("leakage", "duplicate", "label_conflict")):
        print(f"to train without the flagged copies: transferlab train ... --exclude {out / 'audit.csv'} "
              "(edit the CSV first to keep any row's file)")
    return 0
