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


def test_min_confidence_answers_unknown_exactly_below_the_threshold(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Through best.pt and the exported ONNX file alike; the probabilities carry the temperature."""
    from PIL import Image

    from transferlab.cli import main
    from transferlab.data import load_dataset
    from transferlab.export import export_run
    from transferlab.predict import UNKNOWN, load_predict_model, predict_images

    # A barely trained model: its confidences spread out instead of all sitting near 1.
    run = train_run(tiny_config(tmp_path, stages=[{"name": "all", "train": "all", "epochs": 1,
                                                   "optimizer": "sgd", "lr": 1e-3}]))
    test = load_dataset("synthetic:classes=4,train=64,test=24,size=8")["test"]
    files = []
    for i in range(12):
        files.append(str(tmp_path / f"t{i}.png"))
        Image.fromarray(test.images[i]).save(files[-1])
    onnx = export_run(run, "onnx").path
    for weights in (run / "best.pt", onnx):
        model = load_predict_model(None, weights=weights)
        assert model.temperature == pytest.approx(load_checkpoint(run / "best.pt")["temperature"])
        plain = predict_images(model, files, top=1)
        probs = sorted({p.top[0].prob for p in plain})
        assert len(probs) >= 4
        cut = len(probs) // 2
        threshold = (probs[cut - 1] + probs[cut]) / 2  # some images below, some above
        gated = predict_images(model, files, top=1, min_confidence=threshold)
        for p, g in zip(plain, gated, strict=True):
            assert g.top == p.top  # the top classes are still listed
            assert g.answer == (p.top[0].name if p.top[0].prob >= threshold else UNKNOWN)
        below = sum(p.top[0].prob < threshold for p in plain)
        assert 0 < below < len(files) and sum(g.answer == UNKNOWN for g in gated) == below
        # The command line says the same.
        capsys.readouterr()  # drop what training and export printed
        assert main(["predict", *files, "--weights", str(weights), "--json", "--top", "1",
                     "--min-confidence", f"{threshold}"]) == 0
        answers = [p["answer"] for p in json.loads(capsys.readouterr().out)]
        assert answers == [g.answer for g in gated]
    assert main(["predict", files[0], "--weights", str(onnx), "--min-confidence", "1.5"]) == 2
    assert "not a probability" in capsys.readouterr().err
