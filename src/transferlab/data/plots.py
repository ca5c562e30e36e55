"""Exploration figures: class counts per split, a labelled sample grid, an augmentation preview.

These are the study's Figures 2-1, 2 and 8, made readable: titles, axis labels, class names.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from transferlab.data.dataset import ImageDataset
from transferlab.data.preprocess import PreprocessConfig, batch_transform
from transferlab.io import atomic_write, check_dir_path


def _save(fig: plt.Figure, path: Path) -> Path:
    """Save atomically so an interrupted run never leaves a truncated PNG."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=120, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path


def plot_class_counts(ds: ImageDataset, path: Path, splits: dict[str, np.ndarray] | None = None) -> Path:
    """Bar chart of images per class, one panel per split.

    Args:
        ds: the dataset.
        path: PNG to write.
        splits: label arrays per split to count instead of the dataset's own splits (e.g. the
            train / val split a run used).
    """
    counts = {k: np.bincount(v, minlength=ds.num_classes) for k, v in (splits or {}).items()} or ds.class_counts()
    n = len(counts)
    width = max(8.0, 0.18 * ds.num_classes + 2)
    fig, axes = plt.subplots(n, 1, figsize=(width, 2.6 * n), squeeze=False)
    for ax, (split, c) in zip(axes[:, 0], counts.items(), strict=True):
        ax.bar(np.arange(ds.num_classes), c, color="tab:blue")
        ax.set_title(f"{ds.name} {split}: {int(c.sum()):,} images, {ds.num_classes} classes")
        ax.set_ylabel("images")
        ax.set_xlim(-0.6, ds.num_classes - 0.4)
        if ds.num_classes <= 100:
            ax.set_xticks(np.arange(ds.num_classes))
            ax.set_xticklabels(ds.classes, rotation=90, fontsize=7 if ds.num_classes > 20 else 9)
    axes[-1, 0].set_xlabel("class")
    fig.tight_layout()
    return _save(fig, path)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 10)
    return math.ceil(n / cols), cols


def plot_samples(
    ds: ImageDataset,
    path: Path,
    split: str = "train",
    per_class: int | None = None,
    max_classes: int = 20,
    seed: int = 0,
) -> Path:
    """A grid of sample images, each titled with its class name (about 40 images by default)."""
    rng = np.random.default_rng(seed)
    if per_class is None:
        per_class = max(1, 40 // min(ds.num_classes, max_classes))
    labels = ds[split].labels
    picks = []
    for c in range(min(ds.num_classes, max_classes)):
        members = np.flatnonzero(labels == c)
        if len(members):
            picks.extend(rng.choice(members, size=min(per_class, len(members)), replace=False))
    rows, cols = _grid(len(picks))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks, strict=False):
        ax.imshow(ds[split].images[i], interpolation="nearest")
        ax.set_title(ds.classes[labels[i]], fontsize=8)
    fig.suptitle(f"{ds.name}: sample {split} images")
    fig.tight_layout()
    return _save(fig, path)


def plot_augmentations(ds: ImageDataset, path: Path, augment: str = "study", n: int = 6, copies: int = 4, seed: int = 0) -> Path:
    """Each row: an original image, then `copies` augmented versions of it."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds["train"]), size=n, replace=False)
    images = torch.from_numpy(ds["train"].images[idx])
    # The training transform at the stored size, unnormalised: what augmentation does to the pixels.
    cfg = PreprocessConfig(input_size=ds.image_size, mean=(0, 0, 0), std=(1, 1, 1), crop_mode="squash")
    t = batch_transform(cfg, augment=augment, native_size=ds.image_size).train()
    augmented = [t(images, seed=seed + k).permute(0, 2, 3, 1).clamp(0, 1).numpy() for k in range(copies)]
    fig, axes = plt.subplots(n, copies + 1, figsize=(1.6 * (copies + 1), 1.6 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(images[r].numpy(), interpolation="nearest")
        axes[r, 0].set_ylabel(ds.classes[ds["train"].labels[idx[r]]], fontsize=8)
        for k in range(copies):
            axes[r, k + 1].imshow(augmented[k][r], interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("original", fontsize=9)
    for k in range(copies):
        axes[0, k + 1].set_title(f"augmented {k + 1}", fontsize=9)
    fig.suptitle(f"{ds.name}: '{augment}' augmentation")
    fig.tight_layout()
    return _save(fig, path)


def plot_dataset(ds: ImageDataset, out_dir: str | os.PathLike[str], augment: str = "study") -> list[Path]:
    """Write all exploration figures into `out_dir`; returns their paths."""
    out = check_dir_path(out_dir, "figure folder")
    return [
        plot_class_counts(ds, out / "class_counts.png"),
        plot_samples(ds, out / "samples.png"),
        plot_augmentations(ds, out / f"augmentation_{augment}.png", augment=augment),
    ]
