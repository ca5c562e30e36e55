"""Datasets, splits, batch transforms and exploration figures.

`load_dataset(spec)` understands:
    cifar100, cifar10          the official archives (downloaded and checksummed)
    folder:PATH                an image folder, .tar(.gz) or .zip in any common layout
                               (train/+test/, train/+val/(+test/), or class folders only)
    synthetic[:k=v,...]        a small learnable toy dataset made on the fly
"""

from __future__ import annotations

import os

from transferlab.data.cifar import CIFAR10_SOURCE, CIFAR100_SOURCE, load_cifar
from transferlab.data.dataset import ArrayRows, ImageDataset, Split
from transferlab.data.folder import load_folder
from transferlab.data.splits import SplitIndices, make_splits
from transferlab.data.synthetic import load_synthetic
from transferlab.errors import TransferlabError

__all__ = ["ArrayRows", "ImageDataset", "Split", "SplitIndices", "load_dataset", "make_splits"]


def load_dataset(
    spec: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    labels: str = "fine",
    download: bool = True,
    target_size: int | None = None,
    workers: int | None = None,
    max_image_pixels: int | None = None,
) -> ImageDataset:
    """Load a dataset by its spec (see the module docstring).

    Args:
        spec: "cifar100", "cifar10", "folder:PATH" or "synthetic[:options]".
        data_root: download/cache directory (default $TRANSFERLAB_DATA, else ~/.cache/transferlab).
        image_size: for folder datasets, store every image at this square size (px).
        target_size: for folder datasets whose images do not all share one size no larger than
            it, the square stored size (px), reached by the shorter side and a centre crop;
            None means 256. Runs pass round(model input size / 0.875).
        workers: for folder datasets, processes decoding a cold cache; None or 0: one per core.
        max_image_pixels: for folder datasets, refuse images with more pixels (decompression
            bombs); None: $TRANSFERLAB_MAX_IMAGE_PIXELS, else 250,000,000.
        labels: "fine" or "coarse" (CIFAR-100's 20 superclasses).
        download: allow downloading official archives.

    Returns:
        The decoded dataset.
    """
    kind, _, arg = spec.partition(":")
    if kind in ("cifar100", "cifar10"):
        if arg:
            raise TransferlabError(f"{kind} takes no options, got {spec!r}")
        if image_size not in (None, 32):
            raise TransferlabError(
                f"{kind} images are 32x32; --image-size does not apply (models resize per batch)"
            )
        source = CIFAR100_SOURCE if kind == "cifar100" else CIFAR10_SOURCE
        return load_cifar(source, data_root, labels=labels, download=download)
    if labels != "fine":
        raise TransferlabError(f"--labels {labels} is only available for cifar100")
    if kind == "folder":
        if not arg:
            raise TransferlabError("folder needs a path: folder:PATH (a directory, .tar/.tar.gz or .zip)")
        return load_folder(arg, data_root, image_size=image_size, target_size=target_size,
                           workers=workers, max_pixels=max_image_pixels)
    if kind == "synthetic":
        return load_synthetic(arg)
    raise TransferlabError(
        f"unknown dataset {spec!r}: use cifar100, cifar10, folder:PATH or synthetic[:options]"
    )
