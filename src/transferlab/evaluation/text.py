"""An evaluation as plain-text tables for the terminal (`transferlab evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transferlab.evaluation.metrics import Evaluation


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; '–' when missing or undefined."""
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), *map(line, rows)])


def headline(result: Evaluation) -> str:
    """Top-1 (top-5 above 5 classes), balanced accuracy and macro-F1 in one line."""
    top5 = f"  top-5 {pct(result.test_acc5)}" if result.test_acc5 is not None else ""
    return (f"test top-1 {pct(result.test_acc1)}{top5}  balanced accuracy "
            f"{pct(result.test_bal_acc)}  macro-F1 {pct(result.test_macro_f1)}  "
            f"({int(result.confusion.sum()):,} images, from {result.source})")


def per_class_text(result: Evaluation) -> str:
    """Per-class precision, recall, F1 and support, lowest recall first."""
    rows = sorted(result.per_class_rows(),
                  key=lambda r: (np.inf if r["recall"] is None else r["recall"], r["class"]))
    return "per class (lowest recall first):\n" + table(
        ["class", "precision", "recall", "F1", "support"],
        [[r["class"], pct(r["precision"]), pct(r["recall"]), pct(r["f1"]), str(r["support"])]
         for r in rows])


def calibration_text(result: Evaluation) -> str:
    """ECE before and after the run's temperature, and the accuracy/coverage table."""
    cal = result.calibration
    if cal is None:
        return ""

    def summary(bins: Sequence) -> tuple[str, str]:
        n = sum(b.count for b in bins)
        conf = sum(b.count * b.confidence for b in bins if b.count) / max(n, 1)
        acc = sum(b.count * b.accuracy for b in bins if b.count) / max(n, 1)
        return pct(conf), pct(acc)

    rows = [["raw probabilities (T = 1)", pct(cal.ece), *summary(cal.bins)]]
    if cal.calibrated_bins is not None:
        rows.append([f"with the run's temperature T = {cal.temperature:.3f}",
                     pct(cal.calibrated_ece), *summary(cal.calibrated_bins)])
    out = ["calibration (expected calibration error: mean gap between confidence and accuracy):",
           table(["", "ECE", "mean confidence", "accuracy"], rows)]
    which = "with the run's temperature" if cal.calibrated_coverage is not None else "raw"
    out += [f"accuracy/coverage: answering only at top-1 confidence >= P ({which}; "
            "`predict --min-confidence P` answers `unknown` below P):",
            table(["P", "answered", "images", "accuracy"],
                  [[f"{r.threshold:g}", pct(r.coverage), str(r.answered), pct(r.accuracy)]
                   for r in cal.chosen_coverage])]
    return "\n".join(out)


def evaluation_text(result: Evaluation, pairs: int = 10) -> str:
    """The whole evaluation for the terminal: headline, per-class, calibration, confusions."""
    parts = [headline(result), per_class_text(result), calibration_text(result)]
    if result.confused_pairs:
        parts.append("most-confused pairs (true -> predicted: images):\n" + "\n".join(
            f"  {p.true} -> {p.predicted}: {p.count}" for p in result.confused_pairs[:pairs]))
    return "\n".join(p for p in parts if p)
