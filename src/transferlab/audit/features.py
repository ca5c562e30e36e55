"""Pretrained-feature descriptors of every image of every split, for the audit.

The backbone is built as `transferlab rank` builds a candidate (same weights, input size rule and
preprocessing), and its pooled features are extracted with the same extractor training uses. Each
image's descriptor is the mean of the pooled features of the image and of its mirror image, so a
horizontally flipped copy has the very same descriptor and is found as a near-duplicate like any
other edit. Descriptors are cached in the data cache, keyed like training's cached features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data.cache import data_root, load_arrays, save_arrays
from transferlab.data.dataset import ArrayRows, ImageDataset
from transferlab.logs import info

AUTO_UPSCALE = 3  # input size: at most this many times the stored images' size ...
AUTO_MIN_SIZE = 128  # ... and at least this: at 96 px a resized copy of a 32 px photo scored 0.89
# against its original and an unrelated photo up to 0.93; at 112-128 px 0.95-0.96 against <= 0.74
DESCRIPTOR_VERSION = 1  # bump when the descriptor changes meaning (cache key)


class MirroredRows:
    """Rows of an `ArrayRows` flipped left to right, gathered batch by batch like the original."""

    def __init__(self, rows: ArrayRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        """(len(self), H, W, 3)."""
        return self.rows.shape

    @property
    def device(self) -> torch.device:
        """The CPU."""
        return self.rows.device

    @property
    def dtype(self) -> torch.dtype:
        """The rows' dtype (uint8)."""
        return self.rows.dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.rows[index].flip(-2)  # NHWC: W is the second-to-last axis


@dataclass
class Backbone:
    """A pretrained backbone ready to describe images."""

    name: str
    model: Any
    transform: Any
    input_size: tuple[int, int]
    model_kwargs: dict[str, Any]
    weights: str


def build_backbone(model: str, weights: str | Path | None, pretrained: bool,
                   native_size: Sequence[int], input_size: int | None, device: torch.device) -> Backbone:
    """Build `model` with its pretrained weights and the preprocessing a run of it would use."""
    from transferlab.data.transforms import BatchTransform
    from transferlab.models import create_model

    if input_size is None:
        with torch.device("meta"):
            probe = create_model(model, num_classes=2, head="linear")
        own = probe.pretrained_cfg.input_size
        if weights is not None:
            from transferlab.models import read_weights

            own = read_weights(weights).preprocess(probe.pretrained_cfg).input_size
        input_size = int(min(max(own), max(AUTO_MIN_SIZE, AUTO_UPSCALE * max(native_size))))
    net = create_model(model, num_classes=2, pretrained=weights is None and pretrained, weights=weights,
                       head="linear", input_size=input_size)
    net.to(device).to(memory_format=torch.channels_last).eval()
    pre = net.pretrained_cfg
    size = tuple(pre.input_size)
    net.pretrained_cfg = dataclasses.replace(pre, crop_pct=1.0, crop_mode="squash")
    transform = BatchTransform(size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation,
                               augment="none", native_size=native_size).to(device).eval()
    kwargs = dict(getattr(net, "model_kwargs", {}) or {})
    source = str(Path(weights).resolve()) if weights is not None else "timm hub"
    return Backbone(model, net, transform, size, kwargs, source)


def describe(dataset: ImageDataset, backbone: Backbone, *, batch_size: int = 256,
             cache_root: str | Path | None = None, backend: str = "auto", quiet: bool = False,
             log: Callable[[str], None] = info) -> dict[str, np.ndarray]:
    """{split: (N, D) float32 descriptors} for every split of `dataset`, from the cache if there."""
    from transferlab.training import features as feats
    from transferlab.training.device import select_precision
    from transferlab.training.engine import Batches

    model = backbone.model
    prefix, tail = feats.split_model(model, "head")
    frozen = feats.frozen_state_hash(model, tail)
    device = next(model.parameters()).device
    precision = select_precision("off", device)
    pre = model.pretrained_cfg
    root = Path(cache_root) if cache_root else data_root(None)
    out: dict[str, np.ndarray] = {}
    reuse: dict[str, Any] = {}
    total = sum(len(s) for s in dataset.splits.values())
    for split, data in dataset.splits.items():
        key = feats.feature_cache_key(
            model_name=backbone.name, frozen=frozen, boundary=f"audit-mirror-mean-v{DESCRIPTOR_VERSION}",
            fingerprint=dataset.fingerprint, split=split, indices=np.arange(len(data)),
            input_size=backbone.input_size, mean=pre.mean, std=pre.std,
            interpolation=pre.interpolation, model_kwargs=backbone.model_kwargs, precision=precision.name)
        cache = feats.features_dir(root, key)
        cached = load_arrays(cache)
        if cached is not None:
            out[split] = cached[0]["descriptors"]
            continue
        labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        views = []
        for name, rows in (("", data.rows()), (" (mirrored)", MirroredRows(data.rows()))):
            batches = Batches(rows, labels, batch_size, transform=backbone.transform, device=device,
                              channels_last=True)
            values, seconds, used = feats.extract(prefix, batches, backend=backend, num_images=2 * total,
                                                  precision=precision, desc=f"describe {split}{name}",
                                                  quiet=quiet, log=log, reuse=reuse)
            log(f"  {split}{name}: {len(data):,} images in {seconds:.1f} s "
                f"({len(data) / max(seconds, 1e-9):,.0f} img/s, {used})")
            views.append(values.numpy())
        descriptors = ((views[0] + views[1]) / 2).astype(np.float32)
        save_arrays(cache, {"descriptors": descriptors}, {"split": split, "shape": list(descriptors.shape)})
        out[split] = descriptors
    return out
