"""The comparison table's formatting: percentages, seconds, counts, epochs, and its rows.

The records themselves (one per model, mean and std over seeds) come from
`transferlab.results.comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_pct(value: Any, std: Any = None) -> str:
    """A fraction as a percentage with one decimal, `± std` when several seeds give one."""
    if _missing(value):
        return "–"
    text = f"{100 * float(value):.1f}%"
    if not _missing(std) and std and float(std) > 0:
        text += f" ± {100 * float(std):.1f}"
    return text


def fmt_seconds(value: Any, std: Any = None) -> str:
    """Seconds with precision that suits the magnitude."""
    if _missing(value):
        return "–"
    v = float(value)
    text = f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"
    if not _missing(std) and std and float(std) > 0:
        text += f" ± {float(std):.1f}" if v >= 1 else f" ± {float(std):.2f}"
    return text


def fmt_count(value: Any) -> str:
    """An integer with thousands separators."""
    return "–" if _missing(value) else f"{int(value):,}"


def fmt_epochs(epochs: Mapping[str, float]) -> str:
    """Epochs per stage, e.g. `head 3 + finetune 5`."""
    if not epochs:
        return "–"
    return " + ".join(f"{stage} {n:g}" for stage, n in epochs.items())


COMPARISON_HEADERS = (
    "model", "test top-1", "test top-5", "balanced acc.", "macro-F1", "train s/epoch", "val s/epoch", "test pass (s)",
    "epochs", "wall time (s)", "images/s", "trainable params", "total params",
    "2018 top-1", "2018 s/epoch",
)


def comparison_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The comparison table's formatted cells, in COMPARISON_HEADERS order."""
    rows = []
    for r in records:
        rows.append([
            str(r["label"]),
            fmt_pct(r["test_acc1"], r.get("test_acc1_std")),
            fmt_pct(r["test_acc5"], r.get("test_acc5_std")),
            fmt_pct(r.get("test_bal_acc"), r.get("test_bal_acc_std")),
            fmt_pct(r.get("test_macro_f1"), r.get("test_macro_f1_std")),
            fmt_seconds(r["epoch_time_s"], r.get("epoch_time_s_std")),
            fmt_seconds(r["val_time_s"], r.get("val_time_s_std")),
            fmt_seconds(r["eval_time_s"], r.get("eval_time_s_std")),
            fmt_epochs(r.get("epochs") or {}),
            fmt_seconds(r["wall_time_s"], r.get("wall_time_s_std")),
            fmt_count(r["images_per_s"]),
            fmt_count(r["params_trainable"]),
            fmt_count(r["params_total"]),
            fmt_pct(r.get("study_2018_test_acc1")),
            fmt_seconds(r.get("study_2018_epoch_time_s")),
        ])
    return rows
