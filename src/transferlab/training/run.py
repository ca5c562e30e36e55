"""One training run end to end: data -> splits -> model -> stages -> run directory.

`train_run(config)` is the library entry point used by the CLI, `compare` and `sweep`;
`resume_run(run_dir)` continues an interrupted run; `is_finished(run_dir)` says whether a run
completed (its `summary.json` exists: it is written last). The run directory layout is the
contract in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.config import (
    StageConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    save_config,
)
from transferlab.errors import TransferlabError
from transferlab.io import atomic_write, atomic_write_text
from transferlab.models import count_parameters
from transferlab.training import checkpoint as ckpt
from transferlab.training import distributed as dist_utils
from transferlab.training import features as feats
from transferlab.training.device import library_versions, select_device, select_precision
from transferlab.training.engine import (
    SYNC_EVERY,
    Batches,
    StagePlan,
    StageProgress,
    Totals,
    derive_seed,
    evaluate,
    fit,
)
from transferlab.training.optim import StageScheduler, build_optimizer

SUMMARY = "summary.json"
METRIC_COLUMNS = ("stage", "epoch", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5",
                  "lr", "epoch_time_s", "eval_time_s", "images_per_s")


def is_finished(run_dir: str | os.PathLike[str]) -> bool:
    """Whether a run completed: `summary.json` is written last, atomically."""
    return (Path(run_dir) / SUMMARY).is_file()


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


# --------------------------------------------------------------------------------------------
# Ctrl-C: finish the step, save a resumable state, exit cleanly


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


# --------------------------------------------------------------------------------------------
# run state kept in last.pt


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


# --------------------------------------------------------------------------------------------
# the run


class _Run:
    """State and helpers of one run (a class only to share them between the steps of `train_run`)."""

    def __init__(self, config: TrainConfig, resume: bool) -> None:
        self.config = config
        self.resume = resume
        self.ctx = dist_utils.from_environment()
        self.device = select_device(config.device, self.ctx.local_rank)
        dist_utils.init_process_group(self.ctx, self.device)
        self.precision = select_precision(config.amp, self.device)
        self.interrupt = InterruptFlag()
        self.writer = None
        self.stage_features: tuple[str, nn.Module, Any] | None = None  # last stage's cached features

    # -- logging ---------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.ctx.is_main:
            print(message, flush=True)

    # -- setup -----------------------------------------------------------------------------
    def prepare_dir(self) -> Path:
        """Name the run and check its directory is free (or resumable); create it on rank 0."""
        c = self.config
        if not c.run_name:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            c.run_name = str(dist_utils.broadcast_object(f"{c.model}-{stamp}", self.ctx))
        run_dir = Path(c.out_dir) / c.run_name
        if self.resume:
            if is_finished(run_dir):
                raise TransferlabError(f"{run_dir} already finished (summary.json exists); nothing to resume")
            _check_same_config(c, run_dir / "config.yaml")
        elif is_finished(run_dir):
            raise TransferlabError(f"{run_dir} already holds a finished run; choose another --run-name "
                                   "or delete the folder")
        elif (run_dir / "last.pt").exists() or (run_dir / "config.yaml").exists():
            raise TransferlabError(f"{run_dir} holds an unfinished run; continue it with "
                                   f"`transferlab train --resume {run_dir}` or choose another --run-name")
        if self.ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        return run_dir

    def load_data(self) -> None:
        """Load the dataset and the splits (the saved ones when resuming) as uint8 tensors."""
        from transferlab.data import SplitIndices, load_dataset, make_splits

        c = self.config
        self.dataset = load_dataset(c.dataset, data_root=c.data_root, image_size=c.image_size,
                                    labels=c.labels)
        split_path = self.run_dir / "splits.npz"
        if self.resume and split_path.is_file():
            self.splits = SplitIndices.load(split_path)
        else:
            train_split = self.dataset["train"]
            self.splits = make_splits(train_split.labels, val_fraction=c.val_fraction,
                                      train_fraction=c.train_fraction, seed=c.split_seed)
        if len(self.splits.train) == 0:
            raise TransferlabError("the training split is empty; raise train_fraction or lower val_fraction")
        train = self.dataset["train"]
        # Images stay uint8 (4x smaller than float); on CUDA they live on the GPU for the whole run.
        home = self.device if self.device.type == "cuda" else torch.device("cpu")

        def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.from_numpy(np.ascontiguousarray(images)).to(home),
                    torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(home))

        self.data = {"train": tensors(train.images[self.splits.train], train.labels[self.splits.train]),
                     "test": tensors(self.dataset["test"].images, self.dataset["test"].labels)}
        self.indices = {"train": self.splits.train, "test": np.arange(len(self.dataset["test"].labels))}
        if len(self.splits.val):
            self.data["val"] = tensors(train.images[self.splits.val], train.labels[self.splits.val])
            self.indices["val"] = self.splits.val

    def build_model(self) -> None:
        """Create the model and the train / eval transforms at the run's input size."""
        from transferlab.data.transforms import BatchTransform
        from transferlab.models import create_model

        c = self.config
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed % 2**32)
        self.model = create_model(c.model, num_classes=len(self.dataset.classes),
                                  pretrained=c.pretrained, weights=c.weights,
                                  # A weights folder is searched only for pretrained models:
                                  # a from-scratch network has no file in it.
                                  weights_dir=c.weights_dir if c.pretrained else None, head=c.head,
                                  input_size=c.input_size, **c.model_kwargs)
        self.model.to(self.device)
        if c.channels_last:
            self.model.to(memory_format=torch.channels_last)
        pre = self.model.pretrained_cfg
        # An explicit size is already in pretrained_cfg (create_model puts it there); otherwise
        # train at the model's from-scratch default, as `transferlab evaluate` assumes.
        size = tuple(pre.input_size if c.input_size else
                     getattr(self.model, "default_input_size", None) or pre.input_size)
        self.input_size = size
        # From here on pretrained_cfg is the preprocessing this run uses (BatchTransform: the whole
        # image resized to `size`, no crop), so best.pt, predict and evaluate all repeat it.
        self.model.pretrained_cfg = dataclasses.replace(pre, input_size=size, crop_pct=1.0,
                                                        crop_mode="squash")
        self.transform = BatchTransform(size, mean=pre.mean, std=pre.std,
                                        interpolation=pre.interpolation, augment=c.augment,
                                        native_size=self.dataset.image_size).to(self.device)
        self.eval_transform = BatchTransform(size, mean=pre.mean, std=pre.std,
                                             interpolation=pre.interpolation, augment="none",
                                             native_size=self.dataset.image_size).to(self.device).eval()

    def model_kwargs(self) -> dict[str, Any]:
        """create_model kwargs that rebuild the architecture (the model's own, else the config's)."""
        kwargs = dict(getattr(self.model, "model_kwargs", {}) or {})
        kwargs.update(self.config.model_kwargs)
        kwargs.setdefault("head", self.config.head)
        return kwargs

    def image_batches(self, split: str, batch_size: int) -> Batches:
        """Evaluation-mode batches of a split's images in dataset order (this process only)."""
        x, y = self.data[split]
        return Batches(x, y, batch_size, transform=self.eval_transform, device=self.device,
                       channels_last=self.config.channels_last)

    # -- cached features -------------------------------------------------------------------
    def cache_plan(self, stage: StageConfig) -> tuple[nn.Module, nn.Module] | None:
        """(prefix, tail) when this stage trains on cached features, else None."""
        c = self.config
        if stage.cache_features == "false" or stage.train == "all":
            if stage.cache_features == "true" and stage.train == "all":
                raise TransferlabError(f"stage {stage.name}: cache_features=true needs a frozen part "
                                       "(train: head or from:<stage>)")
            return None
        if c.augment != "none":
            if stage.cache_features == "true":
                raise TransferlabError(f"stage {stage.name}: cache_features=true but augment={c.augment} "
                                       "changes the frozen part's inputs every epoch; set augment none")
            return None
        parts = feats.split_model(self.model, stage.train)
        if parts is None:
            return None
        prefix, _ = parts
        if stage.train.startswith("from:"):
            sample = next(iter(self.image_batches("train", 1)))[0]
            total = sum(len(v[1]) for v in self.data.values())
            need = feats.activation_bytes(prefix, sample, total)
            budget = c.cache_memory_gb * 2**30
            if need > budget:
                msg = (f"stage {stage.name}: cached activations need {need / 2**30:.1f} GiB, over "
                       f"cache_memory_gb={c.cache_memory_gb}")
                if stage.cache_features == "true":
                    raise TransferlabError(msg + "; raise cache_memory_gb or set cache_features auto")
                self.log(msg + ": training through the frozen part instead")
                return None
        return parts

    def cached_features(self, stage: StageConfig, prefix: nn.Module, tail: nn.Module) -> dict[str, Any]:
        """Features of every split for this stage's frozen prefix, from disk or freshly extracted."""
        from transferlab.data.cache import data_root, load_arrays, save_arrays, stable_hash

        c = self.config
        frozen = _frozen_state_hash(self.model, tail)
        pre = self.model.pretrained_cfg
        info: dict[str, Any] = {"backend": "cache", "extract_time_s": 0.0, "extracted_images": 0}
        root = Path(c.cache_dir) if c.cache_dir else data_root(c.data_root)
        out: dict[str, torch.Tensor] = {}
        for split in self.data:
            key = stable_hash({
                "kind": "features", "version": 1, "model": c.model, "frozen": frozen,
                "boundary": stage.train, "data": self.dataset.fingerprint, "split": split,
                "indices": feats.indices_hash(self.indices[split]),
                "input_size": list(self.input_size), "mean": list(pre.mean), "std": list(pre.std),
                "interpolation": pre.interpolation,
                # Options that change the features but not the weights (pooling, padding) and
                # the precision they were computed in.
                "model_kwargs": self.model_kwargs(), "precision": self.precision.name,
            })[:32]
            directory = feats.features_dir(root, key)
            loaded = load_arrays(directory) if self.ctx.is_main else None
            if self.ctx.is_main and loaded is None:
                batches = self.image_batches(split, c.eval_batch())  # rank 0 extracts everything
                values, seconds, backend = feats.extract(
                    prefix, batches, backend=c.extract_backend, num_images=len(self.data[split][1]),
                    precision=self.precision, desc=f"extract {split}", quiet=c.quiet, log=self.log)
                n = len(values)
                self.log(f"extracted {split} features {tuple(values.shape)} in {seconds:.1f} s "
                         f"({n / max(seconds, 1e-9):.0f} img/s, {backend})")
                save_arrays(directory, {"features": values.numpy()},
                            {"split": split, "shape": list(values.shape)})
                info["backend"] = backend
                info["extract_time_s"] += seconds
                info["extracted_images"] += n
            dist_utils.barrier(self.ctx)
            if not self.ctx.is_main or loaded is None:
                loaded = load_arrays(directory)
            if loaded is None:
                raise TransferlabError(f"feature cache {directory} could not be read; delete it and rerun")
            values = torch.from_numpy(loaded[0]["features"])
            home = self.device if self.device.type == "cuda" else torch.device("cpu")
            out[split] = values.to(home)
        if info["extracted_images"]:
            info["extract_images_per_s"] = info["extracted_images"] / max(info["extract_time_s"], 1e-9)
        info["features"] = out
        return info

    # -- checkpoints -----------------------------------------------------------------------
    def save_best(self, state_dict: dict[str, torch.Tensor] | None, extra: dict[str, Any]) -> None:
        """Write best.pt (rank 0) from `state_dict`, or the model's current weights when None."""
        if not self.ctx.is_main:
            return
        payload = ckpt.model_checkpoint(self.model, self.config, model_name=self.config.model,
                                        model_kwargs=self.model_kwargs(), classes=self.dataset.classes,
                                        state_dict=state_dict, extra=extra)
        ckpt.save_checkpoint(payload, self.run_dir / "best.pt")

    def save_last(self, state: RunState, optimizer: Any, scheduler: Any, scaler: Any,
                  started: float) -> None:
        """Write last.pt (rank 0): everything an exact resume needs."""
        if not self.ctx.is_main:
            return
        payload = {
            "model": ckpt.cpu_state_dict(self.model),
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
            "config": config_to_dict(self.config),
        }
        ckpt.save_checkpoint(payload, self.run_dir / "last.pt")

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv and metrics.jsonl (rank 0) from all rows so far."""
        if not self.ctx.is_main:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in METRIC_COLUMNS})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(_dumps(r) + "\n" for r in rows))




# Fields that may differ between the interrupted and the resumed session (they change nothing
# in the results).
RUNTIME_FIELDS = {"quiet", "device", "extract_backend", "checkpoint_every", "out_dir", "run_name",
                  "cache_dir"}


def _check_same_config(config: TrainConfig, saved_path: Path) -> None:
    """A resumed run must continue with the config it started with."""
    if not saved_path.is_file():
        return
    import yaml

    saved = config_to_dict(config_from_dict(yaml.safe_load(saved_path.read_text())))
    now = config_to_dict(config)
    changed = sorted(k for k in now if k not in RUNTIME_FIELDS and now[k] != saved.get(k))
    if changed:
        raise TransferlabError(f"cannot resume {saved_path.parent} with a different config "
                               f"(changed: {', '.join(changed)}); resume with its own config.yaml "
                               "or start a new run")


def _frozen_state_hash(model: nn.Module, tail: nn.Module) -> str:
    """Hash of the model's weights outside the trainable tail (the frozen prefix's identity)."""
    tail_ptrs = {t.data_ptr() for t in tail.state_dict().values()}
    frozen = {k: v for k, v in model.state_dict().items() if v.data_ptr() not in tail_ptrs}
    return feats.state_hash(frozen)


def _apply_freeze(model: nn.Module, train: str) -> None:
    """Freeze the model for a stage's `train` setting (head | all | from:<stage>)."""
    from transferlab.models import freeze

    if train == "head":
        freeze(model, "all")
    elif train == "all":
        freeze(model, None)
    else:
        freeze(model, train.removeprefix("from:"))


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
    run = _Run(config, resume)
    try:
        return _train(run)
    finally:
        if run.writer is not None:
            run.writer.close()
        dist_utils.destroy_process_group()


