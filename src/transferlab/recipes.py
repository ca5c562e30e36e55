"""Named training recipes: the stages a run gets when its config names none.

A user with a folder of photos and a pretrained backbone should get a good model from one
command, as fastai's `fine_tune` and the Keras transfer-learning guide give. The recipes are
plain stage lists, written out into the run's `config.yaml`, so a run always shows exactly what
it did and any field can still be changed with `--set stages.<name>.<field>=...`.

- `finetune` (the default with pretrained weights; Keras guide and fastai practice):
  1. `head`: the backbone frozen, the new head trained on cached features with Adam at 1e-3.
     Cached features make an epoch nearly free, so the cap is generous (30) and early stopping
     on validation loss (patience 3, best weights restored) decides the length.
  2. `finetune`: the top of the backbone unfrozen (`train: top`, every stage at the backbone's
     last spatial resolution: `blocks.5`-up for MobileNetV2 / EfficientNet, `Mixed_7a`-up for
     InceptionV3, `layer4` for ResNet). Those stages hold most of the parameters but a small share
     of the compute, so a step costs little more than the forward pass, and they are the most
     task-specific features. Adam at 1e-4 (10x below the head, so the pretrained features are
     adjusted, not overwritten) with a one-epoch linear warm-up (the new head's first gradients
     are large) and cosine decay; random resized crops and flips (`photo` augmentation) against
     overfitting small datasets; early stopping on validation loss, patience 3, best restored.
     Every BatchNorm stays in inference mode (`bn_frozen`), the unfrozen blocks' too, as the
     Keras guide fine-tunes: in training mode they normalise by the statistics of each augmented
     batch, so the features the head was just trained on change under it at the first step, and
     the stage spends its first epochs undoing the head stage (bench/FINETUNE_BN.md: on a
     long-tailed CIFAR-10 folder the first finetune epoch's training loss was 1.34 with
     batch statistics against 0.74 with them frozen, and validation top-1 73.8% against 64.8%
     after four epochs). Their scale and shift still train.
- `head`: stage 1 alone (fastest; a linear probe of the pretrained features).
- `scratch` (the default without pretrained weights): the whole network with AdamW at 2e-3,
  weight decay 0.05, one warm-up epoch, cosine decay, pad-and-crop plus flip, up to 40 epochs
  with early stopping on validation loss (patience 5).

Batch size 32 in every recipe: on a CPU the throughput per image is flat above it, and small
datasets (a few hundred photos) still get enough optimiser steps per epoch.
The study's own recipes stay in `configs/*.yaml`, which name their stages explicitly.
"""

from __future__ import annotations

import copy
from typing import Any

from transferlab.choices import RECIPES
from transferlab.errors import TransferlabError

# A config that names its stages keeps them; its recipe is then recorded as this.
CUSTOM = "custom"

_EARLY_STOP = {"enabled": True, "monitor": "val_loss", "patience": 3, "restore_best": True}

_HEAD_STAGE: dict[str, Any] = {
    "name": "head", "train": "head", "optimizer": "adam", "lr": 1e-3, "epochs": 30,
    "batch_size": 32, "augment": "none", "cache_features": "auto", "early_stopping": _EARLY_STOP,
}
_FINETUNE_STAGE: dict[str, Any] = {
    "name": "finetune", "train": "top", "optimizer": "adam", "lr": 1e-4, "epochs": 10,
    "batch_size": 32, "warmup_epochs": 1.0, "schedule": "cosine", "augment": "photo",
    "bn_frozen": True, "early_stopping": _EARLY_STOP,
}
_SCRATCH_STAGE: dict[str, Any] = {
    "name": "train", "train": "all", "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05,
    "epochs": 40, "batch_size": 32, "warmup_epochs": 1.0, "schedule": "cosine",
    "augment": "standard", "early_stopping": {**_EARLY_STOP, "patience": 5},
}

_STAGES: dict[str, list[dict[str, Any]]] = {
    "finetune": [_HEAD_STAGE, _FINETUNE_STAGE],
    "head": [_HEAD_STAGE],
    "scratch": [_SCRATCH_STAGE],
}
# The head each recipe trains when the config says `head: auto`.
_HEADS = {"finetune": "linear", "head": "linear", "scratch": "study", CUSTOM: "study"}


def uses_pretrained_weights(data: dict[str, Any]) -> bool:
    """Whether a config dict loads a pretrained backbone (`pretrained` or an explicit `weights`)."""
    return bool(data.get("pretrained")) or bool(data.get("weights"))


def recipe_stages(name: str) -> list[dict[str, Any]]:
    """The stage dicts of recipe `name` (a fresh copy the caller may change)."""
    if name not in _STAGES:
        raise TransferlabError(f"recipe={name!r} is not valid; choose one of {', '.join(RECIPES)}")
    return copy.deepcopy(_STAGES[name])


def apply_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """Fill in a config dict's stages and head from its recipe; returns the completed dict.

    With no stages, `recipe: auto` becomes `finetune` when pretrained weights are loaded and
    `scratch` otherwise, and the stages are that recipe's. With stages, they are kept and an
    `auto` recipe is recorded as `custom`. `head: auto` becomes the recipe's head (`linear` for
    fine-tuning: global pooling, dropout and one Linear layer, as in the Keras guide; the study's
    head otherwise).
    """
    data = dict(data)
    recipe = data.get("recipe") or "auto"
    if recipe not in RECIPES and recipe != CUSTOM:
        raise TransferlabError(f"recipe={recipe!r} is not valid; choose one of {', '.join(RECIPES)}")
    if data.get("stages"):
        if recipe == "auto":
            recipe = CUSTOM
    else:
        if recipe == CUSTOM:
            raise TransferlabError("recipe=custom needs stages; name them in the config or choose "
                                   f"one of {', '.join(RECIPES)}")
        if recipe == "auto":
            recipe = "finetune" if uses_pretrained_weights(data) else "scratch"
        data["stages"] = recipe_stages(recipe)
    data["recipe"] = recipe
    if (data.get("head") or "auto") == "auto":
        data["head"] = _HEADS[recipe]
    return data


def describe(config: Any) -> str:
    """A few lines naming a `TrainConfig`'s recipe and each stage, printed when training starts."""
    stages = config.stages
    lines = [f"recipe {config.recipe}: {len(stages)} stage{'s' if len(stages) != 1 else ''}, "
             f"head {config.head}"]
    for i, s in enumerate(stages):
        stop = (f", early stopping on {s.early_stopping.monitor} (patience {s.early_stopping.patience})"
                if s.early_stopping.enabled else "")
        warm = f", warm-up {s.warmup_epochs:g} epoch" if s.warmup_epochs else ""
        sched = f", {s.schedule} schedule" if s.schedule != "none" else ""
        sched += ", BatchNorm frozen" if s.bn_frozen else ""
        batch = f", batch {config.stage_batch_size(s)}"
        lines.append(f"  {i + 1}. {s.name}: train {s.train}, {s.optimizer} lr {s.lr:g}{warm}{sched}, "
                     f"up to {s.epochs} epochs{batch}, augment {s.augment or config.augment}{stop}")
    return "\n".join(lines)
