"""Exact and near-duplicate images, within a split and across splits (leakage).

Exact duplicates share their decoded pixels (a hash of each stored image). Near-duplicates are
the same photo resized, re-compressed, slightly cropped, flipped or colour-shifted: their
pretrained-feature descriptors (`audit.features`: the mean of an image's and its mirror's pooled
features, so a mirrored copy has the same descriptor) have a cosine similarity at or above a
threshold set from measurement (`NEAR_THRESHOLD`, bench/audit.py). The search is one blocked
matrix product over the L2-normalised descriptors, never all pairs in Python: 60,000 images are
60 blocks of 1,024 rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Cosine similarity of two descriptors above which two images count as the same photo.
# Measured on CIFAR-10 photos (MobileNetV2 ImageNet features at 128 px): copies resized and
# re-encoded as JPEG score 0.95-0.96 against their originals, unrelated photos' nearest
# neighbours at most 0.74 (tests/test_audit.py's folder); bench/audit.py measures both
# distributions on 60,000 images with flipped, cropped and colour-shifted copies
# (bench/AUDIT_RESULTS.md).
NEAR_THRESHOLD = 0.90
BLOCK_ROWS = 1024  # rows per matrix product: 1,024 x 60,000 float32 similarities is 245 MB
NEIGHBOURS = 5  # nearest neighbours kept per image (outlier scores)


def pixel_hashes(images: np.ndarray, rows: np.ndarray | None = None, batch: int = 2048) -> list[bytes]:
    """A 16-byte BLAKE2 digest of each stored image's pixels (equal digests: equal pixels).

    Args:
        images: (N, H, W, 3) uint8, possibly memory-mapped.
        rows: the rows to hash, in order (None: all); read `batch` at a time, never all at once.
        batch: rows read per step.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    out: list[bytes] = []
    for start in range(0, len(rows), batch):
        block = np.ascontiguousarray(images[rows[start:start + batch]])
        out += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in block]
    return out


def exact_groups(hashes: Sequence[bytes]) -> list[list[int]]:
    """Groups (of two or more positions) whose hashes are equal, each sorted, in order of first member."""
    by_hash: dict[bytes, list[int]] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, []).append(i)
    return [g for g in by_hash.values() if len(g) > 1]


@dataclass
class Neighbours:
    """The result of one pass of the blocked similarity search.

    Attributes:
        pairs: (P, 2) int64 positions i < j with similarity >= threshold.
        similarity: (P,) float32 their cosine similarities.
        nearest: (N, NEIGHBOURS) float32 similarities of each image's nearest other images
            (exact copies included), highest first.
    """

    pairs: np.ndarray
    similarity: np.ndarray
    nearest: np.ndarray
    nearest_index: np.ndarray | None = None  # (N, NEIGHBOURS) int64 positions of those images


