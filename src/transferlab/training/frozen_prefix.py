"""Training above a frozen part that runs on a fast inference engine every step.

A stage that trains only the top of a model (`train: head`, `top` or `from:<stage>`) usually
trains on cached features: the frozen part runs once. With augmentation it cannot (its inputs
change every epoch), so each step runs the frozen part forward again. That forward is pure
inference: its weights are frozen, its BatchNorm layers are in inference mode (`freeze`) and
no gradient flows back through it, because nothing below it is trained. So the same fast path
as extraction applies: the prefix is exported once and run by ONNX Runtime, checked against
eager PyTorch on a batch first (`features.make_extractor`, which falls back to eager and says
why), and the stage trains the tail on its outputs, exactly as the cached path does.

Measured on the quiet 2-core CPU (`bench/run.py` rows "frozen part on onnxruntime", and
MobileNetV2 at 224 px, `train: top`, batch 32, Adam: 118-120 img/s against 80-99 eagerly), the
gain follows how much faster ONNX Runtime runs the frozen part than eager PyTorch: 2-4x for
MobileNetV2's depthwise convolutions, little for InceptionV3's, which eager PyTorch already runs
near the machine's peak. On CUDA nothing changes: the model runs whole, eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from transferlab.logs import info
from transferlab.training import features as feats


class ThenPrefix:
    """A `Batches` transform: the stage's own transform, then the frozen prefix.

    Args:
        transform: the batch transform that makes model inputs (augmentation, resize,
            normalisation); None when the batches already hold model inputs.
        prefix: maps a batch of model inputs to the tail's inputs (an extractor from
            `features.make_extractor`).
        channels_last: hand the prefix channels-last batches (what eager PyTorch runs fastest).
    """

    def __init__(self, transform: Callable[..., torch.Tensor] | None,
                 prefix: Callable[[torch.Tensor], torch.Tensor], channels_last: bool = False) -> None:
        self.transform, self.prefix, self.channels_last = transform, prefix, channels_last

    def __call__(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x, seed=seed)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # no_grad, not inference_mode: the outputs feed the tail's autograd graph.
        with torch.no_grad():
            return self.prefix(x)


class FastPrefix(NamedTuple):
    """A frozen part on a fast engine and the trainable tail above it."""

    tail: nn.Module  # the layers the stage trains
    run: Callable[[torch.Tensor], torch.Tensor]  # model inputs -> the tail's inputs
    backend: str  # the engine that runs the frozen part ("onnxruntime", "compile")
    out_shape: tuple[int, ...]  # the tail's input shape per image


def fast_prefix(model: nn.Module, train: str, backend: str, sample: torch.Tensor, num_images: int,
                log: Callable[[str], None] = info,
                record: dict[str, Any] | None = None) -> FastPrefix | None:
    """The frozen part below `train` on a fast engine, or None when the whole model should
    simply run eagerly.

    None when nothing is frozen (`train: all`), off the CPU, when the backend resolves to eager
    (`extract_backend: eager`, or `auto` when eager would be quick anyway: `features.auto_backend`),
    or when the fast path could not be built or disagreed with eager (logged).

    Args:
        model: the stage's model, frozen for `train` already (`stage_loop.apply_freeze`).
        train: the stage's `train` setting.
        backend: the run's `extract_backend` (on resume, the one the run recorded).
        sample: one batch of model inputs on the run's device (the check batch).
        num_images: images the prefix will run over during the stage (epochs x split sizes).
        log: where the choice and any fallback are reported.
        record: receives the choice as `features.make_extractor` records it (left empty when
            nothing is frozen: there is no choice to make).
    """
    record = {} if record is None else record
    if sample.device.type != "cpu" or backend == "eager":
        if feats.split_model(model, train) is not None:
            record.update(setting=backend, used="eager", fallback=None)
            off_cpu = f"the frozen part runs eagerly on {sample.device.type}"
            if backend == "auto":
                record["auto"] = {"decided": "eager", "why": off_cpu}
            elif backend != "eager":
                record["fallback"] = off_cpu
        return None
    parts = feats.split_model(model, train)
    if parts is None:
        return None
    prefix, tail = parts
    prefix.eval()
    run, used = feats.make_extractor(prefix, backend, sample, num_images, log=log, record=record)
    if used == "eager":
        return None  # make_extractor said why; the full model trains eagerly as before
    with torch.no_grad():
        out_shape = tuple(run(sample[:2]).shape[1:])
    return FastPrefix(tail, run, used, out_shape)


__all__ = ["FastPrefix", "ThenPrefix", "fast_prefix"]
