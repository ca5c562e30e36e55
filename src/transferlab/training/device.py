"""Device choice, mixed precision settings, and honest timing (synchronise before reading the clock)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from transferlab.errors import TransferlabError


def select_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """Pick the training device.

    Args:
        name: "auto" (CUDA, then MPS, then CPU), or an explicit torch device string.
        local_rank: under torchrun, the process's GPU index (used with "auto" or "cuda").

    Raises:
        TransferlabError: if an explicitly requested device is not available.
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise TransferlabError(f"device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TransferlabError("device=cuda but no CUDA GPU is visible; use device auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TransferlabError("device=mps but MPS is not available; use device auto or cpu")
    return device


@dataclass
class Precision:
    """Mixed precision settings for one device."""

    dtype: torch.dtype | None  # autocast dtype, None = full float32
    use_scaler: bool  # fp16 needs loss scaling; bf16 does not

    def autocast(self, device: torch.device) -> Any:
        """The autocast context for a forward pass (a no-op in float32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler, enabled only when fp16 needs it."""
        return torch.amp.GradScaler(device.type, enabled=self.use_scaler)

    @property
    def name(self) -> str:
        """"bf16", "fp16" or "fp32"."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]


def select_precision(amp: str, device: torch.device) -> Precision:
    """Resolve the `amp` setting: auto = bf16 if supported else fp16 (with a scaler) on CUDA, off elsewhere."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, False)
    if device.type != "cuda":
        raise TransferlabError(f"amp={amp} needs a CUDA device (training on {device}); use --amp off")
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read afterwards measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """Wall-clock stopwatch that synchronises the device at start and stop.

    Usage: ``with Timer(device) as t: ...`` then ``t.seconds``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (for summary.json)."""
    import platform

    import numpy
    import timm
    import torchvision

    from transferlab._version import __version__

    return {
        "transferlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
    }
