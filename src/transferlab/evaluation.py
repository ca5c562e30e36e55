"""Evaluation of a finished run: top-k accuracy, confusion matrix, per-class accuracy, confusions.

Everything here works on test predictions (labels and logits), so it is the same whether the
predictions come from a run's `predictions_test.npz` (fast) or from re-running the best checkpoint.
`evaluate_run` chooses between the two and `write_evaluation` writes the results next to the run:

```
RUN_DIR/evaluation/
  evaluation.json              test_acc1, test_acc5, per-class accuracy, most-confused pairs
  confusion_matrix.csv         rows = true class, columns = predicted class, with class names
  confusion_matrix.png         row-normalised heatmap, class names on both axes
  per_class_accuracy.csv
  confused_pairs.csv
  coarse_confusion_matrix.*    CIFAR-100 only: the same on the 20 superclasses
```
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_text, check_dir_path

PREDICTIONS_FILE = "predictions_test.npz"
EVALUATION_DIR = "evaluation"

# The 20 CIFAR-100 superclasses in label order, each with its 5 fine classes, as published on
# https://www.cs.toronto.edu/~kriz/cifar.html (names as in the dataset's meta file).
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


@dataclass(frozen=True)
class ConfusedPair:
    """One off-diagonal cell of a confusion matrix: `count` images of `true` predicted as `predicted`."""

    true: str
    predicted: str
    count: int
    true_index: int
    predicted_index: int
    fraction_of_true: float  # count / number of test images of the true class


@dataclass
class Evaluation:
    """The evaluation of one set of test predictions."""

    classes: list[str]
    test_acc1: float
    test_acc5: float | None  # None with 5 classes or fewer (top-5 would be 100% by construction)
    confusion: np.ndarray  # int64 (k, k): rows true class, columns predicted class
    per_class_acc: np.ndarray  # float64 (k,): recall of each class (NaN when it has no test image)
    confused_pairs: list[ConfusedPair]
    source: str  # where the predictions came from: the predictions file or the checkpoint
    coarse_classes: list[str] = field(default_factory=list)
    coarse_confusion: np.ndarray | None = None  # CIFAR-100 only: (20, 20)
    coarse_confused_pairs: list[ConfusedPair] = field(default_factory=list)

    def plot_confusion(self, title: str = "", coarse: bool = False) -> Any:
        """The row-normalised confusion matrix as a matplotlib `Figure` (class names on both axes).

        Args:
            title: the figure's title (the top-1 accuracy is added).
            coarse: CIFAR-100's 20 superclasses instead of the fine classes.
        """
        from transferlab.report.figures import confusion_figure

        if coarse and self.coarse_confusion is None:
            raise TransferlabError("this evaluation has no superclasses (CIFAR-100 fine labels only)")
        if coarse:
            return confusion_figure(self.coarse_confusion, self.coarse_classes, title)
        return confusion_figure(self.confusion, self.classes, title)

    def _repr_html_(self) -> str:
        """Accuracy, per-class accuracy and the most-confused pairs as tables (Jupyter)."""
        from html import escape

        def pct(v: float | None) -> str:
            return "-" if v is None or np.isnan(v) else f"{100 * v:.1f}%"

        def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
            head = "".join(f"<th>{escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        top5 = f", top-5 {pct(self.test_acc5)}" if self.test_acc5 is not None else ""
        support = self.confusion.sum(axis=1)
        per_class = [(name, pct(acc), int(n)) for name, acc, n in
                     zip(self.classes, self.per_class_acc, support, strict=True)]
        pairs = [(p.true, p.predicted, p.count, pct(p.fraction_of_true)) for p in self.confused_pairs]
        return (f"<p><b>test top-1 {pct(self.test_acc1)}{top5}</b> ({int(self.confusion.sum()):,} "
                f"images, from {escape(self.source)})</p>"
                + table(("class", "accuracy", "test images"), per_class)
                + ("<p>most-confused pairs</p>" + table(("true", "predicted", "images", "of the true class"), pairs)
                   if pairs else ""))

    def to_dict(self) -> dict:
        """A JSON-ready summary (the full matrices go to CSV files)."""
        out = {
            "source": self.source,
            "num_test_images": int(self.confusion.sum()),
            "test_acc1": self.test_acc1,
            "test_acc5": self.test_acc5,
            "per_class_acc": {
                name: (None if np.isnan(acc) else float(acc))
                for name, acc in zip(self.classes, self.per_class_acc, strict=True)
            },
            "confused_pairs": [asdict(p) for p in self.confused_pairs],
        }
        if self.coarse_confusion is not None:
            out["coarse_acc1"] = float(np.trace(self.coarse_confusion) / self.coarse_confusion.sum())
            out["coarse_confused_pairs"] = [asdict(p) for p in self.coarse_confused_pairs]
        return out


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true label is among the k highest logits.

    With fewer than k classes every prediction counts as correct, as in torchvision's references.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise TransferlabError(
            f"logits of shape {logits.shape} do not match {labels.shape[0]} labels; "
            "expected logits (N, classes) for N labels"
        )
    if len(labels) == 0:
        raise TransferlabError("no test predictions to evaluate; the test split is empty")
    k = min(k, logits.shape[1])
    # argpartition is O(N k) instead of a full sort of every row.
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs: rows are true classes, columns predicted classes."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise TransferlabError(
                f"{name} hold class indices outside 0..{num_classes - 1}; "
                "check that the class list matches the predictions"
            )
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class (diagonal over row sum); NaN for a class with no test image."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / support, np.nan)


def most_confused_pairs(
    confusion: np.ndarray, classes: Sequence[str], n: int = 10, min_count: int = 1
) -> list[ConfusedPair]:
    """The `n` largest off-diagonal cells, largest first (ties: lower true, then predicted, index)."""
    off = confusion.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off >= min_count)
    counts = off[true_idx, pred_idx]
    order = np.lexsort((pred_idx, true_idx, -counts))[:n]
    support = confusion.sum(axis=1)
    return [
        ConfusedPair(
            true=classes[t],
            predicted=classes[p],
            count=int(off[t, p]),
            true_index=int(t),
            predicted_index=int(p),
            fraction_of_true=float(off[t, p] / support[t]),
        )
        for t, p in zip(true_idx[order], pred_idx[order], strict=True)
    ]


def cifar100_coarse_map(classes: Sequence[str]) -> tuple[list[str], np.ndarray] | None:
    """Superclass names and the fine -> coarse index map, if `classes` are CIFAR-100's fine classes."""
    coarse_names = list(CIFAR100_SUPERCLASSES)
    fine_to_coarse = {
        fine: i for i, members in enumerate(CIFAR100_SUPERCLASSES.values()) for fine in members
    }
    if len(classes) != len(fine_to_coarse) or set(classes) != set(fine_to_coarse):
        return None
    return coarse_names, np.array([fine_to_coarse[c] for c in classes], dtype=np.int64)


