"""The end of a run: the test pass with best.pt, predictions_test.npz, and summary.json (last)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.io import atomic_write, atomic_write_text
from transferlab.models import count_parameters
from transferlab.training import checkpoint as ckpt
from transferlab.training import distributed as dist_utils
from transferlab.training.context import RunContext
from transferlab.training.device import library_versions
from transferlab.training.engine import evaluate
from transferlab.training.leakage import summary_record as leakage_record
from transferlab.training.run_state import RunState
from transferlab.training.rundir import SUMMARY, dumps
from transferlab.training.stage_loop import mean


def finish(run: RunContext, state: RunState, started: float) -> Path:
    """Evaluate the best model on the test set, write predictions and summary.json (last).

    Without a best checkpoint (a non-finite loss in the very first epoch) there is no model to
    test: the test metrics are null and no predictions are written.
    """
    c = run.config
    best_path = run.run_dir / "best.pt"
    dist_utils.barrier(run.ctx)
    result = None
    calibration = None
    if best_path.is_file():
        best = ckpt.load_checkpoint(best_path)
        run.model.load_state_dict(best["state_dict"])
        result = _test_pass(run)
        calibration = _calibrate(run, result)
        if run.ctx.is_main and calibration is not None:
            # The temperature travels with the weights: predict, evaluate and export apply it.
            ckpt.save_checkpoint({**best, "temperature": calibration["temperature"]}, best_path)
    total, trainable = count_parameters(run.model)
    rows = state.rows
    train_seconds = sum(r["epoch_time_s"] for r in rows)
    train_images = sum(r["images_per_s"] * r["epoch_time_s"] for r in rows)
    summary = {
        "run_name": c.run_name,
        "model": c.model,
        "pretrained": bool(c.pretrained),
        "dataset": c.dataset,
        "recipe": c.recipe,
        "split_sources": run.split_sources,
        "split_sizes": {split: len(labels) for split, (_, labels) in run.data.items()},
        "leakage": leakage_record(run),
        "excluded": {"file": c.exclude, "count": sum(len(v) for v in run.excluded.values()),
                     "files": run.excluded} if c.exclude else None,
        "classes": list(run.dataset.classes),
        "test_acc1": result.acc1 if result else None,
        "test_acc5": result.acc5 if result else None,
        "test_loss": result.loss if result else None,
        "test_bal_acc": result.bal_acc if result else None,
        "test_macro_f1": result.macro_f1 if result else None,
        "epochs": {s.name: state.stage_info.get(s.name, {}).get("epochs", 0) for s in c.stages},
        "epoch_time_s": mean([r["epoch_time_s"] for r in rows]),
        "eval_time_s": result.seconds if result else None,
        "val_time_s": mean([r["eval_time_s"] for r in rows if r["val_loss"] is not None]),
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
        "calibration": calibration,
        "imbalance": run.imbalance.to_dict() if run.imbalance is not None else None,
        "stopped": state.stopped,
        "stages": state.stage_info,
        "versions": library_versions(),
    }
    if run.ctx.is_main:
        if result is not None:
            labels = result.labels.numpy()
            logits = result.logits.numpy().astype(np.float32)
            temperature = np.float64(calibration["temperature"] if calibration else 1.0)
            atomic_write(run.run_dir / "predictions_test.npz",
                         lambda f: np.savez(f, labels=labels, logits=logits,
                                            classes=np.array(run.dataset.classes),
                                            temperature=temperature))
        atomic_write_text(run.run_dir / SUMMARY, dumps(summary, indent=2) + "\n")
        if result is not None:
            acc5 = f" acc5 {result.acc5:.4f}" if result.acc5 is not None else ""
            run.log(f"test acc1 {result.acc1:.4f}{acc5} balanced acc {result.bal_acc:.4f} "
                    f"macro-F1 {result.macro_f1:.4f}; run directory {run.run_dir}")
        else:
            run.log(f"no best checkpoint, so no test pass (test metrics are null); run directory "
                    f"{run.run_dir}")
    dist_utils.barrier(run.ctx)
    return run.run_dir


def _calibrate(run: RunContext, test: Any) -> dict[str, Any] | None:
    """Temperature scaling fitted on the validation split (Guo et al. 2017), with the test ECE
    before and after; None without a validation split or a test pass.

    The temperature divides the logits before the softmax: it changes how sure the model says it
    is, never which class it answers.
    """
    from transferlab.metrics import expected_calibration_error, fit_temperature, softmax

    if test is None or "val" not in run.data:
        return None
    val = _split_pass(run, "val")
    t = fit_temperature(val.logits.numpy(), val.labels.numpy())
    labels, logits = test.labels.numpy(), test.logits.numpy()
    record = {
        "temperature": t,
        "fitted_on": f"val ({len(val.labels):,} images)",
        "val_ece": expected_calibration_error(softmax(val.logits.numpy()), val.labels.numpy()),
        "val_ece_calibrated": expected_calibration_error(softmax(val.logits.numpy(), t),
                                                         val.labels.numpy()),
        "test_ece": expected_calibration_error(softmax(logits), labels),
        "test_ece_calibrated": expected_calibration_error(softmax(logits, t), labels),
    }
    run.log(f"calibration: temperature {t:.3f} fitted on the validation split; test expected "
            f"calibration error {record['test_ece']:.3f} -> {record['test_ece_calibrated']:.3f}")
    return record


def _test_pass(run: RunContext) -> Any:
    """Evaluate the loaded best weights on the whole test set (every rank, logits in order)."""
    return _split_pass(run, "test")


def _split_pass(run: RunContext, split: str) -> Any:
    """Evaluate the loaded best weights on a whole split (every rank, logits in order)."""
    c = run.config
    cached = run.stage_features
    if cached is not None and all(s.train == cached[0] for s in c.stages):
        # The frozen part never changed during the run, so its cached features still apply.
        _, module, batches = cached
        data = batches(split, c.eval_batch(), False)
    else:
        module = run.model
        data = run.image_batches(split, c.eval_batch())
    data.dist = dist_utils.DistContext()  # the pass runs whole on every rank: logits in order
    return evaluate(module, data, precision=run.precision, keep_logits=True, desc=split,
                    quiet=c.quiet or not run.ctx.is_main)


__all__ = ["finish"]
