"""Checkpoints written atomically, and the state needed to resume a run exactly.

Every file is written with `transferlab.io.atomic_write` (temp sibling, then `os.replace`): a crash
or Ctrl-C leaves either the old file or the new one, never a truncated one.

`best.pt` holds what `transferlab.models.load_checkpoint_model` needs to rebuild the model
(model_name, model_kwargs, num_classes, classes, state_dict, pretrained_cfg, config);
`last.pt` holds the resumable state (model, optimiser, scheduler, RNG, stage/epoch/step position).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.errors import TransferlabError
from transferlab.io import atomic_write, atomic_write_text  # noqa: F401 - re-exported for callers


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """`torch.save` a checkpoint dict atomically."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`.

    Raises:
        TransferlabError: if the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"checkpoint {path} not found; check the run directory path")
    try:
        # weights_only=False: our own files carry numpy RNG state and plain config dicts.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling error means the same to the user
        raise TransferlabError(f"checkpoint {path} cannot be read ({err}); delete it and retrain") from err


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's state dict (safe to keep while training continues)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def model_checkpoint(model: torch.nn.Module, config: Any, *, model_name: str,
                     model_kwargs: dict[str, Any], classes: list[str],
                     state_dict: dict[str, torch.Tensor] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `best.pt` payload: enough to rebuild the model without the training code.

    Args:
        model: the trained model (wrappers are removed).
        config: the run's TrainConfig (stored as a plain dict).
        model_name: registry name for `create_model`.
        model_kwargs: keyword arguments for `create_model` besides num_classes.
        classes: class names in label order.
        state_dict: weights to store instead of the model's current ones (e.g. the best epoch's).
        extra: more keys (stage, epoch, metrics).
    """
    from transferlab.config import config_to_dict

    cfg = getattr(unwrap(model), "pretrained_cfg", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    return {
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "num_classes": len(classes),
        "classes": list(classes),
        "state_dict": state_dict if state_dict is not None else cpu_state_dict(model),
        "pretrained_cfg": cfg,
        "config": config_to_dict(config) if dataclasses.is_dataclass(config) else config,
        **(extra or {}),
    }


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (Python, NumPy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
