"""Training engine: batches, optimisers, early stopping, the NaN guard, cached features, a whole run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.cli import main
from transferlab.config import EarlyStoppingConfig, StageConfig, config_from_dict
from transferlab.data import SplitIndices
from transferlab.models import create_model, freeze, load_checkpoint_model
from transferlab.training import Batches, fit, is_finished, train_run
from transferlab.training.distributed import DistContext
from transferlab.training.engine import StagePlan
from transferlab.training.optim import StageScheduler, build_optimizer

DATA = "synthetic:classes=4,train=64,test=24,size=8"



def tiny_config(tmp_path: Path, **overrides: Any) -> Any:
    """A config that trains benchmark_cnn on a tiny synthetic set in about a second."""
    data: dict[str, Any] = {
        "run_name": "run", "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": DATA, "val_fraction": 0.25, "batch_size": 8, "quiet": True,
        "extract_backend": "eager", "model": "benchmark_cnn", "head": "study",
        "stages": [{"name": "head", "train": "head", "epochs": 2, "lr": 3e-3},
                   {"name": "all", "train": "all", "epochs": 1, "optimizer": "sgd", "lr": 0.05,
                    "momentum": 0.9}],
    }
    data.update(overrides)
    return config_from_dict(data)


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- batches ------------------------------------------------------------------------------------

def test_batches_shards_union_is_the_global_batch() -> None:
    x = torch.arange(22).float()[:, None]
    y = torch.arange(22)
    single = [b[1] for b in Batches(x, y, 6, shuffle=True, seed=3, epoch=1, train=True)]
    shards = [[b[1] for b in Batches(x, y, 6, shuffle=True, seed=3, epoch=1, train=True,
                                     dist=DistContext(rank=r, world_size=2))] for r in range(2)]
    assert len(single) == 4  # the final batch of 4 gives each of 2 ranks 2 samples: kept
    for s, a, b in zip(single, *shards, strict=True):
        assert sorted(s.tolist()) == sorted(a.tolist() + b.tolist())
    again = [b[1] for b in Batches(x, y, 6, shuffle=True, seed=3, epoch=1, train=True).iterate(2)]
    assert torch.equal(again[0], single[2])  # resuming at a step gives the same batch


def test_training_drops_a_final_batch_of_one() -> None:
    x, y = torch.zeros(9, 2), torch.zeros(9, dtype=torch.long)
    assert len(Batches(x, y, 4, train=True)) == 2
    assert len(Batches(x, y, 4)) == 3  # evaluation keeps every sample


# -- optimisers and schedules -----------------------------------------------------------------

def test_rmsprop_matches_keras_update_rule() -> None:
    """Keras RMSprop: ms = rho ms + (1 - rho) g^2; w -= lr g / (sqrt(ms) + eps)."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer(StageConfig(optimizer="rmsprop"), [w])
    ms, ref = torch.zeros(2), w.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        (w ** 3).sum().backward()
        g = w.grad.detach().clone()
        ms = 0.9 * ms + 0.1 * g**2
        ref = ref - 1e-3 * g / (ms.sqrt() + 1e-7)
        opt.step()
        torch.testing.assert_close(w.detach(), ref)


