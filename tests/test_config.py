"""Config: defaults < YAML < flags < --set, validation, and the study recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from transferlab.cli import main
from transferlab.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from transferlab.errors import TransferlabError

REPO = Path(__file__).resolve().parents[1]


def test_precedence_defaults_yaml_flags_sets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "batch_size": 64, "val_fraction": 0.3,
        "stages": [{"name": "head", "train": "head", "epochs": 2}, {"name": "ft", "lr": 0.1}],
    }))
    c = load_config(path, {"batch_size": 16, "seed": None},
                    ["stages.0.lr=1e-2", "stages.ft.epochs=7", "stages.head.early_stopping.patience=9"])
    assert c.batch_size == 16  # flag beats YAML
    assert c.val_fraction == 0.3  # YAML beats default
    assert c.seed == 0  # None flag = not given
    assert c.stages[0].lr == pytest.approx(1e-2) and c.stages[0].epochs == 2
    assert c.stages[1].epochs == 7 and c.stages[1].lr == 0.1
    assert c.stages[0].early_stopping.patience == 9


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    c = load_config(None, {"dataset": "synthetic"}, ["stages.0.betas=[0.8, 0.9]"])
    save_config(c, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert config_to_dict(again) == config_to_dict(c)
    assert again.stages[0].betas == (0.8, 0.9)


@pytest.mark.parametrize("data, words", [
    ({"bogus": 1}, "unknown key"),
    ({"stages": [{"optimizer": "lbfgs"}]}, "optimizer"),
    ({"stages": [{"train": "below"}]}, "from:"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"stages": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"stages": [{"optimizer": "adam", "nesterov": True}]}, "nesterov"),
    ({"stages": [{"early_stopping": {"monitor": "acc"}}]}, "monitor"),
    ({"augment": "heavy"}, "augment='heavy' is not valid; choose one of none"),
    ({"head": "mlp"}, "head='mlp' is not valid"),
    ({"input_size": 0}, "input_size=0 must be a positive integer"),
    ({"image_size": -1}, "image_size=-1"),
    ({"eval_batch_size": 0}, "eval_batch_size=0"),
    ({"stages": [{"betas": [0.9]}]}, "betas=.*two values"),
    ({"stages": [{"warmup_epochs": -1}]}, "warmup_epochs"),
    ({"stages": [{"min_lr": 0.1, "lr": 0.01}]}, r"min_lr=0.1 must be in \[0, lr=0.01\]"),
    ({"stages": [{"min_lr": -1e-5}]}, "min_lr"),
    ({"stages": [{"gamma": 0.0}]}, r"gamma=0.0 must be in \(0, 1\]"),
    ({"stages": [{"rho": 1.5}]}, "rho=1.5"),
    ({"split_seed": -1}, "split_seed=-1 must be >= 0"),
    ({"max_image_pixels": 0}, "max_image_pixels=0"),
    ({"stages": [{"step_epochs": 0}]}, "step_epochs=0 must be >= 1"),
    ({"stages": [{"plateau_patience": -1}]}, "plateau_patience=-1"),
    ({"input_size": 7}, "input_size=7 is below the smallest input benchmark_cnn takes, 8 px"),
    ({"model": "inception_v3", "input_size": 74}, "takes, 75 px"),
])
def test_bad_values_raise_clear_errors(data: dict, words: str) -> None:
    with pytest.raises(TransferlabError, match=words):
        config_from_dict(data)


def test_bad_set_assignments() -> None:
    with pytest.raises(TransferlabError, match="no item named"):
        load_config(None, None, ["stages.nope.lr=1"])
    with pytest.raises(TransferlabError, match="unknown key"):
        load_config(None, None, ["stages.0.learning_rate=1"])
    with pytest.raises(TransferlabError, match="KEY=VALUE"):
        load_config(None, None, ["stages.0.lr"])


def test_val_fraction_zero_allowed() -> None:
    assert load_config(None, {"val_fraction": 0.0}).val_fraction == 0.0


def test_study_inception_recipe_is_exact() -> None:
    c = load_config(REPO / "configs" / "study_inception_v3.yaml")
    head, ft = c.stages
    assert c.model == "inception_v3" and c.pretrained
    assert (head.train, head.optimizer, head.lr, head.rho, head.eps, head.momentum) == (
        "head", "rmsprop", 1e-3, 0.9, 1e-7, 0.0)
    assert (ft.train, ft.optimizer, ft.lr, ft.momentum, ft.nesterov) == (
        "from:Mixed_7b", "sgd", 1e-4, 0.9, False)


def test_cli_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "--dataset", "synthetic", "--train-fraction", "0.5",
                 "--no-channels-last", "--set", "stages.0.epochs=4"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train_fraction"] == 0.5 and out["channels_last"] is False
    assert out["stages"][0]["epochs"] == 4
    assert TrainConfig().channels_last is True


def test_cli_bad_augment_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "--dataset", "synthetic", "--augment", "heavy"]) == 2
    err = capsys.readouterr().err
    assert "--augment: invalid choice: 'heavy'" in err and "standard" in err and "Traceback" not in err
