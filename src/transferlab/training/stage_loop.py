"""One stage of a run: freeze, pick the batches (images or cached features), fit, checkpoint.

`run_stage` builds the stage's optimiser, scheduler and `StagePlan`, restores their saved state
on resume, and hands `engine.fit` two callbacks: `on_step` (Ctrl-C, periodic last.pt) and
`on_epoch` (metrics files, TensorBoard, best.pt, last.pt).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.config import StageConfig
from transferlab.errors import TransferlabError
from transferlab.models import count_parameters
from transferlab.training import checkpoint as ckpt
from transferlab.training import distributed as dist_utils
from transferlab.training import features as feats
from transferlab.training.cache_plan import cache_plan, cached_features
from transferlab.training.context import RunContext
from transferlab.training.engine import (
    SYNC_EVERY,
    Batches,
    StagePlan,
    StageProgress,
    derive_seed,
    fit,
)
from transferlab.training.frozen_prefix import ThenPrefix, fast_prefix
from transferlab.training.imbalance import loss_terms
from transferlab.training.optim import StageScheduler, build_optimizer
from transferlab.training.prepare import stage_augment
from transferlab.training.run_state import RunState, save_best, save_last
from transferlab.training.rundir import write_metrics


def run_stage(run: RunContext, stage: StageConfig, si: int, state: RunState,
              last: dict[str, Any] | None, started: float) -> None:
    """Train one stage (on cached features when it can), saving best.pt / last.pt as it goes."""
    c = run.config
    apply_freeze(run.model, stage.train)
    augment = stage_augment(c, stage)
    batch_size = c.stage_batch_size(stage)
    info: dict[str, Any] = dict(state.stage_info.get(stage.name, {}))  # on resume, last.pt's
    parts = cache_plan(run, stage, recorded=info.get("cached_features"))
    info.update({"train": stage.train, "cached_features": parts is not None})
    # The engine of the frozen part changes the numbers (~1e-6): a resumed stage keeps the one
    # its run chose (recorded in last.pt) instead of choosing again.
    recorded = info.get("backend_choice")
    backend = _backend(run, stage, recorded)
    choice: dict[str, Any] = {}
    fast = None  # the frozen part on a fast engine, when it runs every step
    imbalance = run.imbalance
    balanced = imbalance is not None and imbalance.method == "balanced_sampler"
    by_balanced = imbalance is not None and imbalance.uneven  # best.pt by val balanced accuracy
    nchw_tail = False  # a tail on 1 x 1 maps put in NCHW for this stage (restored after it)
    if parts is not None:
        prefix, tail = parts
        cached = cached_features(run, stage, prefix, tail, backend=backend, record=choice)
        features = cached.pop("features")
        info.update({k: v for k, v in cached.items() if k != "backend" or cached["extracted_images"]})
        trained: nn.Module = tail
        nchw_tail = _nchw_tail(run, tail, tuple(features["train"].shape[1:]), info)
        labels = {s: run.data[s][1] for s in run.data}

        def batches(split: str, size: int, shuffle: bool, epoch: int = 0) -> Batches:
            return Batches(features[split], labels[split], size, shuffle=shuffle, seed=c.seed,
                           epoch=epoch, device=run.device, dist=run.ctx, train=shuffle,
                           balanced=balanced and shuffle)
        run.stage_features = (stage.train, trained, batches)
    else:
        trained = run.model
        # Above a frozen part that cannot be cached, that part still runs forward only: on the
        # CPU it goes to ONNX Runtime (checked against eager first) and the tail trains on it.
        if stage.train != "all":
            sample = next(iter(run.image_batches("train", batch_size)))[0]
            images = stage.epochs * len(run.data["train"][1]) + sum(
                len(run.data[s][1]) for s in run.data if s != "train")
            fast = fast_prefix(run.model, stage.train, backend, sample, images, log=run.log,
                               record=choice)
        if fast is not None:
            trained = fast.tail
            info["frozen_part_backend"] = fast.backend
            nchw_tail = _nchw_tail(run, trained, fast.out_shape, info)

        def batches(split: str, size: int, shuffle: bool, epoch: int = 0) -> Batches:
            x, y = run.data[split]
            transform = run.transforms[augment] if shuffle else run.eval_transform
            if fast is not None:
                transform = ThenPrefix(transform, fast.run, c.channels_last)
            return Batches(x, y, size, shuffle=shuffle, seed=c.seed, epoch=epoch,
                           transform=transform, device=run.device, dist=run.ctx,
                           channels_last=c.channels_last and not nchw_tail, train=shuffle,
                           balanced=balanced and shuffle)
        # The test pass may use these batches only while the frozen part is the whole run's.
        run.stage_features = (stage.train, trained, batches) if fast is not None else None

    # Shuffle order and augmentation seeds mix in the stage index: each stage sees its own order.
    def train_batches(epoch: int) -> Batches:
        b = batches("train", batch_size, True, epoch)
        b.seed = derive_seed(c.seed, "stage", si)
        return b

    _record_choice(run, stage, info, recorded, choice)

    trainable = [p for p in trained.parameters() if p.requires_grad]
    if not trainable:
        raise TransferlabError(f"stage {stage.name}: train={stage.train} leaves nothing to train")
    module = dist_utils.wrap_ddp(trained, run.ctx, run.device)
    if c.compile:
        module = torch.compile(module)
    optimizer = build_optimizer(stage, trainable)
    steps = len(train_batches(0))
    scheduler = StageScheduler(optimizer, stage, steps)
    scaler = run.precision.scaler(run.device)
    if last is not None:
        if last["optimizer"] is not None:
            optimizer.load_state_dict(last["optimizer"])
        if last["scheduler"] is not None:
            scheduler.load_state_dict(last["scheduler"])
        if last["scaler"] is not None:
            scaler.load_state_dict(last["scaler"])
        ckpt.set_rng_state(last["rng"])
    total, n_trainable = count_parameters(run.model)
    info.update({"params_trainable": n_trainable, "params_total": total})
    state.stage_info[stage.name] = info
    where = stage.train
    if stage.train == "top":
        # apply_freeze already traced the boundary: it is the first stage left unfrozen.
        names = [name for name, _ in run.model.feature_stages()]
        where = f"top (from {names[len(run.model.frozen_stages)]})"
    run.log(f"stage {si + 1}/{len(run.config.stages)} {stage.name}: train {where}, "
            f"{n_trainable:,} of {total:,} parameters trainable, {stage.optimizer} lr {stage.lr:g}, "
            f"{stage.epochs} epochs of {steps} steps (batch {batch_size})"
            + (", on cached features" if parts is not None else f", augment {augment}")
            + (f", the frozen part on {fast.backend} every step" if fast is not None else ""))
    offsets, weights = loss_terms(imbalance)
    plan = StagePlan(
        name=stage.name, model=module, optimizer=optimizer, train_batches=train_batches,
        val_batches=batches("val", c.eval_batch(), False) if "val" in run.data else None,
        epochs=stage.epochs, label_smoothing=stage.label_smoothing,
        early_stopping=stage.early_stopping, scheduler=scheduler, precision=run.precision,
        scaler=scaler, quiet=c.quiet or not run.ctx.is_main,
        # Read the sums at every periodic checkpoint step too, so last.pt holds exact totals.
        sync_every=math.gcd(SYNC_EVERY, c.checkpoint_every) if c.checkpoint_every else SYNC_EVERY,
        # After a non-finite loss `summary.finish` reloads best.pt: no in-memory copy of the best needed.
        nan_restores_best=False,
        logit_offsets=offsets, class_weights=weights, bn_frozen=stage.bn_frozen,
    )

    def on_step(progress: StageProgress) -> None:
        state.progress = progress
        every = c.checkpoint_every
        if run.interrupt.poll(run.ctx, run.device):
            save_last(run, state, optimizer, scheduler, scaler, started)
            run.log(f"saved a resumable state in {run.run_dir / 'last.pt'}; continue with "
                    f"`transferlab train --resume {run.run_dir}`")
            raise KeyboardInterrupt
        if every and progress.step % every == 0 and progress.step < steps:
            save_last(run, state, optimizer, scheduler, scaler, started)

    def on_epoch(row: dict[str, Any], progress: StageProgress) -> None:
        state.progress = progress
        state.rows.append(row)
        global_epoch = len(state.rows)
        if run.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch" and value is not None:
                    run.writer.add_scalar(f"{key}", value, global_epoch)
            run.writer.flush()
        value = row["val_acc1"]
        if value is None or state.best_value is None or is_better(row, state.rows[:-1], by_balanced):
            state.best_value = value
            save_best(run, None, {"stage": stage.name, "epoch": row["epoch"], "val_acc1": value,
                                  "val_bal_acc": row.get("val_bal_acc")})
        write_metrics(run, state.rows)
        save_last(run, state, optimizer, scheduler, scaler, started)
        if run.interrupt.poll(run.ctx, run.device):
            run.log(f"saved a resumable state in {run.run_dir / 'last.pt'}")
            raise KeyboardInterrupt
        if not c.quiet:
            run.log(_format_row(row))

    try:
        progress = fit(plan, state.progress, on_epoch=on_epoch, on_step=on_step, log=run.log)
    finally:
        if nchw_tail:
            run.model.to(memory_format=torch.channels_last)
    epoch_rows = [r for r in state.rows if r["stage"] == stage.name]
    info.update({
        "epochs": progress.epoch, "stopped": progress.stopped,
        "epoch_time_s": mean([r["epoch_time_s"] for r in epoch_rows]),
        "images_per_s": mean([r["images_per_s"] for r in epoch_rows]),
    })
    state.stage_info[stage.name] = info
    if progress.stopped == "non_finite_loss":
        state.stopped = f"stage {stage.name}: non-finite loss"
        save_last(run, state, optimizer, scheduler, scaler, started)
        if (run.run_dir / "best.pt").is_file():
            run.log("the run stops here; the test set is evaluated with best.pt")
        else:
            run.log("the run stops here; no epoch finished, so there is no best checkpoint and "
                    "no test pass")


def apply_freeze(model: nn.Module, train: str) -> None:
    """Freeze the model for a stage's `train` setting (head | top | all | from:<stage>)."""
    from transferlab.models import freeze
    from transferlab.models.freezing import boundary_for

    freeze(model, boundary_for(model, train))


