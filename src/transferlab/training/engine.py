"""The training loop: `train_one_epoch`, `evaluate`, and `fit` (the epochs of one stage).

Plain functions in the torchvision-references style. Batches come from `Batches`, a seeded,
resumable iterator over tensors that are already in memory (uint8 images, or cached features),
so an interrupted epoch can continue at the exact step it stopped at.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.config import EarlyStoppingConfig
from transferlab.logs import info, progress
from transferlab.training.checkpoint import cpu_state_dict, unwrap
from transferlab.training.cpu_memory import keep_freed_memory
from transferlab.training.device import Precision, Timer, synchronize
from transferlab.training.distributed import DistContext, all_reduce_sum
from transferlab.training.imbalance import balanced_order
from transferlab.training.metrics import balanced_from_sums, class_sums, macro_f1_from_sums


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Batches:
    """Mini-batches over in-memory tensors, in a seeded order, optionally sharded across ranks.

    Each global batch holds `batch_size` samples; under DDP rank r takes `batch[r::world_size]`
    so that the ranks together see exactly the single-process batch.

    Args:
        inputs: (N, ...) tensor: uint8 NHWC images (then `transform` makes model inputs) or features.
        labels: (N,) int64 tensor.
        batch_size: global batch size.
        shuffle: draw a new order every epoch from (seed, epoch).
        seed: base seed of the order and of per-batch augmentation.
        epoch: epoch number (mixes into the seeds).
        transform: callable(x, seed=int) -> float tensor, e.g. a BatchTransform; None = identity.
        device: where batches are delivered.
        dist: rank and world size.
        drop_last: drop a final partial batch (benchmarks time full batches only).
        train: training batches: a final batch too small to give every rank 2 samples is dropped
            (BatchNorm cannot train on one sample, and an empty shard would make a NaN loss).
        balanced: with `shuffle`, draw each epoch's order class-balanced (with replacement, as
            many samples as there are; `imbalance.balanced_order`) instead of a permutation.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 transform: Callable[..., torch.Tensor] | None = None,
                 device: torch.device | str = "cpu", dist: DistContext | None = None,
                 drop_last: bool = False, channels_last: bool = False, train: bool = False,
                 balanced: bool = False) -> None:
        self.inputs, self.labels = inputs, labels
        self.balanced = balanced
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.transform, self.device = transform, torch.device(device)
        self.dist = dist or DistContext()
        self.channels_last = channels_last
        n = len(labels)
        remainder = n % batch_size
        drop_last = drop_last or bool(train and remainder and remainder < 2 * self.dist.world_size)
        self.num_steps = n // batch_size if drop_last else math.ceil(n / batch_size)
        if self.num_steps == 0 and n > 0:
            self.num_steps = 1  # fewer samples than one batch: train on what there is

    def __len__(self) -> int:
        return self.num_steps

    def order(self) -> torch.Tensor:
        """The sample order of this epoch."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        if self.balanced:
            return balanced_order(self.labels, g)
        return torch.randperm(n, generator=g)

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, labels) on the device from step `start_step` on (for resuming)."""
        order = self.order()
        for step in range(start_step, self.num_steps):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            idx = idx[self.dist.rank::self.dist.world_size]
            # Index on the inputs' own device: uint8 data may already live on the GPU.
            x = self.inputs[idx.to(self.inputs.device)].to(self.device, non_blocking=True)
            y = self.labels[idx.to(self.labels.device)].to(self.device, non_blocking=True)
            if self.transform is not None:
                x = self.transform(x, seed=derive_seed(self.seed, "augment", self.epoch, step))
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)


@dataclass
class Totals:
    """Running sums of one epoch (kept in checkpoints so a resumed epoch reports the same numbers)."""

    loss_sum: float = 0.0  # sum of per-sample losses
    correct: int = 0  # top-1 hits
    count: int = 0  # samples seen
    seconds: float = 0.0  # train time so far (s)

    @property
    def loss(self) -> float:
        """Mean loss per sample."""
        return self.loss_sum / max(self.count, 1)

    @property
    def acc1(self) -> float:
        """Top-1 accuracy (fraction)."""
        return self.correct / max(self.count, 1)


