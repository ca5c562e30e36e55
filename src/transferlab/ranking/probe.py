"""Linear probe: multinomial logistic regression on frozen features, scored on held-out images.

The standard companion of transferability scores (Kornblith et al., "Do Better ImageNet Models
Transfer Better?", CVPR 2019): features are standardised with the training part's mean and std, a
softmax classifier with a small L2 penalty is fitted with full-batch L-BFGS from zero weights (the
loss is convex: no learning rate to tune, and the same data give the same result), and its
accuracy on the held-out part is the score. L-BFGS stops after MAX_ITER iterations: on CIFAR-10
features (4,000 images, 1,280-2,048 dimensions) 200 iterations instead of 50 moved the held-out
accuracy by less than one point at four times the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

L2 = 1e-3  # penalty on the weights (per sample: loss = CE + L2 / 2 * ||W||^2)
MAX_ITER = 50  # L-BFGS iterations (200 changed held-out accuracy on CIFAR-10 features by < 1 point)


@dataclass
class ProbeResult:
    """Linear-probe outcome.

    Attributes:
        val_acc1: top-1 accuracy on the held-out features (fraction).
        train_acc1: top-1 accuracy on the features it was fitted on (fraction).
        val_loss: mean cross-entropy on the held-out features.
    """

    val_acc1: float
    train_acc1: float
    val_loss: float


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 num_classes: int | None = None, l2: float = L2, max_iter: int = MAX_ITER) -> ProbeResult:
    """Fit a softmax classifier on (train_x, train_y) and score it on (val_x, val_y).

    Args:
        train_x: (n, D) features to fit on.
        train_y: (n,) integer labels.
        val_x: (m, D) held-out features.
        val_y: (m,) held-out labels.
        num_classes: classes (default: the largest label + 1).
        l2: L2 penalty on the weights (not the bias).
        max_iter: L-BFGS iterations.
    """
    x = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    vx = torch.as_tensor(np.asarray(val_x), dtype=torch.float32)
    vy = torch.as_tensor(np.asarray(val_y), dtype=torch.long)
    k = num_classes or int(max(y.max().item(), vy.max().item() if len(vy) else 0)) + 1
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-8)  # a constant feature carries no information: leave it at 0
    x, vx = (x - mean) / std, (vx - mean) / std
    weight = torch.zeros(x.shape[1], k, dtype=torch.float32, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                                  tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 / 2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_acc = (x @ weight + bias).argmax(1).eq(y).double().mean().item()
        logits = vx @ weight + bias
        val_acc = logits.argmax(1).eq(vy).double().mean().item() if len(vy) else float("nan")
        val_loss = F.cross_entropy(logits, vy).item() if len(vy) else float("nan")
    return ProbeResult(val_acc1=val_acc, train_acc1=train_acc, val_loss=val_loss)
