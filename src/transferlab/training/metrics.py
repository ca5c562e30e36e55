"""Class-balanced metrics during training, summed over batches and DDP ranks.

Top-1 accuracy on uneven classes rewards a model that favours the large ones; these two weigh
every class alike. `class_sums` gives the per-class counts they need as one tensor, so that
`engine.evaluate` can add them up across batches and DDP ranks before computing the metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from transferlab.metrics import ClassScores, scores_from_counts


def class_sums(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class counts as a (3, num_classes) float64 tensor: true positives, support
    (images of the class) and predictions of the class, on the labels' device."""
    labels, preds = labels.long().reshape(-1), preds.long().reshape(-1)
    hits = labels[preds == labels]
    return torch.stack([torch.bincount(t, minlength=num_classes)[:num_classes].double()
                        for t in (hits, labels, preds)])


def balanced_from_sums(sums: torch.Tensor | np.ndarray) -> float:
    """Mean recall over the classes that have images (`class_sums` layout); 0.0 for none."""
    value = _scores(sums).balanced_accuracy
    return 0.0 if np.isnan(value) else value


def macro_f1_from_sums(sums: torch.Tensor | np.ndarray) -> float:
    """Macro-F1 as `transferlab.metrics` defines it (`class_sums` layout); 0.0 for no images."""
    value = _scores(sums).macro_f1
    return 0.0 if np.isnan(value) else value


def _scores(sums: torch.Tensor | np.ndarray) -> ClassScores:
    tp, support, predicted = np.asarray(torch.as_tensor(sums).cpu(), dtype=np.float64)
    return scores_from_counts(tp, support, predicted)


__all__ = ["balanced_from_sums", "class_sums", "macro_f1_from_sums"]
