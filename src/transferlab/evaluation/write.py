"""Write an evaluation next to its run; the report and the user read these files.

```
RUN_DIR/evaluation/
  evaluation.json              top-1/top-5, balanced accuracy, macro-F1, per-class scores,
                               most-confused pairs, calibration (ECE, reliability bins,
                               accuracy/coverage), the gallery's images and the files below
  per_class.csv                precision, recall, F1 and support of each class
  per_class_accuracy.csv       recall of each class (the older file, kept for scripts)
  confusion_matrix.csv         rows = true class, columns = predicted class, with class names
  confusion_matrix.png         row-normalised heatmap, class names on both axes
  confused_pairs.csv
  coverage.csv                 accuracy and share answered per confidence threshold
  reliability.png              reliability diagram, raw and with the run's temperature
  gallery_<section>.png        the error gallery: photos with Grad-CAM for predicted and true class
  coarse_confusion_matrix.*    CIFAR-100 only: the same on the 20 superclasses
```
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab.evaluation.metrics import ConfusedPair, Evaluation
from transferlab.io import atomic_write_text, check_dir_path

EVALUATION_FILE = "evaluation.json"


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    """Rows as CSV text."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _cell(value: float | None) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.4f}"


def _matrix_csv(confusion: np.ndarray, classes: Sequence[str]) -> str:
    """A confusion matrix as CSV: header of predicted classes, one row per true class."""
    rows: list[list[object]] = [["true\\predicted", *classes]]
    rows += [[name, *map(int, row)] for name, row in zip(classes, confusion, strict=True)]
    return _csv_text(rows)


def _pairs_csv(pairs: Sequence[ConfusedPair]) -> str:
    """Most-confused pairs as CSV."""
    rows: list[list[object]] = [["true", "predicted", "count", "fraction_of_true"]]
    rows += [[p.true, p.predicted, p.count, f"{p.fraction_of_true:.4f}"] for p in pairs]
    return _csv_text(rows)


def _per_class_csv(result: Evaluation) -> str:
    rows: list[list[object]] = [["class", "precision", "recall", "f1", "support"]]
    rows += [[r["class"], _cell(r["precision"]), _cell(r["recall"]), _cell(r["f1"]), r["support"]]
             for r in result.per_class_rows()]
    return _csv_text(rows)


def _coverage_csv(result: Evaluation) -> str:
    cal = result.calibration
    rows: list[list[object]] = [["min_confidence", "coverage", "accuracy", "answered",
                                 "calibrated_coverage", "calibrated_accuracy"]]
    calibrated = cal.calibrated_coverage or [None] * len(cal.coverage)
    for raw, scaled in zip(cal.coverage, calibrated, strict=True):
        rows.append([f"{raw.threshold:g}", _cell(raw.coverage), _cell(raw.accuracy), raw.answered,
                     _cell(scaled.coverage) if scaled else "",
                     _cell(scaled.accuracy) if scaled else ""])
    return _csv_text(rows)


def write_evaluation(result: Evaluation, out_dir: Path, title: str = "", figures: bool = True) -> Path:
    """Write the evaluation's JSON, CSV files and (optionally) its figures and gallery grids."""
    out_dir = check_dir_path(out_dir, "evaluation folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = result.to_dict()
    files: dict[str, str] = {}
    atomic_write_text(out_dir / "confusion_matrix.csv", _matrix_csv(result.confusion, result.classes))
    per_class = [["class", "accuracy", "test_images"]] + [
        [name, _cell(acc), int(n)]
        for name, acc, n in zip(
            result.classes, result.per_class_acc, result.confusion.sum(axis=1), strict=True
        )
    ]
    atomic_write_text(out_dir / "per_class_accuracy.csv", _csv_text(per_class))
    atomic_write_text(out_dir / "per_class.csv", _per_class_csv(result))
    atomic_write_text(out_dir / "confused_pairs.csv", _pairs_csv(result.confused_pairs))
    if result.calibration is not None:
        atomic_write_text(out_dir / "coverage.csv", _coverage_csv(result))
    if result.coarse_confusion is not None:
        atomic_write_text(
            out_dir / "coarse_confusion_matrix.csv",
            _matrix_csv(result.coarse_confusion, result.coarse_classes),
        )
        atomic_write_text(
            out_dir / "coarse_confused_pairs.csv", _pairs_csv(result.coarse_confused_pairs)
        )
    if figures:
        files |= _write_figures(result, out_dir, title)
    if result.gallery is not None:
        record["gallery"] = result.gallery.to_dict()
    record["files"] = files
    # Last, so that a reader finding evaluation.json finds every file it names.
    atomic_write_text(out_dir / EVALUATION_FILE, json.dumps(record, indent=2) + "\n")
    return out_dir


def _write_figures(result: Evaluation, out_dir: Path, title: str) -> dict[str, str]:
    """The PNG figures; returns {figure key: file name}."""
    # Imported here so that the numeric part of evaluation never needs matplotlib.
    from transferlab.evaluation import figures

    files = {"confusion": figures.plot_confusion_matrix(
        result.confusion, result.classes, out_dir / "confusion_matrix.png", title=title).name}
    if result.coarse_confusion is not None:
        files["coarse_confusion"] = figures.plot_confusion_matrix(
            result.coarse_confusion, result.coarse_classes, out_dir / "coarse_confusion_matrix.png",
            title=f"{title} (20 superclasses)".strip()).name
    cal = result.calibration
    if cal is not None:
        fig = figures.reliability_figure(cal.bins, cal.calibrated_bins, title=title,
                                         temperature=cal.temperature)
        files["reliability"] = figures.save_figure(fig, out_dir / "reliability.png").name
    gallery = result.gallery
    if gallery is not None:
        for section in gallery.sections:
            fig = figures.gallery_figure(gallery.images, section.items, gallery.heatmaps or None,
                                         title=f"{title}: {section.title}".strip(": "))
            path = out_dir / f"gallery_{section.key}.png"
            files[f"gallery_{section.key}"] = figures.save_figure(fig, path).name
    return files
