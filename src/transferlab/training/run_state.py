"""Where a run stands, and its two checkpoints: best.pt (the best weights) and last.pt (resume).

`last.pt` holds everything an exact resume needs: weights, optimiser, scheduler, scaler, RNG
states and the `RunState` below. `restore` reads it back at the start of a resumed run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from transferlab.config import config_to_dict
from transferlab.training import checkpoint as ckpt
from transferlab.training.context import RunContext
from transferlab.training.engine import StageProgress, Totals


@dataclass
class RunState:
    """Run-level bookkeeping (saved in last.pt)."""

    stage_index: int = 0  # stage being trained
    progress: StageProgress = field(default_factory=StageProgress)
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows so far
    best_value: float | None = None  # best val_acc1 so far (run-wide; best.pt)
    stage_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-stage summary
    wall_time_s: float = 0.0  # wall time of earlier sessions of this run
    stopped: str | None = None  # why the run ended before its last stage


def _progress_to_dict(p: StageProgress) -> dict[str, Any]:
    """StageProgress as plain data for last.pt."""
    return {"epoch": p.epoch, "step": p.step, "totals": asdict(p.totals), "early": p.early,
            "best_state": p.best_state, "stopped": p.stopped}


def _progress_from_dict(d: dict[str, Any]) -> StageProgress:
    """Inverse of `_progress_to_dict`."""
    return StageProgress(epoch=d["epoch"], step=d["step"], totals=Totals(**d["totals"]),
                         early=d["early"], best_state=d["best_state"], stopped=d["stopped"])


def restore(run: RunContext) -> tuple[RunState, dict[str, Any] | None]:
    """The run's state and its loaded last.pt when resuming one that has it, else a fresh state.

    Loads the saved weights into `run.model`; the optimiser, scheduler, scaler and RNG states in
    the returned checkpoint are for `stage_loop.run_stage` to apply to the stage they were saved in.
    """
    c, run_dir = run.config, run.run_dir
    state = RunState()
    last = None
    if run.resume:
        if (run_dir / "last.pt").is_file():
            last = ckpt.load_checkpoint(run_dir / "last.pt")
            run.model.load_state_dict(last["model"])
            state = RunState(stage_index=last["stage_index"], progress=_progress_from_dict(last["progress"]),
                             rows=last["rows"], best_value=last["best_value"],
                             stage_info=last["stage_info"], wall_time_s=last["wall_time_s"],
                             stopped=last["stopped"])
            run.log(f"resuming {run_dir} at stage {state.stage_index + 1}/{len(c.stages)}, "
                    f"epoch {state.progress.epoch + 1}, step {state.progress.step}")
        else:
            run.log(f"{run_dir} has no last.pt yet: starting it from the beginning")
    return state, last


def save_best(run: RunContext, state_dict: dict[str, torch.Tensor] | None,
              extra: dict[str, Any]) -> None:
    """Write best.pt (rank 0) from `state_dict`, or the model's current weights when None."""
    if not run.ctx.is_main:
        return
    payload = ckpt.model_checkpoint(run.model, run.config, model_name=run.config.model,
                                    model_kwargs=run.model_kwargs(), classes=run.dataset.classes,
                                    state_dict=state_dict, extra=extra)
    ckpt.save_checkpoint(payload, run.run_dir / "best.pt")


def save_last(run: RunContext, state: RunState, optimizer: Any, scheduler: Any, scaler: Any,
              started: float) -> None:
    """Write last.pt (rank 0): everything an exact resume needs."""
    if not run.ctx.is_main:
        return
    payload = {
        "model": ckpt.cpu_state_dict(run.model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": ckpt.rng_state(),
        "stage_index": state.stage_index,
        "progress": _progress_to_dict(state.progress),
        "rows": state.rows,
        "best_value": state.best_value,
        "stage_info": state.stage_info,
        "wall_time_s": state.wall_time_s + time.perf_counter() - started,
        "stopped": state.stopped,
        "config": config_to_dict(run.config),
    }
    ckpt.save_checkpoint(payload, run.run_dir / "last.pt")


__all__ = ["RunState", "restore", "save_best", "save_last"]
