"""The Python API: `import transferlab as tl` (the package re-exports these names lazily).

Few objects, each answering the same verbs:

- `train(dataset, ...) -> Run`, `Run(path)`: a run directory; `.summary`, `.config`,
  `.classes`, `.evaluate()`, `.export()`, `.predict()`, `.mistakes()`, `.resume()`;
- `load(path) -> Classifier`: a model from a run directory, best.pt or an exported file;
  `.predict(images) -> Predictions` (one `Prediction` per image);
- `Evaluation`: accuracies, confusion matrix and most-confused pairs; `.plot_confusion()`;
- `data_info`, `audit_data`, `rank`, `compare_models`: the `data info`, `data audit`, `rank` and
  `compare` commands.

Every command of the command line is a shell over these; messages go through the
"transferlab" logger (`transferlab.logs`).
"""

from __future__ import annotations

from transferlab.api.classifier import Classifier, load
from transferlab.api.predictions import Prediction, Predictions
from transferlab.api.run import Run
from transferlab.api.study import DatasetInfo, audit_data, compare_models, data_info, rank
from transferlab.api.training import train, training_config
from transferlab.evaluation import Evaluation

__all__ = ["Classifier", "DatasetInfo", "Evaluation", "Prediction", "Predictions", "Run", "audit_data",
           "compare_models", "data_info", "load", "rank", "train", "training_config"]
