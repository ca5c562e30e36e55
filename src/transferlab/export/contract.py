"""What an exported model takes, gives and carries (the contract in docs/ARCHITECTURE.md, "Export").

An exported ONNX or TorchScript model takes what an image decoder gives: float32 pixels in
[0, 255], RGB, channels last (N, H, W, 3), already resized to the run's input size. Scaling to
[0, 1], normalising with the run's mean and std and the NHWC -> NCHW transpose are inside the
graph, so a user shipping it cannot forget them or get them wrong. Float rather than uint8 input
keeps `predict` on the exported model numerically equal to `predict` on best.pt (its resize is in
float); a uint8 image array is fed with `.astype(np.float32)`, as for Keras' EfficientNet, whose
models also take float pixels in [0, 255]. The output is the logits (N, num_classes).

The only step left to the user is the resize; `METADATA_KEY` says how (`resize`), and
`transferlab predict` on the exported file does it exactly as the run did.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from transferlab._version import __version__
from transferlab.models import PreprocessConfig, TransferModel

METADATA_KEY = "transferlab"  # ONNX metadata_props key / TorchScript extra file stem (JSON)
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
PIXEL_MAX = 255.0


class ShippableModel(nn.Module):
    """A trained model with its normalisation baked in: float pixels NHWC in [0, 255] -> logits."""

    def __init__(self, model: TransferModel) -> None:
        super().__init__()
        self.model = model
        cfg = model.pretrained_cfg
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std): two ops instead of three.
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * PIXEL_MAX)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * PIXEL_MAX)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)
        return self.model((x - self.mean) / self.std)


def resize_rule(cfg: PreprocessConfig) -> str:
    """How to bring an image to the input size, in words, as the run's evaluation did."""
    h, w = cfg.input_size
    how = f"{cfg.interpolation} interpolation with antialiasing"
    if cfg.crop_mode == "squash":
        return f"resize the whole image to {h} x {w} (height x width; aspect ratio not kept), {how}"
    if cfg.crop_mode == "center" and cfg.crop_pct == 1.0 and h == w:
        return (f"resize the shorter side to {h} px (aspect ratio kept), {how}, then crop "
                f"{h} x {w} at the centre")
    return (
        f"resize so that a {h} x {w} crop covers {cfg.crop_pct:g} of the image ({cfg.crop_mode} "
        f"crop mode, timm's evaluation transform), {how}, then crop {h} x {w} at the centre"
    )


def export_metadata(model: TransferModel, source: str) -> dict[str, Any]:
    """The JSON metadata every exported ONNX or TorchScript file carries under METADATA_KEY."""
    cfg = model.pretrained_cfg
    h, w = cfg.input_size
    return {
        "format_version": FORMAT_VERSION,
        "transferlab_version": __version__,
        "source": source,
        "model_name": model.model_name,
        "model_kwargs": model.model_kwargs,
        "num_classes": model.num_classes,
        "classes": list(model.classes) if model.classes is not None else None,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", h, w, 3],
            "layout": "NHWC",
            "color": "RGB",
            "range": [0, PIXEL_MAX],
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", model.num_classes], "kind": "logits"},
        "in_graph": "x / 255, then (x - mean) / std per channel, then NHWC -> NCHW",
        "resize": resize_rule(cfg),
        "preprocess": cfg.to_dict(),
    }


def dumps(metadata: dict[str, Any]) -> str:
    """The metadata as the JSON text stored in the file."""
    return json.dumps(metadata, sort_keys=True)
