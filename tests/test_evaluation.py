"""Evaluation on hand-made predictions whose confusion matrix and confusions are known."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.evaluation import (
    CIFAR100_SUPERCLASSES,
    cifar100_coarse_map,
    confusion_matrix,
    evaluate_predictions,
    evaluate_run,
    most_confused_pairs,
    topk_accuracy,
)

CLASSES = ["cat", "dog", "fox"]
# Nine test images: true labels and the model's ranked guesses (first = top-1).
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
RANKED = [(0, 1, 2), (1, 0, 2), (1, 2, 0), (1, 0, 2), (0, 2, 1),
          (2, 0, 1), (2, 1, 0), (0, 2, 1), (1, 0, 2)]
# By hand: rows are true cat, dog, fox; columns predicted cat, dog, fox.
EXPECTED_CONFUSION = np.array([[1, 2, 0],
                               [1, 1, 0],
                               [1, 1, 2]])


def logits_from_ranking(ranked: list[tuple[int, ...]]) -> np.ndarray:
    """Logits whose descending order is the given ranking."""
    logits = np.zeros((len(ranked), len(ranked[0])), dtype=np.float32)
    for i, order in enumerate(ranked):
        for score, cls in enumerate(reversed(order)):
            logits[i, cls] = float(score)
    return logits


def test_hand_made_predictions_give_known_matrix_and_pairs():
    result = evaluate_predictions(LABELS, logits_from_ranking(RANKED), CLASSES)
    np.testing.assert_array_equal(result.confusion, EXPECTED_CONFUSION)
    assert result.test_acc1 == pytest.approx(4 / 9)
    # Top-2 misses images 2, 4 and 8, whose true class is ranked third.
    assert topk_accuracy(logits_from_ranking(RANKED), LABELS, 2) == pytest.approx(6 / 9)
    assert result.test_acc5 is None  # three classes: top-5 would be 100% by construction
    np.testing.assert_allclose(result.per_class_acc, [1 / 3, 1 / 2, 2 / 4])
    pairs = [(p.true, p.predicted, p.count) for p in result.confused_pairs]
    assert pairs == [("cat", "dog", 2), ("dog", "cat", 1), ("fox", "cat", 1), ("fox", "dog", 1)]
    assert result.confused_pairs[0].fraction_of_true == pytest.approx(2 / 3)
    assert result.coarse_confusion is None  # not CIFAR-100


def test_topk_matches_torch_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 17)).astype(np.float32)
    labels = rng.integers(0, 17, size=500)
    for k in (1, 3, 5):
        top = torch.from_numpy(logits).topk(k, dim=1).indices.numpy()
        expected = (top == labels[:, None]).any(axis=1).mean()
        assert topk_accuracy(logits, labels, k) == pytest.approx(expected)
    assert topk_accuracy(logits[:, :3], labels % 3, 5) == 1.0  # k above the class count


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(TransferlabError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_most_confused_pairs_ignores_diagonal_and_limits():
    cm = np.array([[50, 0, 7], [3, 40, 3], [0, 9, 30]])
    pairs = most_confused_pairs(cm, ["a", "b", "c"], n=2)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("c", "b", 9), ("a", "c", 7)]


def test_cifar100_superclasses_partition_the_fine_classes():
    fine = sorted(c for members in CIFAR100_SUPERCLASSES.values() for c in members)
    assert len(fine) == len(set(fine)) == 100
    coarse_names, fine_to_coarse = cifar100_coarse_map(fine)
    assert len(coarse_names) == 20
    assert np.bincount(fine_to_coarse).tolist() == [5] * 20


def test_cifar100_coarse_confusion_sums_superclass_blocks():
    fine = [c for members in CIFAR100_SUPERCLASSES.values() for c in members]
    labels = np.arange(100)
    # Every image predicted as the next class in its superclass: fine top-1 is 0, coarse is 100%.
    predictions = (labels // 5) * 5 + (labels % 5 + 1) % 5
    logits = np.eye(100, dtype=np.float32)[predictions]
    result = evaluate_predictions(labels, logits, fine)
    assert result.test_acc1 == 0.0
    np.testing.assert_array_equal(result.coarse_confusion, 5 * np.eye(20, dtype=np.int64))
    assert result.to_dict()["coarse_acc1"] == 1.0


def write_fake_run(run_dir, labels, logits, classes):
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "predictions_test.npz", labels=labels, logits=logits,
             classes=np.array(classes))
    return run_dir


def test_evaluate_command_writes_files(tmp_path, capsys):
    run_dir = write_fake_run(tmp_path / "run", LABELS, logits_from_ranking(RANKED), CLASSES)
    assert main(["evaluate", str(run_dir), "--pairs", "3"]) == 0
    out = run_dir / "evaluation"
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == CLASSES
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == EXPECTED_CONFUSION.tolist()
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["test_acc1"] == pytest.approx(4 / 9)
    assert len(summary["confused_pairs"]) == 3
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "cat -> dog: 2" in capsys.readouterr().out


def test_evaluate_run_rejects_mismatched_classes(tmp_path):
    run_dir = write_fake_run(tmp_path / "run", LABELS, logits_from_ranking(RANKED), CLASSES[:2])
    with pytest.raises(TransferlabError, match="classes"):
        evaluate_run(run_dir)


def test_evaluate_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
