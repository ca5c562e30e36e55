"""Images that are probably not photos of the subject: far from everything, blank, tiny, or oddly shaped.

- Feature outliers: an image whose nearest neighbours in pretrained-feature space (any split, any
  class) are all far away. Its score is 1 - the mean cosine similarity to its NEIGHBOURS nearest
  images; it is flagged when the score is an extreme of the dataset's own distribution (a robust
  z-score above OUTLIER_Z, median and MAD), so the rule adapts to how varied the photos are.
- Near-constant images: the stored pixels barely vary (a blank or black frame).
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


def neighbour_scores(nearest: np.ndarray) -> np.ndarray:
    """1 - mean similarity to the nearest images (NaN-safe: fewer neighbours than kept)."""
    with np.errstate(invalid="ignore"):
        return 1.0 - np.nanmean(nearest, axis=1)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 * MAD): a z-score that a few outliers cannot inflate."""
    median = np.nanmedian(values)
    mad = np.nanmedian(np.abs(values - median)) * 1.4826
    return (values - median) / max(float(mad), 1e-12)


def pixel_std(images: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Standard deviation of each image's pixel values (all channels), float32."""
    out = np.empty(len(images), dtype=np.float32)
    for start in range(0, len(images), batch):
        block = np.asarray(images[start:start + batch], dtype=np.float32)
        out[start:start + len(block)] = block.reshape(len(block), -1).std(axis=1)
    return out


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
