"""Frozen-feature extraction with ONNX Runtime: the same features as eager, and a logged fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from transferlab.models import create_model
from transferlab.training import Batches
from transferlab.training import features as feats


def _prefix(boundary: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2_paper", num_classes=4, width_mult=0.35, cifar_stem=True).eval()
    prefix, _ = feats.split_model(model, boundary)
    return prefix.eval()


@pytest.mark.parametrize("boundary", ["head", "from:rows.3"])  # pooled features and a feature map
def test_onnxruntime_gives_eager_features(boundary: str) -> None:
    prefix = _prefix(boundary)
    x = torch.randn(21, 3, 32, 32)  # batches of 8: the last one (5) is smaller, no padding needed
    y = torch.zeros(21, dtype=torch.long)
    notes: list[str] = []
    got, _, used = feats.extract(prefix, Batches(x, y, 8), backend="onnxruntime", num_images=21,
                                 quiet=True, log=notes.append)
    expected, _, _ = feats.extract(prefix, Batches(x, y, 8), backend="eager", num_images=21,
                                   quiet=True, log=notes.append)
    assert used == "onnxruntime" and "onnxruntime ready" in notes[0]
    assert got.shape == expected.shape and got.dtype == torch.float32
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= feats.TOLERANCES["onnxruntime"] * scale


def test_onnxruntime_failure_falls_back_to_eager_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(feats, "_onnxruntime", broken)
    prefix, sample, notes = _prefix("head"), torch.randn(4, 3, 32, 32), []
    with pytest.warns(UserWarning, match="exporter unavailable"):
        fn, used = feats.make_extractor(prefix, "onnxruntime", sample, 10_000, log=notes.append)
    assert used == "eager" and fn is prefix
    assert "onnxruntime failed (RuntimeError: exporter unavailable); falling back to eager" in notes[0]


def test_onnxruntime_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(feats.TOLERANCES, "onnxruntime", -1.0)  # any difference is too large
    notes: list[str] = []
    with pytest.warns(UserWarning, match="outputs differ from eager"):
        _, used = feats.make_extractor(_prefix("head"), "onnxruntime", torch.randn(4, 3, 32, 32),
                                       10_000, log=notes.append)
    assert used == "eager" and "outputs differ from eager by" in notes[0]


def test_auto_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    inception, mobilenet = 21_800_000, 2_200_000  # weights of the pooled prefixes
    # The measured cases of the docstring: 128 InceptionV3 images at 224 px (35.7 ms each) stay
    # eager, 300 MobileNetV2 photos at 224 px (15.1 ms) and 31,500 CIFAR images at 75 px do not.
    assert feats.auto_backend(cpu, 128, 0.0357, inception) == "eager"
    assert feats.auto_backend(cpu, 300, 0.0151, mobilenet) == "onnxruntime"
    assert feats.auto_backend(cpu, 31_500, 0.0056, inception) == "onnxruntime"
    assert feats.auto_backend(cpu, 256, 0.0056, inception) == "eager"
    # more weights, more set-up: the same job can tip back to eager
    assert feats.auto_backend(cpu, 300, 0.0151, 100 * mobilenet) == "eager"
    assert feats.auto_backend(cuda, 50_000, 1.0, mobilenet) == "eager"


def test_auto_times_eager_on_the_job_and_says_what_it_chose() -> None:
    prefix, sample = _prefix("head"), torch.randn(8, 3, 32, 32)
    notes: list[str] = []
    _, used = feats.make_extractor(prefix, "auto", sample, 2, log=notes.append)
    assert used == "eager" and "so eager (auto)" in notes[0]
    notes.clear()
    _, used = feats.make_extractor(prefix, "auto", sample, 10**9, log=notes.append)
    assert used == "onnxruntime" and "so onnxruntime (auto)" in notes[0]


def test_a_run_extracts_every_split_with_one_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    config = config_from_dict({
        "run_name": "run", "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": "synthetic:classes=4,train=32,test=8,size=8", "val_fraction": 0.25,
        "batch_size": 8, "quiet": False, "extract_backend": "onnxruntime", "model": "benchmark_cnn",
        "stages": [{"name": "h", "train": "head", "epochs": 1, "lr": 3e-3}],
    })
    summary = json.loads((train_run(config) / "summary.json").read_text())
    assert summary["stages"]["h"]["backend"] == "onnxruntime"
    out = capsys.readouterr().out
    assert out.count("onnxruntime ready") == 1  # exported once, used for all three splits
    assert out.count("img/s, onnxruntime)") == 3
