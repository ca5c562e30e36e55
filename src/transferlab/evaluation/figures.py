"""Figures of runs and evaluations (matplotlib Agg backend, no display needed), saved as PNG.

Functions named `*_figure` return the matplotlib `Figure` (what a notebook shows); the
`plot_*` functions save one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:
    # Headless: reports are written on servers and in CI. A Jupyter kernel keeps its own inline
    # backend (also headless), so the figures the API returns show in the notebook.
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from transferlab.io import atomic_write  # noqa: E402


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Save a figure as PNG through a temporary file and close it."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_confusion_matrix(
    confusion: np.ndarray, classes: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Save `confusion_figure` as a PNG."""
    return save_figure(confusion_figure(confusion, classes, title), path,
                       dpi=130 if len(classes) > 20 else 110)


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion heatmap with every class name on both axes.

    The figure grows with the number of classes (about 0.17 inch per class) and the tick labels
    shrink to stay legible at 100 classes; rows are normalised so that rare and common classes
    share one colour scale (the raw counts are in the CSV).
    """
    k = len(classes)
    support = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(support > 0, confusion / np.maximum(support, 1), 0.0)
    side = max(5.0, 0.17 * k + 2.5)
    fontsize = 9 if k <= 20 else max(5, int(9 - k / 25))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(normalised, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(k), labels=classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), labels=classes, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:  # counts in the cells stay readable only for small matrices
        for t in range(k):
            for p in range(k):
                if confusion[t, p]:
                    colour = "black" if normalised[t, p] > 0.6 else "white"
                    ax.text(p, t, str(int(confusion[t, p])), ha="center", va="center",
                            fontsize=fontsize - 1, color=colour)
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f"{title}  (top-1 {100 * accuracy:.1f}%)".strip())
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="fraction of the true class")
    plt.close(fig)  # returned, not left open: pyplot would show it a second time in a notebook
    return fig


def _stage_positions(rows: Sequence[Mapping[str, object]]) -> tuple[list[int], list[tuple[int, str]]]:
    """Global epoch numbers (1, 2, ... across stages) and where each stage starts."""
    x: list[int] = []
    starts: list[tuple[int, str]] = []
    previous = None
    for i, row in enumerate(rows, start=1):
        stage = str(row.get("stage", ""))
        if stage != previous:
            starts.append((i, stage))
            previous = stage
        x.append(i)
    return x, starts


def _column(rows: Sequence[Mapping[str, object]], key: str) -> list[float]:
    """One metric as floats, NaN where missing."""
    out = []
    for row in rows:
        value = row.get(key)
        try:
            out.append(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def plot_learning_curves(
    rows: Sequence[Mapping[str, object]], path: Path, title: str = ""
) -> Path:
    """Save `learning_curves_figure` as a PNG."""
    return save_figure(learning_curves_figure(rows, title), path)


def learning_curves_figure(rows: Sequence[Mapping[str, object]], title: str = "") -> Figure:
    """Loss and accuracy per epoch for train and validation, with stage boundaries marked."""
    x, starts = _stage_positions(rows)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc1", "top-1 accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = _column(rows, f"{split}_{metric}")
            if not all(math.isnan(v) for v in values):
                ax.plot(x, values, style, markersize=3, label=split)
        for start, stage in starts:
            if start > 1:
                ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=1)
            # Stage names sit just above the plot, at the stage's first epoch.
            ax.text(start - 0.4, 1.01, stage, transform=ax.get_xaxis_transform(),
                    va="bottom", ha="left", fontsize=8, color="grey")
        ax.set_xlim(0.5, len(x) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        finite = [v for v in _column(rows, f"train_{metric}") + _column(rows, f"val_{metric}")
                  if math.isfinite(v) and v > 0]
        if metric == "loss" and finite and max(finite) / min(finite) > 50:
            ax.set_yscale("log")  # a diverging or from-scratch start would flatten the rest
        ax.set_xlabel("epoch (all stages)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # returned, not left open (see confusion_figure)
    return fig


@dataclass(frozen=True)
class TimePoint:
    """One model on the accuracy against time plot."""

    label: str
    epoch_time_s: float
    accuracy: float  # fraction
    group: str = "this run"  # points of one group share a marker (e.g. "2018 study")


def plot_accuracy_vs_time(points: Sequence[TimePoint], path: Path, title: str = "") -> Path:
    """Test accuracy against mean training time per epoch, one marker per group."""
    markers = ["o", "^", "s", "D", "v"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = list(dict.fromkeys(p.group for p in points))
    for index, (marker, group) in enumerate(zip(markers * 4, groups, strict=False)):
        pts = [p for p in points if p.group == group]
        ax.scatter([p.epoch_time_s for p in pts], [100 * p.accuracy for p in pts],
                   marker=marker, s=50, label=group)
        # The first group's labels go above their markers, the others' below, staggered in
        # height, so that neighbouring points (the 2018 models sit close) keep readable labels.
        for k, p in enumerate(sorted(pts, key=lambda q: q.epoch_time_s)):
            dy = 4 if index == 0 else -12 - 10 * (k % 2)
            ax.annotate(p.label, (p.epoch_time_s, 100 * p.accuracy), textcoords="offset points",
                        xytext=(5, dy), fontsize=8)
    times = [p.epoch_time_s for p in points if p.epoch_time_s > 0]
    if times and max(times) / min(times) > 20:
        ax.set_xscale("log")  # CPU and GPU times differ by orders of magnitude
    ax.set_xlabel("mean training time per epoch (s)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def reliability_figure(bins: Sequence[Any], calibrated: Sequence[Any] | None = None,
                       title: str = "", temperature: float | None = None) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, raw and calibrated.

    Points on the diagonal are calibrated; below it the model is over-confident. Marker area
    grows with the bin's number of images.
    """
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    series = [("raw (T = 1)", bins, "o")]
    if calibrated is not None:
        series.append((f"temperature T = {temperature:.2f}" if temperature else "calibrated",
                       calibrated, "s"))
    for label, rows, marker in series:
        full = [b for b in rows if b.count]
        total = max(sum(b.count for b in full), 1)
        ax.plot([b.confidence for b in full], [b.accuracy for b in full], "-", linewidth=1,
                alpha=0.6)
        ax.scatter([b.confidence for b in full], [b.accuracy for b in full], marker=marker,
                   s=[10 + 300 * b.count / total for b in full], label=label, alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in the bin (top-1 probability)")
    ax.set_ylabel("accuracy in the bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def gallery_figure(images: np.ndarray, items: Sequence[Any],
                   heatmaps: Mapping[tuple[int, int], np.ndarray] | None = None,
                   title: str = "", per_row: int = 3) -> Figure:
    """A grid of gallery images, each with its heatmaps for the predicted and the true class.

    Args:
        images: uint8 (N, H, W, 3) the stored test images (indexed by `item.index`).
        items: `GalleryItem`s to show, in order.
        heatmaps: {(image index, class index): (H, W) map in [0, 1]}; None draws the photos only.
        title: the figure title.
        per_row: images per row (each takes 3 panels with heatmaps, 1 without).
    """
    panels = 3 if heatmaps else 1
    rows = max(1, math.ceil(len(items) / per_row))
    cols = per_row * panels
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, it in enumerate(items):
        r, c0 = divmod(n, per_row)
        photo = images[it.index]
        ax = axes[r, c0 * panels]
        ax.imshow(photo)
        colour = "darkred" if it.true_index != it.predicted_index else "darkgreen"
        ax.set_title(f"#{it.index} true {it.true}\npred {it.predicted} {100 * it.p_predicted:.0f}%",
                     fontsize=7, color=colour)
        if heatmaps:
            for k, (cls, name, p) in enumerate(((it.predicted_index, it.predicted, it.p_predicted),
                                                (it.true_index, it.true, it.p_true)), start=1):
                ax = axes[r, c0 * panels + k]
                ax.imshow(photo)
                cam = heatmaps.get((it.index, cls))
                if cam is not None:
                    ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
                which = "pred" if k == 1 else "true"
                ax.set_title(f"{which}: {name} {100 * p:.0f}%", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def heatmap_figure(image: np.ndarray, cam: np.ndarray, title: str = "") -> Figure:
    """An image beside the same image under its class-activation heatmap (`predict --explain`)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.5))
    left.imshow(image)
    right.imshow(image)
    right.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for ax, label in ((left, "as the model saw it"), (right, "Grad-CAM of the predicted class")):
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig
