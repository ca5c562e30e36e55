"""Pretrained backbones from timm, wrapped in the transferlab contract with the study's head.

The timm network keeps its own module names (so timm checkpoints and the shared weight files
load by key) and loses its classifier; the head is ours. Online pretrained weights come through
timm's standard `pretrained=True` path (the Hugging Face hub).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNet
from timm.models.inception_v3 import InceptionA, InceptionC, InceptionE, InceptionV3
from timm.models.resnet import ResNet
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.models.base import PreprocessConfig, TransferModel
from transferlab.models.heads import (
    STUDY_DROPOUT,
    check_head,
    final_linear_name,
    linear_head,
    study_head,
)
from transferlab.models.registry import TIMM_PREFIX, ModelEntry, register_model, register_prefix


def _hub_source(arch: str) -> str:
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return f"timm ({hub_id or arch}, online)"


def stage_names(net: nn.Module) -> list[str]:
    """The submodules whose composition is `net.forward_features`, for the families we know.

    Returns an empty list for other families: the whole `forward_features` is then one stage.
    """
    if isinstance(net, EfficientNet):  # also MobileNetV2 and EfficientNet-Lite in timm
        return [
            "conv_stem",
            "bn1",
            *(f"blocks.{i}" for i in range(len(net.blocks))),
            "conv_head",
            "bn2",
        ]
    if isinstance(net, ResNet):
        return ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    if isinstance(net, InceptionV3) and not net.aux_logits:
        return list(net.layer_names)
    return []


def _avg_pool_exclude_padding(module: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    """Forward pre-hook turning a padded 3x3 average pool (count_include_pad=True) into Keras's.

    The input is avg_pool2d(x, 3, 1, 1) with padding counted; dividing by the fraction of each
    window that lies inside the image gives the average over real pixels only.
    """
    (pooled,) = args
    ones = pooled.new_ones((1, 1, *pooled.shape[-2:]))
    inside = F.avg_pool2d(ones, kernel_size=3, stride=1, padding=1)
    return (pooled / inside,)


def exclude_padding_in_avg_pools(net: nn.Module) -> int:
    """Make the 3x3 average pools inside timm's Inception blocks exclude padding (Keras semantics).

    timm and torchvision count padding (`count_include_pad=True`); Keras InceptionV3 weights need
    it excluded or border activations shrink. Returns the number of blocks changed.
    """
    blocks = [m for m in net.modules() if isinstance(m, (InceptionA, InceptionC, InceptionE))]
    if not blocks:
        raise TransferlabError(
            "avg_pool_count_include_pad=False is only supported for inception_v3 "
            "(the weights' metadata asks for it on another architecture)"
        )
    for block in blocks:
        block.branch_pool.register_forward_pre_hook(_avg_pool_exclude_padding)
    return len(blocks)


def build_timm_model(
    registry_name: str,
    arch: str,
    num_classes: int,
    head: str,
    pretrained: bool,
    dropout: float | None,
    timm_kwargs: Mapping[str, Any] | None,
    avg_pool_count_include_pad: bool,
) -> TransferModel:
    """Create timm model `arch` without its classifier and wrap it with our head."""
    check_head(head)
    timm_kwargs = dict(timm_kwargs or {})
    if not timm.is_model(arch):
        raise TransferlabError(f"timm has no model {arch!r}; see `timm.list_models()` for names")
    try:
        net = timm.create_model(arch, pretrained=pretrained, **timm_kwargs)
    except TypeError as err:
        raise TransferlabError(
            f"bad timm keyword arguments {timm_kwargs} for {arch}: {err}"
        ) from err
    except (OSError, RuntimeError) as err:  # no network, hub errors, missing weights
        if not pretrained:
            raise
        raise TransferlabError(
            f"cannot download pretrained {arch} weights through timm ({err}); when offline pass "
            "--weights FILE or --weights-dir DIR"
        ) from err
    old_classifier = net.get_classifier() if pretrained else None
    net.reset_classifier(0)  # our head replaces it; forward_features never used it

    num_features = net.num_features
    if dropout is None:
        dropout = STUDY_DROPOUT if head == "study" else 0.0
    make_head = partial(
        study_head if head == "study" else linear_head, num_features, dropout=dropout
    )
    cfg = PreprocessConfig.from_dict(net.pretrained_cfg)
    kwargs: dict[str, Any] = {"head": head, "arch": arch, "dropout": dropout}
    if timm_kwargs:
        kwargs["timm_kwargs"] = timm_kwargs
    if not avg_pool_count_include_pad:
        exclude_padding_in_avg_pools(net)
        kwargs["avg_pool_count_include_pad"] = False
    model = TransferModel(
        backbone=net,
        stage_names=stage_names(net),
        num_features=num_features,
        make_head=make_head,
        num_classes=num_classes,
        pretrained_cfg=cfg,
        default_input_size=cfg.input_size,
        model_name=registry_name,
        model_kwargs=kwargs,
    )
    if pretrained:
        model.load_report = f"backbone loaded from {_hub_source(arch)}; " + _copy_classifier(
            model, old_classifier
        )
    return model


def _copy_classifier(model: TransferModel, classifier: nn.Module | None) -> str:
    """Keep timm's pretrained classifier when our head is linear with the same classes."""
    target = model.head.get_submodule(final_linear_name(model.head))
    if (
        isinstance(classifier, nn.Linear)
        and model.model_kwargs["head"] == "linear"
        and classifier.weight.shape == target.weight.shape
    ):
        target.load_state_dict(classifier.state_dict())
        model.head_pretrained = True
        return "classifier loaded"
    return f"classifier re-initialised for {model.num_classes} classes"


