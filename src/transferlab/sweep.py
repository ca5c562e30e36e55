"""Grid sweeps over any config field: one training run per grid point, tabulated.

The 2018 study's two optimiser tables (optimiser x learning rate for InceptionV3's head stage and
for its fine-tuning stage) are each one sweep::

    transferlab sweep --config configs/study.yaml --model inception_v3 \\
        --grid stages.0.optimizer=rmsprop,sgd,adam --grid stages.0.lr=1e-2,1e-3,1e-4 --out sweeps/head

A sweep folder holds one run directory per grid point plus `sweep.json` (the grid and the table)
and `sweep.csv`. Re-running skips finished points and resumes an interrupted one. The report reads
`sweep.json` back through `transferlab.results.sweeps`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transferlab.compare import TrainFn, default_train_fn
from transferlab.config import parse_yaml
from transferlab.errors import TransferlabError
from transferlab.io import check_dir_path
from transferlab.logs import info
from transferlab.results.runs import load_run, read_metrics
from transferlab.results.sweeps import SWEEP_FILE
from transferlab.runfiles import is_finished

STAGE_KEY = re.compile(r"^stages\.([^.]+)\.")


def parse_value(text: str) -> Any:
    """A grid value as int, float, bool, null or string (`1e-3` is a float, unlike in YAML 1.1)."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return parse_yaml(text, f"the grid value {text!r}") if text else None


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """Parse `--grid KEY=V1,V2,...` options into an ordered {key: values} grid.

    Raises:
        TransferlabError: on a malformed option or a key given twice.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise TransferlabError(
                f"--grid {spec!r}: expected KEY=V1,V2,... such as stages.0.lr=1e-2,1e-3,1e-4"
            )
        if key in grid:
            raise TransferlabError(f"--grid {key} is given twice; list all its values in one option")
        grid[key] = [parse_value(v) for v in values.split(",")]
    if not grid:
        raise TransferlabError("a sweep needs at least one --grid KEY=V1,V2,... option")
    return grid


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the grid, first key slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _slug(value: Any) -> str:
    """A value as a short, filesystem-safe token."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value)).strip("_") or "none"


def point_name(index: int, params: Mapping[str, Any]) -> str:
    """Run name of a grid point, e.g. `p03_optimizer-sgd_lr-0.001`."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{_slug(value)}" for key, value in params.items()]
    return f"p{index:02d}_" + "_".join(parts)


def swept_stage(grid: Mapping[str, Any]) -> str | None:
    """The stage (index or name) every grid key belongs to, when they all share one."""
    stages = {m.group(1) if (m := STAGE_KEY.match(key)) else None for key in grid}
    return stages.pop() if len(stages) == 1 else None


@dataclass
class SweepRow:
    """One grid point's results."""

    params: dict[str, Any]
    run_name: str
    test_acc1: float
    test_acc5: float
    best_val_acc1: float  # best validation top-1 of the swept stage (all stages if none)
    epochs: int  # epochs run in the swept stage (all stages if none)
    epoch_time_s: float  # mean training time per epoch of the swept stage
    wall_time_s: float

    def as_dict(self) -> dict[str, Any]:
        """Flat dict for CSV/JSON: grid keys first, then the metrics."""
        out: dict[str, Any] = dict(self.params)
        out.update({k: v for k, v in vars(self).items() if k != "params"})
        return out


def _stage_name(stage: str | None, config_text: str) -> str | None:
    """Resolve a stage index to its name using the run's config (names pass through)."""
    if stage is None or not stage.lstrip("-").isdigit():
        return stage
    stages = (yaml.safe_load(config_text) or {}).get("stages") or []
    index = int(stage)
    return stages[index]["name"] if -len(stages) <= index < len(stages) else None


def sweep_row(run_dir: Path, params: dict[str, Any], stage: str | None) -> SweepRow:
    """Tabulate one finished grid point from its run directory."""
    run = load_run(run_dir)
    name = _stage_name(stage, run.config_text)
    rows = [r for r in read_metrics(run_dir) if name is None or str(r.get("stage")) == name]
    val = [float(r["val_acc1"]) for r in rows if isinstance(r.get("val_acc1"), int | float)]
    times = [float(r["epoch_time_s"]) for r in rows if isinstance(r.get("epoch_time_s"), int | float)]
    s = run.summary
    return SweepRow(
        params=params,
        run_name=run.name,
        test_acc1=float(s.get("test_acc1", math.nan)),
        test_acc5=float(s["test_acc5"]) if s.get("test_acc5") is not None else math.nan,
        best_val_acc1=max(val) if val else math.nan,
        epochs=len(rows),
        epoch_time_s=statistics.fmean(times) if times else float(s.get("epoch_time_s", math.nan)),
        wall_time_s=float(s.get("wall_time_s", math.nan)),
    )


