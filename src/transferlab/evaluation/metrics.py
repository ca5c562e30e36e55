"""The numbers of an evaluation: top-k accuracy, confusion matrix, per-class scores, confusions,
and calibration.

Everything here works on test predictions (labels and logits), so it is the same whether the
predictions come from a run's `predictions_test.npz` (fast) or from re-running the best checkpoint.
`evaluate_run` chooses between the two; `evaluation.write` writes the files (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import TransferlabError
from transferlab.evaluation.calibration import Calibration, calibrate
from transferlab.metrics import ClassScores, class_scores

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
    scores: ClassScores | None = None  # per-class precision, recall, F1, support
    calibration: Calibration | None = None
    labels: np.ndarray | None = None  # (N,) the test labels the numbers come from
    logits: np.ndarray | None = None  # (N, k) float32
    gallery: Any = None  # evaluation.gallery.Gallery when asked for (needs the run's best.pt)
    coarse_classes: list[str] = field(default_factory=list)
    coarse_confusion: np.ndarray | None = None  # CIFAR-100 only: (20, 20)
    coarse_confused_pairs: list[ConfusedPair] = field(default_factory=list)

    @property
    def test_bal_acc(self) -> float | None:
        """Balanced accuracy: the mean per-class recall."""
        return self.scores.balanced_accuracy if self.scores is not None else None

    @property
    def test_macro_f1(self) -> float | None:
        """Macro-F1: the mean per-class F1."""
        return self.scores.macro_f1 if self.scores is not None else None

    def per_class_rows(self) -> list[dict[str, object]]:
        """One dict per class: precision, recall, F1 (None where undefined) and support."""
        if self.scores is None:
            return []
        s = self.scores
        return [{"class": name, "precision": _num(s.precision[i]), "recall": _num(s.recall[i]),
                 "f1": _num(s.f1[i]), "support": int(s.support[i])}
                for i, name in enumerate(self.classes)]

    def plot_confusion(self, title: str = "", coarse: bool = False) -> Any:
        """The row-normalised confusion matrix as a matplotlib `Figure` (class names on both axes).

        Args:
            title: the figure's title (the top-1 accuracy is added).
            coarse: CIFAR-100's 20 superclasses instead of the fine classes.
        """
        from transferlab.evaluation.figures import confusion_figure

        if coarse and self.coarse_confusion is None:
            raise TransferlabError("this evaluation has no superclasses (CIFAR-100 fine labels only)")
        if coarse:
            return confusion_figure(self.coarse_confusion, self.coarse_classes, title)
        return confusion_figure(self.confusion, self.classes, title)

    def _repr_html_(self) -> str:
        """Accuracy, per-class scores and the most-confused pairs as tables (Jupyter)."""
        from html import escape

        def pct(v: float | None) -> str:
            return "-" if v is None or np.isnan(v) else f"{100 * v:.1f}%"

        def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
            head = "".join(f"<th>{escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        top5 = f", top-5 {pct(self.test_acc5)}" if self.test_acc5 is not None else ""
        per_class = [(r["class"], pct(r["precision"]), pct(r["recall"]), pct(r["f1"]), r["support"])
                     for r in self.per_class_rows()]
        pairs = [(p.true, p.predicted, p.count, pct(p.fraction_of_true)) for p in self.confused_pairs]
        return (f"<p><b>test top-1 {pct(self.test_acc1)}{top5}</b>, balanced accuracy "
                f"{pct(self.test_bal_acc)}, macro-F1 {pct(self.test_macro_f1)} "
                f"({int(self.confusion.sum()):,} images, from {escape(self.source)})</p>"
                + table(("class", "precision", "recall", "F1", "test images"), per_class)
                + ("<p>most-confused pairs</p>" + table(("true", "predicted", "images", "of the true class"), pairs)
                   if pairs else ""))

    def to_dict(self) -> dict:
        """A JSON-ready summary (the full matrices go to CSV files)."""
        out = {
            "source": self.source,
            "num_test_images": int(self.confusion.sum()),
            "test_acc1": self.test_acc1,
            "test_acc5": self.test_acc5,
            "test_bal_acc": _num(self.test_bal_acc),
            "test_macro_f1": _num(self.test_macro_f1),
            "per_class": self.per_class_rows(),
            "per_class_acc": {
                name: (None if np.isnan(acc) else float(acc))
                for name, acc in zip(self.classes, self.per_class_acc, strict=True)
            },
            "confused_pairs": [asdict(p) for p in self.confused_pairs],
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        if self.coarse_confusion is not None:
            out["coarse_acc1"] = float(np.trace(self.coarse_confusion) / self.coarse_confusion.sum())
            out["coarse_confused_pairs"] = [asdict(p) for p in self.coarse_confused_pairs]
        return out


def _num(value: float | None) -> float | None:
    """A float for JSON: None for a missing or undefined (NaN) value."""
    return None if value is None or np.isnan(value) else float(value)


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
    temperature: float | None = None,
) -> Evaluation:
    """Evaluate test predictions: top-1/top-5, confusion matrix, per-class scores, confusions and
    calibration.

    Args:
        labels: (N,) true classes.
        logits: (N, k) the model's logits.
        classes: the k class names.
        num_pairs: most-confused pairs to keep.
        source: where the predictions came from (shown to the user).
        temperature: the run's fitted temperature (None: the run fitted none; the calibration
            is then reported for the raw probabilities only).
    """
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
        scores=class_scores(cm),
        calibration=calibrate(logits, labels, temperature),
        labels=labels,
        logits=logits,
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


def run_temperature(run_dir: Path) -> float | None:
    """The temperature the run fitted on its validation split (None for a run that fitted none).

    Read from `predictions_test.npz`, else `summary.json`'s calibration record, so the numbers
    need no torch; `best.pt` holds the same value.
    """
    run_dir = Path(run_dir)
    path = run_dir / PREDICTIONS_FILE
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            if "temperature" in npz.files:
                return float(npz["temperature"])
    summary = run_dir / "summary.json"
    if summary.is_file():
        import json

        try:
            record = json.loads(summary.read_text(encoding="utf-8")).get("calibration") or {}
        except (ValueError, AttributeError):
            return None
        if record.get("temperature") is not None:
            return float(record["temperature"])
    return None


@dataclass
class RunModel:
    """A run's best model with its test images as the run stored them, ready to predict.

    `images` are the stored (resized, cropped) uint8 images (N, H, W, 3) that the model saw
    through `transform` (resize to the input size and normalise: the run's test-pass transform).
    """

    model: Any  # TransferModel, in eval mode on `device`
    transform: Any  # BatchTransform: uint8 NHWC batch -> normalised NCHW input
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    device: Any  # torch.device


def load_run_model(run_dir: Path, device: str | None = None) -> RunModel:
    """Rebuild the best model of a run from `best.pt` with the dataset's test split.

    The dataset comes from the run's `config.yaml` and the preprocessing (input size, resize,
    normalisation) from the model's `pretrained_cfg` through `data.preprocess.batch_transform`,
    as in training, so the predictions match those the run made.
    """
    import yaml

    from transferlab.data import load_dataset
    from transferlab.data.preprocess import batch_transform
    from transferlab.models import load_checkpoint_model
    from transferlab.training.prepare import run_stored_size

    run_dir = Path(run_dir)
    checkpoint, config_file = run_dir / "best.pt", run_dir / "config.yaml"
    if not checkpoint.is_file() or not config_file.is_file():
        raise TransferlabError(
            f"{run_dir} has no best.pt with config.yaml; "
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
    return RunModel(model, transform, test.images, np.asarray(test.labels), list(dataset.classes),
                    dev)


def predict_from_checkpoint(
    run_dir: Path, device: str | None = None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rebuild the best model of a run from `best.pt` and predict the dataset's test split."""
    import torch

    if not (Path(run_dir) / "best.pt").is_file() or not (Path(run_dir) / "config.yaml").is_file():
        raise TransferlabError(
            f"{run_dir} has neither {PREDICTIONS_FILE} nor best.pt with config.yaml; "
            "point `transferlab evaluate` at a run directory written by `transferlab train`"
        )
    run = load_run_model(run_dir, device)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(run.labels), batch_size):
            images = torch.from_numpy(run.images[start : start + batch_size]).to(run.device)
            chunks.append(run.model(run.transform(images)).float().cpu().numpy())
    return run.labels, np.concatenate(chunks), run.classes
