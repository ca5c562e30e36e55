"""The run directory and its plain files: naming it, guarding it, metrics.csv / .jsonl, strict JSON.

The layout of a run directory is the contract in docs/ARCHITECTURE.md. `summary.json` is written
last (training/summary.py), so its presence means the run finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.config import TrainConfig, config_from_dict, config_to_dict
from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_text, check_dir_path
from transferlab.runfiles import SUMMARY, is_finished
from transferlab.training import distributed as dist_utils
from transferlab.training.context import RunContext

METRIC_COLUMNS = ("stage", "epoch", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5",
                  "val_bal_acc", "val_macro_f1", "lr", "epoch_time_s", "eval_time_s", "images_per_s")

# Fields that may differ between the interrupted and the resumed session (they change nothing
# in the results).
RUNTIME_FIELDS = {"quiet", "device", "extract_backend", "checkpoint_every", "out_dir", "run_name",
                  "cache_dir", "workers", "max_image_pixels"}


def prepare_dir(run: RunContext) -> Path:
    """Name the run and check its directory is free (or resumable) and can be created."""
    c = run.config
    if not c.run_name:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        c.run_name = str(dist_utils.broadcast_object(f"{c.model}-{stamp}", run.ctx))
    run_dir = Path(c.out_dir) / c.run_name
    if run.resume:
        if is_finished(run_dir):
            raise TransferlabError(f"{run_dir} already finished (summary.json exists); nothing to resume")
        check_same_config(c, run_dir / "config.yaml")
    elif is_finished(run_dir):
        raise TransferlabError(f"{run_dir} already holds a finished run; choose another run_name "
                               "or delete the folder")
    elif (run_dir / "last.pt").exists() or (run_dir / "config.yaml").exists():
        raise TransferlabError(f"{run_dir} holds an unfinished run; continue it (tl.Run(path).resume(), "
                               f"or `transferlab train --resume {run_dir}`) or choose another run_name")
    # Checked now, created only when its first file is written (after the data and the model
    # loaded): a run that fails before it starts leaves no empty folder behind.
    check_dir_path(run_dir, "the run directory (out_dir / run_name)")
    if c.cache_dir:
        check_dir_path(c.cache_dir, "cache_dir")
    run.run_dir = run_dir
    return run_dir


def check_same_config(config: TrainConfig, saved_path: Path) -> None:
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


def write_metrics(run: RunContext, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv and metrics.jsonl (rank 0) from all rows so far."""
    if not run.ctx.is_main:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in METRIC_COLUMNS})
    atomic_write_text(run.run_dir / "metrics.csv", buf.getvalue())
    atomic_write_text(run.run_dir / "metrics.jsonl", "".join(dumps(r) + "\n" for r in rows))


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (allow_nan=False): non-finite numbers are written as null."""
    return json.dumps(_finite(value), allow_nan=False, default=_json, **kwargs)


def _finite(value: Any) -> Any:
    """`value` with every NaN / infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _json(value: Any) -> Any:
    """json.dumps fallback for numpy scalars, tensors and anything else (as str)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


__all__ = ["METRIC_COLUMNS", "RUNTIME_FIELDS", "SUMMARY", "check_same_config", "dumps",
           "is_finished", "prepare_dir", "write_metrics"]
