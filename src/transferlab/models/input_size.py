"""The smallest input a model takes, checked from the config before any data is decoded.

A network's minimum is the larger of two sizes: the smallest input its forward pass runs at
(InceptionV3's unpadded stem needs 75 px; the benchmark CNN's three 2x2 max-pools need 8) and
its total stride (32 for MobileNetV2 and ResNets): below the stride the last stage sees less
than one pixel of the image per position, only padding, so such a model runs but learns
nothing from the picture. Both are measured on the meta device, where nothing is allocated or
computed: only shapes travel through the layers.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch

from transferlab.errors import TransferlabError
from transferlab.models.base import TransferModel
from transferlab.models.factory import create_model

# Inputs this large are not probed: the largest minimum among the built-in models is
# InceptionV3's 75 px, and the strides of common backbones are at most 32 or 64.
_SEARCH_LIMIT = 512


def _runs(model: TransferModel, size: int) -> tuple[int, ...] | None:
    """The feature map's (h, w) at a square `size` input (() when the features are not a map,
    e.g. a transformer's tokens), or None when the forward pass fails."""
    try:
        with torch.no_grad():
            features = model.forward_features(torch.empty(1, 3, size, size, device="meta"))
            model.forward_head(features)
    except (RuntimeError, ValueError, AssertionError, IndexError, NotImplementedError):
        return None
    return tuple(features.shape[-2:]) if features.dim() == 4 else ()


@functools.lru_cache(maxsize=8)
def _probe(name: str, kwargs_json: str) -> tuple[TransferModel, int] | None:
    """The model on the meta device and its total stride; None when meta cannot run it."""
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=2, **json.loads(kwargs_json)).eval()
    except TransferlabError:
        raise  # an unknown model or option: the user's to fix, said now
    except Exception:  # noqa: BLE001 - a builder that needs real tensors: no verdict here
        return None
    default = max(model.default_input_size)
    at_default = _runs(model, default)
    if at_default is None:
        return None  # the meta device cannot run this model (data-dependent checks): no verdict
    # Rounded down: never above the true stride; 1 when there is no feature map to measure.
    return model, (max(1, default // max(at_default)) if at_default else 1)


def _key(model_kwargs: dict[str, Any] | None) -> str:
    return json.dumps(model_kwargs or {}, sort_keys=True, default=str)


def min_input_size(name: str, model_kwargs: dict[str, Any] | None = None) -> int | None:
    """The smallest square input (px) model `name` takes, or None when it cannot be measured.

    Args:
        name: registry name or `timm:<name>`.
        model_kwargs: the architecture's keyword arguments (they may change its stride).
    """
    probed = _probe(name, _key(model_kwargs))
    if probed is None:
        return None
    model, stride = probed
    low, high = 1, max(model.default_input_size)  # the smallest size that runs is in [low, high]
    while low < high:
        mid = (low + high) // 2
        if _runs(model, mid) is None:
            low = mid + 1
        else:
            high = mid
    return max(stride, high)


def check_input_size(name: str, size: int, model_kwargs: dict[str, Any] | None = None) -> None:
    """Raise `TransferlabError` when `size` px is below the smallest input of model `name`.

    The message names the config field (input_size); callers with a flag for it add theirs.
    """
    if size >= _SEARCH_LIMIT:
        return
    probed = _probe(name, _key(model_kwargs))
    if probed is None or (size >= probed[1] and _runs(probed[0], size) is not None):
        return  # one probe at the asked size; the search for the minimum only on failure
    minimum = min_input_size(name, model_kwargs)
    raise TransferlabError(
        f"input_size={size} is below the smallest input {name} takes, {minimum} px (a smaller "
        "image leaves its last layers less than one pixel); set input_size to at least "
        f"{minimum}, or leave it unset for the model's default")


__all__ = ["check_input_size", "min_input_size"]
