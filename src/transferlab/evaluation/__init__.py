"""Evaluation of a finished run, below the report: it writes RUN_DIR/evaluation/, the report reads it.

Modules by responsibility: `metrics` (accuracy, confusions, per-class scores; the run's
predictions and model), `calibration` (ECE, reliability, accuracy/coverage), `gallery` (the
test photos the model gets most wrong), `heatmaps` (Grad-CAM through captum), `figures` (the
PNG figures of runs and evaluations), `evaluate` (all of it for a run directory) and `write` (the
files). Importing this package loads neither torch nor matplotlib.
"""

from transferlab.evaluation.evaluate import evaluate_run
from transferlab.evaluation.metrics import (
    CIFAR100_SUPERCLASSES,
    EVALUATION_DIR,
    PREDICTIONS_FILE,
    ConfusedPair,
    Evaluation,
    cifar100_coarse_map,
    coarse_confusion_matrix,
    confusion_matrix,
    evaluate_predictions,
    load_predictions,
    most_confused_pairs,
    per_class_accuracy,
    predict_from_checkpoint,
    topk_accuracy,
)
from transferlab.evaluation.write import EVALUATION_FILE, write_evaluation

__all__ = [
    "CIFAR100_SUPERCLASSES", "EVALUATION_DIR", "EVALUATION_FILE", "PREDICTIONS_FILE",
    "ConfusedPair", "Evaluation", "cifar100_coarse_map", "coarse_confusion_matrix",
    "confusion_matrix", "evaluate_predictions", "evaluate_run", "load_predictions",
    "most_confused_pairs", "per_class_accuracy", "predict_from_checkpoint", "topk_accuracy",
    "write_evaluation",
]
