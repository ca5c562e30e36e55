"""The dataset every loader returns: uint8 RGB images, integer labels, class names.

Images are numpy arrays: in memory for small datasets, read-only memory-mapped .npy files for
large ones (see cache.MMAP_MIN_BYTES). Code that takes a part of a split should keep an index
array and gather batch by batch (`ArrayRows`), never `images[indices]` the whole part: on a
memory-mapped split that copy is the whole dataset in process memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where rows are gathered: `data info` never needs it
    import torch


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
        """Return the split restricted to `indices` (a copy of those rows: prefer `rows`)."""
        return Split(self.images[indices], self.labels[indices])

    def rows(self, indices: np.ndarray | None = None) -> ArrayRows:
        """The images at `indices` (all when None) as a view that gathers batch by batch."""
        return ArrayRows(self.images, indices)


class ArrayRows:
    """Rows of a (possibly memory-mapped) numpy array seen through an index array, no copy.

    Indexing with a batch of positions (a tensor, array or slice) reads only those rows and
    returns them as a new CPU tensor, so a training split of a memory-mapped dataset costs no
    memory beyond one batch; the operating system's page cache holds the file and shares it
    between processes. It has what `training.engine.Batches` needs of its inputs: `len`,
    `shape`, `device` and indexing. Any other source of rows (a streaming reader, a remote
    store) can stand in for it by offering the same.

    Args:
        array: (N, ...) array.
        indices: the rows of `array` this view holds, in order (None: all of them).
    """

    def __init__(self, array: np.ndarray, indices: np.ndarray | None = None) -> None:
        self.array = array
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array) if self.indices is None else len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        """(len(self), *row shape)."""
        return (len(self), *self.array.shape[1:])

    @property
    def device(self) -> torch.device:
        """Where the gathered rows are: the CPU."""
        import torch

        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The rows' torch dtype."""
        import torch

        return torch.from_numpy(np.empty(0, self.array.dtype)).dtype

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | int) -> torch.Tensor:
        import torch

        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = np.arange(len(self))[index] if self.indices is None else self.indices[index]
        rows = np.asarray(rows)
        if rows.ndim == 0:
            return torch.from_numpy(np.array(self.array[int(rows)]))
        # Reading the rows in file order is kinder to the disk; put them back in batch order.
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows), *self.array.shape[1:]), self.array.dtype)
        batch[order] = self.array[rows[order]]
        return torch.from_numpy(batch)


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
        center_cropped: the images were brought to one square size by their shorter side and a
            centre crop (photos of mixed sizes); False when they keep their native size. A model
            trained on them must see new photos prepared the same way.
    """

    name: str
    classes: list[str]
    splits: dict[str, Split]
    fingerprint: str
    coarse_classes: list[str] | None = None
    coarse_labels: dict[str, np.ndarray] = field(default_factory=dict)
    split_sources: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] | None = None
    center_cropped: bool = False

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
