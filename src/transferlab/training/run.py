"""One training run end to end: data -> splits -> model -> stages -> run directory.

`train_run(config)` is the library entry point used by the CLI, `compare` and `sweep`;
`resume_run(run_dir)` continues an interrupted run; `is_finished(run_dir)` says whether a run
completed (its `summary.json` exists: it is written last). The run directory layout is the
contract in docs/ARCHITECTURE.md.

The steps, in the order `_train` calls them, each in a file named after what it does:

- `rundir.py`: name the run directory, guard it, write metrics.csv / metrics.jsonl;
- `prepare.py`: load the dataset and splits, build the model and its transforms;
- `run_state.py`: `RunState`, restore it from last.pt, write best.pt / last.pt;
- `imbalance.py`: whether the training classes are uneven and what the run does about it;
- `stage_loop.py`: one stage (freeze, batches, optimiser, `engine.fit`, checkpoints), using
  `cache_plan.py` to train on cached features when it can;
- `summary.py`: the test pass with best.pt and summary.json (written last).

`context.RunContext` carries what they share; `interrupt.InterruptFlag` handles Ctrl-C.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transferlab.config import TrainConfig, config_from_dict, save_config
from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_text
from transferlab.training import distributed as dist_utils
from transferlab.training.context import RunContext
from transferlab.training.cpu_memory import keep_freed_memory
from transferlab.training.device import select_device, select_precision
from transferlab.training.engine import StageProgress
from transferlab.training.imbalance import resolve as resolve_imbalance
from transferlab.training.interrupt import InterruptFlag
from transferlab.training.leakage import check_exact
from transferlab.training.prepare import build_model, load_data, split_files
from transferlab.training.run_state import RunState, restore
from transferlab.training.rundir import (
    METRIC_COLUMNS,
    RUNTIME_FIELDS,
    SUMMARY,
    is_finished,
    prepare_dir,
    write_metrics,
)
from transferlab.training.stage_loop import run_stage
from transferlab.training.summary import finish


def train_run(config: TrainConfig, resume: bool = False) -> Path:
    """Train one model on one dataset through the config's stages and write the run directory.

    Works the same under `torchrun` (DDP; only rank 0 writes). With ``resume=True`` the run
    continues from ``<out_dir>/<run_name>/last.pt``.

    Args:
        config: the resolved run config.
        resume: continue an interrupted run instead of starting a new one.

    Returns:
        The run directory (it holds summary.json once the run finished).

    Raises:
        TransferlabError: bad settings, or a run directory that is in the way.
        KeyboardInterrupt: after Ctrl-C, once a resumable last.pt is written.
    """
    ctx = dist_utils.from_environment()
    device = select_device(config.device, ctx.local_rank)
    keep_freed_memory()  # CPU tensors (extraction, training, evaluation) reuse freed blocks
    dist_utils.init_process_group(ctx, device)
    run = RunContext(config, resume, ctx, device, select_precision(config.amp, device))
    try:
        return _train(run)
    finally:
        if run.writer is not None:
            run.writer.close()
        dist_utils.destroy_process_group()


def resume_run(run_dir: str | os.PathLike[str], **overrides: Any) -> Path:
    """Continue an interrupted run from its `last.pt` with its saved config.

    Args:
        run_dir: the run directory.
        overrides: runtime-only fields to change (quiet, device), e.g. ``quiet=True``.

    Returns:
        The run directory.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TransferlabError(f"{run_dir} is not a run directory (no config.yaml); pass the folder "
                               "that `transferlab train` created")
    import yaml

    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    allowed = RUNTIME_FIELDS - {"out_dir", "run_name"}
    bad = set(overrides) - allowed
    if bad:
        raise TransferlabError(f"cannot change {sorted(bad)} when resuming; only {sorted(allowed)}")
    data.update(overrides)
    config = config_from_dict(data)
    config.out_dir, config.run_name = str(run_dir.parent), run_dir.name
    return train_run(config, resume=True)


def _train(run: RunContext) -> Path:
    """The steps of `train_run`: directory, data, model, resume state, stages, then the summary."""
    started = time.perf_counter()
    c = run.config
    run_dir = prepare_dir(run)
    load_data(run)
    build_model(run)
    state, last = restore(run)
    from transferlab.recipes import describe

    run.log(describe(c))
    run.imbalance = resolve_imbalance(c.imbalance, run.data["train"][1],
                                      len(run.dataset.classes), c.imbalance_ratio)
    run.log(run.imbalance.describe())
    # config.yaml records what `auto` chose, so the run's file says what it did.
    c.imbalance = run.imbalance.method
    if run.ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_exact(run)  # copies of training images in val/test: warned about, never fatal
        save_config(c, run_dir / "config.yaml")
        run.splits.save(run_dir / "splits.npz")
        files = split_files(run)
        if files is not None:
            if run.excluded:  # what `exclude` left out, beside what each split holds
                files = {**files, "excluded": run.excluded}
            atomic_write_text(run_dir / "split_files.json", json.dumps(files, indent=0) + "\n")
        write_metrics(run, state.rows)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events past the resumed position, so a resumed run has no duplicates.
        run.writer = SummaryWriter(str(run_dir / "tb"), purge_step=len(state.rows) + 1 if last else None)
    with run.interrupt.installed(run.log):
        for si in range(state.stage_index, len(c.stages)):
            if state.stopped:
                break
            stage = c.stages[si]
            if si != state.stage_index:
                state.stage_index, state.progress = si, StageProgress()
            run_stage(run, stage, si, state, last, started)
            last = None  # optimiser/scheduler state only applies to the stage it was saved in

    return finish(run, state, started)


__all__ = ["METRIC_COLUMNS", "RUNTIME_FIELDS", "SUMMARY", "InterruptFlag", "RunState", "is_finished",
           "resume_run", "train_run"]