def _backend(run: RunContext, stage: StageConfig, recorded: dict[str, Any] | None) -> str:
    """The backend to run this stage's frozen part on: the config's `extract_backend`, or on
    resume the one the run recorded for the stage (unless the resumed config names another
    engine explicitly: that is a request to change the numerical path)."""
    setting = run.config.extract_backend
    if recorded is None:
        return setting
    if setting not in ("auto", recorded["setting"]):
        run.log(f"stage {stage.name}: extract_backend {setting} on resume instead of the recorded "
                f"{recorded['used']}; the numbers may differ slightly from an uninterrupted run")
        return setting
    run.log(f"stage {stage.name}: the frozen part on {recorded['used']}, as recorded in last.pt "
            f"(extract_backend {recorded['setting']})")
    return recorded["used"]


def _record_choice(run: RunContext, stage: StageConfig, info: dict[str, Any],
                   recorded: dict[str, Any] | None, choice: dict[str, Any]) -> None:
    """Keep the stage's backend choice in its info (summary.json, last.pt).

    `choice` is empty when nothing was chosen in this session (features from the cache, nothing
    frozen). A resumed stage keeps its recorded choice; only a different outcome (the recorded
    engine failed its check this time, or the config now names another) replaces it, with the
    earlier one kept beside it.
    """
    if not choice:
        return
    if recorded is None:
        info["backend_choice"] = choice
    elif choice["used"] != recorded["used"]:
        run.log(f"stage {stage.name}: the frozen part now runs on {choice['used']}, not on the "
                f"recorded {recorded['used']}; the numbers may differ slightly from an "
                "uninterrupted run")
        info["backend_choice"] = {**choice, "earlier": recorded}