SYNC_EVERY = 20  # optimiser steps between reads of the running sums (each read syncs the device)


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer, *,
                    label_smoothing: float = 0.0, precision: Precision | None = None,
                    scaler: torch.amp.GradScaler | None = None,
                    step_scheduler: Callable[[], None] | None = None, start_step: int = 0,
                    totals: Totals | None = None,
                    after_step: Callable[[int, Totals], None] | None = None,
                    sync_every: int = SYNC_EVERY, logit_offsets: torch.Tensor | None = None,
                    class_weights: torch.Tensor | None = None, bn_frozen: bool = False,
                    desc: str = "train", quiet: bool = False) -> Totals:
    """Train one epoch (or the rest of one, from `start_step`).

    Loss and accuracy sums stay on the device and are read (one device sync, one all-reduce
    under DDP) every `sync_every` steps and at the end of the epoch, not every step.

    Args:
        model: the module that maps batch inputs to logits (in train mode here).
        batches: the epoch's batches.
        optimizer: optimiser over the trainable parameters.
        label_smoothing: cross-entropy label smoothing.
        precision: autocast settings (None = float32).
        scaler: GradScaler for fp16 (None or disabled otherwise).
        step_scheduler: called after every optimiser step (per-batch warm-up / cosine).
        start_step: first step to run (resuming mid-epoch).
        totals: running sums carried over from the interrupted part of the epoch.
        after_step: called as after_step(steps_done, totals) whenever the sums are read, i.e.
            after every step that is a multiple of `sync_every` and after the last one
            (checkpointing, interrupt polling): `totals` are then exact.
        sync_every: steps between reads of the sums (counted from the epoch's start, so a
            resumed epoch reads at the same steps).
        logit_offsets: (k,) added to the logits inside the loss only (logit adjustment); the
            reported accuracy uses the plain logits, as prediction does.
        class_weights: (k,) cross-entropy class weights.
        bn_frozen: keep every BatchNorm layer in inference mode (running statistics fixed, the
            affine weights still trained), as the Keras guide fine-tunes.
        desc: progress bar label.
        quiet: no progress bar.

    Returns:
        The epoch's totals (global over ranks, seconds = this process's train time).

    Raises:
        NonFiniteLossError: if the loss becomes NaN or infinite (seen at the next read: a NaN
            stays NaN in a sum).
    """
    precision = precision or Precision(None, False)
    totals = Totals(**asdict(totals)) if totals else Totals()
    device = batches.device
    sync_every = max(int(sync_every), 1)
    # float64 keeps long sums exact; MPS has no float64.
    dtype = torch.float32 if device.type == "mps" else torch.float64
    pending = torch.zeros(2, dtype=dtype, device=device)  # loss sum, top-1 hits since the last read
    pending_count = 0
    # Reuse freed buffers instead of page-faulting them in every step (the process may not have
    # come through train_run, e.g. the benchmark or a notebook).
    keep_freed_memory()
    model.train()
    if bn_frozen:
        set_bn_eval(model)
    offsets = None if logit_offsets is None else logit_offsets.to(device)
    weights = None if class_weights is None else class_weights.to(device)
    bar = progress(total=len(batches), initial=start_step, desc=desc, leave=False, quiet=quiet,
               unit="batch", dynamic_ncols=True)
    # The clock covers fetching and transforming each batch plus the step itself, not the
    # checkpointing in `after_step`; `.tolist()` below synchronises the device before it is read.
    synchronize(device)
    tick = time.perf_counter()
    try:
        for step, (x, y) in enumerate(batches.iterate(start_step), start=start_step):
            with precision.autocast(device):
                logits = model(x)
            adjusted = logits.float() if offsets is None else logits.float() + offsets
            loss = F.cross_entropy(adjusted, y, weight=weights, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if step_scheduler is not None:
                step_scheduler()
            pending += torch.stack([loss.detach().to(dtype) * len(y),
                                    (logits.detach().argmax(1) == y).sum().to(dtype)])
            pending_count += len(y)
            bar.update(1)
            if (step + 1) % sync_every and step + 1 != len(batches):
                continue
            stats = torch.cat([pending, pending.new_tensor([float(pending_count)])])
            loss_sum, correct, count = all_reduce_sum(stats, batches.dist).tolist()
            pending.zero_()
            pending_count = 0
            totals.seconds += time.perf_counter() - tick
            if not math.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"{desc}: the training loss became {loss_sum / max(count, 1)} by step {step + 1}"
                )
            totals.loss_sum += loss_sum
            totals.correct += int(round(correct))
            totals.count += int(round(count))
            if not quiet:
                bar.set_postfix(loss=f"{totals.loss:.4f}", acc=f"{totals.acc1:.3f}",
                                img_s=f"{totals.count / max(totals.seconds, 1e-9):.0f}")
            if after_step is not None:
                after_step(step + 1, totals)
            tick = time.perf_counter()
    finally:
        bar.close()
    return totals


def set_bn_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer of `model` in inference mode (the rest keeps its mode)."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()


