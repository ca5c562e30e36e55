"""What the steps of one run share: config, device, data, model, and the run directory.

`train_run` (training/run.py) builds one `RunContext`; the steps in `rundir`, `prepare`,
`cache_plan`, `run_state`, `stage_loop` and `summary` read and fill it in that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.config import TrainConfig
from transferlab.logs import info
from transferlab.training import distributed as dist_utils
from transferlab.training.device import Precision
from transferlab.training.engine import Batches
from transferlab.training.imbalance import Imbalance
from transferlab.training.interrupt import InterruptFlag


class RunContext:
    """State of one run (a class only to share it between the steps of `train_run`).

    Filled in step by step: `rundir.prepare_dir` sets `run_dir`; `prepare.load_data` sets
    `dataset`, `splits`, `data`, `indices`, `excluded` and `split_sources`; `prepare.build_model` sets `model`, `input_size`,
    `transforms` and `eval_transform`.
    """

    run_dir: Path
    dataset: Any  # transferlab.data.ImageDataset
    splits: Any  # transferlab.data.SplitIndices
    # split -> (uint8 NHWC images: a tensor, or a data.ArrayRows view that gathers per batch;
    #           int64 labels)
    data: dict[str, tuple[Any, torch.Tensor]]
    indices: dict[str, np.ndarray]  # split -> indices into the dataset's split (cache keys)
    split_sources: dict[str, str]  # split -> where its images came from, in words
    excluded: dict[str, list[str]]  # split -> source paths left out by the config's `exclude` file
    model: nn.Module
    input_size: tuple[int, ...]  # (H, W) the run trains at
    transforms: dict[str, nn.Module]  # augmentation name -> training BatchTransform
    eval_transform: nn.Module  # evaluation BatchTransform

    def __init__(self, config: TrainConfig, resume: bool, ctx: dist_utils.DistContext,
                 device: torch.device, precision: Precision) -> None:
        self.config = config
        self.resume = resume
        self.ctx = ctx
        self.device = device
        self.precision = precision
        self.interrupt = InterruptFlag()
        self.writer = None
        self.stage_features: tuple[str, nn.Module, Any] | None = None  # last stage's cached features
        self.excluded: dict[str, list[str]] = {}
        self.leakage: dict[str, Any] | None = None  # copies across splits (training.leakage)
        self.imbalance: Imbalance | None = None  # what the run does about uneven classes (run.py)

    def log(self, message: str) -> None:
        """Say `message` through the "transferlab" logger, on rank 0 only."""
        if self.ctx.is_main:
            info(message)

    def model_kwargs(self) -> dict[str, Any]:
        """create_model kwargs that rebuild the architecture (the model's own, else the config's)."""
        kwargs = dict(getattr(self.model, "model_kwargs", {}) or {})
        kwargs.update(self.config.model_kwargs)
        kwargs.setdefault("head", self.config.head)
        return kwargs

    def image_batches(self, split: str, batch_size: int) -> Batches:
        """Evaluation-mode batches of a split's images in dataset order (this process only)."""
        x, y = self.data[split]
        return Batches(x, y, batch_size, transform=self.eval_transform, device=self.device,
                       channels_last=self.config.channels_last)


__all__ = ["RunContext"]
