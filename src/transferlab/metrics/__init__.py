"""Metrics on predictions, in plain numpy: per-class scores and calibration.

Training (the best epoch, the temperature), `predict` (the temperature, `unknown`) and the
evaluation all compute them here, so the number a run logs and the number `evaluate` prints
cannot disagree.
"""

from transferlab.metrics.calibration import (
    CoverageRow,
    ReliabilityBin,
    coverage_table,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)
from transferlab.metrics.classification import (
    ClassScores,
    balanced_accuracy,
    class_scores,
    confusion_matrix,
    macro_f1,
    scores_from_counts,
)

__all__ = [
    "ClassScores", "CoverageRow", "ReliabilityBin", "balanced_accuracy", "class_scores",
    "confusion_matrix", "coverage_table", "expected_calibration_error", "fit_temperature",
    "macro_f1", "reliability_bins", "scores_from_counts", "softmax",
]
