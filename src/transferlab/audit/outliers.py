"""Images that are probably not photos of the subject: far from everything, blank, tiny, or oddly shaped.

- Feature outliers: an image far from every class in pretrained-feature space (1 - its cosine
  similarity to the nearest class centroid), flagged when that distance is an extreme of the
  dataset's own distribution (a robust z-score above OUTLIER_Z, median and MAD), so the rule adapts
  to how varied the photos are. Distance to the centroids, not to the nearest images: 25 noise
  frames are each other's close neighbours, but like no class.
- Near-constant images: no channel of the stored pixels varies (a blank frame of any colour).
- Tiny images and extreme aspect ratios, from the source files' own sizes (folder datasets).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

OUTLIER_Z = 5.0  # robust z-score (MAD-scaled) of the neighbour distance above which an image is flagged
CONSTANT_STD = 4.0  # pixel standard deviation (0-255) below which an image counts as blank
TINY_SIDE = 16  # px: a source image whose shorter side is below this is too small to show anything
EXTREME_ASPECT = 4.0  # longer side / shorter side above which an image is flagged


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 * MAD): a z-score that a few outliers cannot inflate."""
    median = np.nanmedian(values)
    mad = np.nanmedian(np.abs(values - median)) * 1.4826
    return (values - median) / max(float(mad), 1e-12)


def pixel_std(images: np.ndarray) -> np.ndarray:
    """The largest per-channel standard deviation of each image's pixels, float32 (0 for a frame
    of one colour, whatever the colour)."""
    from transferlab.data.duplicates import rows_per_batch

    batch = rows_per_batch(images)
    out = np.empty(len(images), dtype=np.float32)
    for start in range(0, len(images), batch):
        block = np.asarray(images[start:start + batch], dtype=np.float32)
        out[start:start + len(block)] = block.reshape(len(block), -1, 3).std(axis=1).max(axis=1)
    return out


def class_distance(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """1 - the cosine similarity of each image to the nearest class centroid (of any class):
    high for an image unlike every class, such as noise or a frame of something else."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    centroids = np.stack([x[labels == c].mean(0) if (labels == c).any() else np.zeros(x.shape[1])
                          for c in range(num_classes)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return 1.0 - (x @ centroids.T).max(axis=1)


def source_sizes(source: Path, files: Sequence[str], workers: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of each source image as displayed, read from the headers (archives extracted)."""
    from transferlab.data.archive import extract, is_archive
    from transferlab.data.decode import read_sizes, resolve_workers

    tmp = None
    try:
        tree = source
        if is_archive(source):
            tmp = Path(tempfile.mkdtemp(prefix=".audit-sizes."))
            extract(source, tmp)
            tree = tmp
        return read_sizes([str(tree / f) for f in files], list(files), resolve_workers(workers))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