def _nchw_tail(run: RunContext, tail: nn.Module, shape: tuple[int, ...], info: dict[str, Any]) -> bool:
    """Put a channels-last run's tail in NCHW when its inputs are 1 x 1 maps
    (`features.tail_wants_nchw`); True when it did (`run_stage` restores the layout after)."""
    if not (run.config.channels_last and feats.tail_wants_nchw(shape)):
        return False
    tail.to(memory_format=torch.contiguous_format)
    info["tail_layout"] = "nchw"
    return True


def is_better(row: dict[str, Any], earlier: list[dict[str, Any]], balanced: bool = False) -> bool:
    """Whether an epoch beats every earlier one for best.pt: higher val_acc1 (val_bal_acc when
    `balanced`: on uneven classes a model that gives up a small class can still gain top-1), and
    at equal accuracy lower val_loss (a validation set of a few dozen photos ties often, and the
    later fine-tuned model with the lower loss is then the better one)."""
    metric = "val_bal_acc" if balanced else "val_acc1"

    def key(r: dict[str, Any]) -> tuple[float, float]:
        return (r[metric], -r["val_loss"])

    scored = [key(r) for r in earlier if r.get(metric) is not None and r.get("val_loss") is not None]
    return not scored or key(row) > max(scored)


def mean(values: list[float]) -> float:
    """Mean of a list, 0.0 when empty."""
    return float(np.mean(values)) if values else 0.0


def _format_row(row: dict[str, Any]) -> str:
    """One metrics row as a log line."""
    text = (f"[{row['stage']}] epoch {row['epoch']}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc1']:.4f}")
    if row["val_loss"] is not None:
        text += f" | val loss {row['val_loss']:.4f} acc {row['val_acc1']:.4f}"
        if row.get("val_bal_acc") is not None:
            text += f" bal acc {row['val_bal_acc']:.4f}"
    return text + f" | {row['epoch_time_s']:.2f} s, {row['images_per_s']:.0f} img/s"


__all__ = ["apply_freeze", "mean", "run_stage"]
