"""`transferlab data info|plot`: look at a dataset before training on it."""

from __future__ import annotations

import argparse
from typing import Any

from transferlab.choices import AUGMENTATIONS
from transferlab.commands._common import add_dataset_args, dataset_from_args


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


def _add_split_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--val-fraction", type=float, default=None, help="also show a stratified validation split of this share of the training set")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="share of the remaining training images kept (the study used 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")


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
                    train_fraction=args.train_fraction, seed=args.seed))
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