def _train(run: _Run) -> Path:
    """The steps of `train_run`: directory, data, model, resume state, stages, then `_finish`."""
    started = time.perf_counter()
    c = run.config
    run_dir = run.prepare_dir()
    run.load_data()
    run.build_model()
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
    if run.ctx.is_main:
        save_config(c, run_dir / "config.yaml")
        run.splits.save(run_dir / "splits.npz")
        run.write_metrics(state.rows)
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
            _run_stage(run, stage, si, state, last, started)
            last = None  # optimiser/scheduler state only applies to the stage it was saved in

    return _finish(run, state, started)


def _run_stage(run: _Run, stage: StageConfig, si: int, state: RunState, last: dict[str, Any] | None,
               started: float) -> None:
    """Train one stage (on cached features when it can), saving best.pt / last.pt as it goes."""
    c = run.config
    _apply_freeze(run.model, stage.train)
    batch_size = c.stage_batch_size(stage)
    parts = run.cache_plan(stage)
    info: dict[str, Any] = dict(state.stage_info.get(stage.name, {}))
    info.update({"train": stage.train, "cached_features": parts is not None})
    if parts is not None:
        prefix, tail = parts
        cached = run.cached_features(stage, prefix, tail)
        features = cached.pop("features")
        info.update({k: v for k, v in cached.items() if k != "backend" or cached["extracted_images"]})
        trained: nn.Module = tail
        labels = {s: run.data[s][1] for s in run.data}

        def batches(split: str, size: int, shuffle: bool, epoch: int = 0) -> Batches:
            return Batches(features[split], labels[split], size, shuffle=shuffle, seed=c.seed,
                           epoch=epoch, device=run.device, dist=run.ctx, train=shuffle)
        run.stage_features = (stage.train, trained, batches)
    else:
        trained = run.model

        def batches(split: str, size: int, shuffle: bool, epoch: int = 0) -> Batches:
            x, y = run.data[split]
            return Batches(x, y, size, shuffle=shuffle, seed=c.seed, epoch=epoch,
                           transform=run.transform if shuffle else run.eval_transform,
                           device=run.device, dist=run.ctx, channels_last=c.channels_last,
                           train=shuffle)
        run.stage_features = None

    # Shuffle order and augmentation seeds mix in the stage index: each stage sees its own order.
    def train_batches(epoch: int) -> Batches:
        b = batches("train", batch_size, True, epoch)
        b.seed = derive_seed(c.seed, "stage", si)
        return b

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
    run.log(f"stage {si + 1}/{len(run.config.stages)} {stage.name}: train {stage.train}, "
            f"{n_trainable:,} of {total:,} parameters trainable, {stage.optimizer} lr {stage.lr:g}, "
            f"{stage.epochs} epochs of {steps} steps (batch {batch_size})"
            + (", on cached features" if parts is not None else ""))
    plan = StagePlan(
        name=stage.name, model=module, optimizer=optimizer, train_batches=train_batches,
        val_batches=batches("val", c.eval_batch(), False) if "val" in run.data else None,
        epochs=stage.epochs, label_smoothing=stage.label_smoothing,
        early_stopping=stage.early_stopping, scheduler=scheduler, precision=run.precision,
        scaler=scaler, quiet=c.quiet or not run.ctx.is_main,
        # Read the sums at every periodic checkpoint step too, so last.pt holds exact totals.
        sync_every=math.gcd(SYNC_EVERY, c.checkpoint_every) if c.checkpoint_every else SYNC_EVERY,
        # After a non-finite loss `_finish` reloads best.pt: no in-memory copy of the best needed.
        nan_restores_best=False,
    )

    def on_step(progress: StageProgress) -> None:
        state.progress = progress
        every = c.checkpoint_every
        if run.interrupt.poll(run.ctx, run.device):
            run.save_last(state, optimizer, scheduler, scaler, started)
            run.log(f"saved a resumable state in {run.run_dir / 'last.pt'}; continue with "
                    f"`transferlab train --resume {run.run_dir}`")
            raise KeyboardInterrupt
        if every and progress.step % every == 0 and progress.step < steps:
            run.save_last(state, optimizer, scheduler, scaler, started)

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
        if value is None or state.best_value is None or value > state.best_value:
            state.best_value = value
            run.save_best(None, {"stage": stage.name, "epoch": row["epoch"], "val_acc1": value})
        run.write_metrics(state.rows)
        run.save_last(state, optimizer, scheduler, scaler, started)
        if run.interrupt.poll(run.ctx, run.device):
            run.log(f"saved a resumable state in {run.run_dir / 'last.pt'}")
            raise KeyboardInterrupt
        if not c.quiet:
            run.log(_format_row(row))

    progress = fit(plan, state.progress, on_epoch=on_epoch, on_step=on_step, log=run.log)
    epoch_rows = [r for r in state.rows if r["stage"] == stage.name]
    info.update({
        "epochs": progress.epoch, "stopped": progress.stopped,
        "epoch_time_s": _mean([r["epoch_time_s"] for r in epoch_rows]),
        "images_per_s": _mean([r["images_per_s"] for r in epoch_rows]),
    })
    state.stage_info[stage.name] = info
    if progress.stopped == "non_finite_loss":
        state.stopped = f"stage {stage.name}: non-finite loss"
        run.save_last(state, optimizer, scheduler, scaler, started)
        if (run.run_dir / "best.pt").is_file():
            run.log("the run stops here; the test set is evaluated with best.pt")
        else:
            run.log("the run stops here; no epoch finished, so there is no best checkpoint and "
                    "no test pass")


