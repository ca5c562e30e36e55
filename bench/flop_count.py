"""FLOPs per image from PyTorch's own counter (`torch.utils.flop_counter.FlopCounterMode`).

The counter sees every matmul and convolution that runs (forward, and backward when a loss is
back-propagated), counting a multiply-add as 2 FLOPs, so a frozen backbone's missing weight
gradients are not counted. The Keras peer builds the same architectures, so its rows use the same
FLOPs per image.

One correction: torch's formula for `convolution_backward` ignores `groups`, which overcounts a
depthwise convolution's backward pass by its channel count (MobileNetV2 at 128 px came out at
4.0 GFLOP per training image instead of about 0.6). `conv_backward_flop` below counts each
requested gradient at the forward convolution's cost, which holds for any `groups`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                       transposed, _output_padding, _groups, output_mask, out_shape=None) -> int:
    """FLOPs of `aten.convolution_backward`: the forward's cost per gradient asked for.

    The weight shape is (C_out, C_in / groups, *kernel) (transposed: (C_in, C_out / groups, ...)),
    so 2 * batch * output positions * prod(weight shape) is the forward cost for any `groups`;
    the input gradient and the weight gradient are each one convolution of that cost.
    """
    positions = x_shape[2:] if transposed else grad_out_shape[2:]
    forward = 2 * grad_out_shape[0] * math.prod(positions) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _logits(output: torch.Tensor | tuple) -> torch.Tensor:
    # torchvision's InceptionV3 returns (logits, aux_logits) in training mode.
    return output[0] if isinstance(output, tuple) else output


def flops_per_image(
    model: nn.Module,
    images: torch.Tensor,
    *,
    train: bool,
    forward: nn.Module | None = None,
) -> float:
    """Count the FLOPs that one image costs.

    Args:
        model: the network; left in the train/eval mode and gradient state it came in with.
        images: a small float batch (B, 3, H, W) at the model's input size; B >= 2 so that
            BatchNorm in training mode sees more than one value.
        train: count forward + backward of a cross-entropy loss (a training step) instead of an
            inference forward pass.
        forward: what to call instead of `model` (e.g. `model.forward_features` wrapped in a module
            for feature extraction); defaults to `model`.

    Returns:
        Total counted FLOPs divided by the batch size.
    """
    call = forward if forward is not None else model
    batch = images.shape[0]
    custom = {torch.ops.aten.convolution_backward: conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        if train:
            logits = _logits(call(images))
            target = torch.zeros(batch, dtype=torch.long, device=images.device)
            F.cross_entropy(logits.float(), target).backward()
        else:
            with torch.no_grad():
                call(images)
    if train:
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch
