"""Bounded memory: resident memory flat from epoch to epoch, ONNX Runtime's frozen part in
bounded chunks without an arena of its own, and the test pass through that frozen part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from transferlab.models import create_model, freeze
from transferlab.training import features as feats
from transferlab.training import frozen_prefix, summary
from transferlab.training.cpu_memory import resident_mb

# Growth allowed from a stage's second epoch to its last (MiB): Python objects, metrics rows
# and log buffers, not a step's tensors.
MARGIN_MB = 24.0


def _train(tmp_path: Path) -> list[dict[str, Any]]:
    """The finetune recipe's two stages, small: a head on cached features, then the top of
    the backbone with augmentation above a frozen part on ONNX Runtime."""
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    config = config_from_dict({
        "run_name": "r", "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": "synthetic:classes=4,train=96,test=16,size=40", "val_fraction": 0.25,
        "batch_size": 16, "quiet": True, "model": "mobilenet_v2_paper", "input_size": 40,
        "model_kwargs": {"width_mult": 0.35}, "head": "linear", "extract_backend": "onnxruntime",
        "stages": [
            {"name": "head", "train": "head", "epochs": 2, "lr": 1e-3},
            {"name": "top", "train": "from:rows.5", "epochs": 5, "lr": 1e-4, "augment": "photo",
             "early_stopping": {"enabled": False}},
        ],
    })
    run_dir = train_run(config)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _growth(rows: list[dict[str, Any]], stage: str, key: str = "rss_mb") -> float:
    """How far the stage's resident memory (or its per-epoch peak) rose from its second epoch
    to its last (MiB)."""
    rss = [r[key] for r in rows if r["stage"] == stage]
    return max(rss[2:]) - rss[1]


@pytest.fixture
def tested_module(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """The modules the test pass evaluates."""
    seen: list[torch.nn.Module] = []
    original = summary.evaluate

    def evaluate(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen.append(module)
        return original(module, *args, **kwargs)

    monkeypatch.setattr(summary, "evaluate", evaluate)
    return seen


@pytest.mark.skipif(resident_mb() is None, reason="no /proc/self/status here")
def test_resident_memory_stays_flat_across_epochs(tmp_path: Path, tested_module: list) -> None:
    rows = _train(tmp_path)
    assert all(r["rss_mb"] > 0 and r["rss_peak_mb"] >= r["rss_mb"] for r in rows)
    assert [r["stage"] for r in rows] == ["head"] * 2 + ["top"] * 5
    assert _growth(rows, "top") <= MARGIN_MB, [r["rss_mb"] for r in rows]
    assert _growth(rows, "top", "rss_peak_mb") <= MARGIN_MB, [r["rss_peak_mb"] for r in rows]
    # best.pt's frozen part is the top stage's (the head stage trained above it), so the test
    # pass (and the validation pass that fits the temperature) runs through ONNX Runtime too,
    # not the whole model eagerly.
    assert len(tested_module) == 2 and all(isinstance(m, feats.TailModule) for m in tested_module)


@pytest.mark.skipif(resident_mb() is None, reason="no /proc/self/status here")
def test_a_leak_shows_in_rss_mb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above fails on a leak: keep 4 MiB per step (5 steps an epoch here)."""
    kept: list[torch.Tensor] = []
    original = frozen_prefix.ThenPrefix.__call__

    def leaky(self: frozen_prefix.ThenPrefix, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        kept.append(torch.ones(1 << 20))  # 4 MiB, touched
        return original(self, x, seed)

    monkeypatch.setattr(frozen_prefix.ThenPrefix, "__call__", leaky)
    rows = _train(tmp_path)
    assert _growth(rows, "top") > MARGIN_MB
    assert _growth(rows, "top", "rss_peak_mb") > MARGIN_MB


def test_onnxruntime_runs_large_batches_in_chunks_without_an_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlab.models import onnx_io

    sessions: list[Any] = []
    calls: list[int] = []
    original = onnx_io.ort_session

    class Counting:
        def __init__(self, session: Any) -> None:
            self.session = session

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

        def run(self, names: Any, feed: dict) -> Any:
            calls.append(len(next(iter(feed.values()))))
            return self.session.run(names, feed)

    def counting(*args: Any, **kwargs: Any) -> Any:
        sessions.append(original(*args, **kwargs))
        return Counting(sessions[-1])

    monkeypatch.setattr(onnx_io, "ort_session", counting)
    monkeypatch.setattr(feats, "ORT_CHUNK_PIXELS", 5 * 32 * 32)  # 5 images of 32 px a call
    torch.manual_seed(0)
    model = create_model("mobilenet_v2_paper", num_classes=4, width_mult=0.35, cifar_stem=True)
    freeze(model, "rows.3")
    prefix, _ = feats.split_model(model, "from:rows.3")
    prefix.eval()
    x = torch.randn(12, 3, 32, 32)
    run, used = feats.make_extractor(prefix, "onnxruntime", x, 10_000, log=lambda _: None)
    assert used == "onnxruntime"
    options = sessions[0].get_session_options()
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    calls.clear()
    with torch.no_grad():
        got, expected = run(x), prefix(x)
    assert calls == [5, 5, 2]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
