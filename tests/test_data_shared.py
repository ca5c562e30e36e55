"""The real CIFAR-10 archive in ../shared (skipped with the reason when it is absent)."""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

from tests.conftest import require_shared
from transferlab.data.transforms import BatchTransform


def test_counts(shared_cifar10) -> None:
    ds = shared_cifar10
    assert ds.num_classes == 10 and "cat" in ds.classes
    assert len(ds["train"]) == 50_000 and len(ds["test"]) == 10_000
    counts = ds.class_counts()
    assert (counts["train"] == 5_000).all() and (counts["test"] == 1_000).all()


def test_official_test_images_are_found(shared_cifar10) -> None:
    """The first 20 official CIFAR-10 test images (lossless) appear in the JPEG copy, same label."""
    ds = shared_cifar10
    official = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    test = ds["test"].images.astype(np.float32)
    for path in sorted(require_shared("data", "samples", "cifar10").glob("*.png")):
        label = int(re.search(r"_(\d+)\.png$", path.name).group(1))
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        errors = np.abs(test - pixels).mean(axis=(1, 2, 3))
        best = int(errors.argmin())
        # JPEG quality ~75 costs about 6/255 on average; an unrelated image is ~50 away.
        assert errors[best] < 15, (path.name, errors[best])
        assert ds.classes[ds["test"].labels[best]] == official[label]


def test_colour_order_on_real_pixels(shared_cifar10) -> None:
    """A real sample through the batch transform equals the same sample through PIL + numpy."""
    path = sorted(require_shared("data", "samples", "cifar10").glob("*.png"))[0]
    rgb = np.array(Image.open(path).convert("RGB"))
    out = BatchTransform((32, 32), mean=(0, 0, 0), std=(1, 1, 1)).eval()(torch.from_numpy(rgb[None]))
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-6)
