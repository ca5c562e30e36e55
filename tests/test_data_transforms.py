"""Batch transforms: RGB order end to end, resize on the fly, seeded and per-image augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tests.test_data_folder import COLOURS, make_folder
from transferlab.data import load_dataset
from transferlab.data.transforms import AUGMENTATIONS, BatchTransform


@pytest.mark.parametrize("augment", ["none", "study", "standard"])
def test_colour_order_survives_load_resize_and_augment(tmp_path: Path, augment: str) -> None:
    ds = load_dataset(f"folder:{make_folder(tmp_path / 'src', size=(16, 16))}", data_root=tmp_path / "c")
    t = BatchTransform((64, 64), mean=(0, 0, 0), std=(1, 1, 1), augment=augment, native_size=(16, 16)).train()
    x = t(torch.from_numpy(ds["train"].images), seed=0)
    assert x.shape == (9, 3, 64, 64)
    for label, name in enumerate(ds.classes):
        channel_means = x[torch.from_numpy(ds["train"].labels == label)].mean(dim=(0, 2, 3))
        assert int(channel_means.argmax()) == int(np.argmax(COLOURS[name])), (augment, name)
        assert channel_means.max() > 0.9


def test_matches_torchvision_reference_pipeline() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = BatchTransform((96, 96), mean, std, interpolation="bicubic").eval()(torch.from_numpy(images))
    # Resize the uint8 image, then scale (PIL's resampling, and torchvision's fast CPU path).
    reference = v2.Compose(
        [v2.ToImage(), v2.Resize((96, 96), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
         v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )
    expected = torch.stack([reference(img) for img in images])  # HWC numpy -> CHW tensor
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("augment", AUGMENTATIONS[1:])
def test_seeded_augmentation_repeats_and_varies(augment: str) -> None:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    t = BatchTransform((32, 32), augment=augment).train()
    state = torch.get_rng_state()
    a, b, c = t(images, seed=5), t(images, seed=5), t(images, seed=6)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # Every image draws its own parameters: the same picture, repeated, comes out differently.
    same = images[:1].repeat(16, 1, 1, 1)
    out = t(same, seed=1)
    assert len({hash(o.numpy().tobytes()) for o in out}) > 4


def test_eval_mode_does_not_augment() -> None:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    t = BatchTransform((32, 32), augment="study")
    plain = BatchTransform((32, 32)).eval()(images)
    torch.testing.assert_close(t.eval()(images, seed=1), plain)
    assert not torch.equal(t.train()(images, seed=1), plain)


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        BatchTransform((32, 32))(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown augmentation"):
        BatchTransform((32, 32), augment="heavy")
