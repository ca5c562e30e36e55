"""Models: one registry, one contract (see docs/ARCHITECTURE.md, "Models").

Importing this package registers every built-in architecture.
"""

from transferlab.models import benchmark_cnn as _benchmark_cnn  # noqa: F401 - registers
from transferlab.models import mobilenet_v2 as _mobilenet_v2  # noqa: F401 - registers
from transferlab.models import timm_backbones as _timm_backbones  # noqa: F401 - registers
from transferlab.models.base import ClassifierHead, PreprocessConfig, TransferModel
from transferlab.models.checkpoint import (
    CHECKPOINT_KEYS,
    load_checkpoint_model,
    model_from_checkpoint,
)
from transferlab.models.factory import ModelInfo, create_model, get_model_info
from transferlab.models.freezing import FreezeReport, count_parameters, freeze
from transferlab.models.heads import HEADS
from transferlab.models.registry import ModelEntry, get_model_entry, list_models, register_model
from transferlab.models.weights import (
    WeightsFile,
    find_weights,
    load_weights,
    read_weights,
    save_weights,
)

__all__ = [
    "CHECKPOINT_KEYS",
    "HEADS",
    "ClassifierHead",
    "FreezeReport",
    "ModelEntry",
    "ModelInfo",
    "PreprocessConfig",
    "TransferModel",
    "WeightsFile",
    "count_parameters",
    "create_model",
    "find_weights",
    "freeze",
    "get_model_entry",
    "get_model_info",
    "list_models",
    "load_checkpoint_model",
    "load_weights",
    "model_from_checkpoint",
    "read_weights",
    "register_model",
    "save_weights",
]
