"""Argument groups shared by several sub-commands."""

from __future__ import annotations

import argparse

from transferlab.data import ImageDataset, load_dataset


def add_dataset_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """Add DATASET (or --dataset) with --data-root, --image-size and --labels."""
    help_text = ("cifar100, cifar10, folder:PATH (directory, .tar/.tar.gz or .zip laid out as "
                 "train/+test/, train/+val/ or <class>/ folders) or synthetic[:k=v,...]")
    if positional:
        parser.add_argument("dataset", metavar="DATASET", help=help_text)
    else:
        parser.add_argument("--dataset", help=help_text)
    parser.add_argument("--data-root", default=None, help="download/cache directory (default $TRANSFERLAB_DATA, else ~/.cache/transferlab)")
    parser.add_argument("--image-size", type=int, default=None, help="folder datasets: store every image at N x N pixels (default: the shared size when all images have one no larger than 256 px, else shorter side to 256 px and a centre crop)")
    parser.add_argument("--workers", type=int, default=0, help="folder datasets: processes decoding the images on first use (0 = one per usable core)")
    parser.add_argument("--labels", choices=("fine", "coarse"), default="fine", help="CIFAR-100 label set")


def dataset_from_args(args: argparse.Namespace) -> ImageDataset:
    """Load the dataset the shared arguments describe."""
    return load_dataset(args.dataset, data_root=args.data_root, image_size=args.image_size, labels=args.labels,
                        workers=args.workers)
