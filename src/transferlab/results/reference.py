"""Published numbers the report compares against, kept in one place with their sources.

Accuracies are fractions of the test set; times are seconds per training epoch on the hardware
named in `setting`. These are quoted results, never measured by transferlab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceResult:
    """One published result."""

    model: str  # transferlab registry name it corresponds to
    label: str  # how the source describes the model
    test_acc1: float  # fraction
    epoch_time_s: float | None  # seconds per epoch, None when the source gives none


# The 2018 study that transferlab reruns (Keras on one NVIDIA K80, CIFAR-100 at 224 px,
# 50% of the training data, no augmentation). Its report is a hand-written document around three
# training runs; the numbers below are its comparison table.
STUDY_2018_SOURCE = (
    "the 2018 transfer-learning study (Keras on one NVIDIA K80 GPU, CIFAR-100, "
    "50% of the training data, 224 px inputs, no augmentation)"
)
# The study's results table: Benchmark CNN 15.3% / 40 s, InceptionV3 49.54% / 217 s, MobileNetV2
# 50.49% / 360 s. Its optimiser tables agree: InceptionV3's SGD 1e-4 fine-tuning "raised from 46.01%
# to 49.54%", MobileNetV2's Adam default 50.49%. (tests/test_reference.py pins the three pairs.)
STUDY_2018: tuple[ReferenceResult, ...] = (
    ReferenceResult("benchmark_cnn", "Benchmark CNN (17,044 parameters)", 0.153, 40.0),
    ReferenceResult("inception_v3", "InceptionV3, ImageNet-pretrained, fine-tuned", 0.4954, 217.0),
    ReferenceResult("mobilenet_v2", "MobileNetV2, from scratch", 0.5049, 360.0),
)

# CIFAR-10's class names in label order: a folder with exactly these classes (the offline
# image-folder copy that configs/quick.yaml runs on) stands in for the study's CIFAR data.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
_CIFAR_SPECS = ("cifar100", "cifar10")


def is_study_data(dataset: str | None, classes: Sequence[str] | None = None) -> bool:
    """Whether a run's data is the study's kind: CIFAR-100 or CIFAR-10, official or the folder copy.

    Only such runs are set beside the 2018 numbers: a run on a user's own photos has no 2018
    counterpart, whatever its model.
    """
    spec = (dataset or "").strip().lower()
    if spec.split(":")[0].split("[")[0] in _CIFAR_SPECS:
        return True
    return classes is not None and tuple(classes) == CIFAR10_CLASSES

# Published CIFAR-100 results that configs/best.yaml is designed to beat.
PUBLISHED_CIFAR100_SOURCES = {
    "sfda": (
        "Shao et al., Not All Models Are Equal: Predicting Model Transferability in a "
        "Self-challenging Fisher Space, ECCV 2022 (SFDA), fine-tuning benchmark"
    ),
    "chenyaofo": "chenyaofo/pytorch-cifar-models, cifar100_mobilenetv2_x1_4 (from scratch)",
}
PUBLISHED_CIFAR100: tuple[tuple[str, ReferenceResult], ...] = (
    ("sfda", ReferenceResult("inception_v3", "InceptionV3, ImageNet-pretrained, fine-tuned",
                             0.815, None)),
    ("sfda", ReferenceResult("mobilenet_v2", "MobileNetV2, ImageNet-pretrained, fine-tuned",
                             0.781, None)),
    ("chenyaofo", ReferenceResult("mobilenet_v2", "CIFAR MobileNetV2 x1.4, from scratch",
                                  0.742, None)),
)


def study_2018_for(model: str, pretrained: bool) -> ReferenceResult | None:
    """The 2018 result matching a run's model and regime, if the study had one like it.

    The study trained MobileNetV2 only from scratch (`mobilenet_v2_paper`, or `mobilenet_v2`
    without pretrained weights) and InceptionV3 only pretrained, so a pretrained MobileNetV2 or
    a from-scratch InceptionV3 has no 2018 counterpart.
    """
    by_model = {ref.model: ref for ref in STUDY_2018}
    if model == "benchmark_cnn":
        return by_model["benchmark_cnn"]
    if model in ("mobilenet_v2_paper", "mobilenet_v2") and not pretrained:
        return by_model["mobilenet_v2"]
    if model == "inception_v3" and pretrained:
        return by_model["inception_v3"]
    return None
