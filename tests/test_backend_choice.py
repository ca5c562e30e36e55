"""The engine of a frozen part is chosen once per stage, recorded, and kept by a resumed run.

Eager PyTorch and ONNX Runtime round differently (~1e-6 of the output scale), so the choice is a
numerical path: a resumed run that chose again could continue on another one than the run it
continues. Here `auto_backend` is patched to decide one way for the first session and the other
way for the resume, which must keep to what the first one recorded. The same holds for cached
features against training through the frozen part, which the free disk space decides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_checkpoint import config, interrupt_at, metrics
from transferlab.training import features as feats
from transferlab.training import resume_run, train_run


def decide(monkeypatch: pytest.MonkeyPatch, backend: str) -> list[int]:
    """Make `auto` choose `backend`; returns a list that counts the choices made."""
    calls: list[int] = []

    def auto_backend(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        return backend

    monkeypatch.setattr(feats, "auto_backend", auto_backend)
    return calls


def stage_info(run_dir: Path, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary.json's, last.pt's) record of one stage."""
    summary = json.loads((run_dir / "summary.json").read_text())
    last = torch.load(run_dir / "last.pt", weights_only=False)
    return summary["stages"][stage], last["stage_info"][stage]


@pytest.mark.parametrize(("first", "now"), [("onnxruntime", "eager"), ("eager", "onnxruntime")])
def test_a_resumed_stage_keeps_the_recorded_frozen_part_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, now: str) -> None:
    # Stage "head" trains with augmentation above the frozen part, which runs every step.
    decide(monkeypatch, first)
    reference = train_run(config(tmp_path, "ref"))
    summary, last = stage_info(reference, "head")
    assert summary["backend_choice"]["setting"] == "auto"
    assert summary["backend_choice"]["used"] == summary["backend_choice"]["auto"]["decided"] == first
    assert last["backend_choice"] == summary["backend_choice"]

    interrupt_at(monkeypatch, 3, "sigint")
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut"))
    cut = tmp_path / "runs" / "cut"
    saved = torch.load(cut / "last.pt", weights_only=False)["stage_info"]["head"]["backend_choice"]
    assert saved["used"] == first
    monkeypatch.undo()

    calls = decide(monkeypatch, now)  # auto would now choose the other engine
    resumed = resume_run(cut, quiet=True)
    assert not calls, "the resumed stage chose its engine again"
    summary, last = stage_info(resumed, "head")
    assert summary["backend_choice"] == last["backend_choice"] == saved
    assert (summary.get("frozen_part_backend") == "onnxruntime") == (first == "onnxruntime")
    assert metrics(resumed) == metrics(reference)


def test_an_eager_fallback_is_kept_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(feats, "_onnxruntime", broken)
    interrupt_at(monkeypatch, 3, "sigint")
    with pytest.warns(UserWarning, match="exporter unavailable"), pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut", extract_backend="onnxruntime"))
    cut = tmp_path / "runs" / "cut"
    saved = torch.load(cut / "last.pt", weights_only=False)["stage_info"]["head"]["backend_choice"]
    assert saved == {"setting": "onnxruntime", "used": "eager",
                     "fallback": "onnxruntime failed (RuntimeError: exporter unavailable)"}
    monkeypatch.undo()  # ONNX Runtime works again, but the run continues on eager

    built: list[int] = []
    real = feats._onnxruntime
    monkeypatch.setattr(feats, "_onnxruntime", lambda *a, **k: built.append(1) or real(*a, **k))
    summary, _ = stage_info(resume_run(cut, quiet=True), "head")
    assert not built
    assert summary["backend_choice"] == saved and "frozen_part_backend" not in summary


def test_resumed_extraction_keeps_the_recorded_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # Stage "head" on cached features (no augmentation); the cache is gone when the run resumes.
    decide(monkeypatch, "onnxruntime")
    interrupt_at(monkeypatch, 3, "sigint")
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut", augment="none"))
    cut = tmp_path / "runs" / "cut"
    saved = torch.load(cut / "last.pt", weights_only=False)["stage_info"]["head"]
    assert saved["cached_features"] and saved["backend_choice"]["used"] == "onnxruntime"
    assert saved["feature_backends"] == dict.fromkeys(("train", "val", "test"), "onnxruntime")
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "cache" / "features")
    capsys.readouterr()

    calls = decide(monkeypatch, "eager")
    summary, last = stage_info(resume_run(cut, quiet=True), "head")
    assert not calls
    assert "onnxruntime ready" in capsys.readouterr().out
    assert summary["backend_choice"] == last["backend_choice"] == saved["backend_choice"]
    assert summary["feature_backends"] == saved["feature_backends"]


def small_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache disk too full for the stage's features (over cache_memory_gb, so they go to disk)."""
    from transferlab.training import cache_plan

    monkeypatch.setattr(cache_plan.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))


def test_a_resumed_stage_keeps_training_through_the_frozen_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk was full when the stage began: it trained through the frozen part, not on cached
    # features. The disk has room when the run resumes; the stage keeps to its path.
    small_disk(monkeypatch)
    reference = train_run(config(tmp_path, "ref", augment="none", cache_memory_gb=1e-9))
    interrupt_at(monkeypatch, 3, "sigint")
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut", augment="none", cache_memory_gb=1e-9))
    cut = tmp_path / "runs" / "cut"
    assert not torch.load(cut / "last.pt", weights_only=False)["stage_info"]["head"]["cached_features"]
    monkeypatch.undo()
    summary, _ = stage_info(resume_run(cut, quiet=True), "head")
    assert not summary["cached_features"]
    assert metrics(cut) == metrics(reference)


def test_a_resumed_cached_stage_does_not_switch_paths_when_the_disk_fills(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlab.errors import TransferlabError

    interrupt_at(monkeypatch, 3, "sigint")
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut", augment="none", cache_memory_gb=1e-9))
    cut = tmp_path / "runs" / "cut"
    assert torch.load(cut / "last.pt", weights_only=False)["stage_info"]["head"]["cached_features"]
    monkeypatch.undo()
    small_disk(monkeypatch)
    with pytest.raises(TransferlabError, match="continues trained the stage on cached features"):
        resume_run(cut, quiet=True)
