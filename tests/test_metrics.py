"""Per-class metrics against hand-computed numbers; calibration on made logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferlab.metrics import (
    balanced_accuracy,
    class_scores,
    confusion_matrix,
    coverage_table,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    reliability_bins,
    softmax,
)


def test_class_scores_match_a_hand_computed_confusion_matrix() -> None:
    # true 0: 3 right, 1 called 1; true 1: 1 right, 1 called 2; true 2: 0 right, 2 called 0;
    # class 3: no test image and never predicted.
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 2, 0, 0])
    cm = confusion_matrix(labels, preds, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 1, 1, 0], [2, 0, 0, 0], [0, 0, 0, 0]]
    s = class_scores(cm)
    # precision: class 0 3/5, class 1 1/2, class 2 0/1, class 3 never predicted (NaN)
    assert s.precision[:3] == pytest.approx([3 / 5, 1 / 2, 0.0]) and math.isnan(s.precision[3])
    assert s.recall[:3] == pytest.approx([3 / 4, 1 / 2, 0.0]) and math.isnan(s.recall[3])
    f1_0 = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    assert s.f1[:3] == pytest.approx([f1_0, 0.5, 0.0])
    assert s.support.tolist() == [4, 2, 2, 0]
    assert s.balanced_accuracy == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert s.macro_f1 == pytest.approx((f1_0 + 0.5 + 0.0) / 3)
    assert balanced_accuracy(labels, preds, 4) == pytest.approx(s.balanced_accuracy)
    assert macro_f1(labels, preds, 4) == pytest.approx(s.macro_f1)


def test_a_majority_class_cannot_game_balanced_accuracy() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    always_zero = np.zeros(100, dtype=int)
    assert (always_zero == labels).mean() == 0.9
    assert balanced_accuracy(labels, always_zero, 2) == pytest.approx(0.5)
    assert macro_f1(labels, always_zero, 2) == pytest.approx((2 * 0.9 / 1.9) / 2)


def overconfident(n: int = 4000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model right ~70% of the time but ~99% sure: calibrated logits times 6."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 1.5
    return logits * 6.0, labels


def test_temperature_scaling_lowers_ece_and_never_changes_top1() -> None:
    logits, labels = overconfident()
    fit_logits, fit_labels = logits[:2000], labels[:2000]  # fitted on one half (the "val" split)
    test_logits, test_labels = logits[2000:], labels[2000:]
    t = fit_temperature(fit_logits, fit_labels)
    assert 4.0 < t < 8.0  # it recovers roughly the factor the logits were inflated by
    before = expected_calibration_error(softmax(test_logits), test_labels)
    after = expected_calibration_error(softmax(test_logits, t), test_labels)
    assert before > 0.15 and after < 0.05 and after < before / 3
    assert (softmax(test_logits, t).argmax(1) == test_logits.argmax(1)).all()


def test_temperature_fit_is_the_nll_minimum() -> None:
    logits, labels = overconfident(800, seed=3)

    def nll(t: float) -> float:
        return float(-np.log(softmax(logits, t)[np.arange(len(labels)), labels]).mean())

    t = fit_temperature(logits, labels)
    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03))


def test_temperature_is_bounded_when_validation_is_all_right() -> None:
    labels = np.arange(10) % 3
    logits = np.eye(3)[labels] * 5.0
    assert fit_temperature(logits, labels) == pytest.approx(0.05)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_reliability_bins_and_coverage_count_every_image() -> None:
    probs = np.array([[1.0, 0.0], [0.55, 0.45], [0.3, 0.7], [0.95, 0.05]])
    labels = np.array([0, 1, 1, 0])
    bins = reliability_bins(probs, labels, bins=10)
    assert sum(b.count for b in bins) == 4 and bins[-1].count == 2  # 1.0 and 0.95
    assert bins[5].count == 1 and bins[5].accuracy == 0.0  # 0.55, wrong
    rows = {r.threshold: r for r in coverage_table(probs, labels, thresholds=(0.0, 0.7, 0.96))}
    assert rows[0.0].coverage == 1.0 and rows[0.0].accuracy == 0.75
    assert rows[0.7].answered == 3 and rows[0.7].accuracy == 1.0  # 0.7 itself is answered
    assert rows[0.96].answered == 1
