"""Compare several models trained on the same data and splits, and write one comparison.

A compare config is a YAML file with the settings every model shares and a list of models, each
a train config (`transferlab.config.TrainConfig` fields) that overrides the shared part::

    title: The 2018 study, rerun          # report title
    description: what this comparison shows and for which hardware it was sized
    shared:                               # TrainConfig fields common to every model
      dataset: cifar100
      train_fraction: 0.5
      seed: 0
    models:
      - name: benchmark_cnn               # run name: unique, letters, digits, '_' and '-'
        label: Benchmark CNN (from scratch)   # how the report names it
        model: benchmark_cnn
        stages: [{name: train, optimizer: adam, epochs: 30}]

Mappings are merged key by key (an entry's `model_kwargs` extends the shared one); lists such as
`stages` are replaced whole. Every model gets the same `dataset`, `val_fraction`,
`train_fraction` and `split_seed` unless an entry overrides them, so all see the same split.
`weights_dir` applies to the entries with `pretrained: true` only.

`run_compare` trains each model into `OUT/<name>` (extra seeds into `OUT/<name>-seed<N>`), skips
models whose run already finished, resumes an interrupted one, then writes `comparison.json` and
`comparison.csv` into OUT. The `transferlab compare` command then has the report layer write
`REPORT.md` and `report.html` next to them (this module never imports the report).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.config import parse_yaml
from transferlab.errors import TransferlabError
from transferlab.logs import info
from transferlab.runfiles import is_finished

COMPARE_KEYS = {"title", "description", "shared", "models"}
ENTRY_KEYS = {"name", "label"}  # entry keys that are not TrainConfig fields
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


@dataclass
class ModelEntry:
    """One model of a comparison: its run name, its label and its merged config dict."""

    name: str
    label: str
    config: dict[str, Any]  # TrainConfig fields (shared < entry), not yet validated


@dataclass
class CompareConfig:
    """A parsed compare config."""

    title: str
    description: str
    entries: list[ModelEntry]
    source: str = ""  # the YAML text as read (saved next to the results)
    shared: dict[str, Any] = field(default_factory=dict)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `override` into a copy of `base`: mappings key by key, everything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_compare_config(data: Any, where: str = "compare config", source: str = "") -> CompareConfig:
    """Validate the structure of a compare config (the train fields are checked per model later)."""
    if not isinstance(data, dict):
        raise TransferlabError(f"{where} must be a mapping with 'shared' and 'models' keys")
    unknown = sorted(set(data) - COMPARE_KEYS)
    if unknown:
        raise TransferlabError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(COMPARE_KEYS)}")
    shared = data.get("shared") or {}
    if not isinstance(shared, dict):
        raise TransferlabError(f"{where}: 'shared' must be a mapping of train-config fields")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise TransferlabError(f"{where}: 'models' must be a non-empty list of model entries")
    entries: list[ModelEntry] = []
    for i, raw in enumerate(models):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise TransferlabError(f"{where}: models.{i} needs a 'name' (its run directory name)")
        name = str(raw["name"])
        if not NAME_RE.match(name) or re.search(r"-seed\d+$", name):
            raise TransferlabError(
                f"{where}: model name {name!r} must be letters, digits, '_' or '-' and must not "
                "end in -seed<N> (reserved for repeated seeds)"
            )
        if name in {e.name for e in entries}:
            raise TransferlabError(f"{where}: model name {name!r} is used twice; names must be unique")
        overrides = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
        entries.append(ModelEntry(name, str(raw.get("label") or name), deep_merge(shared, overrides)))
    return CompareConfig(
        title=str(data.get("title") or "Model comparison"),
        description=str(data.get("description") or ""),
        entries=entries,
        source=source,
        shared=shared,
    )


def load_compare_config(path: Path) -> CompareConfig:
    """Read and validate a compare config YAML file."""
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"compare config {path} not found; pass an existing YAML file to --config")
    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text, f"compare config {path}")
    return parse_compare_config(data, where=str(path), source=text)


def select_entries(config: CompareConfig, only: Sequence[str] | None) -> list[ModelEntry]:
    """The entries named in `only` (all when empty), rejecting unknown names."""
    if not only:
        return list(config.entries)
    names = [e.name for e in config.entries]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise TransferlabError(f"--only {unknown}: no such model in the config; models are {names}")
    return [e for e in config.entries if e.name in only]


def seed_run_name(name: str, index: int, seed: int) -> str:
    """The first seed keeps the plain name; repeats are `<name>-seed<seed>`."""
    return name if index == 0 else f"{name}-seed{seed}"


@dataclass
class PlannedRun:
    """One training run of a comparison."""

    entry: ModelEntry
    config: Any  # validated TrainConfig
    run_dir: Path

    @property
    def finished(self) -> bool:
        """True when the run directory already holds its summary."""
        return is_finished(self.run_dir)


def plan_runs(
    config: CompareConfig,
    out_dir: Path,
    seeds: int = 1,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[PlannedRun]:
    """Resolve and validate every run of the comparison before any training starts.

    Args:
        config: the compare config.
        out_dir: folder of the comparison; runs go to `out_dir/<run name>`.
        seeds: repeats per model, with seeds `seed, seed + 1, ...`.
        overrides: TrainConfig fields set on every model (CLI flags such as --dataset); None
            values are ignored.
        sets: dotted `KEY=VALUE` assignments applied to every model's config.
        only: model names to run (default all).
    """
    from transferlab.config import apply_set, config_from_dict, config_to_dict

    if seeds < 1:
        raise TransferlabError(f"--seeds {seeds}: give at least 1")
    planned = []
    for entry in select_entries(config, only):
        data = deep_merge(entry.config, {k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            # Normalise through the dataclasses first so `sets` can address default fields.
            data = config_to_dict(config_from_dict(data))
            for assignment in sets:
                apply_set(data, assignment)
            base = config_from_dict(data)
        except TransferlabError as err:
            raise TransferlabError(f"model {entry.name!r}: {err}") from err
        for i in range(seeds):
            seed = base.seed + i
            name = seed_run_name(entry.name, i, seed)
            run_config = config_from_dict({**config_to_dict(base), "seed": seed,
                                           "run_name": name, "out_dir": str(out_dir)})
            planned.append(PlannedRun(entry, run_config, Path(out_dir) / name))
    return planned


TrainFn = Callable[[Any], Path]


def default_train_fn(config: Any) -> Path:
    """Train a config with the training engine; an interrupted run directory is resumed."""
    from transferlab.training import train_run

    run_dir = Path(config.out_dir) / config.run_name
    # A run directory without summary.json is an interrupted run: continue it from last.pt.
    return Path(train_run(config, resume=run_dir.exists()))


def run_compare(
    config: CompareConfig,
    out_dir: Path,
    seeds: int = 1,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    only: Sequence[str] | None = None,
    train_fn: TrainFn = default_train_fn,
    log: Callable[[str], None] = info,
) -> list[Path]:
    """Train every model of a comparison and write the comparison table.

    The report (REPORT.md, report.html) is the report layer's job: `transferlab compare` calls
    `transferlab.report.write_report` on the returned run directories.

    Returns:
        The run directories of every finished model of the config (also those of earlier
        `only` runs), in config order.
    """
    from transferlab.io import atomic_write_text, check_dir_path

    out_dir = check_dir_path(out_dir, "comparison folder")
    planned = plan_runs(config, out_dir, seeds, overrides, sets, only)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.source:
        atomic_write_text(out_dir / "compare.yaml", config.source)
    for i, run in enumerate(planned, start=1):
        if run.finished:
            log(f"[{i}/{len(planned)}] {run.run_dir.name}: finished earlier, skipped")
            continue
        state = "resuming" if (run.run_dir / "last.pt").is_file() else "training"
        log(f"[{i}/{len(planned)}] {run.run_dir.name}: {state} {run.config.model}")
        train_fn(run.config)
        if not run.finished:
            raise TransferlabError(
                f"training {run.run_dir.name} ended without writing {run.run_dir / 'summary.json'}; "
                "re-run the same command to resume it"
            )
    # The comparison covers every finished model of the config, also those of earlier --only runs.
    finished = [r.run_dir for r in plan_runs(config, out_dir, seeds, overrides, sets) if r.finished]
    write_comparison(out_dir, config, finished)
    return finished


def write_comparison(out_dir: Path, config: CompareConfig, run_dirs: Sequence[Path]) -> list[dict]:
    """Write `comparison.json` and `comparison.csv`: one row per model (mean and std over seeds)."""
    from transferlab.io import atomic_write_text
    from transferlab.results.comparison import comparison_records
    from transferlab.results.runs import load_run, summarise_groups

    groups = summarise_groups([load_run(p) for p in run_dirs])
    labels = {e.name: e.label for e in config.entries}
    records = comparison_records(groups, labels)
    payload = {"title": config.title, "models": records}
    atomic_write_text(Path(out_dir) / "comparison.json", json.dumps(payload, indent=2) + "\n")
    buffer = io.StringIO()
    flat = [{k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in r.items()}
            for r in records]
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(Path(out_dir) / "comparison.csv", buffer.getvalue())
    return records