def _config_dict(base: Any) -> dict[str, Any]:
    """A TrainConfig (or its dict form) as a fresh plain dict."""
    from transferlab.config import config_to_dict

    return json.loads(json.dumps(base if isinstance(base, dict) else config_to_dict(base)))


def point_config(base: Any, params: Mapping[str, Any], out_dir: Path, run_name: str) -> Any:
    """The validated TrainConfig of one grid point: the base with the grid values set."""
    from transferlab.config import apply_set, config_from_dict

    data = _config_dict(base)
    for key, value in params.items():
        # apply_set parses YAML scalars: dump the already typed value back as YAML.
        apply_set(data, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                  .replace("\n...", ""))
    data["out_dir"] = str(out_dir)
    data["run_name"] = run_name
    return config_from_dict(data)


def run_sweep(
    base: Any,
    grid: Mapping[str, Sequence[Any]],
    out_dir: Path,
    train_fn: TrainFn = default_train_fn,
    log: Callable[[str], None] = info,
) -> list[SweepRow]:
    """Train every grid point of `base` (a TrainConfig) into `out_dir` and write the sweep table.

    Finished points (their run directory holds summary.json) are not trained again.

    Returns:
        One row per grid point, in grid order.
    """
    out_dir = check_dir_path(out_dir, "sweep folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    points = grid_points(grid)
    stage = swept_stage(grid)
    # Validate every point before training the first, so a typo fails in seconds, not hours.
    configs = [point_config(base, p, out_dir, point_name(i, p)) for i, p in enumerate(points)]
    rows: list[SweepRow] = []
    for i, (params, config) in enumerate(zip(points, configs, strict=True)):
        run_dir = out_dir / config.run_name
        if is_finished(run_dir):
            log(f"[{i + 1}/{len(points)}] {config.run_name}: finished earlier, skipped")
        else:
            log(f"[{i + 1}/{len(points)}] {config.run_name}: training")
            run_dir = Path(train_fn(config))
        rows.append(sweep_row(run_dir, params, stage))
    write_sweep(out_dir, grid, rows, base=_config_dict(base))
    return rows


def write_sweep(out_dir: Path, grid: Mapping[str, Sequence[Any]], rows: Sequence[SweepRow],
                base: dict[str, Any] | None = None) -> None:
    """Write `sweep.json` and `sweep.csv` atomically."""
    from transferlab.io import atomic_write_text

    table = [r.as_dict() for r in rows]
    payload = {
        "grid": {k: list(v) for k, v in grid.items()},
        "stage": swept_stage(grid),
        "rows": table,
        "base_config": base,
    }
    atomic_write_text(Path(out_dir) / SWEEP_FILE, json.dumps(payload, indent=2) + "\n")
    buffer = io.StringIO()
    if table:
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    atomic_write_text(Path(out_dir) / "sweep.csv", buffer.getvalue())


def load_base_config(
    path: Path,
    entry: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
) -> Any:
    """The TrainConfig a sweep starts from: a train config file, or one model of a compare config.

    Args:
        path: a train-config YAML, or a compare config (with `models`) plus `entry`.
        entry: the model name inside a compare config (optional when it has a single model).
        overrides: top-level fields to set (CLI flags); None values are ignored.
        sets: dotted `KEY=VALUE` assignments.
    """
    from transferlab.compare import load_compare_config, plan_runs
    from transferlab.config import load_config

    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"config file {path} not found; pass an existing YAML file to --config")
    data = parse_yaml(path.read_text(encoding="utf-8"), f"config file {path}")
    if isinstance(data, dict) and "models" in data:
        compare = load_compare_config(path)
        names = [e.name for e in compare.entries]
        if entry is None and len(names) > 1:
            raise TransferlabError(
                f"{path} is a compare config with models {names}; choose one with --entry NAME"
            )
        planned = plan_runs(compare, Path("."), 1, overrides, sets, [entry or names[0]])
        return planned[0].config
    if entry is not None:
        raise TransferlabError(f"--entry applies to compare configs only; {path} is a train config")
    return load_config(path, dict(overrides or {}), list(sets))
