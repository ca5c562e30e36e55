"""A small learnable dataset made on the fly, for tests and dry runs (no files needed)."""

from __future__ import annotations

import numpy as np

from transferlab.data.cache import stable_hash
from transferlab.data.dataset import ImageDataset, Split
from transferlab.errors import TransferlabError

DEFAULTS = {"classes": 10, "train": 200, "test": 50, "val": 0, "size": 32, "seed": 0}


def parse_options(text: str) -> dict[str, int]:
    """Parse 'classes=10,train=200' into a dict over DEFAULTS, rejecting unknown keys."""
    opts = dict(DEFAULTS)
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise TransferlabError(
                f"bad synthetic option {item!r}: use key=value with keys {', '.join(DEFAULTS)}"
            )
        try:
            opts[key] = int(value)
        except ValueError:
            raise TransferlabError(f"synthetic option {key} must be an integer, got {value!r}") from None
    if opts["classes"] < 2 or opts["train"] < opts["classes"] or opts["size"] < 4:
        raise TransferlabError("synthetic needs classes >= 2, train >= classes and size >= 4")
    return opts


def _images(labels: np.ndarray, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class c: a stripe pattern with its own orientation and frequency, a hue, and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * np.arange(num_classes) / num_classes
    freq = 2.0 + (np.arange(num_classes) % 3)
    hue = np.linspace(0, 1, num_classes, endpoint=False)
    colour = 0.5 + 0.4 * np.stack(
        [np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], axis=1
    )  # (classes, 3) RGB in [0.1, 0.9]
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(
            2 * np.pi * freq[c] * (xx * np.cos(angle[c]) + yy * np.sin(angle[c])) + phase
        )
        img = wave[..., None] * colour[c] + rng.normal(0, 0.08, (size, size, 3))
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def load_synthetic(options: str = "") -> ImageDataset:
    """Build the synthetic dataset described by `options` (e.g. 'classes=4,train=40,test=20,size=16').

    Counts are totals per split, spread evenly over the classes.
    """
    opts = parse_options(options)
    rng = np.random.default_rng(opts["seed"])
    k = opts["classes"]
    splits = {}
    for split in ("train", "val", "test"):
        n = opts[split]
        if n == 0 and split == "val":
            continue
        labels = rng.permutation(np.arange(n) % k).astype(np.int64)
        splits[split] = Split(_images(labels, k, opts["size"], rng), labels)
    return ImageDataset(
        name="synthetic",
        classes=[f"class_{i}" for i in range(k)],
        splits=splits,
        fingerprint=stable_hash({"kind": "synthetic", **opts}),
    )
