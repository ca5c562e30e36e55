"""Ctrl-C during a run: finish the step, save a resumable state, exit cleanly."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any

import torch

from transferlab.training import distributed as dist_utils


class InterruptFlag:
    """First Ctrl-C asks the run to stop after the current step; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def poll(self, ctx: dist_utils.DistContext, device: torch.device) -> bool:
        """Whether any rank was interrupted (all ranks must stop at the same step)."""
        if not ctx.enabled:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)  # NCCL reduces GPU tensors only
        return bool(dist_utils.all_reduce_sum(flag, ctx).item() > 0)

    @contextmanager
    def installed(self, log: Any) -> Any:
        """Install the SIGINT handler (main thread only) for the duration of the block."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log("\ninterrupt: saving a resumable state after this step (Ctrl-C again to abort)")

        previous = signal.signal(signal.SIGINT, handler)
        self.requested = False
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


__all__ = ["InterruptFlag"]