def _timm_builder(registry_name: str, default_arch: str):
    """A registry builder for a timm architecture (the variant can be changed with `arch`)."""

    def build(
        num_classes: int = 100,
        head: str = "study",
        pretrained: bool = False,
        arch: str = default_arch,
        dropout: float | None = None,
        timm_kwargs: Mapping[str, Any] | None = None,
        avg_pool_count_include_pad: bool = True,
    ) -> TransferModel:
        return build_timm_model(
            registry_name,
            arch,
            num_classes,
            head,
            pretrained,
            dropout,
            timm_kwargs,
            avg_pool_count_include_pad,
        )

    build.__doc__ = f"""Build timm `{default_arch}` with the study's (or a linear) head.

    Args:
        num_classes: number of output classes.
        head: "study" (Dense 1024 + ReLU, Dropout, Dense k) or "linear".
        pretrained: download ImageNet weights through timm.
        arch: timm variant to build instead (set from a weights file's metadata).
        dropout: head dropout (default 0.3 for the study head, 0 for linear).
        timm_kwargs: extra `timm.create_model` keyword arguments (e.g. pad_type="same").
        avg_pool_count_include_pad: False gives Keras average pools (Inception blocks only).
    """
    return build


_BACKBONES = (
    # registry name, timm default, summary, weights-file architectures -> timm variant
    (
        "mobilenet_v2",
        "mobilenetv2_100",
        "MobileNetV2 1.0 (timm mobilenetv2_100), ImageNet-pretrained",
        {"timm:mobilenetv2_100": "mobilenetv2_100"},
    ),
    (
        "inception_v3",
        "inception_v3",
        "InceptionV3 (the study's pretrained network), 299 px",
        {"timm:inception_v3": "inception_v3", "torchvision:inception_v3": "inception_v3"},
    ),
    (
        "efficientnet_lite0",
        "efficientnet_lite0",
        "EfficientNet-Lite0 (timm efficientnet_lite0)",
        {
            "timm:efficientnet_lite0": "efficientnet_lite0",
            "timm:tf_efficientnet_lite0": "tf_efficientnet_lite0",
        },
    ),
    (
        "resnet50",
        "resnet50",
        "ResNet-50 (timm resnet50)",
        {"timm:resnet50": "resnet50", "torchvision:resnet50": "resnet50"},
    ),
)

for _name, _arch, _summary, _archs in _BACKBONES:
    register_model(
        _name,
        summary=_summary,
        pretrained_source=_hub_source(_arch),
        architectures={k: {"arch": v} for k, v in _archs.items()},
    )(_timm_builder(_name, _arch))


def timm_entry(arch: str) -> ModelEntry:
    """A registry entry for `timm:<arch>`, any convolutional timm model."""
    if not timm.is_model(arch):
        raise TransferlabError(f"timm has no model {arch!r}; see `timm.list_models()` for names")
    name = f"timm:{arch}"
    return ModelEntry(
        name=name,
        builder=_timm_builder(name, arch),
        summary=f"timm {arch}",
        pretrained_source=_hub_source(arch),
        architectures={name: {"arch": arch}},
    )


register_prefix(TIMM_PREFIX, timm_entry)
