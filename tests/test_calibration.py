"""Temperature scaling after training: fitted on validation, stored with the weights, top-1 kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_training import tiny_config
from transferlab.metrics import expected_calibration_error, fit_temperature, softmax
from transferlab.training import train_run
from transferlab.training.checkpoint import load_checkpoint


def test_a_run_fits_a_temperature_on_validation_and_stores_it(tmp_path: Path) -> None:
    run = train_run(tiny_config(tmp_path, stages=[{"name": "all", "train": "all", "epochs": 3,
                                                   "optimizer": "adam", "lr": 3e-2}]))
    summary = json.loads((run / "summary.json").read_text())
    cal = summary["calibration"]
    assert cal is not None and cal["fitted_on"].startswith("val")
    best = load_checkpoint(run / "best.pt")
    assert best["temperature"] == pytest.approx(cal["temperature"])
    pred = np.load(run / "predictions_test.npz")
    assert float(pred["temperature"]) == pytest.approx(cal["temperature"])
    logits, labels = pred["logits"], pred["labels"]
    # The recorded test ECE figures are those of the stored logits, raw and divided by T.
    assert cal["test_ece"] == pytest.approx(expected_calibration_error(softmax(logits), labels))
    assert cal["test_ece_calibrated"] == pytest.approx(
        expected_calibration_error(softmax(logits, cal["temperature"]), labels))
    # Never a different answer: the argmax is the same with and without the temperature.
    assert (softmax(logits, cal["temperature"]).argmax(1) == logits.argmax(1)).all()
    assert summary["test_acc1"] == pytest.approx((logits.argmax(1) == labels).mean())


def test_without_a_validation_split_nothing_is_fitted(tmp_path: Path) -> None:
    run = train_run(tiny_config(tmp_path, val_fraction=0.0, stages=[
        {"name": "all", "train": "all", "epochs": 1, "optimizer": "sgd", "lr": 0.05}]))
    assert json.loads((run / "summary.json").read_text())["calibration"] is None
    assert "temperature" not in load_checkpoint(run / "best.pt")


def test_fit_on_validation_generalises_to_test() -> None:
    """The fit is made on one split and judged on another, as a run does."""
    rng = np.random.default_rng(1)
    n, k = 3000, 4
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 1.0
    logits *= 5.0  # over-confident
    t = fit_temperature(logits[:1000], labels[:1000])
    before = expected_calibration_error(softmax(logits[1000:]), labels[1000:])
    after = expected_calibration_error(softmax(logits[1000:], t), labels[1000:])
    assert after < before / 2
