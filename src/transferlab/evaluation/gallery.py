"""The error gallery: which test photos the model gets most wrong.

Three sections, each a list of test images chosen from the predictions alone (numpy, no model):

- the highest-loss images overall (cross-entropy of the raw logits, the training loss);
- the worst few of each of the classes with the lowest recall (misclassified, highest loss first);
- for the most-confused pairs, the images of the true class predicted as the other, the most
  confident mistakes first.

`evaluation.write` draws each section as a PNG grid of the stored images (what the model saw),
with the class-activation heatmaps of `evaluation.heatmaps` when the model is at hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab.evaluation.metrics import ConfusedPair
from transferlab.metrics import softmax

TOP_LOSSES = 12  # images in the highest-loss section
PER_CLASS = 3  # images per class in the per-class section
WORST_CLASSES = 8  # classes shown in the per-class section (lowest recall first)
PAIRS = 4  # most-confused pairs shown
PER_PAIR = 3  # images per pair


@dataclass(frozen=True)
class GalleryItem:
    """One test image of the gallery, with what the model said about it."""

    index: int  # position in the test split
    true: str
    predicted: str
    true_index: int
    predicted_index: int
    p_predicted: float  # probability of the predicted class (with the run's temperature)
    p_true: float  # probability of the true class
    loss: float  # cross-entropy of the raw logits: -log softmax(logits)[true]


@dataclass
class GallerySection:
    """A titled list of gallery images (`key` names its files)."""

    key: str
    title: str
    items: list[GalleryItem] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"key": self.key, "title": self.title, "items": [asdict(i) for i in self.items]}


def losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy of the raw logits (the loss the model was trained on)."""
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]


def select_gallery(
    labels: np.ndarray,
    logits: np.ndarray,
    classes: Sequence[str],
    pairs: Sequence[ConfusedPair] = (),
    temperature: float | None = None,
    top: int = TOP_LOSSES,
    per_class: int = PER_CLASS,
    worst_classes: int = WORST_CLASSES,
    num_pairs: int = PAIRS,
    per_pair: int = PER_PAIR,
) -> list[GallerySection]:
    """Choose the gallery's images from test predictions (ties: lower image index first).

    Args:
        labels: (N,) true classes.
        logits: (N, k) raw logits.
        classes: class names.
        pairs: most-confused pairs, largest first (from the evaluation).
        temperature: the run's temperature for the probabilities shown (None: 1).
        top: images in the highest-loss section.
        per_class: misclassified images per class.
        worst_classes: classes in the per-class section, lowest recall first.
        num_pairs: confused pairs shown.
        per_pair: images per pair.
    """
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    loss = losses(logits, labels)
    probs = softmax(logits, temperature or 1.0)
    predicted = logits.argmax(axis=1)

    def item(i: int) -> GalleryItem:
        t, p = int(labels[i]), int(predicted[i])
        return GalleryItem(int(i), str(classes[t]), str(classes[p]), t, p, float(probs[i, p]),
                           float(probs[i, t]), float(loss[i]))

    # Stable sort on -loss keeps the lower index first among equal losses.
    by_loss = np.argsort(-loss, kind="stable")
    sections = [GallerySection("top_losses", "Highest-loss test images",
                               [item(i) for i in by_loss[:top]])]

    wrong = predicted != labels
    support = np.bincount(labels, minlength=len(classes))
    hits = np.bincount(labels[~wrong], minlength=len(classes))
    recall = np.where(support > 0, hits / np.maximum(support, 1), np.inf)
    per_class_items = []
    for c in np.argsort(recall, kind="stable")[:worst_classes]:
        members = [i for i in by_loss if labels[i] == c and wrong[i]][:per_class]
        per_class_items += [item(i) for i in members]
    sections.append(GallerySection("per_class", "Worst images of the classes with the lowest "
                                   "recall", per_class_items))

    pair_items = []
    for pair in list(pairs)[:num_pairs]:
        members = np.flatnonzero((labels == pair.true_index) & (predicted == pair.predicted_index))
        members = members[np.argsort(-probs[members, pair.predicted_index], kind="stable")]
        pair_items += [item(i) for i in members[:per_pair]]
    sections.append(GallerySection("confused_pairs", "Most-confused pairs: the most confident "
                                   "mistakes", pair_items))
    return [s for s in sections if s.items]


def gallery_indices(sections: Sequence[GallerySection]) -> list[int]:
    """Every test image the gallery shows, once, in order of first appearance."""
    return list(dict.fromkeys(i.index for s in sections for i in s.items))


@dataclass
class Gallery:
    """The gallery's sections with the stored images they show and their heatmaps."""

    sections: list[GallerySection]
    images: dict[int, np.ndarray]  # test index -> uint8 (H, W, 3), as the model saw it
    heatmaps: dict[tuple[int, int], np.ndarray]  # (test index, class index) -> (H, W) in [0, 1]
    note: str = ""  # why heatmaps are missing, if they are

    def to_dict(self) -> dict:
        """JSON-ready (the images and maps go to the PNG grids)."""
        return {"sections": [s.to_dict() for s in self.sections], "heatmaps": bool(self.heatmaps),
                "note": self.note}


def gallery_for_run(run_dir: Any, labels: np.ndarray, logits: np.ndarray, classes: Sequence[str],
                    pairs: Sequence[ConfusedPair] = (), temperature: float | None = None,
                    device: str | None = None, heatmaps: bool = True) -> Gallery:
    """The gallery of a run: its images from the run's dataset, heatmaps from its `best.pt`.

    Raises:
        TransferlabError: the run's test split is not the one the predictions are of.
    """
    from transferlab.errors import TransferlabError
    from transferlab.evaluation import heatmaps as cam
    from transferlab.evaluation.metrics import load_run_model

    sections = select_gallery(labels, logits, classes, pairs, temperature)
    run = load_run_model(run_dir, device)
    if len(run.labels) != len(labels) or not np.array_equal(run.labels, labels):
        raise TransferlabError(f"the test split of {run_dir}'s dataset no longer matches its "
                               "predictions (the folder changed?); re-run `transferlab train` "
                               "or evaluate with --no-gallery")
    indices = gallery_indices(sections)
    images = {i: run.images[i] for i in indices}
    maps: dict[tuple[int, int], np.ndarray] = {}
    note = ""
    if heatmaps and not cam.available():
        note = f"heatmaps skipped: captum is not installed ({cam.INSTALL_HINT})"
    elif heatmaps and indices:
        wanted = list(dict.fromkeys((it.index, c) for s in sections for it in s.items
                                    for c in (it.predicted_index, it.true_index)))
        computed = cam.explain_images(run, [i for i, _ in wanted], [c for _, c in wanted])
        maps = {key: m for key, m in zip(wanted, computed, strict=True)}
    return Gallery(sections, images, maps, note)