def coarse_confusion_matrix(confusion: np.ndarray, fine_to_coarse: np.ndarray) -> np.ndarray:
    """Sum a fine confusion matrix into superclass blocks."""
    k = int(fine_to_coarse.max()) + 1
    onehot = np.zeros((len(fine_to_coarse), k), dtype=np.int64)
    onehot[np.arange(len(fine_to_coarse)), fine_to_coarse] = 1
    return onehot.T @ confusion @ onehot


def evaluate_predictions(
    labels: np.ndarray,
    logits: np.ndarray,
    classes: Sequence[str],
    num_pairs: int = 20,
    source: str = "predictions",
) -> Evaluation:
    """Evaluate test predictions: top-1/top-5, confusion matrix, per-class accuracy, confusions."""
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    classes = [str(c) for c in classes]
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise TransferlabError(
            f"logits have shape {logits.shape} but there are {len(classes)} classes; "
            "the predictions and the class list must come from the same run"
        )
    cm = confusion_matrix(labels, logits.argmax(axis=1), len(classes))
    result = Evaluation(
        classes=classes,
        test_acc1=topk_accuracy(logits, labels, 1),
        test_acc5=topk_accuracy(logits, labels, 5) if len(classes) > 5 else None,
        confusion=cm,
        per_class_acc=per_class_accuracy(cm),
        confused_pairs=most_confused_pairs(cm, classes, num_pairs),
        source=source,
    )
    coarse = cifar100_coarse_map(classes)
    if coarse is not None:
        coarse_names, fine_to_coarse = coarse
        result.coarse_classes = coarse_names
        result.coarse_confusion = coarse_confusion_matrix(cm, fine_to_coarse)
        result.coarse_confused_pairs = most_confused_pairs(
            result.coarse_confusion, coarse_names, num_pairs
        )
    return result


