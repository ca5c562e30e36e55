"""`create_model`: one call from a registry name (and optional weights) to a ready model."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from transferlab.errors import TransferlabError
from transferlab.models.base import TransferModel
from transferlab.models.freezing import count_parameters
from transferlab.models.registry import get_model_entry
from transferlab.models.weights import WeightsFile, find_weights, load_weights, read_weights

logger = logging.getLogger(__name__)


def create_model(
    name: str,
    num_classes: int = 100,
    pretrained: bool = False,
    weights: str | Path | WeightsFile | None = None,
    weights_dir: str | Path | None = None,
    head: str = "study",
    input_size: tuple[int, int] | list[int] | int | None = None,
    **kwargs: Any,
) -> TransferModel:
    """Build a registered model, optionally with pretrained weights.

    Args:
        name: registry name (see `list_models()`) or `timm:<any timm model>`.
        num_classes: outputs of the head.
        pretrained: download ImageNet weights the standard timm way (needs the network).
        weights: a weights file (.safetensors, torch state dict, or transferlab best.pt); its
            metadata (architecture variant, timm kwargs, pooling semantics, preprocessing) is honoured.
            A `WeightsFile` that `read_weights` already returned is used as is (no second read).
        weights_dir: a folder searched for the .safetensors file whose metadata architecture fits.
        head: "study" (the study's head for this network) or "linear".
        input_size: (H, W) or one int, overriding the preprocessing input size (e.g. 224 for the
            benchmark CNN as the study fed it, or 32 for CIFAR-native training).
        **kwargs: architecture keyword arguments (width_mult, cifar_stem, dropout, ...).

    Returns:
        The model, in training mode, with `load_report` saying where its weights came from.

    Raises:
        TransferlabError: unknown name or keyword, conflicting weight options, a weights file
            for another architecture, or keys that do not fit.
    """
    entry = get_model_entry(name)
    unknown = sorted(set(kwargs) - entry.kwarg_names())
    if unknown:
        accepted = ", ".join(sorted(entry.kwarg_names())) or "none"
        raise TransferlabError(f"{name} has no option {', '.join(unknown)}; it accepts: {accepted}")
    if weights is not None and weights_dir is not None:
        raise TransferlabError("pass either weights (one file) or weights_dir (a folder), not both")

    source: WeightsFile | None = None
    if isinstance(weights, WeightsFile):
        source = weights
    elif weights is not None:
        source = read_weights(weights)
    elif weights_dir is not None:
        source = read_weights(find_weights(weights_dir, entry.accepts(), name))
    elif pretrained and entry.pretrained_source is None:
        raise TransferlabError(
            f"{name} has no pretrained weights (it is trained from scratch); drop --pretrained"
        )

    if source is not None:
        kwargs = {**_kwargs_from_file(source, entry.accepts(), entry.kwarg_names(), name), **kwargs}
    model = entry.builder(
        num_classes=num_classes, head=head, pretrained=pretrained and source is None, **kwargs
    )
    if source is not None:
        model.load_report = load_weights(model, source)
        model.pretrained_cfg = source.preprocess(model.pretrained_cfg)
        model.classes = source.classes if model.head_pretrained else None
    if input_size is not None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, input_size=size)
        model.model_kwargs["input_size"] = list(model.pretrained_cfg.input_size)
    logger.info("%s: %s", name, model.load_report)
    return model


def _kwargs_from_file(
    source: WeightsFile, accepts: dict[str, Any], kwarg_names: set[str], name: str
) -> dict[str, Any]:
    """Builder kwargs a weights file asks for; error if it is for another architecture."""
    arch = source.architecture
    if arch is None:  # a bare state dict: trust the user's choice of model, keys are still checked
        return {}
    if arch not in accepts:
        raise TransferlabError(
            f"{source.path.name} holds weights for {arch}, which does not load into {name} "
            f"(it takes {', '.join(accepts)}); pick the matching --model or another file"
        )
    file_kwargs = {**accepts[arch], **source.model_kwargs()}
    return {k: v for k, v in file_kwargs.items() if k in kwarg_names}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What `transferlab models` lists for one model.

    Attributes:
        name: registry name.
        summary: one-line description.
        params_total: parameters with `num_classes` outputs.
        params_backbone: parameters of the feature extractor.
        input_size: (H, W) of its preprocessing.
        default_input_size: (H, W) to train at from scratch.
        pretrained_source: where pretrained weights come from ("none" if trained from scratch).
        stages: names of the feature stages (valid freeze boundaries).
    """

    name: str
    summary: str
    params_total: int
    params_backbone: int
    input_size: tuple[int, int]
    default_input_size: tuple[int, int]
    pretrained_source: str
    stages: tuple[str, ...]


def get_model_info(name: str, num_classes: int = 100, **kwargs: Any) -> ModelInfo:
    """Build `name` (randomly initialised, nothing downloaded) and describe it."""
    entry = get_model_entry(name)
    # On the meta device nothing is allocated or initialised: counting 25M parameters is instant.
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kwargs)
    return ModelInfo(
        name=entry.name,
        summary=entry.summary,
        params_total=count_parameters(model)[0],
        params_backbone=sum(p.numel() for p in model.backbone_parameters()),
        input_size=model.pretrained_cfg.input_size,
        default_input_size=model.default_input_size,
        pretrained_source=entry.pretrained_source or "none (trained from scratch)",
        stages=tuple(name for name, _ in model.feature_stages()),
    )
