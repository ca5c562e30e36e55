"""Checkpoints are atomic; interrupted runs resume to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from transferlab.config import config_from_dict
from transferlab.errors import TransferlabError
from transferlab.training import engine, is_finished, resume_run, train_run
from transferlab.training.checkpoint import atomic_write, load_checkpoint, save_checkpoint

DATA = "synthetic:classes=4,train=64,test=24,size=8"



def config(tmp_path: Path, name: str, **overrides: Any) -> Any:
    """Two stages, dropout in the head and augmentation: every RNG a resume has to restore."""
    data: dict[str, Any] = {
        "run_name": name, "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": DATA, "val_fraction": 0.25, "batch_size": 8, "quiet": True,
        "augment": "standard", "model": "benchmark_cnn", "head": "study",
        "stages": [{"name": "head", "train": "head", "epochs": 2, "lr": 3e-3},
                   {"name": "all", "train": "all", "epochs": 2, "optimizer": "sgd", "lr": 0.05,
                    "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 0.5}],
    }
    data.update(overrides)
    return config_from_dict(data)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    keep = ("stage", "epoch", "train_loss", "train_acc1", "val_loss", "val_acc1", "lr")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keep} for r in rows]


def final(run_dir: Path) -> dict[str, Any]:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: s[k] for k in ("test_acc1", "test_acc5", "test_loss", "epochs", "best_val_acc1")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    return train_run(config(tmp_path_factory.mktemp("ref"), "ref"))


def interrupt_at(monkeypatch: pytest.MonkeyPatch, global_step: int, how: str) -> None:
    """Interrupt the run during its `global_step`-th training batch (counted over all epochs)."""
    original = engine.Batches.iterate
    seen = {"n": 0}

    def iterate(self: engine.Batches, start_step: int = 0) -> Any:
        for item in original(self, start_step):
            if self.shuffle:  # training batches only
                seen["n"] += 1
                if seen["n"] == global_step:
                    if how == "sigint":
                        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: finish the step, save, exit
                    else:
                        raise RuntimeError("simulated crash")  # no chance to save anything
            yield item

    monkeypatch.setattr(engine.Batches, "iterate", iterate)


@pytest.mark.parametrize("step", [3, 13])  # mid-epoch in stage 1, mid-epoch in stage 2
def test_ctrl_c_then_resume_matches_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  reference: Path, step: int) -> None:
    interrupt_at(monkeypatch, step, "sigint")
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut"))
    run_dir = tmp_path / "runs" / "cut"
    assert not is_finished(run_dir)
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["progress"]["step"] > 0  # saved mid-epoch, at the exact step
    monkeypatch.undo()
    resumed = resume_run(run_dir, quiet=True)
    assert metrics(resumed) == metrics(reference)
    assert final(resumed) == final(reference)


def test_crash_then_resume_from_periodic_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    reference: Path) -> None:
    interrupt_at(monkeypatch, 15, "crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config(tmp_path, "crash", checkpoint_every=2))
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "crash"
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert (state["stage_index"], state["progress"]["epoch"], state["progress"]["step"]) == (1, 0, 2)  # stage 2, first epoch, after step 2
    resumed = resume_run(run_dir, quiet=True)
    assert metrics(resumed) == metrics(reference)
    assert final(resumed) == final(reference)


def test_resume_refuses_finished_and_missing_runs(tmp_path: Path, reference: Path) -> None:
    with pytest.raises(TransferlabError, match="already finished"):
        resume_run(reference)
    with pytest.raises(TransferlabError, match="not a run directory"):
        resume_run(tmp_path / "nothing")


def test_resume_with_another_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    interrupt_at(monkeypatch, 3, "sigint")
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, "cut"))
    monkeypatch.undo()
    with pytest.raises(TransferlabError, match="changed: batch_size"):
        train_run(config(tmp_path, "cut", batch_size=4), resume=True)


def test_atomic_write_never_leaves_a_half_written_file(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint({"version": 1, "w": torch.ones(3)}, path)

    def crash_midway(f: Any) -> None:
        f.write(b"PARTIAL" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash_midway)
    assert load_checkpoint(path)["version"] == 1  # the old file, intact
    assert os.listdir(tmp_path) == ["best.pt"]  # and no temp file left behind


def test_checkpoint_crash_inside_torch_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"version": 1}, path)
    real_save = torch.save

    def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint({"version": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_atomic_files_get_the_umask_default_mode(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; an atomically written file must look like a plainly written one."""
    old_umask = os.umask(0o022)
    try:
        save_checkpoint({"version": 1}, tmp_path / "best.pt")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old_umask)
    mode = (tmp_path / "best.pt").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TransferlabError, match="cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(TransferlabError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_best_checkpoint_rebuilds_the_model(reference: Path) -> None:
    from transferlab.models import load_checkpoint_model

    ckpt = torch.load(reference / "best.pt", weights_only=False)
    for key in ("model_name", "model_kwargs", "num_classes", "classes", "state_dict",
                "pretrained_cfg", "config"):
        assert key in ckpt, key
    model = load_checkpoint_model(reference / "best.pt")
    assert model.num_classes == 4
