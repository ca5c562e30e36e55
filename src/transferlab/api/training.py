"""`tl.train(dataset, ...) -> Run`: one run, with the defaults, recipes and run directory of
`transferlab train`, which calls `training_config` and `train` below.

The rules a caller should not have to know live here, below the command line, so Python and
the CLI resolve a run alike: a weights folder means pretrained weights, a plain path to a folder
or archive is an image-folder dataset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferlab.config import TrainConfig, load_config
from transferlab.errors import TransferlabError

# Named dataset specs (transferlab.data.load_dataset); anything else that exists on disk is a folder.
_SPECS = ("cifar10", "cifar100")
_SPEC_PREFIXES = ("folder:", "synthetic:")


def dataset_spec(dataset: str | os.PathLike[str]) -> str:
    """The `load_dataset` spec of what a user passed: a spec as is, a path as `folder:PATH`.

    Args:
        dataset: cifar10, cifar100, folder:PATH, synthetic[:k=v,...], or a plain path to an
            image folder, `.tar(.gz)` or `.zip`.
    """
    text = os.fspath(dataset)
    if isinstance(dataset, os.PathLike) or (
            text not in (*_SPECS, "synthetic") and not text.startswith(_SPEC_PREFIXES) and Path(text).expanduser().exists()):
        return f"folder:{Path(text).expanduser()}"
    return text


def config_fields() -> list[str]:
    """The names `train` accepts as keyword arguments: every `TrainConfig` field."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def training_config(fields: Mapping[str, Any] | None = None, config: str | os.PathLike[str] | None = None,
                    sets: Sequence[str] = ()) -> TrainConfig:
    """The resolved, validated config of a run: defaults < YAML file < `fields` < `sets`.

    Args:
        fields: TrainConfig fields (None values are "not given"); `dataset` may be a plain path.
        config: a YAML train config file.
        sets: dotted assignments, e.g. ``"stages.finetune.lr=3e-5"``.

    Raises:
        TransferlabError: an unknown field (the message lists the valid ones) or a bad value.
    """
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    unknown = sorted(set(fields) - set(config_fields()))
    if unknown:
        raise TransferlabError(f"unknown setting(s) {unknown}; valid settings are the TrainConfig "
                               f"fields: {', '.join(config_fields())}")
    if "dataset" in fields:
        fields["dataset"] = dataset_spec(fields["dataset"])
    for key in ("weights", "weights_dir", "data_root", "cache_dir", "out_dir"):
        if isinstance(fields.get(key), os.PathLike):
            fields[key] = os.fspath(fields[key])
    if fields.get("weights_dir") and "pretrained" not in fields and not _file_sets(config, "pretrained"):
        # A weights folder means "use the pretrained weights in it" (else it would be ignored
        # and the run would silently train from scratch).
        fields["pretrained"] = True
    return load_config(config, fields, list(sets))


def _file_sets(path: str | os.PathLike[str] | None, key: str) -> bool:
    """Whether the YAML config file names `key` (so a keyword should not second-guess it)."""
    if not path:
        return False
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_config reports the problem with the file
    return isinstance(data, dict) and key in data


def train(dataset: str | os.PathLike[str] | None = None, model: str | None = None,
          weights: str | os.PathLike[str] | None = None, recipe: str | None = None, *,
          config: str | os.PathLike[str] | None = None, sets: Sequence[str] = (),
          **fields: Any) -> Any:
    """Train one model on one dataset and return its run directory as a `Run`.

    The same run as `transferlab train`: the defaults of `TrainConfig`, the recipe named (auto:
    finetune with pretrained weights, else scratch), its messages through the "transferlab"
    logger, and the run directory `out_dir/run_name`.

    Args:
        dataset: cifar10, cifar100, folder:PATH, synthetic[:k=v,...], or a plain path to an
            image folder, `.tar(.gz)` or `.zip` (default: the config's, cifar100).
        model: a registry name or timm:<name> (default benchmark_cnn).
        weights: a pretrained weights file (.safetensors, state dict or a run's best.pt).
        recipe: auto | finetune | head | scratch (ignored when `stages` are given).
        config: a YAML train config; the arguments here override it.
        sets: dotted overrides applied last, e.g. ``["stages.finetune.epochs=3"]``.
        **fields: any other `TrainConfig` field, e.g. ``weights_dir=``, ``epochs`` per stage via
            ``sets``, ``out_dir="runs"``, ``run_name=``, ``quiet=True``.

    Returns:
        The finished `Run`.

    Raises:
        TransferlabError: an unknown keyword (listing the valid ones), a bad value, or a run
            directory in the way.
    """
    from transferlab.api.run import Run
    from transferlab.training import train_run

    resolved = training_config({"dataset": dataset, "model": model, "weights": weights,
                                "recipe": recipe, **fields}, config, sets)
    return Run(train_run(resolved))
