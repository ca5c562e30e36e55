"""Recipes: the stages a run gets when its config names none, and how flags and files choose them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from transferlab.cli import main
from transferlab.commands.train import add_parser
from transferlab.config import config_from_dict, config_to_dict, load_config
from transferlab.errors import TransferlabError
from transferlab.recipes import describe, recipe_stages


def test_pretrained_weights_choose_finetune_else_scratch() -> None:
    tuned = load_config(None, {"model": "mobilenet_v2", "weights": "w.safetensors"})
    assert tuned.recipe == "finetune" and tuned.head == "linear"
    assert [(s.name, s.train) for s in tuned.stages] == [("head", "head"), ("finetune", "top")]
    head, top = tuned.stages
    assert head.cache_features == "auto" and (head.augment or tuned.augment) == "none"
    assert top.lr < head.lr and top.warmup_epochs > 0 and top.augment == "photo"
    for stage in tuned.stages:  # epochs are capped by early stopping on validation loss
        assert stage.early_stopping.enabled and stage.early_stopping.monitor == "val_loss"
        assert stage.early_stopping.restore_best
    assert load_config(None, {"pretrained": True}).recipe == "finetune"
    scratch = load_config(None, {"model": "benchmark_cnn"})
    assert scratch.recipe == "scratch" and scratch.head == "study"
    assert [s.train for s in scratch.stages] == ["all"]


def test_explicit_stages_win_and_are_recorded_as_custom() -> None:
    c = config_from_dict({"pretrained": True, "stages": [{"name": "only", "train": "head"}]})
    assert c.recipe == "custom" and [s.name for s in c.stages] == ["only"]
    assert c.head == "study"  # the study's configs keep the study head


def test_recipe_flag_replaces_the_files_stages_and_set_still_works(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"name": "mine", "epochs": 9}]}))
    c = load_config(path, {"recipe": "head", "weights": "w"}, ["stages.head.epochs=4"])
    assert c.recipe == "head" and [(s.name, s.epochs) for s in c.stages] == [("head", 4)]


def test_a_file_naming_both_a_recipe_and_stages_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"recipe": "finetune", "stages": [{"name": "mine"}]}))
    with pytest.raises(TransferlabError, match="both recipe='finetune' and stages"):
        load_config(path)


def test_resolved_config_round_trips_unchanged() -> None:
    c = load_config(None, {"weights": "w"})
    assert config_to_dict(config_from_dict(config_to_dict(c))) == config_to_dict(c)


def test_bad_recipe_names_the_choices() -> None:
    with pytest.raises(TransferlabError, match="recipe='fast' is not valid; choose one of auto"):
        config_from_dict({"recipe": "fast"})
    with pytest.raises(TransferlabError, match="finetune"):
        recipe_stages("fast")


def test_weights_dir_flag_means_pretrained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "--model", "mobilenet_v2", "--weights-dir", str(tmp_path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pretrained"] is True and printed["recipe"] == "finetune"
    assert [s["name"] for s in printed["stages"]] == ["head", "finetune"]
    assert main(["train", "--print-config", "--weights-dir", str(tmp_path), "--no-pretrained"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["recipe"] == "scratch"


def test_describe_names_every_stage() -> None:
    text = describe(load_config(None, {"weights": "w"}))
    assert text.startswith("recipe finetune: 2 stages, head linear")
    assert "1. head: train head, adam lr 0.001" in text and "2. finetune: train top" in text
    assert "augment photo" in text and "early stopping on val_loss (patience 3)" in text


def test_every_config_field_has_help_with_its_choices() -> None:
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    parser = add_parser(sub)
    actions = {a.dest: a for a in parser._actions}
    assert "finetune" in actions["recipe"].help and actions["recipe"].choices[1] == "finetune"
    assert list(actions["augment"].choices) == ["none", "study", "standard", "strong", "photo"]
    assert "stage fields" in parser.epilog and "early_stopping.patience" in parser.epilog


def test_best_checkpoint_ties_go_to_the_lower_validation_loss() -> None:
    from transferlab.training.stage_loop import is_better

    earlier = [{"val_acc1": 0.9, "val_loss": 0.30}, {"val_acc1": 0.8, "val_loss": 0.20}]
    assert is_better({"val_acc1": 0.9, "val_loss": 0.25}, earlier)
    assert not is_better({"val_acc1": 0.9, "val_loss": 0.35}, earlier)
    assert is_better({"val_acc1": 0.95, "val_loss": 0.9}, earlier)
    assert not is_better({"val_acc1": 0.85, "val_loss": 0.01}, earlier)
    assert is_better({"val_acc1": 0.5, "val_loss": 1.0}, [])
