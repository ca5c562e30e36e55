"""Stratified validation split and training subset, saved with every run so it can be replayed.

The 2018 study's validation split was not class-balanced; these are: every class contributes
`round(n_c * fraction)` images, so per-class counts are exact and known in advance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from transferlab.errors import TransferlabError
from transferlab.io import atomic_write


@dataclass
class SplitIndices:
    """Indices into a dataset's training split.

    Attributes:
        train: images to train on (after the validation split and the subset).
        val: held-out validation images (empty when val_fraction is 0).
        seed, val_fraction, train_fraction: the settings that made them.
    """

    train: np.ndarray
    val: np.ndarray
    seed: int
    val_fraction: float
    train_fraction: float

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an .npz file (atomically: temp file then rename)."""
        atomic_write(
            path,
            lambda f: np.savez(
                f,
                train=self.train,
                val=self.val,
                seed=self.seed,
                val_fraction=self.val_fraction,
                train_fraction=self.train_fraction,
            ),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitIndices:
        """Read a file written by `save`."""
        with np.load(path) as z:
            return cls(
                train=z["train"],
                val=z["val"],
                seed=int(z["seed"]),
                val_fraction=float(z["val_fraction"]),
                train_fraction=float(z["train_fraction"]),
            )


def stratified_take(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick round(n_c * fraction) indices of every class c at random; returns sorted indices."""
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(len(members) * fraction))
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def make_splits(
    labels: np.ndarray, val_fraction: float = 0.1, train_fraction: float = 1.0, seed: int = 0
) -> SplitIndices:
    """Carve a stratified validation split from the training set, then a stratified subset.

    Args:
        labels: the training split's labels.
        val_fraction: share of every class held out for validation (0 for none).
        train_fraction: share of the remaining images of every class kept for training
            (the 2018 study trained on 0.5).
        seed: makes the choice reproducible.

    Returns:
        Disjoint, sorted index arrays for training and validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TransferlabError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < train_fraction <= 1.0:
        raise TransferlabError(f"--train-fraction must be in (0, 1], got {train_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = stratified_take(labels, val_fraction, rng)
    rest = np.setdiff1d(np.arange(len(labels)), val)
    if train_fraction < 1.0:
        train = rest[stratified_take(labels[rest], train_fraction, rng)]
    else:
        train = rest
    if len(train) == 0:
        raise TransferlabError("the training split is empty: raise --train-fraction or lower --val-fraction")
    return SplitIndices(
        train=train.astype(np.int64),
        val=val.astype(np.int64),
        seed=seed,
        val_fraction=val_fraction,
        train_fraction=train_fraction,
    )
