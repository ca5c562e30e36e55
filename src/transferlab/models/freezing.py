"""Freezing a backbone, wholly or below a named stage, with BatchNorm kept in inference mode.

The study froze "the first 249 layers" of Keras InceptionV3, i.e. everything below the top two
inception blocks: `freeze(model, "Mixed_7b")` leaves Mixed_7b, Mixed_7c and the head trainable.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.models.base import TransferModel


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@dataclasses.dataclass(frozen=True)
class FreezeReport:
    """What `freeze` did.

    Attributes:
        total: all parameters.
        trainable: parameters that will be trained.
        frozen_stages: names of the frozen feature stages, in order.
    """

    total: int
    trainable: int
    frozen_stages: tuple[str, ...]

    @property
    def frozen(self) -> int:
        """Parameters that will not change."""
        return self.total - self.trainable

    def __str__(self) -> str:
        stages = f"{len(self.frozen_stages)} stages" if self.frozen_stages else "nothing"
        return (
            f"trainable {self.trainable:,} / frozen {self.frozen:,} parameters (frozen: {stages})"
        )


def freeze(model: TransferModel, boundary: str | None = "all") -> FreezeReport:
    """Freeze part of the backbone; everything else (and the head) becomes trainable.

    Calling it again replaces the previous freeze, so `freeze(m, None)` unfreezes everything.
    Frozen BatchNorm layers stay in inference mode even after `model.train()`: their running
    statistics do not move (keras PR #9965).

    Args:
        model: a model from `create_model`.
        boundary: None to freeze nothing, "all" for the whole backbone, or a stage name (see
            `model.feature_stages()`) to freeze every stage before it.

    Raises:
        TransferlabError: if the boundary is not a stage name.
    """
    stages = model.feature_stages()
    names = [name for name, _ in stages]
    if boundary is None:
        cut = 0
    elif boundary == "all":
        cut = len(stages)
    elif boundary in names:
        cut = names.index(boundary)
    else:
        raise TransferlabError(
            f"{boundary!r} is not a stage of {model.model_name}; use all, or one of: {', '.join(names)}"
        )
    for param in model.parameters():
        param.requires_grad_(True)
    for _, stage in stages[:cut]:
        for param in stage.parameters():
            param.requires_grad_(False)
    model.frozen_stages = tuple(names[:cut])
    model.train(model.training)  # re-apply so frozen BatchNorm switches to inference mode now
    total, trainable = count_parameters(model)
    return FreezeReport(total, trainable, model.frozen_stages)


def top_stage(model: TransferModel) -> str | None:
    """The first feature stage at the backbone's last spatial resolution (None: no stages to cut).

    That is where fine-tuning "the top of the backbone" starts: `blocks.5` for MobileNetV2 and
    EfficientNet, `Mixed_7a` for InceptionV3, `layer4` for ResNet. These stages hold many of the
    parameters but little of the compute (they run on the smallest maps), and their features are
    the most specific to ImageNet's classes. Found by running one image through the stages.
    """
    stages = model.feature_stages()
    if len(stages) < 2:
        return None
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    size = tuple(model.pretrained_cfg.input_size)
    x = torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype)
    sizes = []
    with torch.no_grad():
        for _, stage in stages:
            x = stage(x)
            sizes.append(tuple(x.shape[-2:]))
    model.train(was_training)
    first = len(sizes) - 1
    while first > 0 and sizes[first - 1] == sizes[-1]:
        first -= 1
    # The very first stage is the whole backbone: "top" then means everything.
    return stages[first][0] if first > 0 else None


def boundary_for(model: TransferModel, train: str) -> str | None:
    """The `freeze` boundary of a stage's `train` setting: head -> "all", all -> None,
    top -> `top_stage(model)`, from:<stage> -> <stage>."""
    if train == "head":
        return "all"
    if train == "all":
        return None
    if train == "top":
        return top_stage(model)
    return train.removeprefix("from:")
