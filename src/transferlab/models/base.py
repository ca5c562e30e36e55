"""The one contract every transferlab model follows: a backbone made of named stages, then a head.

`TransferModel` wraps any backbone (a paper table, a timm network) in timm's model interface
(`forward_features`, `forward_head`, `reset_classifier`) plus fastai's parameter split
(`backbone_parameters`, `head_parameters`) and carries the preprocessing the weights expect
(`pretrained_cfg`), so data transforms are built from the model and cannot drift from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.data.preprocess import PreprocessConfig  # the preprocessing a model carries
from transferlab.errors import TransferlabError


class ClassifierHead(nn.Module):
    """Global average pooling then a classifier: `forward(f) == fc(pool(f))`.

    `pool` gives (B, C) pooled features (what the cached-feature training stage stores) and `fc`
    maps them to logits (what that stage trains).
    """

    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(features))


class _ForwardFeatures(nn.Module):
    """A stage that runs a whole backbone's `forward_features` (for backbones we cannot split)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


class TransferModel(nn.Module):
    """A backbone (a sequence of named stages) followed by a `ClassifierHead`.

    Args:
        backbone: module holding the feature stages (and nothing of the old classifier).
        stage_names: dotted names of the backbone's submodules whose composition, in this order,
            is the feature extractor; empty when the backbone cannot be split, in which case the
            single stage "backbone" calls `backbone.forward_features`.
        num_features: channels of the feature map (the head's input).
        make_head: builds the head for a class count (used again by `reset_classifier`).
        num_classes: number of output classes.
        pretrained_cfg: preprocessing the model expects.
        default_input_size: (H, W) to train at from scratch when no size is asked for.
        model_name: registry name.
        model_kwargs: keyword arguments that rebuild this architecture with `create_model`
            (head type, width, timm variant...), stored in checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        stage_names: Sequence[str],
        num_features: int,
        make_head: Callable[[int], ClassifierHead],
        num_classes: int,
        pretrained_cfg: PreprocessConfig,
        default_input_size: tuple[int, int],
        model_name: str,
        model_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise TransferlabError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.stage_names = tuple(stage_names)
        self.num_features = num_features
        self._make_head = make_head
        self.num_classes = num_classes
        self.head = make_head(num_classes)
        self.pretrained_cfg = pretrained_cfg
        self.default_input_size = tuple(default_input_size)
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs)
        self.frozen_stages: tuple[str, ...] = ()
        self.classes: list[str] | None = None  # class names, set when loaded from a checkpoint
        self.load_report: str = "randomly initialised"
        self.head_pretrained = (
            False  # True once trained or loaded classifier weights are in the head
        )
        # Divides the logits before a softmax that reports confidence (temperature scaling,
        # fitted by a run on its validation split); never changes the predicted class.
        self.temperature: float = 1.0

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        """The backbone as an ordered list of (name, module); composing them is `forward_features`."""
        if not self.stage_names:
            return [("backbone", _ForwardFeatures(self.backbone))]
        return [(name, self.backbone.get_submodule(name)) for name in self.stage_names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map (B, C, h, w)."""
        for _, stage in self.feature_stages():
            x = stage(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from a feature map; pooling is part of the head."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with `num_classes` outputs."""
        if num_classes < 1:
            raise TransferlabError(f"num_classes must be >= 1, got {num_classes}")
        device = next(self.head.parameters()).device
        self.head = self._make_head(num_classes).to(device).train(self.training)
        self.num_classes = num_classes

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the feature extractor (fine-tuned at a low learning rate, or frozen)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the classifier head (always trained)."""
        return self.head.parameters()

    def train(self, mode: bool = True) -> TransferModel:
        """Set training mode, but keep BatchNorm in frozen stages in inference mode.

        A frozen BatchNorm that kept updating its running statistics would silently change a
        "frozen" backbone, the Keras fine-tuning pitfall (https://github.com/keras-team/keras/pull/9965).
        """
        super().train(mode)
        if mode and self.frozen_stages:
            for name, stage in self.feature_stages():
                if name in self.frozen_stages:
                    for module in stage.modules():
                        if isinstance(module, _BatchNorm):
                            module.eval()
        return self