def similar_pairs(descriptors: np.ndarray, threshold: float = NEAR_THRESHOLD,
                  block_rows: int = BLOCK_ROWS, neighbours: int = NEIGHBOURS) -> Neighbours:
    """All pairs of rows whose cosine similarity is at least `threshold`, by blocked products.

    Args:
        descriptors: (N, D) float array; rows are normalised here.
        threshold: the cosine similarity that makes a pair.
        block_rows: rows of one product (bounds memory: block_rows x N float32).
        neighbours: how many nearest similarities to keep per row.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32))
    x = torch.nn.functional.normalize(x, dim=1)
    n = len(x)
    k = min(neighbours, max(n - 1, 0))
    pairs, sims = [], []
    nearest = np.full((n, neighbours), np.nan, dtype=np.float32)
    nearest_index = np.full((n, neighbours), -1, dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        s = x[start:stop] @ x.T  # (b, N)
        rows = torch.arange(start, stop)
        s[rows - start, rows] = -2.0  # an image is not its own neighbour
        if k:
            top = s.topk(k, dim=1)
            nearest[start:stop, :k] = top.values.numpy()
            nearest_index[start:stop, :k] = top.indices.numpy()
        # Keep j > i only, so each pair is found once.
        upper = torch.arange(n)[None, :] > rows[:, None]
        hit = (s >= threshold) & upper
        i, j = hit.nonzero(as_tuple=True)
        if len(i):
            pairs.append(torch.stack([i + start, j], dim=1).numpy())
            sims.append(s[i, j].numpy())
    return Neighbours(np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64),
                      np.concatenate(sims) if sims else np.zeros(0, np.float32), nearest, nearest_index)


def connected_groups(pairs: np.ndarray, n: int) -> list[list[int]]:
    """Connected components (of two or more) of the graph with these edges, each sorted."""
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in {int(v) for v in np.unique(pairs)} if len(pairs) else ():
        members.setdefault(root(i), []).append(i)
    return sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


THUMB = 16  # side of the grey thumbnails the pixel check compares
# The pixel check: a pair of feature neighbours at least CANDIDATE_SIMILARITY alike whose grey
# thumbnails (each standardised, so brightness and contrast shifts cancel; the mirror image tried
# too) correlate at least PIXEL_CORRELATION is the same photo. Pretrained features alone blur a
# heavily re-encoded small copy (a 32 px photo shrunk to 24 px at JPEG quality 50 scored 0.57-0.89
# against its original) into the range of unrelated look-alikes; its pixels still match.
CANDIDATE_SIMILARITY = 0.5
PIXEL_CORRELATION = 0.9


def rows_per_batch(images: np.ndarray, budget: int = 2**26) -> int:
    """Rows whose float32 copy fits in `budget` bytes (64 MiB): 2,048 CIFAR images, 256 photos."""
    return max(1, budget // max(int(np.prod(images.shape[1:])) * 4, 1))


CROP = 0.9  # the thumbnail of the central 90% too: a copy cropped by 10% matches it


def thumbnails(images: np.ndarray, crop: float = 1.0) -> np.ndarray:
    """(N, THUMB * THUMB) float32 grey thumbnails of the central `crop` of each image, each
    standardised to mean 0 and norm 1."""
    import torch

    batch = rows_per_batch(images)
    h, w = images.shape[1:3]
    dh, dw = round(h * (1 - crop) / 2), round(w * (1 - crop) / 2)
    out = np.empty((len(images), THUMB * THUMB), dtype=np.float32)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch, dh:h - dh, dw:w - dw]))
        x = x.float().mean(-1)
        x = torch.nn.functional.interpolate(x[:, None], size=(THUMB, THUMB), mode="area").flatten(1)
        x = x - x.mean(1, keepdim=True)
        out[start:start + len(x)] = torch.nn.functional.normalize(x, dim=1).numpy()
    return out


def pixel_correlation(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray,
                      cropped: np.ndarray | None = None) -> np.ndarray:
    """Correlation of the thumbnails of rows a and b: the best of b as is and mirrored, and (with
    `cropped`, the thumbnails of the central CROP) of either image's centre against the other."""

    def mirror(t: np.ndarray) -> np.ndarray:
        return t.reshape(-1, THUMB, THUMB)[:, :, ::-1].reshape(len(t), -1)

    views = [(thumbs[a], thumbs[b])]
    if cropped is not None:
        views += [(cropped[a], thumbs[b]), (thumbs[a], cropped[b])]
    return np.max([np.maximum((x * y).sum(1), (x * mirror(y)).sum(1)) for x, y in views], axis=0)


def pixel_pairs(found: Neighbours, thumbs: np.ndarray, cropped: np.ndarray | None = None,
                candidate: float = CANDIDATE_SIMILARITY,
                correlation: float = PIXEL_CORRELATION) -> tuple[np.ndarray, np.ndarray]:
    """Feature neighbours (at least `candidate` alike) whose thumbnails correlate >= `correlation`:
    (P, 2) pairs i < j and their pixel correlations."""
    if found.nearest_index is None or not len(found.nearest_index):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    rows = np.repeat(np.arange(len(found.nearest_index)), found.nearest_index.shape[1])
    cols = found.nearest_index.reshape(-1)
    keep = (cols >= 0) & (np.nan_to_num(found.nearest.reshape(-1), nan=-2.0) >= candidate)
    a, b = rows[keep], cols[keep]
    corr = pixel_correlation(thumbs, a, b, cropped)
    hit = corr >= correlation
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[hit]
    if not len(pairs):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return pairs, corr[hit][first].astype(np.float32)
