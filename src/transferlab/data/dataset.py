"""The in-memory dataset every loader returns: uint8 RGB images, integer labels, class names."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    """One split of a dataset.

    Attributes:
        images: uint8 array (N, H, W, 3), RGB channel order.
        labels: int64 array (N,) of class indices into the dataset's `classes`.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        """Return the split restricted to `indices` (a copy)."""
        return Split(self.images[indices], self.labels[indices])


@dataclass
class ImageDataset:
    """A labelled image dataset with named splits ("train", "test" and optionally "val").

    Attributes:
        name: short name, e.g. "cifar100" or "folder:cifar10-jpeg".
        classes: class names in label order.
        splits: the splits by name.
        fingerprint: changes whenever the source or the decode settings change; used in cache keys.
        coarse_classes: CIFAR-100's 20 superclass names when the fine labels are in use, else None.
        coarse_labels: per split, the superclass of each image (CIFAR-100 only).
        split_sources: per split, where it came from in words, e.g. {"train": "train/",
            "test": "val/ (held-out evaluation set)"}; empty when the loader does not say.
        files: per split, the source-relative path of every image in row order (image folders
            only; None otherwise).
    """

    name: str
    classes: list[str]
    splits: dict[str, Split]
    fingerprint: str
    coarse_classes: list[str] | None = None
    coarse_labels: dict[str, np.ndarray] = field(default_factory=dict)
    split_sources: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] | None = None

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"dataset {self.name!r} has no split {split!r} (has {sorted(self.splits)})") from None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored images."""
        h, w = self.splits["train"].images.shape[1:3]
        return int(h), int(w)

    def class_counts(self) -> dict[str, np.ndarray]:
        """Images per class for each split, as int64 arrays of length `num_classes`."""
        return {
            name: np.bincount(split.labels, minlength=self.num_classes)
            for name, split in self.splits.items()
        }