def _mean(values: list[float]) -> float:
    """Mean of a list, 0.0 when empty."""
    return float(np.mean(values)) if values else 0.0


def _format_row(row: dict[str, Any]) -> str:
    """One metrics row as a log line."""
    text = (f"[{row['stage']}] epoch {row['epoch']}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc1']:.4f}")
    if row["val_loss"] is not None:
        text += f" | val loss {row['val_loss']:.4f} acc {row['val_acc1']:.4f}"
    return text + f" | {row['epoch_time_s']:.2f} s, {row['images_per_s']:.0f} img/s"


def _finish(run: _Run, state: RunState, started: float) -> Path:
    """Evaluate the best model on the test set, write predictions and summary.json (last).

    Without a best checkpoint (a non-finite loss in the very first epoch) there is no model to
    test: the test metrics are null and no predictions are written.
    """
    c = run.config
    best_path = run.run_dir / "best.pt"
    dist_utils.barrier(run.ctx)
    result = None
    if best_path.is_file():
        run.model.load_state_dict(ckpt.load_checkpoint(best_path)["state_dict"])
        result = _test_pass(run)
    total, trainable = count_parameters(run.model)
    rows = state.rows
    train_seconds = sum(r["epoch_time_s"] for r in rows)
    train_images = sum(r["images_per_s"] * r["epoch_time_s"] for r in rows)
    summary = {
        "run_name": c.run_name,
        "model": c.model,
        "pretrained": bool(c.pretrained),
        "dataset": c.dataset,
        "classes": list(run.dataset.classes),
        "test_acc1": result.acc1 if result else None,
        "test_acc5": result.acc5 if result else None,
        "test_loss": result.loss if result else None,
        "epochs": {s.name: state.stage_info.get(s.name, {}).get("epochs", 0) for s in c.stages},
        "epoch_time_s": _mean([r["epoch_time_s"] for r in rows]),
        "eval_time_s": result.seconds if result else None,
        "val_time_s": _mean([r["eval_time_s"] for r in rows if r["val_loss"] is not None]),
        "images_per_s": train_images / train_seconds if train_seconds else 0.0,
        "wall_time_s": state.wall_time_s + time.perf_counter() - started,
        "params_total": total,
        "params_trainable": max((i.get("params_trainable", 0) for i in state.stage_info.values()),
                                default=trainable),
        "device": str(run.device) + (f" x{run.ctx.world_size}" if run.ctx.enabled else ""),
        "precision": run.precision.name,
        "world_size": run.ctx.world_size,
        "input_size": list(run.input_size),
        "best_val_acc1": state.best_value,
        "stopped": state.stopped,
        "stages": state.stage_info,
        "versions": library_versions(),
    }
    if run.ctx.is_main:
        if result is not None:
            labels = result.labels.numpy()
            logits = result.logits.numpy().astype(np.float32)
            atomic_write(run.run_dir / "predictions_test.npz",
                         lambda f: np.savez(f, labels=labels, logits=logits,
                                            classes=np.array(run.dataset.classes)))
        atomic_write_text(run.run_dir / SUMMARY, _dumps(summary, indent=2) + "\n")
        if result is not None:
            run.log(f"test acc1 {result.acc1:.4f} acc5 {result.acc5:.4f}; run directory {run.run_dir}")
        else:
            run.log(f"no best checkpoint, so no test pass (test metrics are null); run directory "
                    f"{run.run_dir}")
    dist_utils.barrier(run.ctx)
    return run.run_dir


def _test_pass(run: _Run) -> Any:
    """Evaluate the loaded best weights on the whole test set (every rank, logits in order)."""
    c = run.config
    cached = run.stage_features
    if cached is not None and all(s.train == cached[0] for s in c.stages):
        # The frozen part never changed during the run, so its cached test features still apply.
        _, module, batches = cached
        test = batches("test", c.eval_batch(), False)
    else:
        module = run.model
        test = run.image_batches("test", c.eval_batch())
    test.dist = dist_utils.DistContext()  # the test pass runs whole on every rank: logits in order
    return evaluate(module, test, precision=run.precision, keep_logits=True, desc="test",
                    quiet=c.quiet or not run.ctx.is_main)


def _finite(value: Any) -> Any:
    """`value` with every NaN / infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (allow_nan=False): non-finite numbers are written as null."""
    return json.dumps(_finite(value), allow_nan=False, default=_json, **kwargs)


def _json(value: Any) -> Any:
    """json.dumps fallback for numpy scalars, tensors and anything else (as str)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


__all__ = ["InterruptFlag", "RunState", "is_finished", "resume_run", "train_run"]
