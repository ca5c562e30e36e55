"""The settings the benchmark runs at: the study's and the quick preset's, read from configs/.

A preset is a compare config (`configs/study.yaml`, `configs/quick.yaml`: `shared` settings plus
one entry per model). For each of the study's three models the benchmark takes the entry's input
size, batch size, model options and the stage that trains through the backbone; for InceptionV3
also its head stage, and for the pretrained backbones the evaluation batch of feature extraction.
A model a preset does not list falls back to the defaults below, and every row of RESULTS.md says
which file (or "bench default") its settings came from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tl_workloads import Workload

from transferlab.compare import load_compare_config
from transferlab.config import StageConfig, TrainConfig, config_from_dict
from transferlab.errors import TransferlabError

MODELS = ("benchmark_cnn", "mobilenet_v2_paper", "inception_v3")
BACKBONES = ("inception_v3", "mobilenet_v2")  # the pretrained backbones features are extracted from
PRESETS = ("study", "quick")
# The study fed every model 224 px images (CIFAR upscaled) in Keras' default batch of 32.
STUDY_INPUT = 224
KERAS_RMSPROP = StageConfig(name="head", train="head", optimizer="rmsprop", lr=1e-3, rho=0.9, eps=1e-7)
STUDY_FINETUNE = StageConfig(name="finetune", train="from:Mixed_7b", optimizer="sgd", lr=1e-4, momentum=0.9)

FALLBACKS: dict[str, dict[str, Workload]] = {
    "study": {
        "benchmark_cnn": Workload("benchmark_cnn", STUDY_INPUT, 32, optimizer=KERAS_RMSPROP),
        "mobilenet_v2_paper": Workload("mobilenet_v2_paper", STUDY_INPUT, 32,
                                       optimizer=StageConfig(optimizer="adam")),
        "inception_v3": Workload("inception_v3", STUDY_INPUT, 32, train="from:Mixed_7b",
                                 optimizer=STUDY_FINETUNE),
        "mobilenet_v2": Workload("mobilenet_v2", STUDY_INPUT, 32, train="head", optimizer=KERAS_RMSPROP),
    },
    "quick": {
        "benchmark_cnn": Workload("benchmark_cnn", 32, 128, optimizer=StageConfig(optimizer="adam")),
        "mobilenet_v2_paper": Workload("mobilenet_v2_paper", 32, 128, optimizer=StageConfig(optimizer="adam"),
                                       model_kwargs={"width_mult": 0.5, "cifar_stem": True}),
        "inception_v3": Workload("inception_v3", 75, 128, train="from:Mixed_7b", optimizer=STUDY_FINETUNE),
        "mobilenet_v2": Workload("mobilenet_v2", 96, 128, train="head", optimizer=KERAS_RMSPROP),
    },
}


@dataclasses.dataclass
class Preset:
    """Everything the benchmark runs for one preset.

    Attributes:
        name: "study" or "quick".
        train: (workload, source) per model of MODELS: the training-throughput rows.
        head: InceptionV3's head stage (backbone frozen) and its source.
        extract: (workload, source) per backbone of BACKBONES; `batch` is the extraction batch.
    """

    name: str
    train: list[tuple[Workload, str]]
    head: tuple[Workload, str]
    extract: list[tuple[Workload, str]]


def _workload(config: TrainConfig, stage: StageConfig, preset: str) -> Workload:
    fallback = FALLBACKS[preset].get(config.model)
    size = config.input_size or (fallback.input_size if fallback else STUDY_INPUT)
    return Workload(model=config.model, input_size=size, batch=config.stage_batch_size(stage),
                    train=stage.train, optimizer=stage, augment=config.augment,
                    model_kwargs=dict(config.model_kwargs))


def _through_backbone(config: TrainConfig) -> StageConfig | None:
    """The last stage that trains more than the head (what a training step costs), if any."""
    return next((s for s in reversed(config.stages) if s.train != "head"), None)


def load_preset_configs(preset: str, configs_dir: Path) -> tuple[dict[str, TrainConfig], str]:
    """The preset's resolved train configs by model name (first entry wins), and the file name."""
    path = configs_dir / f"{preset}.yaml"
    if not path.is_file():
        return {}, "bench default"
    compare = load_compare_config(path)
    configs: dict[str, TrainConfig] = {}
    for entry in compare.entries:
        try:
            config = config_from_dict(entry.config)
        except TransferlabError as err:
            raise TransferlabError(f"{path}: model {entry.name!r}: {err}") from err
        configs.setdefault(config.model, config)
    return configs, path.name


def resolve(preset: str, configs_dir: Path) -> Preset:
    """The workloads of a preset from configs/<preset>.yaml, with per-model fallbacks."""
    configs, source = load_preset_configs(preset, configs_dir)
    fallback = FALLBACKS[preset]

    def pick(model: str) -> tuple[TrainConfig | None, str]:
        return (configs[model], source) if model in configs else (None, "bench default")

    train = []
    for model in MODELS:
        config, src = pick(model)
        stage = _through_backbone(config) if config else None
        if config is None:
            train.append((dataclasses.replace(fallback[model]), src))
        elif stage is None:
            # The preset trains only the head here (on cached features); a training step that goes
            # through the backbone is the study's fine-tuning stage at the preset's size and batch.
            work = _workload(config, STUDY_FINETUNE, preset)
            train.append((dataclasses.replace(work, batch=config.batch_size, augment=config.augment),
                          f"{src} + study fine-tune stage"))
        else:
            train.append((_workload(config, stage, preset), src))

    config, head_src = pick("inception_v3")
    if config is None:
        head = dataclasses.replace(fallback["inception_v3"], train="head", optimizer=KERAS_RMSPROP)
    else:
        stage = next((s for s in config.stages if s.train == "head"), KERAS_RMSPROP)
        head = _workload(config, stage, preset)
        head = dataclasses.replace(head, train="head", batch=config.stage_batch_size(stage))
    head = dataclasses.replace(head, augment="none")

    extract = []
    for backbone in BACKBONES:
        config, src = pick(backbone)
        if config is None:
            work = fallback[backbone]
            extract.append((dataclasses.replace(work, train="head", batch=2 * work.batch), src))
        else:
            work = _workload(config, config.stages[0], preset)
            extract.append((dataclasses.replace(work, train="head", batch=config.eval_batch()), src))
    return Preset(preset, train, (head, head_src), extract)
