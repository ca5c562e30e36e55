"""An augmented stage above a frozen part: the frozen part runs on ONNX Runtime every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferlab.models import create_model, freeze
from transferlab.training import Batches, train_one_epoch
from transferlab.training import features as feats
from transferlab.training.frozen_prefix import ThenPrefix, fast_prefix


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2_paper", num_classes=4, width_mult=0.35, cifar_stem=True)
    freeze(model, "rows.3")
    return model


def test_the_tail_on_the_fast_prefix_is_the_model() -> None:
    model, x = _model(), torch.randn(6, 3, 32, 32)
    fast = fast_prefix(model, "from:rows.3", "onnxruntime", x, 10_000, log=lambda _: None)
    assert fast is not None
    tail, prefix, used, out_shape = fast
    assert used == "onnxruntime" and out_shape == tuple(feats.output_shape(
        feats.split_model(model, "from:rows.3")[0], x))
    model.eval()
    with torch.no_grad():
        expected = model(x)
        got = tail(ThenPrefix(None, prefix)(x))
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_training_above_it_moves_only_the_trainable_layers() -> None:
    model = _model()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    tail, prefix, _, _ = fast_prefix(model, "from:rows.3", "onnxruntime", x, 10_000, log=lambda _: None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in tail.parameters() if p.requires_grad], lr=0.1)
    totals = train_one_epoch(tail, Batches(x, y, 8, transform=ThenPrefix(None, prefix)), optimizer,
                             quiet=True)
    assert totals.count == 16 and totals.loss > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not changed & frozen
    assert changed, "no trainable parameter changed"


def test_no_fast_prefix_when_eager_or_nothing_is_frozen() -> None:
    model, x = _model(), torch.randn(2, 3, 32, 32)
    assert fast_prefix(model, "from:rows.3", "eager", x, 10_000, log=lambda _: None) is None
    assert fast_prefix(model, "all", "onnxruntime", x, 10_000, log=lambda _: None) is None
    # auto: a stage over fewer images than the export costs stays eager
    assert fast_prefix(model, "from:rows.3", "auto", x, 2, log=lambda _: None) is None


def _run(tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict, list[dict], str]:
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    config = config_from_dict({
        "run_name": backend, "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": "synthetic:classes=4,train=48,test=16,size=16", "val_fraction": 0.25,
        "batch_size": 8, "quiet": False, "extract_backend": backend, "model": "benchmark_cnn",
        "input_size": 16, "augment": "standard", "seed": 3,
        "stages": [{"name": "top", "train": "from:block3", "epochs": 2, "lr": 3e-3}],
    })
    run_dir = train_run(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rows, capsys.readouterr().out


def test_an_augmented_stage_trains_the_same_above_onnxruntime(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast, fast_rows, log = _run(tmp_path, "onnxruntime", capsys)
    eager, eager_rows, eager_log = _run(tmp_path, "eager", capsys)
    assert fast["stages"]["top"]["frozen_part_backend"] == "onnxruntime"
    assert "frozen_part_backend" not in eager["stages"]["top"]
    assert "the frozen part on onnxruntime every step" in log
    assert "every step" not in eager_log
    # Same seeds, same augmentation, same frozen function: the same training up to float rounding.
    for a, b in zip(fast_rows, eager_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)
    assert fast["test_acc1"] == pytest.approx(eager["test_acc1"], abs=1 / 16 + 1e-9)


def test_a_tail_on_one_by_one_maps_trains_in_nchw(tmp_path: Path) -> None:
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    assert feats.tail_wants_nchw((1280, 1, 1)) and not feats.tail_wants_nchw((96, 6, 6))
    assert not feats.tail_wants_nchw((2048,))
    # InceptionV3 at 75 px: Mixed_7b sees 1 x 1 maps.
    config = config_from_dict({
        "run_name": "r", "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": "synthetic:classes=2,train=12,test=4,size=8", "val_fraction": 0.25,
        "batch_size": 4, "quiet": True, "model": "inception_v3", "input_size": 75,
        "stages": [{"name": "top", "train": "from:Mixed_7b", "epochs": 1, "lr": 1e-3,
                    "cache_features": "true"}],
    })
    summary = json.loads((train_run(config) / "summary.json").read_text())
    assert summary["stages"]["top"]["tail_layout"] == "nchw"
    assert summary["test_acc1"] is not None
