"""Configuration of one training run: data, model, and a list of training stages.

A run is described by a `TrainConfig` (dataclasses with a default and a unit on every field).
The resolved config is saved as `config.yaml` in the run directory and inside every checkpoint.

Precedence: dataclass defaults < YAML file < CLI flags.

YAML format (every key optional; unknown keys are an error)::

    run_name: study_inception_v3     # run directory name under out_dir ("" = <model>-<timestamp>)
    out_dir: runs
    dataset: cifar100                # any transferlab.data.load_dataset spec, e.g. folder:PATH
    labels: fine
    val_fraction: 0.1                # 0 = no validation set (early stopping is then disabled)
    model: inception_v3
    pretrained: true                 # no stages below would mean recipe auto: finetune (see recipes.py)
    weights: ../shared/weights/inception_v3.nsfwjs_partial_in1k.safetensors
    batch_size: 64                   # default batch size of every stage
    stages:
      - name: head
        train: head                  # head | top | all | from:<feature stage name>
        optimizer: rmsprop           # Keras defaults: lr 1e-3, rho 0.9, eps 1e-7
        epochs: 5
      - name: finetune
        train: from:Mixed_7b         # freeze everything before the top two inception blocks
        optimizer: sgd
        lr: 1.0e-4
        momentum: 0.9
        epochs: 10
        early_stopping: {monitor: val_acc1, patience: 3, restore_best: true}

CLI flags map one to one onto the top-level fields in kebab case (`--train-fraction 0.1`,
`--batch-size 256`, `--no-pretrained`). Stage fields are set with dotted overrides
`--set stages.0.lr=1e-3` or by stage name `--set stages.head.epochs=3`; any field can be set
this way (`--set early_stopping...` is per stage: `--set stages.finetune.early_stopping.patience=5`).
Values are parsed as YAML scalars (`1e-3`, `true`, `null`, `[224, 224]`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transferlab.choices import (
    AMP_MODES,
    AUGMENTATIONS,
    CACHE_MODES,
    EXTRACT_BACKENDS,
    HEADS,
    IMBALANCE_METHODS,
    LABELS,
    MONITORS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
)
from transferlab.errors import TransferlabError
from transferlab.recipes import CUSTOM, apply_recipe


@dataclass
class EarlyStoppingConfig:
    """Keras `EarlyStopping` semantics for one stage."""

    enabled: bool = False  # stop when `monitor` has not improved for `patience` epochs
    monitor: str = "val_loss"  # val_loss (lower is better) | val_acc1 | val_bal_acc (higher is better)
    min_delta: float = 0.0  # smallest change that counts as an improvement (monitor units)
    patience: int = 3  # epochs without improvement before stopping
    restore_best: bool = True  # on stopping, load the weights of the best epoch (Keras restore_best_weights)


@dataclass
class StageConfig:
    """One training stage: what is trained, with which optimiser and schedule, for how long."""

    name: str = "train"  # unique stage name (metrics, checkpoints, summary["epochs"])
    train: str = "all"  # head | top (the backbone's last resolution up) | all | from:<feature stage name>
    optimizer: str = "rmsprop"  # rmsprop | sgd | adam | adamw
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.0  # SGD / RMSprop momentum
    nesterov: bool = False  # Nesterov momentum (SGD with momentum > 0 only)
    weight_decay: float = 0.0  # L2 (sgd, rmsprop, adam) or decoupled (adamw)
    rho: float = 0.9  # RMSprop squared-gradient decay (Keras rho = torch alpha)
    eps: float = 1e-7  # optimiser epsilon; 1e-7 is the Keras default (torch's is 1e-8)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam / AdamW moment decay rates (beta1, beta2)
    epochs: int = 1  # maximum epochs of this stage
    batch_size: int | None = None  # images per optimiser step (global); None = TrainConfig.batch_size
    schedule: str = "none"  # none | cosine | step | plateau
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr (epochs, stepped per batch)
    min_lr: float = 0.0  # cosine schedule: the learning rate it decays to
    step_epochs: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step / plateau decay factor
    plateau_patience: int = 2  # plateau schedule: epochs without val improvement before decaying
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    augment: str | None = None  # training augmentation of this stage; None = the run's augment
    cache_features: str = "auto"  # auto | true | false: train above a frozen part on cached outputs
    bn_frozen: bool = False  # keep every BatchNorm in inference mode (running statistics fixed; its scale and shift still train)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)  # stop early (fields below)


@dataclass
class TrainConfig:
    """A whole training run: one model on one dataset through a list of stages."""

    run_name: str = ""  # run directory name under out_dir; "" = "<model>-<UTC timestamp>"
    out_dir: str = "runs"  # parent folder of run directories
    dataset: str = "cifar100"  # cifar100 | cifar10 | folder:PATH (directory, .tar(.gz) or .zip of train/ val/ test/ or class folders) | synthetic[:k=v,...]
    data_root: str | None = None  # download and decoded-image cache folder (None = $TRANSFERLAB_DATA, else ~/.cache/transferlab)
    cache_dir: str | None = None  # cached-feature folder (None = <data_root>/features)
    labels: str = "fine"  # CIFAR-100 label set: fine (100 classes) | coarse (20 superclasses)
    image_size: int | None = None  # store images at N x N px (shorter side to N, centre crop); None = native if all share one size, else from the input size
    workers: int = 0  # processes decoding an image folder on a cold cache; 0 = one per usable core
    max_image_pixels: int | None = None  # refuse images with more pixels (width x height; a guard against decompression bombs); None = $TRANSFERLAB_MAX_IMAGE_PIXELS, else 250,000,000
    val_fraction: float = 0.2  # share of train/ held out for validation (early stopping) unless the folder has val/ and test/; 0 = none
    train_fraction: float = 1.0  # share of the remaining training images used (subsampling)
    split_seed: int = 0  # seed of the stratified train / val split
    exclude: str | None = None  # file of images to leave out: an audit.csv (`transferlab data audit`) or one source-relative path per line; the folder itself is never changed
    seed: int = 0  # seed of initialisation, shuffling, augmentation and dropout
    model: str = "benchmark_cnn"  # architecture: a name from `transferlab models`, or timm:<name>
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra create_model arguments (YAML mapping)
    pretrained: bool = False  # load the model's pretrained weights (timm hub, or the file in weights_dir)
    weights: str | None = None  # pretrained weights file (.safetensors, state dict or a run's best.pt); None = none unless pretrained
    weights_dir: str | None = None  # folder searched for the model's weights file by its metadata (implies pretrained on `train`)
    recipe: str = "auto"  # stages when none are given: auto | finetune | head | scratch (auto = finetune with pretrained weights, else scratch)
    head: str = "auto"  # classifier head: auto (the recipe's: linear to fine-tune, else study) | study | linear
    input_size: int | None = None  # model input size (px, square); None = the model's default
    augment: str = "none"  # training augmentation: none | study | standard | strong | photo (stages may override)
    batch_size: int = 128  # default global batch size of every stage (images)
    eval_batch_size: int | None = None  # evaluation / extraction batch (images); None = 2 * batch_size
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    amp: str = "auto"  # auto (bf16 if supported else fp16 on CUDA, off elsewhere) | off | bf16 | fp16
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU and tensor cores)
    compile: bool = False  # torch.compile the trained model (CUDA; slower on CPUs: bench/compile_step.py)
    extract_backend: str = "auto"  # engine of a frozen part (extracted once, or every step with augmentation): auto (ONNX Runtime on the CPU when it pays) | eager | compile | onnxruntime
    cache_memory_gb: float = 4.0  # largest cached activation set held for a freeze boundary (GiB)
    checkpoint_every: int = 0  # also write last.pt every N optimiser steps (0 = at epoch ends only)
    quiet: bool = False  # no progress bars or per-epoch lines (CI, logs)
    imbalance: str = "auto"  # uneven training classes: auto (logit_adjust above imbalance_ratio, else off) | off | logit_adjust | class_weight | balanced_sampler
    imbalance_ratio: float = 2.0  # uneven = largest / smallest training class count above this (auto counters it; best.pt by val balanced accuracy)
    stages: list[StageConfig] = field(default_factory=list)  # run in order; empty = the recipe's

    def stage_batch_size(self, stage: StageConfig) -> int:
        """The global batch size a stage trains with."""
        return stage.batch_size or self.batch_size

    def eval_batch(self) -> int:
        """Batch size for evaluation and feature extraction."""
        return self.eval_batch_size or 2 * self.batch_size


# The named choices of string fields (the command line offers exactly these).
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "labels": LABELS, "recipe": RECIPES, "head": ("auto", *HEADS), "augment": AUGMENTATIONS,
    "amp": AMP_MODES, "extract_backend": EXTRACT_BACKENDS, "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES, "monitor": MONITORS, "cache_features": CACHE_MODES,
    "imbalance": ("auto", *IMBALANCE_METHODS),
}


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in the dataclass source: its meaning, unit and choices.

    The comment beside a field is the one place these are written; `--help` shows it, so the
    help and the config cannot disagree (tests check that every field has one).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    found = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
        if match and match.group(1) in names:
            found[match.group(1)] = match.group(2).strip()
    return found


# --------------------------------------------------------------------------------------------
# dict <-> dataclass


def parse_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load(text)`, or a `TransferlabError` naming `what` and the error's line and column.

    Args:
        text: the YAML text.
        what: the input in words for the message, e.g. "config file run.yaml".
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise TransferlabError(f"{what} is not valid YAML{where}: {detail}. Fix the text there "
                               "(quote strings holding ':' or '#', close brackets and quotes)") from err


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys with a helpful message."""
    if not isinstance(data, dict):
        raise TransferlabError(f"{where}: expected a mapping, got {type(data).__name__}")
    if cls is TrainConfig:
        data = apply_recipe(data)
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TransferlabError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if cls is TrainConfig and key == "stages":
            if not isinstance(value, list) or not value:
                raise TransferlabError(f"{where}.stages: expected a non-empty list of stages")
            value = [_from_dict(StageConfig, s, f"{where}.stages.{i}") for i, s in enumerate(value)]
        elif cls is StageConfig and key == "early_stopping":
            if isinstance(value, bool):
                value = {"enabled": value}
            value = {"enabled": True, **value} if isinstance(value, dict) else value
            value = _from_dict(EarlyStoppingConfig, value, f"{where}.early_stopping")
        elif key == "betas" and isinstance(value, (list, tuple)):
            value = tuple(_coerce(v, float, f"{where}.betas") for v in value)
        else:
            value = _coerce(value, hints[key], f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/CLI value to a field's type (YAML reads 1e-3 as a string, 3 as an int)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is int and isinstance(value, (str, float)) and _is_integral(value):
        return int(float(value))
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint is str and isinstance(value, (str, int, float, bool)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    elif typing.get_origin(hint) in (dict, list) and isinstance(value, typing.get_origin(hint)):
        return value
    else:
        return value if hint is Any else _bad(value, hint, where)
    return _bad(value, hint, where)


def _is_integral(value: str | float) -> bool:
    try:
        return float(value).is_integer()
    except ValueError:
        return False


def _bad(value: Any, hint: Any, where: str) -> Any:
    name = getattr(hint, "__name__", str(hint))
    raise TransferlabError(f"{where}={value!r} must be of type {name}")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a `TrainConfig` from a plain dict (e.g. parsed YAML)."""
    config = _from_dict(TrainConfig, data or {}, "config")
    validate(config)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain-dict form of a config (YAML/JSON safe)."""
    data = dataclasses.asdict(config)
    for stage in data["stages"]:
        stage["betas"] = list(stage["betas"])
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> TrainConfig:
    """Resolve a config: defaults < YAML file < flag overrides < dotted `--set` overrides.

    Args:
        path: YAML file, or None for the defaults.
        overrides: top-level field values (e.g. from CLI flags); None values are ignored.
        sets: dotted assignments such as ``"stages.0.lr=1e-3"`` or ``"stages.head.epochs=3"``.

    Returns:
        The validated config.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TransferlabError(f"config file {path} not found; pass an existing YAML file to --config")
        data = parse_yaml(path.read_text(), f"config file {path}") or {}
        if not isinstance(data, dict):
            raise TransferlabError(f"config file {path} must hold a mapping of fields")
        if data.get("stages") and data.get("recipe") not in (None, "auto", CUSTOM):
            raise TransferlabError(f"config file {path} names both recipe={data['recipe']!r} and "
                                   "stages; keep one (a recipe fills in the stages)")
    if (overrides or {}).get("recipe") not in (None, "auto"):
        # A recipe given as a flag replaces the file's stages (flags beat the file).
        data.pop("stages", None)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    # Normalise into dataclasses first so `--set stages.0...` works on default stages too.
    data = config_to_dict(_from_dict(TrainConfig, data, "config"))
    for assignment in sets or []:
        apply_set(data, assignment)
    return config_from_dict(data)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML atomically."""
    from transferlab.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` assignment to a config dict in place.

    List items are addressed by index (``stages.0``) or, for stages, by name (``stages.head``).
    """
    if "=" not in assignment:
        raise TransferlabError(f"--set {assignment!r}: expected KEY=VALUE, e.g. stages.0.lr=1e-3")
    key, raw = assignment.split("=", 1)
    value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    parts = [p.replace("-", "_") for p in key.strip().split(".")]
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, key)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if part not in node:
                raise TransferlabError(
                    f"--set {key}: unknown key {part!r}; valid keys here are {sorted(node)}"
                )
            if last:
                node[part] = value
            else:
                if node[part] is None:
                    node[part] = {}
                node = node[part]
        else:
            raise TransferlabError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping or list")


def _list_index(items: list[Any], part: str, key: str) -> int:
    if re.fullmatch(r"-?\d+", part):
        index = int(part)
        if -len(items) <= index < len(items):
            return index % len(items)
        raise TransferlabError(f"--set {key}: index {index} out of range (there are {len(items)})")
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if part in names:
        return names.index(part)
    raise TransferlabError(f"--set {key}: no item named {part!r}; names are {names}")


# --------------------------------------------------------------------------------------------
# validation


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise TransferlabError(f"{where}={value!r} is not valid; choose one of {', '.join(choices)}")


def validate(config: TrainConfig) -> None:
    """Check value ranges and choices; raise `TransferlabError` naming the field and the fix."""
    if not 0.0 <= config.val_fraction < 1.0:
        raise TransferlabError(f"val_fraction={config.val_fraction} must be in [0, 1)")
    if not 0.0 < config.train_fraction <= 1.0:
        raise TransferlabError(f"train_fraction={config.train_fraction} must be in (0, 1]")
    if config.batch_size < 1:
        raise TransferlabError(f"batch_size={config.batch_size} must be a positive integer")
    _choice(config.labels, LABELS, "labels")
    _choice(config.augment, AUGMENTATIONS, "augment")
    _choice(config.head, HEADS, "head")
    _choice(config.recipe, (*RECIPES, CUSTOM), "recipe")
    if not config.stages:
        raise TransferlabError("config: stages is empty; name at least one stage or choose a recipe")
    for name in ("input_size", "image_size", "eval_batch_size", "max_image_pixels"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise TransferlabError(f"{name}={value} must be a positive integer, or null for the default")
    _choice(config.amp, AMP_MODES, "amp")
    _choice(config.extract_backend, EXTRACT_BACKENDS, "extract_backend")
    _choice(config.imbalance, FIELD_CHOICES["imbalance"], "imbalance")
    if not config.imbalance_ratio >= 1.0:
        raise TransferlabError(f"imbalance_ratio={config.imbalance_ratio} must be >= 1 (largest / "
                               "smallest class count; 1 counters any difference)")
    if config.workers < 0:
        raise TransferlabError(f"workers={config.workers} must be >= 0 (0 = one per usable core)")
    if config.checkpoint_every < 0:
        raise TransferlabError("checkpoint_every must be >= 0 (0 = only at epoch ends)")
    for name in ("seed", "split_seed"):
        if getattr(config, name) < 0:
            raise TransferlabError(f"{name}={getattr(config, name)} must be >= 0")
    if not isinstance(config.model_kwargs, dict):
        raise TransferlabError("model_kwargs must be a mapping, e.g. {drop_rate: 0.2}")
    names = [s.name for s in config.stages]
    if len(set(names)) != len(names):
        raise TransferlabError(f"stage names must be unique, got {names}")
    for i, s in enumerate(config.stages):
        where = f"stages.{i} ({s.name})"
        if not s.name or not re.fullmatch(r"[A-Za-z0-9_\-]+", s.name):
            raise TransferlabError(f"{where}: name must be letters, digits, '_' or '-'")
        if s.train not in ("head", "top", "all") and not s.train.startswith("from:"):
            raise TransferlabError(
                f"{where}: train={s.train!r}; use 'head', 'top', 'all' or 'from:<feature stage name>'"
            )
        if s.augment is not None:
            _choice(s.augment, AUGMENTATIONS, f"{where}.augment")
        s.optimizer = s.optimizer.lower()
        _choice(s.optimizer, OPTIMIZERS, f"{where}.optimizer")
        _choice(s.schedule, SCHEDULES, f"{where}.schedule")
        s.cache_features = str(s.cache_features).lower()
        _choice(s.cache_features, CACHE_MODES, f"{where}.cache_features")
        _choice(s.early_stopping.monitor, MONITORS, f"{where}.early_stopping.monitor")
        if s.lr <= 0:
            raise TransferlabError(f"{where}: lr={s.lr} must be positive")
        if s.epochs < 0:
            raise TransferlabError(f"{where}: epochs={s.epochs} must be >= 0")
        if s.batch_size is not None and s.batch_size < 1:
            raise TransferlabError(f"{where}: batch_size={s.batch_size} must be positive")
        if not 0.0 <= s.label_smoothing < 1.0:
            raise TransferlabError(f"{where}: label_smoothing must be in [0, 1)")
        if s.nesterov and (s.optimizer != "sgd" or s.momentum <= 0):
            raise TransferlabError(f"{where}: nesterov needs optimizer sgd with momentum > 0")
        if len(s.betas) != 2:
            raise TransferlabError(f"{where}: betas={list(s.betas)} needs two values, e.g. [0.9, 0.999]")
        if s.warmup_epochs < 0:
            raise TransferlabError(f"{where}: warmup_epochs={s.warmup_epochs} must be >= 0 (0 = no warm-up)")
        if not 0.0 <= s.min_lr <= s.lr:
            raise TransferlabError(f"{where}: min_lr={s.min_lr} must be in [0, lr={s.lr}]")
        for name in ("gamma", "rho"):
            if not 0.0 < getattr(s, name) <= 1.0:
                raise TransferlabError(f"{where}: {name}={getattr(s, name)} must be in (0, 1]")
        if s.early_stopping.patience < 0:
            raise TransferlabError(f"{where}: early_stopping.patience must be >= 0")
        if s.step_epochs < 1:
            raise TransferlabError(f"{where}: step_epochs={s.step_epochs} must be >= 1")
        if s.plateau_patience < 0:
            raise TransferlabError(f"{where}: plateau_patience={s.plateau_patience} must be >= 0")
    if config.input_size is not None:
        # Before any data is decoded: a size the model cannot take fails here, not mid-run.
        from transferlab.models.input_size import check_input_size

        check_input_size(config.model, config.input_size, config.model_kwargs)
