"""Uneven training classes: when to counter them, and the three ways to do it.

A folder of photos rarely holds as many images of every class. Trained with plain
cross-entropy, a model then leans towards the large classes: its top-1 looks fine while the small
classes are recognised far less often. `resolve` decides from the training labels whether the
run counters this (`imbalance: auto` does when the largest class has more than `imbalance_ratio`
times the images of the smallest) and how:

- `logit_adjust` (the default; Menon et al. 2021, "Long-tail learning via logit adjustment",
  https://arxiv.org/abs/2007.07314): the training loss is cross-entropy on
  ``logits + tau * log(prior)``, with the prior the training class frequencies and tau = 1.
  Predictions use the plain logits, so the model learns to lift the rare classes by exactly the
  amount the prior would push them down. On an even folder the offset is a constant and the loss
  is plain cross-entropy, so nothing changes where nothing is uneven.
- `class_weight`: cross-entropy with class weights N / (k * n_c) (each class weighs the same in
  the loss as a whole).
- `balanced_sampler`: each epoch draws as many images as the training split holds, with
  replacement, each class equally likely.

bench/imbalance.py measures the three against plain cross-entropy (bench/IMBALANCE.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from transferlab.choices import IMBALANCE_METHODS as METHODS
from transferlab.errors import TransferlabError

DEFAULT_METHOD = "logit_adjust"  # what `auto` picks on an uneven folder (bench/IMBALANCE.md)
LOGIT_ADJUST_TAU = 1.0  # Menon et al.'s tau: 1 is the Bayes-consistent choice for balanced error


@dataclass
class Imbalance:
    """What a run does about its training class counts (recorded in summary.json).

    Attributes:
        method: off | logit_adjust | class_weight | balanced_sampler.
        uneven: the largest class has more than `threshold` times the smallest's images; best.pt
            is then chosen by validation balanced accuracy instead of top-1.
        ratio: largest / smallest training class count (inf when a class has no image).
        threshold: the ratio above which `auto` counters the imbalance.
        requested: the config's `imbalance` value (auto or a method).
        class_counts: training images per class, in class order.
    """

    method: str
    uneven: bool
    ratio: float
    threshold: float
    requested: str
    class_counts: list[int]

    @property
    def active(self) -> bool:
        """Whether the training loss or sampling is changed."""
        return self.method != "off"

    def describe(self) -> str:
        """One line for the start of training, beside the recipe's."""
        low, high = min(self.class_counts), max(self.class_counts)
        counts = f"{low}{'' if low == high else f'-{high}'} images per class"
        if not self.uneven:
            head = f"classes even ({counts}, ratio {self.ratio:.1f} <= {self.threshold:g})"
        else:
            head = f"classes uneven ({counts}, ratio {self.ratio:.1f} > {self.threshold:g})"
        what = {"off": "plain cross-entropy",
                "logit_adjust": f"logit-adjusted loss (tau {LOGIT_ADJUST_TAU:g})",
                "class_weight": "class-weighted loss",
                "balanced_sampler": "class-balanced sampling"}[self.method]
        chosen = " (imbalance auto)" if self.requested == "auto" else ""
        pick = "; best.pt by validation balanced accuracy" if self.uneven else ""
        return f"imbalance: {head}: {what}{chosen}{pick}"

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form."""
        data = asdict(self)
        data["ratio"] = self.ratio if math.isfinite(self.ratio) else None
        return data


def class_counts(labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class, shape (num_classes,)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def resolve(requested: str, labels: torch.Tensor | np.ndarray, num_classes: int,
            threshold: float) -> Imbalance:
    """Decide what a run does about its training class counts.

    Args:
        requested: the config's `imbalance`: auto (the default method when uneven, else off) or a
            method, applied as asked.
        labels: the training split's labels.
        num_classes: number of classes.
        threshold: `imbalance_ratio`: uneven means largest / smallest count above it.

    Returns:
        The decision.
    """
    if requested != "auto" and requested not in METHODS:
        raise TransferlabError(f"imbalance={requested!r} is not valid; choose auto or one of "
                               f"{', '.join(METHODS)}")
    counts = class_counts(labels, num_classes)
    smallest, largest = int(counts.min()), int(counts.max())
    ratio = largest / smallest if smallest else math.inf
    uneven = ratio > threshold
    method = (DEFAULT_METHOD if uneven else "off") if requested == "auto" else requested
    return Imbalance(method, uneven, ratio, threshold, requested, [int(n) for n in counts])


def logit_offsets(counts: list[int] | np.ndarray, tau: float = LOGIT_ADJUST_TAU) -> torch.Tensor:
    """tau * log(prior) per class, added to the logits in the training loss (Menon et al. eq. 10).

    A class with no training image gets the offset of one image (log 0 would be -inf).
    """
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return torch.tensor(tau * np.log(n / n.sum()), dtype=torch.float32)


def class_weights(counts: list[int] | np.ndarray) -> torch.Tensor:
    """Cross-entropy class weights N / (k * n_c): every class carries the same total weight,
    and an even folder gets weight 1 everywhere."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return torch.tensor(n.sum() / (len(n) * n), dtype=torch.float32)


def balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch's sample order drawn class-balanced: len(labels) indices, with replacement, each
    class equally likely and each image equally likely within its class."""
    labels = labels.cpu().long()
    counts = torch.bincount(labels).double()
    weights = 1.0 / counts[labels]
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


def loss_terms(imbalance: Imbalance | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(logit offsets, class weights) for the training loss; None where the method uses none."""
    if imbalance is None:
        return None, None
    offsets = logit_offsets(imbalance.class_counts) if imbalance.method == "logit_adjust" else None
    weights = class_weights(imbalance.class_counts) if imbalance.method == "class_weight" else None
    return offsets, weights


__all__ = ["DEFAULT_METHOD", "METHODS", "Imbalance", "balanced_order", "class_counts",
           "class_weights", "logit_offsets", "loss_terms", "resolve"]
