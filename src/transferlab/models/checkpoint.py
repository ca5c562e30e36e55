"""Rebuilding a model from a transferlab checkpoint (`RUN_DIR/best.pt`).

Expected keys (see docs/ARCHITECTURE.md, Models): model_name (registry name), model_kwargs
(`model.model_kwargs`: head and architecture options, including those a weights file set),
num_classes, classes (names in label order), state_dict (the whole model), pretrained_cfg
(`PreprocessConfig.to_dict()` or `dataclasses.asdict`). Other keys (config, metrics) are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transferlab.errors import TransferlabError
from transferlab.models.base import PreprocessConfig, TransferModel
from transferlab.models.factory import create_model
from transferlab.models.weights import key_problems

CHECKPOINT_KEYS = (
    "model_name",
    "model_kwargs",
    "num_classes",
    "classes",
    "state_dict",
    "pretrained_cfg",
)
# Weight sources in model_kwargs would re-download or re-read files: the state dict replaces them.
_SOURCE_KWARGS = ("pretrained", "weights", "weights_dir", "num_classes")


def model_from_checkpoint(checkpoint: dict[str, Any], origin: str = "checkpoint") -> TransferModel:
    """Rebuild the architecture and load the checkpoint's state dict strictly.

    Raises:
        TransferlabError: if keys are missing from the checkpoint or its tensors do not fit.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise TransferlabError(
            f"{origin} is not a transferlab checkpoint: it lacks {', '.join(missing)}"
        )
    kwargs = {
        k: v for k, v in (checkpoint["model_kwargs"] or {}).items() if k not in _SOURCE_KWARGS
    }
    model = create_model(
        checkpoint["model_name"], num_classes=int(checkpoint["num_classes"]), **kwargs
    )
    problems = key_problems(model.state_dict(), checkpoint["state_dict"])
    if problems:
        raise TransferlabError(
            f"{origin} does not fit {checkpoint['model_name']}: " + "; ".join(problems)
        )
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    if checkpoint["pretrained_cfg"]:
        model.pretrained_cfg = PreprocessConfig.from_dict(dict(checkpoint["pretrained_cfg"]))
    model.classes = list(checkpoint["classes"]) if checkpoint["classes"] is not None else None
    model.load_report = f"loaded from {origin}"
    model.head_pretrained = True
    # The run's calibration (training.summary: temperature scaling on validation); 1.0 = none.
    model.temperature = float(checkpoint.get("temperature", 1.0))
    return model


def load_checkpoint_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> TransferModel:
    """Load `best.pt` (or any file with the checkpoint keys) as a ready model with `classes` set.

    Raises:
        TransferlabError: if the file is missing, unreadable or not a transferlab checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferlabError(f"checkpoint {path} not found; check the run directory")
    try:
        # weights_only: loading a checkpoint must not run code from it.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling error means the same to the user
        raise TransferlabError(f"{path} cannot be read as a checkpoint ({err})") from err
    if not isinstance(checkpoint, dict):
        raise TransferlabError(f"{path} is not a transferlab checkpoint (not a dict)")
    return model_from_checkpoint(checkpoint, origin=str(path))
