"""Class-balanced metrics from labels and predictions: balanced accuracy and macro-F1.

Top-1 accuracy on uneven classes rewards a model that favours the large ones; these two weigh
every class alike. `class_sums` gives the per-class counts they need as one tensor, so that
`engine.evaluate` can add them up across batches and DDP ranks before computing the metrics.
"""

from __future__ import annotations

import numpy as np
import torch


def class_sums(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class counts as a (3, num_classes) float64 tensor: true positives, support
    (images of the class) and predictions of the class, on the labels' device."""
    labels, preds = labels.long().reshape(-1), preds.long().reshape(-1)
    hits = labels[preds == labels]
    return torch.stack([torch.bincount(t, minlength=num_classes)[:num_classes].double()
                        for t in (hits, labels, preds)])


def balanced_from_sums(sums: torch.Tensor | np.ndarray) -> float:
    """Mean recall over the classes that have images (`class_sums` layout)."""
    tp, support, _ = np.asarray(torch.as_tensor(sums).cpu(), dtype=np.float64)
    present = support > 0
    return float(np.mean(tp[present] / support[present])) if present.any() else 0.0


def macro_f1_from_sums(sums: torch.Tensor | np.ndarray) -> float:
    """Mean F1 over the classes that have images or predictions (`class_sums` layout); a class
    never predicted and never present is left out, one with neither hits nor misses scores 0."""
    tp, support, predicted = np.asarray(torch.as_tensor(sums).cpu(), dtype=np.float64)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted): no 0/0 for present classes.
    return float(np.mean(2 * tp[present] / (support[present] + predicted[present])))


def _sums(labels: np.ndarray | torch.Tensor, preds: np.ndarray | torch.Tensor,
          num_classes: int) -> torch.Tensor:
    return class_sums(torch.as_tensor(np.asarray(labels)), torch.as_tensor(np.asarray(preds)),
                      num_classes)


def balanced_accuracy(labels: np.ndarray | torch.Tensor, preds: np.ndarray | torch.Tensor,
                      num_classes: int) -> float:
    """Balanced accuracy: the mean per-class recall (sklearn's `balanced_accuracy_score`).

    Args:
        labels: true class indices, shape (N,).
        preds: predicted class indices, shape (N,).
        num_classes: number of classes (classes without images are left out of the mean).

    Returns:
        A fraction in [0, 1]; 0.0 for no images.
    """
    return balanced_from_sums(_sums(labels, preds, num_classes))


def macro_f1(labels: np.ndarray | torch.Tensor, preds: np.ndarray | torch.Tensor,
             num_classes: int) -> float:
    """Macro-averaged F1: the unweighted mean of each class's F1 score.

    Args:
        labels: true class indices, shape (N,).
        preds: predicted class indices, shape (N,).
        num_classes: number of classes (one with no images and no predictions is left out).

    Returns:
        A fraction in [0, 1]; 0.0 for no images.
    """
    return macro_f1_from_sums(_sums(labels, preds, num_classes))


__all__ = ["balanced_accuracy", "balanced_from_sums", "class_sums", "macro_f1", "macro_f1_from_sums"]
