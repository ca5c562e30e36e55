"""`transferlab sweep`: one run and one table row per grid point."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.results.sweeps import pivot
from transferlab.sweep import grid_points, parse_grid, point_name, swept_stage

TRAIN = {
    "dataset": "synthetic:classes=3,train=24,test=9,size=8,seed=0",
    "val_fraction": 0.25,
    "model": "benchmark_cnn",
    "batch_size": 8,
    "quiet": True,
    "stages": [{"name": "train", "optimizer": "adam", "epochs": 1}],
}


def test_parse_grid_types_and_errors():
    grid = parse_grid(["stages.0.optimizer=rmsprop,sgd", "stages.0.lr=1e-2,1e-3", "seed=0,1"])
    assert grid == {"stages.0.optimizer": ["rmsprop", "sgd"], "stages.0.lr": [0.01, 0.001],
                    "seed": [0, 1]}
    assert len(grid_points(grid)) == 8
    assert grid_points(grid)[1] == {"stages.0.optimizer": "rmsprop", "stages.0.lr": 0.01, "seed": 1}
    with pytest.raises(TransferlabError, match="KEY=V1"):
        parse_grid(["stages.0.lr"])
    with pytest.raises(TransferlabError, match="twice"):
        parse_grid(["seed=1", "seed=2"])
    assert swept_stage(grid) is None
    assert swept_stage({"stages.head.lr": [1], "stages.head.optimizer": ["sgd"]}) == "head"
    assert point_name(3, {"stages.0.lr": 0.001}) == "p03_lr-0.001"


def test_pivot_builds_optimiser_by_lr_table():
    rows = [{"o": o, "lr": lr, "test_acc1": i} for i, (o, lr) in
            enumerate((o, lr) for o in ("sgd", "adam") for lr in (0.1, 0.01, 0.001))]
    row_values, col_values, cells = pivot(rows, "o", "lr")
    assert row_values == ["sgd", "adam"] and col_values == [0.1, 0.01, 0.001]
    assert cells == [[0, 1, 2], [3, 4, 5]]


def test_sweep_command_one_row_per_point(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(TRAIN))
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", str(config), "--out", str(out),
            "--grid", "stages.0.optimizer=sgd,adam", "--grid", "stages.0.lr=1e-2,1e-3"]
    assert main(argv) == 0
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stages.0.optimizer"], float(r["stages.0.lr"])) for r in rows] == [
        ("sgd", 0.01), ("sgd", 0.001), ("adam", 0.01), ("adam", 0.001)]
    for row in rows:
        summary = json.loads((out / row["run_name"] / "summary.json").read_text())
        assert float(row["test_acc1"]) == pytest.approx(summary["test_acc1"])
        config_used = yaml.safe_load((out / row["run_name"] / "config.yaml").read_text())
        assert config_used["stages"][0]["optimizer"] == row["stages.0.optimizer"]
        assert config_used["stages"][0]["lr"] == pytest.approx(float(row["stages.0.lr"]))
    capsys.readouterr()
    assert main(argv) == 0  # a re-run trains nothing
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4


def test_sweep_rejects_unknown_field_before_training(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(TRAIN))
    argv = ["sweep", "--config", str(config), "--out", str(tmp_path / "s"),
            "--grid", "stages.0.learning_rate=1e-2,1e-3"]
    assert main(argv) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not list((tmp_path / "s").glob("p*"))  # nothing trained


def test_sweep_entry_of_a_compare_config(tmp_path):
    compare = {"shared": {k: v for k, v in TRAIN.items() if k not in ("model", "stages")},
               "models": [{"name": "cnn", "model": "benchmark_cnn", "stages": TRAIN["stages"]},
                          {"name": "other", "model": "benchmark_cnn"}]}
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(compare))
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(config), "--entry", "cnn", "--out", str(out),
                 "--grid", "seed=0,1"]) == 0
    table = json.loads((out / "sweep.json").read_text())
    assert [r["seed"] for r in table["rows"]] == [0, 1]
    assert main(["sweep", "--config", str(config), "--out", str(out), "--grid", "seed=0"]) == 2
