"""Likely label errors: confident learning on out-of-sample predicted probabilities.

Every image's class probabilities come from a linear softmax probe fitted on the pretrained
descriptors of the *other* folds (k-fold cross-validation), so nothing scores an image it was fitted
on. cleanlab's `find_label_issues` (confident learning: Northcutt et al., JAIR 2021) then flags the
images whose given label the probabilities contradict, ranked by self-confidence (the probability
of the given label, lowest first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.errors import TransferlabError

FOLDS = 5
L2 = 1e-3  # the probe's weight penalty (as ranking.probe)
MAX_ITER = 100  # L-BFGS iterations per fold


@dataclass
class LabelIssues:
    """The label audit of a pool of images.

    Attributes:
        probabilities: (N, k) out-of-sample class probabilities.
        ranked: positions of the flagged images, most likely wrong first.
        self_confidence: (N,) probability of each image's given label.
    """

    probabilities: np.ndarray
    ranked: np.ndarray
    self_confidence: np.ndarray


def _fit_predict(x: np.ndarray, y: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Softmax probe fitted on (x, y) (standardised features, L-BFGS from zero), probabilities of `test`."""
    import torch
    from torch.nn import functional as F

    tx = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ty = torch.from_numpy(np.asarray(y, dtype=np.int64))
    vx = torch.from_numpy(np.ascontiguousarray(test, dtype=np.float32))
    mean, std = tx.mean(0), tx.std(0).clamp_min(1e-8)
    tx, vx = (tx - mean) / std, (vx - mean) / std
    weight = torch.zeros(tx.shape[1], k, requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITER, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(tx @ weight + bias, ty) + L2 / 2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.softmax(vx @ weight + bias, dim=1).numpy().astype(np.float64)


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                                folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """(N, k) probabilities of each image from a probe fitted on the other folds (stratified)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in range(num_classes):  # stratified: each class spread evenly over the folds
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    probs = np.zeros((len(labels), num_classes))
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        probs[test] = _fit_predict(features[~test], labels[~test], features[test], num_classes)
    return probs


def find_label_issues(features: np.ndarray, labels: np.ndarray, num_classes: int,
                      folds: int = FOLDS, seed: int = 0) -> LabelIssues:
    """Rank the images whose given label their out-of-sample probabilities contradict."""
    try:
        from cleanlab.filter import find_label_issues as cleanlab_issues
    except ImportError as err:
        raise TransferlabError("the label check needs cleanlab: pip install 'transferlab[audit]' "
                               "(or skip the check: label_issues=False, --no-labels)") from err

    labels = np.asarray(labels, dtype=np.int64)
    probs = out_of_sample_probabilities(features, labels, num_classes, folds, seed)
    present = np.unique(labels)
    self_confidence = probs[np.arange(len(labels)), labels]
    if len(present) < 2:
        return LabelIssues(probs, np.zeros(0, dtype=np.int64), self_confidence)
    # cleanlab needs every column to be a class with examples: restrict to the classes present.
    column = {c: i for i, c in enumerate(present)}
    sub = probs[:, present]
    sub = sub / sub.sum(axis=1, keepdims=True)
    ranked = cleanlab_issues(np.array([column[c] for c in labels]), sub,
                             return_indices_ranked_by="self_confidence")
    return LabelIssues(probs, np.asarray(ranked, dtype=np.int64), self_confidence)