def test_sgd_nesterov_matches_keras_and_frozen_parameters_excluded() -> None:
    """Keras SGD(nesterov): v = m v - lr g; w += m v - lr g. Frozen parameters never move."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    lr, m = 0.1, 0.9
    opt = build_optimizer(StageConfig(optimizer="sgd", lr=lr, momentum=m, nesterov=True),
                          model.parameters())
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model[1].parameters()}
    ref = [p.detach().clone() for p in model[1].parameters()]
    velocity = [torch.zeros_like(p) for p in ref]
    x = torch.randn(5, 3)
    for _ in range(3):
        opt.zero_grad()
        (model(x) ** 2).sum().backward()
        grads = [p.grad.detach().clone() for p in model[1].parameters()]
        for i, g in enumerate(grads):
            velocity[i] = m * velocity[i] - lr * g
            ref[i] = ref[i] + m * velocity[i] - lr * g
        opt.step()
        for p, r in zip(model[1].parameters(), ref, strict=True):
            torch.testing.assert_close(p.detach(), r)
    for p, f in zip(model[0].parameters(), frozen, strict=True):
        assert torch.equal(p.detach(), f)


def test_plateau_schedule_matches_keras_reduce_lr_on_plateau() -> None:
    """Keras ReduceLROnPlateau(patience=2): the lr drops after 2 epochs in a row without improvement."""
    w = nn.Parameter(torch.ones(1))
    stage = StageConfig(lr=1.0, schedule="plateau", plateau_patience=2, gamma=0.5)
    opt = build_optimizer(stage, [w])
    sched = StageScheduler(opt, stage, steps_per_epoch=1)
    lrs = []
    for val_loss in (1.0, 1.1, 1.2, 1.3, 0.5, 0.6):
        sched.step_epoch(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5]


def test_warmup_then_cosine() -> None:
    w = nn.Parameter(torch.ones(1))
    stage = StageConfig(lr=1.0, epochs=4, schedule="cosine", warmup_epochs=1, min_lr=0.0)
    opt = build_optimizer(stage, [w])
    sched = StageScheduler(opt, stage, steps_per_epoch=2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(8):
        sched.step_batch()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and lrs[2:] == sorted(lrs[2:], reverse=True)


# -- early stopping and the NaN guard ------------------------------------------------------------

def _conflicting_plan(patience: int) -> tuple[StagePlan, nn.Module]:
    """Train labels are all 0, validation labels all 1: every epoch makes val_loss worse."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(32, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    plan = StagePlan(
        name="s", model=model, optimizer=opt,
        train_batches=lambda e: Batches(x, torch.zeros(32, dtype=torch.long), 8, shuffle=True, epoch=e),
        val_batches=Batches(x, torch.ones(32, dtype=torch.long), 16), epochs=10,
        early_stopping=EarlyStoppingConfig(enabled=True, monitor="val_loss", patience=patience,
                                           restore_best=True), quiet=True)
    return plan, model


def test_early_stopping_fires_and_restores_best_weights() -> None:
    plan, model = _conflicting_plan(patience=2)
    snapshots: list[dict[str, torch.Tensor]] = []
    seen: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any], progress: Any) -> None:
        seen.append(row)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    progress = fit(plan, on_epoch=on_epoch, log=lambda m: None)
    assert progress.stopped == "early_stopping"
    assert len(seen) == 3  # best at epoch 1, then 2 epochs without improvement
    assert seen[0]["val_loss"] < seen[1]["val_loss"] < seen[2]["val_loss"]
    # The weights now are epoch 1's (the best), not those the last epoch ended with.
    first_epoch_weights = _conflicting_weights_after_one_epoch()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, first_epoch_weights[key])
        assert not torch.equal(value, snapshots[1][key])


def _conflicting_weights_after_one_epoch() -> dict[str, torch.Tensor]:
    plan, model = _conflicting_plan(patience=2)
    plan.epochs = 1
    fit(plan, log=lambda m: None)
    return model.state_dict()


def test_early_stopping_min_delta_and_monitor_direction() -> None:
    from transferlab.training.engine import EarlyStopping

    es = EarlyStopping(EarlyStoppingConfig(enabled=True, monitor="val_acc1", min_delta=0.05, patience=2))
    assert not es.update(0.50, 0)
    assert not es.update(0.54, 1)  # +0.04 is not an improvement: wait 1
    assert es.update(0.60, 2) is False and es.best == 0.60  # +0.10 is
    assert not es.update(0.61, 3)
    assert es.update(0.62, 4)  # second epoch without a 0.05 gain: stop


