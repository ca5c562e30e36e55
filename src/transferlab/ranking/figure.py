"""The ranking's figure: each backbone's scores against the cost of its forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from transferlab.io import atomic_write  # noqa: E402


def plot_rank(payload: dict[str, Any], path: Path) -> Path:
    """LogME (left) and linear-probe accuracy (right) against milliseconds per image, one point per model."""
    records = payload["candidates"]
    cost = [r["extract_ms_per_image"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "logme", "LogME (higher is better)"),
                           (axes[1], "probe_val_acc1", "linear-probe accuracy, held out")):
        values = [r[key] * (100 if key == "probe_val_acc1" else 1) for r in records]
        ax.scatter(cost, values, s=40, color="tab:blue", zorder=3)
        for r, x, y in zip(records, cost, values, strict=True):
            ax.annotate(f"{r['rank']}. {r['model']}", (x, y), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        ax.set_xlabel("forward pass, ms per image (feature extraction)")
        ax.set_ylabel(label + (" (%)" if key == "probe_val_acc1" else ""))
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.12)  # room for the labels right of the points
        if len(set(cost)) > 1 and max(cost) / max(min(cost), 1e-9) > 8:
            ax.set_xscale("log")
    fig.suptitle(f"Backbones ranked on {payload.get('dataset_name', payload['dataset'])} "
                 f"({payload['images_train']} + {payload['images_val']} images)", fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path
