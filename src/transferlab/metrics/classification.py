"""Per-class precision, recall, F1 and support, balanced accuracy and macro-F1.

Top-1 accuracy hides an uneven test set: a model that never answers the rarest class loses only
that class's share. Balanced accuracy (the mean of the per-class recalls) and macro-F1 weigh every
class the same, as scikit-learn's `balanced_accuracy_score` and `f1_score(average="macro")` do
(a class absent from the test set is left out of the balanced accuracy; in macro-F1 it counts
as 0 when the model answered it, and is left out when it did not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are the true class, columns the predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassScores:
    """Per-class scores of one confusion matrix, each a float64 array of length k.

    A precision is NaN for a class never predicted, a recall (and F1) NaN for a class with no
    test image: undefined, not zero, so the means below leave them out.
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # int64: test images of each class

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes that have test images."""
        return _nanmean(self.recall)

    predicted: np.ndarray | None = None  # int64: answers of each class (None: not counted)

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes that have images or were answered (scikit-learn's
        `f1_score(average="macro")`): a class answered but absent scores 0, one never
        answered and absent is left out."""
        answered = self.predicted if self.predicted is not None else np.zeros_like(self.support)
        used = (self.support > 0) | (answered > 0)
        return _nanmean(np.where(used, np.nan_to_num(self.f1, nan=0.0), np.nan))


def class_scores(confusion: np.ndarray) -> ClassScores:
    """Precision, recall, F1 and support of every class from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    return scores_from_counts(np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0))


def scores_from_counts(hits: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> ClassScores:
    """Per-class scores from three counts per class: right answers, images of the class, and
    answers of the class (what a confusion matrix's diagonal, row sums and column sums hold;
    training sums them over batches and DDP ranks without the whole matrix)."""
    hits, support, predicted = (np.asarray(v, dtype=np.float64) for v in (hits, support, predicted))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, np.nan)
        recall = np.where(support > 0, hits / support, np.nan)
        both = np.nan_to_num(precision) + np.nan_to_num(recall)
        f1 = np.where(support > 0,
                      np.where(both > 0, 2 * np.nan_to_num(precision) * np.nan_to_num(recall) / both,
                               0.0), np.nan)
    return ClassScores(precision, recall, f1, support.astype(np.int64), predicted.astype(np.int64))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall (classes without a labelled image are left out)."""
    return class_scores(confusion_matrix(labels, predictions, num_classes)).balanced_accuracy


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Mean per-class F1 (classes without a labelled image are left out)."""
    return class_scores(confusion_matrix(labels, predictions, num_classes)).macro_f1


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
