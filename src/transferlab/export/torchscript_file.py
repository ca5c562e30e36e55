"""TorchScript: the same shippable module as the ONNX export, traced, with its metadata inside.

Load it without transferlab:
    files = {"transferlab.json": ""}
    model = torch.jit.load(PATH, _extra_files=files)
    metadata = json.loads(files["transferlab.json"])
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.errors import TransferlabError
from transferlab.export.contract import METADATA_KEY, ExportedMetadata, ShippableModel, dumps
from transferlab.export.onnx_file import check_batch, tolerance
from transferlab.io import atomic_write
from transferlab.models import TransferModel
from transferlab.models.onnx_io import max_abs_diff

EXTRA_FILE = f"{METADATA_KEY}.json"


def write_torchscript(model: TransferModel, path: Path, metadata: dict[str, Any]) -> float:
    """Trace, reload and check against eager, then write `path` atomically; returns the difference.

    Raises:
        TransferlabError: if tracing fails or the reloaded module disagrees (nothing is written).
    """
    shippable = ShippableModel(model).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit is deprecated in favour of torch.export, but TorchScript is still what
            # C++ (libtorch) and mobile runtimes load; the warning is not the user's to act on.
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(shippable, check_batch(model.pretrained_cfg))
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: dumps(metadata)})
            data = buffer.getvalue()
            reloaded = torch.jit.load(io.BytesIO(data))
            batch = check_batch(model.pretrained_cfg, n=3, seed=1)  # another batch size too
            reference, got = shippable(batch), reloaded(batch)
    except Exception as err:  # noqa: BLE001 - tracing errors come in many types
        raise TransferlabError(
            f"TorchScript tracing of {model.model_name} failed ({str(err)[:300]}); export as "
            "onnx or safetensors instead"
        ) from err
    diff, allowed = max_abs_diff(got, reference), tolerance(reference)
    if not diff <= allowed:
        raise TransferlabError(
            f"the TorchScript export of {model.model_name} disagrees with eager PyTorch: largest "
            f"logit difference {diff:.3g} > {allowed:.3g}; nothing was written"
        )
    atomic_write(path, lambda f: f.write(data))
    return diff


class TorchScriptClassifier:
    """An exported `.torchscript.pt` file, with its classes and preprocessing (as `OnnxClassifier`).

    It takes and gives what the ONNX export does (float32 pixels NHWC in [0, 255] -> logits), so
    `predict` prepares images for both alike.

    Attributes:
        path: the file.
        metadata: the transferlab metadata (see `contract.export_metadata`).
        pretrained_cfg: how images are prepared (input size, resize rule, mean and std).
        classes: class names in label order.
        num_classes: outputs of the model.
        model_name: the registry name of the model it was exported from.
    """

    def __init__(self, path: str | Path) -> None:


        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise TransferlabError(f"TorchScript file {self.path} not found; check the path")
        files = {EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # as in write_torchscript
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files).eval()
        except RuntimeError as err:
            raise TransferlabError(f"{self.path} is not a readable TorchScript file ({err})") from err
        if not files[EXTRA_FILE]:
            raise TransferlabError(
                f"{self.path} has no transferlab metadata, so its classes and preprocessing are "
                "unknown; use a file written by `transferlab export RUN_DIR --format torchscript`"
            )
        read = ExportedMetadata(files[EXTRA_FILE], self.path)
        self.metadata, self.pretrained_cfg = read.metadata, read.pretrained_cfg
        self.num_classes, self.temperature = read.num_classes, read.temperature
        self.classes, self.model_name = read.classes, read.model_name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) for float32 pixels (N, H, W, 3) in [0, 255]."""
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()