def test_nan_loss_stops_the_stage_and_restores_best() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(32, 3)
    y = torch.randint(0, 2, (32,))
    poisoned = x.clone()
    poisoned[20:] = float("nan")  # from the third batch of the second epoch on... every epoch
    calls = {"n": 0}

    def train_batches(epoch: int) -> Batches:
        calls["n"] += 1
        return Batches(x if epoch == 0 else poisoned, y, 8)

    plan = StagePlan(name="s", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     train_batches=train_batches, val_batches=Batches(x, y, 16), epochs=5, quiet=True)
    messages: list[str] = []
    progress = fit(plan, log=messages.append)
    assert progress.stopped == "non_finite_loss" and progress.epoch == 1
    assert any("nan" in m.lower() and "restored the weights of epoch 1" in m for m in messages)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # best (epoch 1) weights back


def test_run_with_nan_stage_keeps_best_checkpoint(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, stages=[
        {"name": "head", "train": "head", "epochs": 1},
        {"name": "boom", "train": "all", "optimizer": "sgd", "lr": 1e30, "epochs": 2},
    ])
    run_dir = train_run(config)
    summary = _strict_json(run_dir / "summary.json")
    assert "non-finite" in summary["stopped"]
    ckpt = torch.load(run_dir / "best.pt", weights_only=False)
    assert ckpt["stage"] == "head"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert np.isfinite(summary["test_acc1"])


def _strict_json(path: Path) -> Any:
    """Parse JSON, refusing the NaN / Infinity tokens json.dumps writes by default."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{path.name} holds {token}: not valid JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_nan_in_the_first_epoch_writes_no_test_metrics(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, quiet=False, stages=[
        {"name": "boom", "train": "all", "optimizer": "sgd", "lr": 1e30, "epochs": 2}])
    run_dir = train_run(config)
    out = capsys.readouterr().out
    summary = _strict_json(run_dir / "summary.json")
    assert "non-finite" in summary["stopped"] and summary["epochs"] == {"boom": 0}
    assert summary["test_acc1"] is None and summary["test_loss"] is None
    assert not (run_dir / "best.pt").exists() and not (run_dir / "predictions_test.npz").exists()
    assert "no best checkpoint" in out and "best checkpoint is kept" not in out


# -- cached features -----------------------------------------------------------------------------

@pytest.mark.parametrize("train", ["head", "from:block3"])
def test_cached_features_give_the_same_training(tmp_path: Path, train: str) -> None:
    """Same initial weights, same batches: cached and through-the-backbone training agree."""
    stages = [{"name": "s", "train": train, "epochs": 2, "lr": 3e-3}]
    cached = train_run(tiny_config(tmp_path / "a", stages=[{**stages[0], "cache_features": "true"}]))
    direct = train_run(tiny_config(tmp_path / "b", stages=[{**stages[0], "cache_features": "false"}]))
    a, b = rows(cached), rows(direct)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5"):
            if ra[key] is None or rb[key] is None:  # top-5 is not reported for 5 classes or fewer
                assert ra[key] is rb[key] is None, key
                continue
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    sa = json.loads((cached / "summary.json").read_text())
    sb = json.loads((direct / "summary.json").read_text())
    assert sa["stages"]["s"]["cached_features"] and not sb["stages"]["s"]["cached_features"]
    assert sa["test_acc1"] == pytest.approx(sb["test_acc1"])
    assert sa["test_loss"] == pytest.approx(sb["test_loss"], rel=1e-5)


def test_feature_cache_is_reused_and_keyed(tmp_path: Path) -> None:
    stage = [{"name": "s", "train": "head", "epochs": 1, "cache_features": "true"}]
    first = train_run(tiny_config(tmp_path, stages=stage, run_name="one"))
    entries = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(entries) == 3  # train, val, test
    second = train_run(tiny_config(tmp_path, stages=stage, run_name="two"))
    assert sorted((tmp_path / "cache" / "features").iterdir()) == entries
    info = json.loads((second / "summary.json").read_text())["stages"]["s"]
    assert info["extracted_images"] == 0  # all from disk
    splits = SplitIndices.load(first / "splits.npz")
    with np.load(first / "predictions_test.npz") as z:
        n_test = len(z["labels"])
    extracted = json.loads((first / "summary.json").read_text())["stages"]["s"]["extracted_images"]
    assert extracted == len(splits.train) + len(splits.val) + n_test
    train_run(tiny_config(tmp_path, stages=stage, run_name="three", seed=1))  # other frozen weights
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 6


def test_feature_cache_key_covers_model_options_and_precision(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Options that change the features but not the weights, and the precision, make new entries."""
    from transferlab.training import run as run_module
    from transferlab.training.device import Precision

    features = tmp_path / "cache" / "features"
    stage = [{"name": "s", "train": "head", "epochs": 1, "cache_features": "true"}]
    net = {"model": "mobilenet_v2_paper", "stages": stage}

    def kwargs(dropout: float) -> dict[str, Any]:
        return {"width_mult": 0.35, "cifar_stem": True, "dropout": dropout}

    a = train_run(tiny_config(tmp_path, run_name="a", model_kwargs=kwargs(0.2), **net))
    assert len(list(features.iterdir())) == 3
    b = train_run(tiny_config(tmp_path, run_name="b", model_kwargs=kwargs(0.3), **net))
    frozen_a = torch.load(a / "best.pt", weights_only=True)["state_dict"]
    frozen_b = torch.load(b / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(frozen_a[k], frozen_b[k]) for k in frozen_a if k.startswith("backbone."))
    assert len(list(features.iterdir())) == 6  # same frozen weights, other model_kwargs
    monkeypatch.setattr(run_module, "select_precision", lambda amp, device: Precision(torch.bfloat16, False))
    train_run(tiny_config(tmp_path, run_name="c", model_kwargs=kwargs(0.2), **net))
    assert len(list(features.iterdir())) == 9  # bf16 features are other features