@dataclass
class EvalResult:
    """Loss and accuracies on one split, with the raw predictions when asked for."""

    loss: float
    acc1: float
    acc5: float | None  # None with 5 classes or fewer, where top-5 is always 100%
    count: int
    seconds: float
    bal_acc: float = 0.0  # balanced accuracy: mean per-class recall (training.metrics)
    macro_f1: float = 0.0  # unweighted mean of the per-class F1 scores
    logits: torch.Tensor | None = None  # (N, k) float32 on the CPU, in dataset order
    labels: torch.Tensor | None = None


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, *, precision: Precision | None = None,
             keep_logits: bool = False, desc: str = "eval", quiet: bool = False) -> EvalResult:
    """Mean cross-entropy, top-1 and top-5 accuracy of `model` over `batches` (eval mode).

    Top-5 is None when there are 5 classes or fewer (it would be 100% by construction).

    Under DDP each rank evaluates its shard and the sums are all-reduced; `keep_logits` is only
    meaningful in a single process.
    """
    precision = precision or Precision(None, False)
    device = batches.device
    was_training = model.training
    keep_freed_memory()
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    kept_logits, kept_labels = [], []
    num_classes = 0
    per_class = None  # (3, k) true positives, support, predictions (training.metrics.class_sums)
    with Timer(device) as timer:
        for x, y in progress(batches, desc=desc, leave=False, quiet=quiet, unit="batch"):
            with precision.autocast(device):
                logits = model(x)
            logits = logits.float()
            num_classes = logits.shape[1]
            k = min(5, num_classes)
            top = logits.topk(k, dim=1).indices
            hits = top == y[:, None]
            sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 hits[:, 0].sum().double(), hits.any(1).sum().double(),
                                 torch.tensor(float(len(y)), device=device, dtype=torch.float64)])
            counts = class_sums(y, top[:, 0], num_classes)
            per_class = counts if per_class is None else per_class + counts
            if keep_logits:
                kept_logits.append(logits.cpu())
                kept_labels.append(y.cpu())
        sums = all_reduce_sum(sums, batches.dist)
        if per_class is not None:
            per_class = all_reduce_sum(per_class, batches.dist)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    n = max(count, 1)
    return EvalResult(
        loss=loss / n, acc1=top1 / n, acc5=top5 / n if num_classes > 5 else None, count=int(count),
        seconds=timer.seconds,
        bal_acc=balanced_from_sums(per_class) if per_class is not None else 0.0,
        macro_f1=macro_f1_from_sums(per_class) if per_class is not None else 0.0,
        logits=torch.cat(kept_logits) if kept_logits else None,
        labels=torch.cat(kept_labels) if kept_labels else None,
    )


@dataclass
class EarlyStopping:
    """Keras `EarlyStopping`: stop after `patience` epochs without an improvement > `min_delta`."""

    config: EarlyStoppingConfig
    best: float | None = None  # best monitored value so far
    best_epoch: int = -1  # epoch (0-based, within the stage) of `best`
    wait: int = 0  # epochs since the last improvement

    def improved(self, value: float) -> bool:
        """Whether `value` beats the best by more than min_delta (lower loss / higher accuracy)."""
        if self.best is None:
            return True
        if self.config.monitor == "val_loss":
            return value < self.best - abs(self.config.min_delta)
        return value > self.best + abs(self.config.min_delta)

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; return True when training should stop."""
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        return self.config.enabled and self.wait >= self.config.patience

    def state_dict(self) -> dict[str, Any]:
        """Resumable state."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


