"""Reading finished run directories and summarising repeated runs (seeds) of one model.

A run directory is what `transferlab train` writes (docs/ARCHITECTURE.md). Runs that repeat one
model with different seeds are named `<name>-seed<N>` by `transferlab compare`; they form one
group, reported as mean and standard deviation.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.runfiles import PREDICTIONS, SUMMARY, is_finished

SUMMARY_FILE = SUMMARY  # the one name, in transferlab.runfiles
SEED_SUFFIX = re.compile(r"-seed(\d+)$")

# Summary fields averaged over the seeds of a group.
NUMERIC_FIELDS = (
    "test_acc1",
    "test_acc5",
    "test_bal_acc",
    "test_macro_f1",
    "epoch_time_s",
    "eval_time_s",
    "val_time_s",
    "images_per_s",
    "wall_time_s",
)


@dataclass
class RunRecord:
    """One finished run, read from its directory."""

    path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]  # metrics.csv rows, numbers parsed
    config_text: str  # the resolved config.yaml, verbatim

    @property
    def name(self) -> str:
        """The run name from the summary (the directory name when the summary has none)."""
        return str(self.summary.get("run_name") or self.path.name)

    @property
    def group(self) -> str:
        """The run name without its `-seed<N>` suffix: runs of one model share it."""
        return SEED_SUFFIX.sub("", self.name)


def _number(text: str) -> Any:
    """A CSV cell as int or float when it is one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch rows of `metrics.csv` (or `metrics.jsonl`), an empty list when neither exists."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if (run_dir / "metrics.jsonl").is_file():
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return []


def load_run(run_dir: Path) -> RunRecord:
    """Read a finished run directory (it must hold `summary.json`)."""
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY_FILE
    if not is_finished(run_dir):
        raise TransferlabError(
            f"{run_dir} has no {SUMMARY_FILE}: it is not a finished run directory "
            "(finish or resume it with `transferlab train`, or pass the folder of a compare)"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TransferlabError(f"{path} is not valid JSON ({err}); re-run the training") from err
    config = run_dir / "config.yaml"
    return RunRecord(
        path=run_dir,
        summary=_with_class_means(summary, run_dir),
        metrics=read_metrics(run_dir),
        config_text=config.read_text(encoding="utf-8") if config.is_file() else "",
    )


def _with_class_means(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The summary with test balanced accuracy and macro-F1, from the run's test predictions
    when the summary predates them (older runs recorded top-1 and top-5 only)."""
    path = run_dir / PREDICTIONS
    if ("test_bal_acc" in summary and "test_macro_f1" in summary) or not path.is_file():
        return summary
    import numpy as np

    from transferlab.metrics import class_scores, confusion_matrix

    try:
        with np.load(path, allow_pickle=False) as npz:
            labels, logits = npz["labels"], npz["logits"]
    except (OSError, KeyError, ValueError):
        return summary  # an unreadable file leaves the columns empty, as before
    scores = class_scores(confusion_matrix(labels, logits.argmax(axis=1), logits.shape[1]))
    return {**summary, "test_bal_acc": scores.balanced_accuracy,
            "test_macro_f1": scores.macro_f1}


def find_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """Runs in the given folders: each path is a run directory or a folder holding some (any depth).

    Raises:
        TransferlabError: if a path does not exist or holds no finished run.
    """
    runs: list[RunRecord] = []
    for path in map(Path, paths):
        if not path.exists():
            raise TransferlabError(f"{path} does not exist; pass run directories or a compare folder")
        if (path / SUMMARY_FILE).is_file():
            runs.append(load_run(path))
            continue
        found = sorted(p.parent for p in path.rglob(SUMMARY_FILE))
        if not found:
            raise TransferlabError(
                f"{path} holds no finished run (no {SUMMARY_FILE} inside); "
                "train first or check the path"
            )
        runs.extend(load_run(p) for p in found)
    return runs


@dataclass
class GroupSummary:
    """Mean and standard deviation over the runs (seeds) of one model."""

    name: str
    runs: list[RunRecord]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)  # 0.0 for a single run

    @property
    def first(self) -> dict[str, Any]:
        """The first run's summary, for fields equal across seeds (model, parameters, ...)."""
        return self.runs[0].summary

    @property
    def epochs(self) -> dict[str, float]:
        """Mean epochs run per stage."""
        stages: dict[str, list[float]] = {}
        for run in self.runs:
            for stage, n in (run.summary.get("epochs") or {}).items():
                stages.setdefault(stage, []).append(float(n))
        return {stage: statistics.fmean(v) for stage, v in stages.items()}


def summarise_groups(runs: Sequence[RunRecord]) -> list[GroupSummary]:
    """Group runs by name (seeds together), in first-seen order, with mean and std of the metrics."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    out = []
    for name, members in groups.items():
        group = GroupSummary(name=name, runs=members)
        for key in NUMERIC_FIELDS:
            values = [float(r.summary[key]) for r in members if _is_number(r.summary.get(key))]
            if values:
                group.mean[key] = statistics.fmean(values)
                group.std[key] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(group)
    return out


def _is_number(value: Any) -> bool:
    """True for a finite int or float (not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
