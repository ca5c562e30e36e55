"""ONNX: write a run's model with its preprocessing and class names, check it, and read it back.

The file is checked with ONNX Runtime against PyTorch on a batch before it is written: the
largest absolute difference of the logits must be within `LOGIT_TOLERANCE` times the logits'
scale (their largest magnitude, at least 1), else nothing is written. Float32 logits of the
models here agree to 1e-6..1e-5 (measured on mobilenet_v2, efficientnet_lite0, inception_v3,
mobilenet_v2_paper and benchmark_cnn), so 1e-4 catches a wrong graph without flaking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.choices import ONNX_LOGIT_TOLERANCE
from transferlab.errors import TransferlabError
from transferlab.export.contract import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    PIXEL_MAX,
    ExportedMetadata,
    ShippableModel,
    dumps,
)
from transferlab.io import atomic_write
from transferlab.models import PreprocessConfig, TransferModel
from transferlab.models.onnx_io import export_onnx, max_abs_diff, ort_session, set_metadata

LOGIT_TOLERANCE = ONNX_LOGIT_TOLERANCE  # largest |ONNX Runtime - PyTorch| logit, relative to max(1, max |logit|)
CHECK_BATCH = 4  # random images in the check batch (also the export example: a batch of 1 would
# be specialised to a fixed batch axis)


def check_batch(cfg: PreprocessConfig, n: int = CHECK_BATCH, seed: int = 0) -> torch.Tensor:
    """Random float pixels (n, H, W, 3) in [0, 255], the exported model's input."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *cfg.input_size, 3, generator=g) * PIXEL_MAX


def tolerance(reference: torch.Tensor) -> float:
    """The allowed largest difference for these reference logits (see the module docstring)."""
    return LOGIT_TOLERANCE * max(1.0, float(reference.abs().max()))


def write_onnx(
    model: TransferModel, path: Path, metadata: dict[str, Any], opset: int | None = None
) -> float:
    """Export, check with ONNX Runtime, then write `path` atomically; returns the largest difference.

    Raises:
        TransferlabError: if export fails or the check exceeds the tolerance (no file is written).
    """
    shippable = ShippableModel(model).eval()
    example = check_batch(model.pretrained_cfg)
    proto = export_onnx(
        shippable, example, input_name=INPUT_NAME, output_name=OUTPUT_NAME, opset=opset,
        exporters=("dynamo", "torchscript"),  # the maintained exporter first (see onnx_io)
    )
    set_metadata(proto, {METADATA_KEY: dumps(metadata)})
    data = proto.SerializeToString()
    # Check the very bytes that will be written, on a batch other than the export example.
    batch = check_batch(model.pretrained_cfg, seed=1)
    with torch.no_grad():
        reference = shippable(batch)
    got = ort_session(data).run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    diff, allowed = max_abs_diff(got, reference), tolerance(reference)
    if not diff <= allowed:
        raise TransferlabError(
            f"the ONNX export of {model.model_name} disagrees with PyTorch: largest logit "
            f"difference {diff:.3g} > {allowed:.3g}; nothing was written. Export as torchscript "
            "or safetensors instead, and report the model"
        )
    atomic_write(path, lambda f: f.write(data))
    return diff


class OnnxClassifier:
    """An exported `.onnx` file run with ONNX Runtime, with its classes and preprocessing.

    Attributes:
        path: the file.
        metadata: the transferlab metadata (see `contract.export_metadata`).
        pretrained_cfg: how images are prepared (input size, resize rule, mean and std).
        classes: class names in label order.
        num_classes: outputs of the model.
        model_name: the registry name of the model it was exported from.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise TransferlabError(f"ONNX file {self.path} not found; check the path")
        self.session = ort_session(self.path, threads=threads)
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise TransferlabError(
                f"{self.path} has no transferlab metadata, so its classes and preprocessing are "
                "unknown; predict with a file written by `transferlab export RUN_DIR --format onnx`"
            )
        read = ExportedMetadata(props[METADATA_KEY], self.path)
        self.metadata, self.pretrained_cfg = read.metadata, read.pretrained_cfg
        self.num_classes, self.temperature = read.num_classes, read.temperature
        self.classes, self.model_name = read.classes, read.model_name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) for float32 pixels (N, H, W, 3) in [0, 255]."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels)})[0]
