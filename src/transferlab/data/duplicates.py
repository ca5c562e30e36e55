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
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        s = x[start:stop] @ x.T  # (b, N)
        rows = torch.arange(start, stop)
        s[rows - start, rows] = -2.0  # an image is not its own neighbour
        if k:
            nearest[start:stop, :k] = s.topk(k, dim=1).values.numpy()
        # Keep j > i only, so each pair is found once.
        upper = torch.arange(n)[None, :] > rows[:, None]
        hit = (s >= threshold) & upper
        i, j = hit.nonzero(as_tuple=True)
        if len(i):
            pairs.append(torch.stack([i + start, j], dim=1).numpy())
            sims.append(s[i, j].numpy())
    return Neighbours(np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64),
                      np.concatenate(sims) if sims else np.zeros(0, np.float32), nearest)


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
