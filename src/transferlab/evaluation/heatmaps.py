"""Where the model looked: Grad-CAM class-activation maps through captum's `LayerGradCam`.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the channels of a convolutional feature map by the
mean gradient of a class's logit and keeps the positive part. The feature map is taken from the
model's contract, never by guessing layer names: every `TransferModel` is a sequence of feature
stages (`feature_stages()`) whose last output is the map the classifier head pools, for every
backbone family of the registry (a timm backbone that cannot be split is one stage that runs its
`forward_features`). The forward pass here composes those stages itself, so the hooked stage is
the one that runs.

captum is an optional dependency (`pip install "transferlab[explain]"`); `available()` says
whether it is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from transferlab.errors import TransferlabError

INSTALL_HINT = 'pip install "transferlab[explain]" (or pip install captum)'


def available() -> bool:
    """True when captum is installed."""
    return importlib.util.find_spec("captum") is not None


def target_layer(model: Any) -> Any:
    """The module whose output is the feature map the head pools: the last feature stage."""
    return model.feature_stages()[-1][1]


def class_activation_maps(
    model: Any,
    inputs: Any,
    targets: Any,
    size: tuple[int, int] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM maps of `targets` for model inputs, scaled to [0, 1] per image.

    Args:
        model: a `TransferModel` (eval mode).
        inputs: (N, 3, h, w) float tensor, preprocessed as the model expects.
        targets: (N,) class indices, one per input (the class each map explains).
        size: (H, W) to resize the maps to (the stored image the user sees); default (h, w).
        batch_size: images per backward pass.

    Returns:
        float32 (N, H, W); an image whose map is zero everywhere (the class has no positive
        evidence) stays zero.

    Raises:
        TransferlabError: captum is not installed.
    """
    if not available():
        raise TransferlabError(f"class-activation heatmaps need captum; {INSTALL_HINT}")
    import torch
    import torch.nn.functional as F
    from captum.attr import LayerGradCam

    stages = [module for _, module in model.feature_stages()]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for stage in stages:
            x = stage(x)
        return model.forward_head(x)

    cam = LayerGradCam(forward, stages[-1])
    targets = torch.as_tensor(targets, dtype=torch.long)
    size = tuple(size or inputs.shape[-2:])
    device = next(model.parameters()).device
    out = []
    with torch.enable_grad():  # a caller inside inference_mode would get no gradients
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].detach().to(device).requires_grad_(True)
            maps = cam.attribute(x, target=targets[start : start + batch_size].to(device),
                                 relu_attributions=True)
            # Bilinear up-sampling of the coarse map to the image, as the Grad-CAM paper does.
            maps = F.interpolate(maps.detach().float(), size=size, mode="bilinear",
                                 align_corners=False)[:, 0]
            peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
            out.append((maps / peak).clamp(0, 1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *size), np.float32)


def explain_images(run: Any, indices: list[int], targets: list[int]) -> np.ndarray:
    """Grad-CAM maps at the stored size for test images `indices` of a `RunModel`, one per target."""
    import torch

    images = torch.from_numpy(run.images[indices]).to(run.device)
    with torch.no_grad():
        inputs = run.transform(images)
    return class_activation_maps(run.model, inputs, targets, size=run.images.shape[1:3])
