"""`tl.Run(path)`: a run directory written by training, and what can be done with it.

A `Run` reads the files the run left (`summary.json`, `config.yaml`, `best.pt`,
`predictions_test.npz`, `split_files.json`); every method is the library function the matching
command runs (`evaluate`, `export`, `predict`, `train --resume`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transferlab.api import html
from transferlab.api.predictions import Predictions
from transferlab.errors import TransferlabError
from transferlab.runfiles import BEST, CONFIG, PREDICTIONS, SPLIT_FILES, SUMMARY, is_finished


class Run:
    """A finished (or interrupted) run directory.

    Attributes:
        path: the run directory.
        finished: whether the run completed (its summary.json exists).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise TransferlabError(f"run directory {self.path} does not exist; check the path")
        if not any((self.path / name).is_file() for name in (CONFIG, SUMMARY, PREDICTIONS, BEST)):
            raise TransferlabError(f"{self.path} is not a run directory (no {CONFIG}); pass a folder "
                                   "written by training (tl.train or `transferlab train`)")

    @property
    def finished(self) -> bool:
        """Whether the run completed (summary.json is written last)."""
        return is_finished(self.path)

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: test accuracy, times, epochs per stage, versions ({} while unfinished)."""
        if not self.finished:
            return {}
        return json.loads((self.path / SUMMARY).read_text(encoding="utf-8"))

    @property
    def config(self) -> Any:
        """The resolved `TrainConfig` the run trained with (config.yaml)."""
        import yaml

        from transferlab.config import config_from_dict

        if not (self.path / CONFIG).is_file():
            raise TransferlabError(f"{self.path} has no {CONFIG}; its settings are unknown")
        return config_from_dict(yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8")))

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        if self.summary.get("classes"):
            return list(self.summary["classes"])
        if (self.path / PREDICTIONS).is_file():
            from transferlab.evaluation import load_predictions

            return load_predictions(self.path)[2]
        return self.load().classes

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One row per epoch (metrics.csv): stage, epoch, losses, accuracies, lr, times."""
        from transferlab.results.runs import read_metrics

        return read_metrics(self.path)

    def plot_curves(self) -> Any:
        """Loss and top-1 accuracy per epoch, train and validation, stages marked (a matplotlib
        `Figure`; the report draws the same)."""
        from transferlab.evaluation.figures import learning_curves_figure

        rows = self.metrics
        if not rows:
            raise TransferlabError(f"{self.path} has no metrics.csv yet: no epoch has finished")
        return learning_curves_figure(rows, title=self.path.name)

    def _finished_or_error(self, what: str) -> None:
        if not self.finished:
            raise TransferlabError(f"{self.path} is not finished (no {SUMMARY}), so it cannot be "
                                   f"{what}; continue it with Run(path).resume()")

    def evaluate(self, device: str | None = None, pairs: int = 20, gallery: bool = False,
                 heatmaps: bool = True) -> Any:
        """Top-1/top-5, balanced accuracy, macro-F1, per-class precision/recall/F1, calibration,
        the confusion matrix and the most-confused pairs; on request the error gallery.

        From the run's own test predictions (predictions_test.npz), else by predicting the
        test split with best.pt. The calibration uses the temperature the run fitted.

        Args:
            device: for predicting with best.pt: auto (default), cpu, cuda, ...
            pairs: how many most-confused pairs to list.
            gallery: also choose the test photos the model gets most wrong (loads best.pt and
                the run's dataset).
            heatmaps: draw Grad-CAM heatmaps over the gallery (needs captum).

        Returns:
            An `Evaluation` (`plot_confusion()` draws it; `write_evaluation` saves it).
        """
        from transferlab.evaluation import evaluate_run

        return evaluate_run(self.path, device=device, num_pairs=pairs, gallery=gallery,
                            heatmaps=heatmaps)

    def export(self, format: str = "onnx", path: str | os.PathLike[str] | None = None,
               opset: int | None = None) -> Path:
        """Write the trained model to ship: onnx, torchscript or safetensors.

        The ONNX and TorchScript files are checked against PyTorch before they are written.

        Args:
            format: onnx | torchscript | safetensors.
            path: the file (default RUN_DIR/model.onnx, model.torchscript.pt, model.safetensors).
            opset: ONNX opset (onnx only; default the exporter's).

        Returns:
            The file written; `tl.load(it)` loads it back.
        """
        from transferlab.export import export_run

        return export_run(self._best(), format, out=path, opset=opset).path

    def load(self, device: str | None = None) -> Any:
        """The run's best model as a `Classifier` (`tl.load(run.path)`)."""
        from transferlab.api.classifier import load

        return load(self._best(), device=device)

    def predict(self, images: Any, top: int = 5, batch_size: int = 32,
                min_confidence: float | None = None) -> Predictions:
        """The top classes of each image with the run's best model (see `Classifier.predict`)."""
        return self.load().predict(images, top=top, batch_size=batch_size, min_confidence=min_confidence)

    def mistakes(self, limit: int | None = 24) -> Predictions:
        """The test images the run got wrong, most confident first, with their true class.

        From the run's own test predictions; each shows its image (from the decoded dataset
        cache) in a notebook.

        Args:
            limit: at most this many (None: all).
        """
        import numpy as np
        from PIL import Image

        from transferlab.api.predictions import Prediction
        from transferlab.evaluation import load_predictions

        self._finished_or_error("inspected")
        if not (self.path / PREDICTIONS).is_file():
            raise TransferlabError(f"{self.path} has no {PREDICTIONS} (the run had no best "
                                   "checkpoint, so no test pass); nothing to inspect")
        labels, logits, classes = load_predictions(self.path)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        predicted = probs.argmax(axis=1)
        wrong = np.flatnonzero(predicted != labels)
        wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:limit]
        images = self._test_images()
        files = self._test_files()
        k = min(5, len(classes))
        out = Predictions()
        for i in wrong:
            order = np.argsort(-probs[i], kind="stable")[:k]
            out.append(Prediction(
                source=files[i] if files else f"test[{i}]",
                top=[(classes[j], round(float(probs[i, j]), 6)) for j in order],
                indices=[int(j) for j in order], true=classes[int(labels[i])],
                image=Image.fromarray(np.asarray(images[i])) if images is not None else None))
        return out

    def _test_images(self) -> Any:
        """The test split's stored images as the run saw them (decoded cache), or None."""
        from transferlab.data import load_dataset
        from transferlab.training.prepare import stored_size

        c = self.config
        try:
            ds = load_dataset(c.dataset, data_root=c.data_root, image_size=c.image_size,
                              labels=c.labels, workers=c.workers, target_size=stored_size(c))
        except TransferlabError:
            return None  # the source moved: the mistakes are listed without pictures
        return ds["test"].images

    def _test_files(self) -> list[str] | None:
        path = self.path / SPLIT_FILES
        return json.loads(path.read_text(encoding="utf-8")).get("test") if path.is_file() else None

    def resume(self, **runtime: Any) -> Run:
        """Continue an interrupted run from its last.pt, with its saved config.

        Args:
            **runtime: fields that change nothing in the results (quiet, device,
                extract_backend, checkpoint_every, cache_dir, workers).

        Returns:
            This run, finished.
        """
        from transferlab.training import resume_run

        return Run(resume_run(self.path, **runtime))

    def _best(self) -> Path:
        best = self.path / BEST
        if not best.is_file():
            raise TransferlabError(f"{self.path} has no {BEST} yet (training writes it when its "
                                   "first stage ends); continue the run with Run(path).resume()")
        return best

    def __repr__(self) -> str:
        s = self.summary
        if not s:
            return f"Run({str(self.path)!r}, unfinished)"
        return (f"Run({str(self.path)!r}: {s.get('model')}, test acc1 {html.percent(s.get('test_acc1'))}, "
                f"{s.get('wall_time_s', 0):.0f} s)")

    def _repr_html_(self) -> str:
        s = self.summary
        if not s:
            return html.title(f"Run {self.path} (unfinished: resume it)")
        rows = [("directory", self.path), ("model", s.get("model")), ("dataset", s.get("dataset")),
                ("recipe", s.get("recipe")),
                ("test top-1", html.percent(s.get("test_acc1"))),
                ("test top-5", html.percent(s.get("test_acc5"))),
                ("best val top-1", html.percent(s.get("best_val_acc1"))),
                ("epochs", ", ".join(f"{k} {v}" for k, v in (s.get("epochs") or {}).items())),
                ("s / epoch", f"{s.get('epoch_time_s') or 0:.2f}"),
                ("wall time", f"{s.get('wall_time_s') or 0:.0f} s"),
                ("input size", s.get("input_size"))]
        return html.title(f"Run {s.get('run_name', self.path.name)}") + html.table(rows)
