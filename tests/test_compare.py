"""`transferlab compare` end to end on synthetic data: the study's three models, seconds on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferlab.cli import main
from transferlab.compare import deep_merge, load_compare_config, parse_compare_config, plan_runs
from transferlab.errors import TransferlabError
from transferlab.metrics import class_scores, confusion_matrix
from transferlab.report.tables import fmt_pct, fmt_seconds

REPO = Path(__file__).resolve().parents[1]

# The study's three models, shrunk: InceptionV3 at its 75 px minimum, two stages as in the study
# (head, then the top blocks); no pretrained weights so the test needs no download or files.
TINY = {
    "title": "tiny study",
    "shared": {
        "dataset": "synthetic:classes=3,train=36,test=12,size=16,seed=0",
        "val_fraction": 0.25,
        "batch_size": 12,
        "quiet": True,
        "seed": 0,
    },
    "models": [
        {"name": "benchmark_cnn", "label": "Benchmark CNN", "model": "benchmark_cnn",
         "stages": [{"name": "train", "optimizer": "adam", "lr": 3e-3, "epochs": 2}]},
        {"name": "mobilenet_v2_scratch", "label": "MobileNetV2 (scratch)",
         "model": "mobilenet_v2_paper", "model_kwargs": {"width_mult": 0.25, "cifar_stem": True},
         "stages": [{"name": "train", "optimizer": "adam", "epochs": 1}]},
        {"name": "inception_v3", "label": "InceptionV3 (transfer)", "model": "inception_v3",
         "input_size": 75,
         "stages": [{"name": "head", "train": "head", "optimizer": "rmsprop", "epochs": 1},
                    {"name": "finetune", "train": "from:Mixed_7b", "optimizer": "sgd",
                     "lr": 1e-4, "momentum": 0.9, "epochs": 1}]},
    ],
}


def markdown_row(text: str, label: str) -> list[str]:
    """Cells of the comparison-table row of one model."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {label} |")]
    assert rows, f"no table row for {label}"
    return rows[0]


def test_compare_end_to_end(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY, sort_keys=False))
    out = tmp_path / "out"
    assert main(["compare", "--config", str(config), "--out", str(out)]) == 0
    report = (out / "REPORT.md").read_text()
    html = (out / "report.html").read_text()
    for entry in TINY["models"]:
        summary = json.loads((out / entry["name"] / "summary.json").read_text())
        row = markdown_row(report, entry["label"])
        assert row[1] == fmt_pct(summary["test_acc1"])
        assert row[2] == fmt_pct(summary["test_acc5"])
        # Balanced accuracy and macro-F1 beside top-1, from the run's summary or, for a run
        # that did not record them, from its test predictions.
        npz = np.load(out / entry["name"] / "predictions_test.npz")
        scores = class_scores(confusion_matrix(npz["labels"], npz["logits"].argmax(1),
                                               npz["logits"].shape[1]))
        assert row[3] == fmt_pct(summary.get("test_bal_acc", scores.balanced_accuracy))
        assert row[4] == fmt_pct(summary.get("test_macro_f1", scores.macro_f1))
        assert row[5] == fmt_seconds(summary["epoch_time_s"])
        assert row[6] == fmt_seconds(summary["val_time_s"])
        assert row[7] == fmt_seconds(summary["eval_time_s"])
        assert row[11] == f"{summary['params_trainable']:,}"
        assert entry["label"] in html
    comparison = json.loads((out / "comparison.json").read_text())
    assert [m["name"] for m in comparison["models"]] == [m["name"] for m in TINY["models"]]
    assert comparison["models"][2]["epochs"] == {"head": 1, "finetune": 1}

    # A second run skips every finished model and rewrites the same report.
    assert main(["compare", "--config", str(config), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 3


def test_merge_and_validation():
    merged = deep_merge({"model_kwargs": {"a": 1}, "stages": [1, 2]},
                       {"model_kwargs": {"b": 2}, "stages": [3]})
    assert merged == {"model_kwargs": {"a": 1, "b": 2}, "stages": [3]}
    with pytest.raises(TransferlabError, match="used twice"):
        parse_compare_config({"models": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(TransferlabError, match="seed"):
        parse_compare_config({"models": [{"name": "a-seed1"}]})
    with pytest.raises(TransferlabError, match="unknown key"):
        parse_compare_config({"models": [{"name": "a"}], "sharde": {}})
    config = parse_compare_config({"shared": {"dataset": "synthetic"},
                                   "models": [{"name": "a", "bogus_field": 1}]})
    with pytest.raises(TransferlabError, match="model 'a'.*bogus_field"):
        plan_runs(config, Path("out"))


def test_seeds_share_splits_and_name_runs(tmp_path):
    config = parse_compare_config(TINY)
    runs = plan_runs(config, tmp_path, seeds=2, overrides={"train_fraction": 0.5},
                     only=["benchmark_cnn"])
    assert [r.run_dir.name for r in runs] == ["benchmark_cnn", "benchmark_cnn-seed1"]
    assert [r.config.seed for r in runs] == [0, 1]
    assert {r.config.split_seed for r in runs} == {0}  # same data split for every seed
    assert all(r.config.train_fraction == 0.5 for r in runs)


@pytest.mark.parametrize("name", ["study.yaml", "best.yaml", "quick.yaml"])
def test_presets_resolve(name):
    config = load_compare_config(REPO / "configs" / name)
    runs = plan_runs(config, Path("out"))
    assert len(runs) == len(config.entries) >= 3
    assert len({(r.config.dataset, r.config.train_fraction, r.config.split_seed,
                 r.config.val_fraction) for r in runs}) == 1  # one data split for all models