def load_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, logits and class names from `RUN_DIR/predictions_test.npz`."""
    path = Path(run_dir) / PREDICTIONS_FILE
    with np.load(path, allow_pickle=False) as npz:
        missing = {"labels", "logits", "classes"} - set(npz.files)
        if missing:
            raise TransferlabError(
                f"{path} lacks {sorted(missing)}; it should hold labels, logits and classes "
                "(re-run `transferlab train` or delete the file to predict from best.pt)"
            )
        return npz["labels"], npz["logits"], [str(c) for c in npz["classes"]]


def predict_from_checkpoint(
    run_dir: Path, device: str | None = None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rebuild the best model of a run from `best.pt` and predict the dataset's test split.

    The dataset comes from the run's `config.yaml` and the preprocessing (input size, resize,
    normalisation) from the model's `pretrained_cfg` through `data.preprocess.batch_transform`,
    as in training, so the predictions match those the run made.
    """
    import torch
    import yaml

    from transferlab.data import load_dataset
    from transferlab.data.preprocess import batch_transform
    from transferlab.models import load_checkpoint_model
    from transferlab.training.prepare import run_stored_size

    run_dir = Path(run_dir)
    checkpoint, config_file = run_dir / "best.pt", run_dir / "config.yaml"
    if not checkpoint.is_file() or not config_file.is_file():
        raise TransferlabError(
            f"{run_dir} has neither {PREDICTIONS_FILE} nor best.pt with config.yaml; "
            "point `transferlab evaluate` at a run directory written by `transferlab train`"
        )
    from transferlab.training.device import select_device

    dev = select_device(device or "auto")
    model = load_checkpoint_model(checkpoint, map_location=dev).eval().to(dev)
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    dataset = load_dataset(
        config["dataset"],
        data_root=config.get("data_root"),
        image_size=config.get("image_size"),
        labels=config.get("labels") or "fine",
        target_size=run_stored_size(config),
    )
    # The run's own test-pass transform, from the preprocessing best.pt records.
    transform = batch_transform(model.pretrained_cfg, native_size=dataset.image_size).to(dev).eval()
    test = dataset["test"]
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(test.labels), batch_size):
            images = torch.from_numpy(test.images[start : start + batch_size]).to(dev)
            chunks.append(model(transform(images)).float().cpu().numpy())
    return test.labels, np.concatenate(chunks), list(dataset.classes)


def evaluate_run(run_dir: Path, device: str | None = None, num_pairs: int = 20) -> Evaluation:
    """Evaluate a run directory from its saved test predictions, else from its best checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TransferlabError(f"run directory {run_dir} does not exist; check the path")
    if (run_dir / PREDICTIONS_FILE).is_file():
        labels, logits, classes = load_predictions(run_dir)
        source = PREDICTIONS_FILE
    else:
        labels, logits, classes = predict_from_checkpoint(run_dir, device=device)
        source = "best.pt"
    return evaluate_predictions(labels, logits, classes, num_pairs=num_pairs, source=source)


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    """Rows as CSV text."""
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _matrix_csv(confusion: np.ndarray, classes: Sequence[str]) -> str:
    """A confusion matrix as CSV: header of predicted classes, one row per true class."""
    rows: list[list[object]] = [["true\\predicted", *classes]]
    rows += [[name, *map(int, row)] for name, row in zip(classes, confusion, strict=True)]
    return _csv_text(rows)


def _pairs_csv(pairs: Sequence[ConfusedPair]) -> str:
    """Most-confused pairs as CSV."""
    rows: list[list[object]] = [["true", "predicted", "count", "fraction_of_true"]]
    rows += [[p.true, p.predicted, p.count, f"{p.fraction_of_true:.4f}"] for p in pairs]
    return _csv_text(rows)


def write_evaluation(result: Evaluation, out_dir: Path, title: str = "", figures: bool = True) -> Path:
    """Write the evaluation's JSON, CSV files and (optionally) confusion-matrix heatmaps."""
    out_dir = check_dir_path(out_dir, "evaluation folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "evaluation.json", json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(out_dir / "confusion_matrix.csv", _matrix_csv(result.confusion, result.classes))
    per_class = [["class", "accuracy", "test_images"]] + [
        [name, "" if np.isnan(acc) else f"{acc:.4f}", int(n)]
        for name, acc, n in zip(
            result.classes, result.per_class_acc, result.confusion.sum(axis=1), strict=True
        )
    ]
    atomic_write_text(out_dir / "per_class_accuracy.csv", _csv_text(per_class))
    atomic_write_text(out_dir / "confused_pairs.csv", _pairs_csv(result.confused_pairs))
    if result.coarse_confusion is not None:
        atomic_write_text(
            out_dir / "coarse_confusion_matrix.csv",
            _matrix_csv(result.coarse_confusion, result.coarse_classes),
        )
        atomic_write_text(
            out_dir / "coarse_confused_pairs.csv", _pairs_csv(result.coarse_confused_pairs)
        )
    if figures:
        # Imported here so that the numeric part of evaluation never needs matplotlib.
        from transferlab.report.figures import plot_confusion_matrix

        plot_confusion_matrix(
            result.confusion, result.classes, out_dir / "confusion_matrix.png", title=title
        )
        if result.coarse_confusion is not None:
            plot_confusion_matrix(
                result.coarse_confusion,
                result.coarse_classes,
                out_dir / "coarse_confusion_matrix.png",
                title=f"{title} (20 superclasses)".strip(),
            )
    return out_dir
