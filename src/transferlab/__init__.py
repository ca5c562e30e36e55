"""transferlab: image classification by transfer learning.

Reruns (and improves on) a 2018 study that fine-tuned an ImageNet-pretrained InceptionV3 on
CIFAR-100, trained MobileNetV2 from scratch and compared both with a 17,044-parameter CNN.

From Python::

    import transferlab as tl

    run = tl.train("PHOTOS/", model="mobilenet_v2", weights="mobilenetv2.safetensors")
    run.evaluate()                       # accuracy, confusion matrix, most-confused pairs
    onnx = run.export("onnx")            # RUN_DIR/model.onnx
    tl.load(onnx).predict("NEW_PHOTOS/") # one Prediction per image

Importing the package is cheap: the public names below load their modules (and torch) on
first use, so `transferlab --help` and `import transferlab` start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transferlab._version import __version__
from transferlab.threads import configure_threads as _configure_threads

# Before anything imports torch: libgomp reads its wait policy once, when it loads, and its
# default spin-waiting collapses training on a shared CPU (transferlab/threads.py).
_configure_threads()

if TYPE_CHECKING:  # the names a type checker and an IDE see; loaded lazily at run time
    from transferlab.api import (
        Classifier,
        DatasetInfo,
        Evaluation,
        Prediction,
        Predictions,
        Run,
        audit_data,
        compare_models,
        data_info,
        load,
        rank,
        train,
    )
    from transferlab.errors import TransferlabError

# Public name -> the module that defines it.
_LAZY = {
    "train": "transferlab.api",
    "load": "transferlab.api",
    "Run": "transferlab.api",
    "Classifier": "transferlab.api",
    "Prediction": "transferlab.api",
    "Predictions": "transferlab.api",
    "Evaluation": "transferlab.api",
    "DatasetInfo": "transferlab.api",
    "rank": "transferlab.api",
    "audit_data": "transferlab.api",
    "compare_models": "transferlab.api",
    "data_info": "transferlab.api",
    "TransferlabError": "transferlab.errors",
}

__all__ = ["Classifier", "DatasetInfo", "Evaluation", "Prediction", "Predictions", "Run",
           "TransferlabError", "__version__", "audit_data", "compare_models", "data_info", "load", "rank", "train"]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562), so importing transferlab stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
