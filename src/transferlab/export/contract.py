"""What an exported model takes, gives and carries (the contract in docs/ARCHITECTURE.md, "Export").

An exported ONNX or TorchScript model takes the run's preprocessed pixels before scaling: float32
in [0, 255], RGB, channels last (N, H, W, 3), at the run's input size. Scaling to [0, 1],
normalising with the run's mean and std and the NHWC -> NCHW transpose are inside the graph, so
a user shipping it cannot forget them or get them wrong. The output is the logits
(N, num_classes).

The caller does what comes before, the two steps of `transferlab.data.preprocess` (the path the
run's own test pass took, so `predict` on an exported file reproduces the run's test logits):
1. decode the file to upright RGB and, when the run stored its photos at one size (`stored_size`
   in the metadata's `preprocess`), resize the shorter side to it and crop the centre square
   (Pillow bicubic), exactly as the run's dataset did;
2. resize that image to the input size with the run's interpolation and antialiasing, on uint8
   pixels (torchvision's uint8 resize, which is Pillow's filter), and feed it as float32.
`METADATA_KEY` says both in words (`resize`) and as steps (`caller`). Neither resize is in the
graph: ONNX's Resize cannot repeat torchvision's uint8 resampling exactly, and a graph fed a
stored-size image would tie it to one source size. In Python, `Preprocess(cfg).resized(files)`
does both steps (cfg: `PreprocessConfig.from_dict(metadata["preprocess"])`).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from transferlab._version import __version__
from transferlab.models import PreprocessConfig, TransferModel

METADATA_KEY = "transferlab"  # ONNX metadata_props key / TorchScript extra file stem (JSON)
FORMAT_VERSION = 2  # 2: `preprocess.stored_size`, `caller` (the decode-time resize of a run on photos)
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
    """How to bring a decoded image to the input size, in words, as the run's test pass did."""
    h, w = cfg.input_size
    how = f"{cfg.interpolation} interpolation with antialiasing on uint8 pixels"
    if cfg.stored_size is not None:
        sh, sw = cfg.stored_size
        return (f"resize the shorter side to {max(sh, sw)} px and crop {sh} x {sw} at the centre "
                f"(Pillow bicubic, as the run stored its images), then resize that to {h} x {w}, "
                f"{how}")
    if cfg.crop_mode == "squash":
        return f"resize the whole image to {h} x {w} (height x width; aspect ratio not kept), {how}"
    if cfg.crop_mode == "center" and cfg.crop_pct == 1.0 and h == w:
        return (f"resize the shorter side to {h} px (aspect ratio kept, Pillow bicubic), then "
                f"crop {h} x {w} at the centre")
    return (
        f"resize so that a {h} x {w} crop covers {cfg.crop_pct:g} of the image (Pillow bicubic), "
        f"then crop {h} x {w} at the centre"
    )


def caller_steps(cfg: PreprocessConfig) -> list[str]:
    """The caller's side of the contract, step by step (the graph does the rest)."""
    steps = ["decode to upright 8-bit RGB (EXIF orientation applied, transparency on white)"]
    h, w = cfg.input_size
    if cfg.stored_size is not None:
        sh, sw = cfg.stored_size
        steps.append(f"shorter side to {max(sh, sw)} px, centre crop {sh} x {sw} (Pillow bicubic; "
                     "JPEG may be decoded at a reduced scale that still covers it)")
        steps.append(f"resize to {h} x {w}, {cfg.interpolation}, antialiased, on uint8 pixels")
    elif cfg.crop_mode == "squash":
        steps.append(f"resize the whole image to {h} x {w}, {cfg.interpolation}, antialiased, "
                     "on uint8 pixels")
    else:
        steps.append(resize_rule(cfg))
    steps.append("stack as float32 (batch, height, width, 3) in [0, 255]")
    return steps


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
        # Temperature scaling fitted by the run on its validation split: softmax(logits / T) are
        # calibrated probabilities (the class with the highest logit does not change).
        "temperature": float(getattr(model, "temperature", 1.0)),
        "probabilities": "softmax(logits / temperature)",
        "in_graph": "x / 255, then (x - mean) / std per channel, then NHWC -> NCHW",
        "resize": resize_rule(cfg),
        "caller": caller_steps(cfg),
        "python": "transferlab.data.preprocess.Preprocess(PreprocessConfig.from_dict("
                  "metadata['preprocess'])).resized(files)",
        "preprocess": cfg.to_dict(),
    }


def dumps(metadata: dict[str, Any]) -> str:
    """The metadata as the JSON text stored in the file."""
    return json.dumps(metadata, sort_keys=True)


class ExportedMetadata:
    """What an exported file's transferlab metadata says, read once for every exported format.

    Attributes:
        metadata: the whole JSON record (`export_metadata`).
        pretrained_cfg: the preprocessing the file expects its caller to apply.
        num_classes: outputs of the model.
        temperature: the run's calibration (1.0 in files of older versions: no scaling).
        classes: class names in label order (indices as names when the file has none).
        model_name: the architecture's registry name.
    """

    def __init__(self, text: str, path: object) -> None:
        from transferlab.errors import TransferlabError

        try:
            self.metadata = json.loads(text)
            self.pretrained_cfg = PreprocessConfig.from_dict(self.metadata["preprocess"])
            self.num_classes = int(self.metadata["num_classes"])
            self.temperature = float(self.metadata.get("temperature", 1.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise TransferlabError(
                f"{path}: unreadable transferlab metadata ({err}); export the run again"
            ) from err
        classes = self.metadata.get("classes")
        self.classes = list(classes) if classes else [str(i) for i in range(self.num_classes)]
        self.model_name = str(self.metadata.get("model_name"))