@dataclass
class StageProgress:
    """Where a stage stands: what a resumed run needs besides model and optimiser state."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the running epoch
    totals: Totals = field(default_factory=Totals)  # sums of the running epoch
    early: dict[str, Any] = field(default_factory=dict)  # EarlyStopping.state_dict()
    best_state: dict[str, torch.Tensor] | None = None  # trainable module's weights at the best epoch
    stopped: str | None = None  # why the stage ended early ("early_stopping", "non_finite_loss")


@dataclass
class StagePlan:
    """Everything `fit` needs for one stage (built by transferlab.training.run)."""

    name: str
    model: nn.Module  # the module trained (full model, or the part above a cached prefix)
    optimizer: torch.optim.Optimizer
    train_batches: Callable[[int], Batches]  # epoch -> batches
    val_batches: Batches | None  # None = no validation
    epochs: int
    label_smoothing: float = 0.0
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    scheduler: Any = None  # object with step_batch(), step_epoch(metric), state_dict(), load_state_dict()
    precision: Precision = field(default_factory=lambda: Precision(None, False))
    scaler: torch.amp.GradScaler | None = None
    sync_every: int = SYNC_EVERY  # steps between reads of the running sums (and `on_step` calls)
    # On a non-finite loss, load the stage's best weights back. It costs a CPU copy of the
    # trained module at every improving epoch; training.run turns it off (it reloads best.pt).
    nan_restores_best: bool = True
    logit_offsets: torch.Tensor | None = None  # (k,) added to the logits in the loss (logit adjustment)
    class_weights: torch.Tensor | None = None  # (k,) cross-entropy class weights
    bn_frozen: bool = False  # every BatchNorm in inference mode while training (StageConfig.bn_frozen)
    quiet: bool = False


def fit(plan: StagePlan, progress: StageProgress | None = None, *,
        on_epoch: Callable[[dict[str, Any], StageProgress], None] | None = None,
        on_step: Callable[[StageProgress], None] | None = None,
        log: Callable[[str], None] = info) -> StageProgress:
    """Train one stage for its epochs, with validation, early stopping and a NaN guard.

    Args:
        plan: the stage.
        progress: where to resume from (None = from the start).
        on_epoch: called after each epoch with the metrics row and the progress (logging, best.pt,
            last.pt).
        on_step: called with the progress every `plan.sync_every` steps and at the end of each
            epoch (periodic last.pt, interrupt polling).
        log: where notes go (printed on rank 0 only).

    Returns:
        The final progress (`stopped` says whether and why the stage ended early).
    """
    progress = progress or StageProgress()
    early = EarlyStopping(plan.early_stopping)
    if progress.early:
        early.load_state_dict(progress.early)
    if plan.val_batches is None and plan.early_stopping.enabled:
        log(f"[{plan.name}] no validation set (val_fraction=0): early stopping is disabled")
        early.config = EarlyStoppingConfig(**{**asdict(plan.early_stopping), "enabled": False})
    model = plan.model
    keep_best = early.config.enabled and early.config.restore_best

    def after_step(steps_done: int, totals: Totals) -> None:
        progress.step, progress.totals = steps_done, totals
        if on_step is not None:
            on_step(progress)

    while progress.epoch < plan.epochs and progress.stopped is None:
        epoch = progress.epoch
        batches = plan.train_batches(epoch)
        try:
            totals = train_one_epoch(
                model, batches, plan.optimizer, label_smoothing=plan.label_smoothing,
                precision=plan.precision, scaler=plan.scaler,
                step_scheduler=plan.scheduler.step_batch if plan.scheduler else None,
                start_step=progress.step, totals=progress.totals, after_step=after_step,
                sync_every=plan.sync_every, logit_offsets=plan.logit_offsets,
                class_weights=plan.class_weights, bn_frozen=plan.bn_frozen,
                desc=f"{plan.name} {epoch + 1}/{plan.epochs}", quiet=plan.quiet,
            )
        except NonFiniteLossError as err:
            progress.stopped = "non_finite_loss"
            note = "lower the learning rate or check the data"
            if progress.best_state is not None:
                unwrap(model).load_state_dict(progress.best_state)
                log(f"[{plan.name}] stopping: {err}; restored the weights of epoch "
                    f"{early.best_epoch + 1} ({note})")
            else:
                log(f"[{plan.name}] stopping: {err}; no best weights of this stage to restore ({note})")
            break
        val = None
        if plan.val_batches is not None:
            val = evaluate(model, plan.val_batches, precision=plan.precision,
                           desc=f"{plan.name} val", quiet=plan.quiet)
        lr = plan.optimizer.param_groups[0]["lr"]
        row = {
            "stage": plan.name, "epoch": epoch + 1,
            "train_loss": totals.loss, "train_acc1": totals.acc1,
            "val_loss": val.loss if val else None, "val_acc1": val.acc1 if val else None,
            "val_acc5": val.acc5 if val else None,
            "val_bal_acc": val.bal_acc if val else None, "val_macro_f1": val.macro_f1 if val else None,
            "lr": lr,
            "epoch_time_s": totals.seconds, "eval_time_s": val.seconds if val else 0.0,
            "images_per_s": totals.count / max(totals.seconds, 1e-9),
        }
        if plan.scheduler is not None:
            plan.scheduler.step_epoch(val.loss if val else totals.loss)
        monitored = row[early.config.monitor] if val else None
        stop = False
        if monitored is not None:
            # A CPU copy of the whole trainable module is costly: keep one only if it may be used.
            if early.improved(monitored) and (keep_best or plan.nan_restores_best):
                progress.best_state = cpu_state_dict(model)
            stop = early.update(monitored, epoch)
        progress.epoch, progress.step, progress.totals = epoch + 1, 0, Totals()
        progress.early = early.state_dict()
        if stop:
            progress.stopped = "early_stopping"
            log(f"[{plan.name}] early stopping after epoch {epoch + 1}: {early.config.monitor} "
                f"has not improved by more than {early.config.min_delta} for "
                f"{early.config.patience} epochs (best {early.best:.4f} at epoch {early.best_epoch + 1})")
            if early.config.restore_best and progress.best_state is not None:
                unwrap(model).load_state_dict(progress.best_state)
                log(f"[{plan.name}] restored the weights of epoch {early.best_epoch + 1}")
        if on_epoch is not None:
            on_epoch(row, progress)
    return progress
