"""What running a frozen part eagerly costs, counted rather than timed.

`extract_backend: auto` chooses between eager PyTorch and ONNX Runtime for a frozen part. The
choice changes the numbers a run produces (the two engines round differently, ~1e-6 of the output
scale), so it must not depend on how busy the machine is while it is made: the same command with
the same seed has to take the same path on a quiet and on a loaded machine, and a resumed run the
path of the run it continues. So the eager time is estimated from what the frozen part computes,
counted on one image (the same count on any machine, at any load), with rates measured once.

The estimate is a two-term roofline: arithmetic (FLOPs, a multiply-add counted as 2, by PyTorch's
own `FlopCounterMode`) and memory traffic (float elements the operators write: convolutions,
normalisations, activations, concatenations; views write nothing). Depthwise networks are slow
per FLOP in eager PyTorch because they are bound by the second term.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# Eager seconds per GFLOP and per million written elements, per image: the least-squares fit of
# the five prefixes below, whose eager times were measured on the quiet 2-core reference CPU
# (channels-last input, 2 threads, batches of 64; `features.auto_backend` has the table) and
# whose counts are `count_cost`'s:
#
#     prefix (pooled)          GFLOP   M elements   eager ms/img   this estimate
#     mobilenet_v2 96 px       0.110       3.62          1.4            2.2
#     mobilenet_v2 224 px      0.599      19.7          15.1           11.9
#     efficientnet_lite0 224   0.768      19.9           9.7           12.8
#     inception_v3 75 px       0.403       1.35          5.6            2.6
#     inception_v3 224 px      5.67       16.6          35.7           35.8
#
# (InceptionV3's dense 3 x 3 convolutions run near 160 GFLOP/s, MobileNetV2's depthwise blocks at
# 40-80.) The estimate is within a factor of ~2 of each measurement; `auto_backend`'s margins
# are wider than that for the documented cases. The rates are the reference machine's: on a
# faster one, eager, ONNX Runtime and the export all speed up together, so the choice holds.
EAGER_S_PER_GFLOP = 5.0e-3
EAGER_S_PER_MELEMENT = 0.45e-3


class PrefixCost(NamedTuple):
    """What one image costs a frozen part: counted, so the same on every machine at any load."""

    params: int  # weights (the export and session set-up grow with them)
    gflops: float  # per image
    melements: float  # million float elements written per image


class _Writes(TorchDispatchMode):
    """Counts the float elements that operators write (in place or into new tensors; not views)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        mutates = func._schema.is_mutable  # relu_ and friends write into their input
        inputs = {_storage(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.is_floating_point() and (mutates or _storage(t) not in inputs):
                self.elements += t.numel()
        return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # opaque tensors (mkldnn) have no storage to share
        return id(t)


def count_cost(prefix: nn.Module, sample: torch.Tensor) -> PrefixCost:
    """Count what `prefix` computes for one image of `sample` (one forward pass, no timing).

    Args:
        prefix: the frozen part, in eval mode.
        sample: a batch of its inputs (the first image is used, in its memory format).
    """
    with torch.inference_mode(), FlopCounterMode(display=False) as flops, _Writes() as writes:
        prefix(sample[:1])
    params = sum(p.numel() for p in prefix.parameters())
    return PrefixCost(params, flops.get_total_flops() / 1e9, writes.elements / 1e6)


def eager_seconds_per_image(cost: PrefixCost) -> float:
    """Estimated eager seconds per image on the reference CPU (see EAGER_S_PER_GFLOP)."""
    return EAGER_S_PER_GFLOP * cost.gflops + EAGER_S_PER_MELEMENT * cost.melements


__all__ = ["EAGER_S_PER_GFLOP", "EAGER_S_PER_MELEMENT", "PrefixCost", "count_cost",
           "eager_seconds_per_image"]