def test_boundary_cache_over_memory_budget_is_memory_mapped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stages = [{"name": "s", "train": "from:block2", "epochs": 1}]
    mapped = train_run(tiny_config(tmp_path / "a", cache_memory_gb=1e-9, quiet=False, stages=stages))
    assert "written to disk and memory-mapped" in capsys.readouterr().out
    assert json.loads((mapped / "summary.json").read_text())["stages"]["s"]["cached_features"]
    held = train_run(tiny_config(tmp_path / "b", stages=stages))
    # The same features, the same training: identical weights whether mapped or in memory.
    a = torch.load(mapped / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(held / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_boundary_cache_over_budget_and_disk_trains_through_the_backbone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from transferlab.training import cache_plan

    monkeypatch.setattr(cache_plan.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
    config = tiny_config(tmp_path, cache_memory_gb=1e-9, quiet=False,
                         stages=[{"name": "s", "train": "from:block2", "epochs": 1}])
    run_dir = train_run(config)
    assert "training through the frozen part" in capsys.readouterr().out
    assert not json.loads((run_dir / "summary.json").read_text())["stages"]["s"]["cached_features"]


def test_cache_refused_with_augmentation(tmp_path: Path) -> None:
    from transferlab.errors import TransferlabError

    config = tiny_config(tmp_path, augment="standard",
                         stages=[{"name": "s", "train": "head", "cache_features": "true"}])
    with pytest.raises(TransferlabError, match="augment"):
        train_run(config)


def test_extractor_falls_back_to_eager_when_compile_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlab.training.features import make_extractor

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    prefix = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    sample = torch.randn(2, 3, 8, 8)
    notes: list[str] = []
    with pytest.warns(UserWarning, match="falling back to eager"):
        fn, used = make_extractor(prefix, "compile", sample, 10_000, log=notes.append)
    assert used == "eager" and fn is prefix and "falling back" in notes[0]
    assert make_extractor(prefix, "auto", sample, 10, log=notes.append)[1] == "eager"  # small split


@pytest.mark.slow
def test_extractor_compile_matches_eager() -> None:
    from transferlab.training.features import make_extractor

    torch.manual_seed(0)
    model = create_model("benchmark_cnn", num_classes=4).eval()
    prefix = nn.Sequential(*[m for _, m in model.feature_stages()])
    sample = torch.randn(4, 3, 32, 32)
    fn, used = make_extractor(prefix, "compile", sample, 10_000, log=lambda m: None)
    assert used == "compile"
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fn(x), prefix(x), rtol=1e-4, atol=1e-5)


# -- a whole run ----------------------------------------------------------------------------------

def test_run_directory_contract(tmp_path: Path) -> None:
    run_dir = train_run(tiny_config(tmp_path))
    assert is_finished(run_dir)
    for name in ("config.yaml", "splits.npz", "metrics.csv", "metrics.jsonl", "best.pt", "last.pt",
                 "predictions_test.npz", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").iterdir())
    s = json.loads((run_dir / "summary.json").read_text())
    for key in ("run_name", "model", "pretrained", "dataset", "classes", "test_acc1", "test_acc5",
                "epochs", "epoch_time_s", "eval_time_s", "images_per_s", "wall_time_s",
                "params_total", "params_trainable", "device", "versions"):
        assert key in s, key
    assert s["epochs"] == {"head": 2, "all": 1}
    assert 0 <= s["test_acc1"] <= 1
    assert s["test_acc5"] is None  # 4 classes: top-5 would be 100% by construction, so not reported
    assert s["epoch_time_s"] > 0 and s["images_per_s"] > 0
    assert s["params_trainable"] == s["params_total"]  # the last stage trains everything
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["stage", "epoch", "train_loss"] and "images_per_s" in header
    pred = np.load(run_dir / "predictions_test.npz")
    assert pred["logits"].shape == (24, 4) and pred["logits"].dtype == np.float32
    assert (pred["logits"].argmax(1) == pred["labels"]).mean() == pytest.approx(s["test_acc1"])
    model = load_checkpoint_model(run_dir / "best.pt")
    assert model.classes == s["classes"]


def test_frozen_backbone_really_stays_frozen(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, stages=[{"name": "s", "train": "from:block3", "epochs": 1,
                                            "cache_features": "false"}])
    torch.manual_seed(config.seed)
    initial = create_model("benchmark_cnn", num_classes=4, head="study").state_dict()
    run_dir = train_run(config)
    after = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    for key, value in initial.items():
        changed = not torch.equal(value, after[key])
        assert changed == (not key.startswith(("backbone.block1", "backbone.block2"))), key


def test_val_fraction_zero_disables_early_stopping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, val_fraction=0.0, stages=[
        {"name": "s", "epochs": 2, "early_stopping": {"patience": 0}}])
    run_dir = train_run(config)
    assert "early stopping is disabled" in capsys.readouterr().out
    assert [r["val_loss"] for r in rows(run_dir)] == [None, None]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == {"s": 2}


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--dataset", DATA, "--out-dir", str(tmp_path), "--run-name", "cli",
                 "--batch-size", "16", "--set", "stages.0.epochs=1", "--quiet"])
    assert code == 0 and is_finished(tmp_path / "cli")
    assert main(["train", "--dataset", DATA, "--out-dir", str(tmp_path), "--run-name", "cli"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "cli"), "--seed", "3"]) == 2


def test_study_inception_recipe_freezes_the_top_two_blocks() -> None:
    from transferlab.config import load_config
    from transferlab.training.stage_loop import apply_freeze as _apply_freeze

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "study_inception_v3.yaml")
    model = create_model("inception_v3", num_classes=100, head="study")
    _apply_freeze(model, config.stages[0].train)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head"}
    _apply_freeze(model, config.stages[1].train)
    trainable = {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.Mixed_7b", "backbone.Mixed_7c", "head.fc"}
    model.train()
    frozen_bn = [m for n, m in model.named_modules() if "Mixed_7a" in n and isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    freeze(model, None)
