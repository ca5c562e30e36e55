"""Frozen-feature extraction with ONNX Runtime: the same features as eager, and a logged fallback."""

from __future__ import annotations

import json
import time
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
    record: dict[str, Any] = {}
    with pytest.warns(UserWarning, match="exporter unavailable"):
        fn, used = feats.make_extractor(prefix, "onnxruntime", sample, 10_000, log=notes.append,
                                        record=record)
    assert used == "eager" and fn is prefix
    assert "onnxruntime failed (RuntimeError: exporter unavailable); falling back to eager" in notes[0]
    # The fallback is a numerical path of its own: recorded for summary.json and last.pt.
    assert record == {"setting": "onnxruntime", "used": "eager",
                      "fallback": "onnxruntime failed (RuntimeError: exporter unavailable)"}


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


def test_auto_counts_the_job_and_says_what_it_chose() -> None:
    prefix, sample = _prefix("head"), torch.randn(8, 3, 32, 32)
    notes: list[str] = []
    record: dict[str, Any] = {}
    _, used = feats.make_extractor(prefix, "auto", sample, 2, log=notes.append, record=record)
    assert used == "eager" and "so eager (auto)" in notes[0]
    assert record["setting"] == "auto" and record["used"] == "eager" and record["fallback"] is None
    assert record["auto"]["decided"] == "eager" and record["auto"]["num_images"] == 2
    notes.clear()
    _, used = feats.make_extractor(prefix, "auto", sample, 10**9, log=notes.append, record=record)
    assert used == "onnxruntime" and "so onnxruntime (auto)" in notes[0]
    assert record["used"] == record["auto"]["decided"] == "onnxruntime"


def test_auto_stays_eager_when_the_prefix_cannot_be_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    def uncountable(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("no formula for aten.some_op")

    monkeypatch.setattr(feats, "count_cost", uncountable)
    record: dict[str, Any] = {}
    _, used = feats.make_extractor(_prefix("head"), "auto", torch.randn(8, 3, 32, 32), 10**9,
                                   log=lambda _: None, record=record)
    assert used == "eager" and "no formula for aten.some_op" in record["auto"]["why"]


class _Slow(torch.nn.Module):
    """The prefix on a machine so busy that each forward pass takes 50 ms longer."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return self.inner(x)


def test_auto_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 images: a timed choice picks ONNX Runtime when 8 images take 50 ms (the export would
    # pay for itself), eager when they take the ~2 ms they take on a quiet machine.
    prefix, sample = _prefix("head"), torch.randn(8, 3, 32, 32)
    quiet: dict[str, Any] = {}
    _, used = feats.make_extractor(prefix, "auto", sample, 300, log=lambda _: None, record=quiet)
    ticks = iter(range(0, 10**9, 1000))  # a clock that jumps 1,000 s at every reading
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))
    busy: dict[str, Any] = {}
    _, busy_used = feats.make_extractor(_Slow(prefix).eval(), "auto", sample, 300,
                                        log=lambda _: None, record=busy)
    assert used == busy_used == "eager"
    assert busy == quiet  # the same counts, estimate and choice


@pytest.mark.parametrize(("name", "size", "images", "expected", "measured_ms"), [
    ("mobilenet_v2", 224, 300, "onnxruntime", 15.1),  # a small photo folder: the export pays
    ("inception_v3", 224, 128, "eager", 35.7),  # 1 s of set-up for a saving of ~0.9 s: not
])
def test_auto_on_counted_costs_keeps_the_measured_choices(name: str, size: int, images: int,
                                                          expected: str, measured_ms: float) -> None:
    from transferlab.training.prefix_cost import count_cost, eager_seconds_per_image

    torch.manual_seed(0)
    model = create_model(name, num_classes=4, head="linear", input_size=size).eval()
    prefix, _ = feats.split_model(model, "head")
    sample = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    cost = count_cost(prefix.eval(), sample)
    estimate = eager_seconds_per_image(cost)
    # The estimate stands in for the eager time measured on the reference CPU (auto_backend).
    assert measured_ms / 2 <= 1000 * estimate <= measured_ms * 2
    assert feats.auto_backend(torch.device("cpu"), images, estimate, cost.params) == expected


def test_a_run_extracts_every_split_with_one_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    config = config_from_dict({
        "run_name": "run", "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": "synthetic:classes=4,train=32,test=8,size=8", "val_fraction": 0.25,
        "batch_size": 8, "quiet": False, "extract_backend": "onnxruntime", "model": "benchmark_cnn",
        "stages": [{"name": "h", "train": "head", "epochs": 1, "lr": 3e-3}],
    })
    run_dir = train_run(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["h"]["backend"] == "onnxruntime"
    out = capsys.readouterr().out
    assert out.count("onnxruntime ready") == 1  # exported once, used for all three splits
    assert out.count("img/s, onnxruntime)") == 3
    # The choice is in the run's records: summary.json, and last.pt for a resume.
    choice = {"setting": "onnxruntime", "used": "onnxruntime", "fallback": None}
    assert summary["stages"]["h"]["backend_choice"] == choice
    assert summary["stages"]["h"]["feature_backends"] == dict.fromkeys(("train", "val", "test"), "onnxruntime")
    last = torch.load(run_dir / "last.pt", weights_only=False)
    assert last["stage_info"]["h"]["backend_choice"] == choice
    # A second run on the same cache extracts nothing and says which engine made what it read.
    config.run_name, config.extract_backend = "again", "eager"
    again = json.loads((train_run(config) / "summary.json").read_text())
    assert again["stages"]["h"]["extracted_images"] == 0 and "backend_choice" not in again["stages"]["h"]
    assert again["stages"]["h"]["feature_backends"] == summary["stages"]["h"]["feature_backends"]
