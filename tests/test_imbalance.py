"""Uneven classes: the metrics, when the run counters them, the loss and sampler, best.pt, BatchNorm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from transferlab.config import config_from_dict, load_config
from transferlab.errors import TransferlabError
from transferlab.metrics import balanced_accuracy, macro_f1
from transferlab.recipes import describe
from transferlab.training import Batches, train_run
from transferlab.training.engine import evaluate, train_one_epoch
from transferlab.training.imbalance import (
    class_weights,
    logit_offsets,
    resolve,
)
from transferlab.training.stage_loop import is_better

# -- metrics ------------------------------------------------------------------------------------


def test_balanced_accuracy_and_macro_f1_against_a_hand_computed_confusion_matrix() -> None:
    # Confusion matrix (rows true, columns predicted):
    #   class 0: 8 right, 2 as class 1          recall 0.8
    #   class 1: 1 as class 0, 3 right          recall 0.75
    #   class 2: 1 as class 1, 1 right          recall 0.5
    labels = [0] * 10 + [1] * 4 + [2] * 2
    preds = [0] * 8 + [1] * 2 + [0, 1, 1, 1] + [1, 2]
    assert balanced_accuracy(labels, preds, 3) == pytest.approx((0.8 + 0.75 + 0.5) / 3)
    # precision: 0: 8/9, 1: 3/6, 2: 1/1; F1 = 2PR / (P + R)
    f1 = [2 * p * r / (p + r) for p, r in ((8 / 9, 0.8), (0.5, 0.75), (1.0, 0.5))]
    assert macro_f1(labels, preds, 3) == pytest.approx(np.mean(f1))
    # Top-1 is 12/16 = 0.75 here; a model answering class 0 always gets 10/16 top-1 but 1/3
    # balanced accuracy: the metric a majority class cannot game.
    assert balanced_accuracy(labels, [0] * 16, 3) == pytest.approx(1 / 3)
    # A class with no images is left out of the mean recall.
    assert balanced_accuracy([0, 0, 1], [0, 1, 1], 4) == pytest.approx((0.5 + 1.0) / 2)


def test_evaluate_reports_the_same_balanced_metrics() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(37, 5), torch.randint(0, 3, (37,))
    model = nn.Linear(5, 3)
    result = evaluate(model, Batches(x, y, 8), keep_logits=True, quiet=True)
    preds = result.logits.argmax(1)
    assert result.bal_acc == pytest.approx(balanced_accuracy(y, preds, 3))
    assert result.macro_f1 == pytest.approx(macro_f1(y, preds, 3))


# -- when the run counters it -------------------------------------------------------------------


def test_resolve_counts_the_classes_and_picks_by_the_ratio() -> None:
    uneven = resolve("auto", torch.tensor([0] * 30 + [1] * 10 + [2] * 5), 3, threshold=2.0)
    assert (uneven.method, uneven.uneven, uneven.ratio) == ("logit_adjust", True, 6.0)
    assert uneven.class_counts == [30, 10, 5]
    assert "uneven" in uneven.describe() and "logit-adjusted" in uneven.describe()
    even = resolve("auto", torch.tensor([0] * 10 + [1] * 9 + [2] * 10), 3, threshold=2.0)
    assert (even.method, even.uneven) == ("off", False)
    assert "even" in even.describe() and "plain cross-entropy" in even.describe()
    # An explicit method applies whatever the counts.
    assert resolve("class_weight", torch.tensor([0, 1]), 2, threshold=2.0).method == "class_weight"
    with pytest.raises(TransferlabError, match="imbalance"):
        resolve("oversample", torch.tensor([0, 1]), 2, threshold=2.0)


def test_config_rejects_a_bad_method_or_ratio() -> None:
    with pytest.raises(TransferlabError, match="imbalance="):
        config_from_dict({"imbalance": "oversample"})
    with pytest.raises(TransferlabError, match="imbalance_ratio"):
        config_from_dict({"imbalance_ratio": 0.5})


def _photo_folder(root: Path, train_counts: list[int], test_per_class: int = 4) -> Path:
    """train/<class>/ and test/<class>/ of small PNGs, one flat colour per class plus noise."""
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
    for split, counts in (("train", train_counts), ("test", [test_per_class] * len(train_counts))):
        for c, n in enumerate(counts):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colours[c]) + rng.normal(0, 20, (12, 12, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _run(tmp_path: Path, folder: Path, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    config = config_from_dict({
        "run_name": "run", "out_dir": str(tmp_path / "runs"), "data_root": str(tmp_path / "data"),
        "cache_dir": str(tmp_path / "cache"), "dataset": f"folder:{folder}", "val_fraction": 0.25,
        "batch_size": 8, "quiet": True, "extract_backend": "eager", "model": "benchmark_cnn",
        "head": "study", "stages": [{"name": "all", "train": "all", "epochs": 2, "lr": 1e-3}],
        **overrides,
    })
    run_dir = train_run(config)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_the_imbalance_default_is_on_for_an_uneven_folder_and_off_for_an_even_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uneven = _photo_folder(tmp_path / "uneven", [32, 12, 4])
    run_dir, summary = _run(tmp_path / "a", uneven)
    record = summary["imbalance"]
    assert record["requested"] == "auto" and record["method"] == "logit_adjust"
    assert record["uneven"] is True and record["ratio"] == pytest.approx(24 / 3)
    assert record["class_counts"] == [24, 9, 3]  # a quarter of each class went to validation
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["imbalance"] == "logit_adjust"
    assert "imbalance: classes uneven" in capsys.readouterr().out
    for key in ("test_bal_acc", "test_macro_f1"):
        assert 0.0 <= summary[key] <= 1.0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_bal_acc"] is not None for r in rows)
    assert "val_bal_acc" in (run_dir / "metrics.csv").read_text().splitlines()[0]

    even = _photo_folder(tmp_path / "even", [12, 12, 12])
    run_dir, summary = _run(tmp_path / "b", even)
    assert summary["imbalance"]["method"] == "off" and summary["imbalance"]["uneven"] is False
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["imbalance"] == "off"
    assert "imbalance: classes even" in capsys.readouterr().out


# -- the loss and the sampler do what they say ------------------------------------------------


def _one_epoch_loss(**kwargs: Any) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Train a linear model one full-batch step; its reported loss, logits before the step, y."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.tensor([0] * 10 + [1] * 4 + [2] * 2)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        logits = model(x)
    totals = train_one_epoch(model, Batches(x, y, 16), torch.optim.SGD(model.parameters(), lr=0.1),
                             quiet=True, **kwargs)
    return totals.loss, logits, y


def test_logit_adjustment_adds_tau_log_prior_to_the_logits_in_the_loss() -> None:
    counts = [10, 4, 2]
    offsets = logit_offsets(counts, tau=1.0)
    torch.testing.assert_close(offsets, torch.log(torch.tensor([10, 4, 2]) / 16.0))
    adjusted, logits, y = _one_epoch_loss(logit_offsets=offsets)
    assert adjusted == pytest.approx(F.cross_entropy(logits + offsets, y).item(), rel=1e-5)
    plain, _, _ = _one_epoch_loss()
    assert plain == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert adjusted != pytest.approx(plain, rel=1e-3)
    # tau scales the offset; an even prior shifts every logit alike: the loss is plain CE.
    torch.testing.assert_close(logit_offsets(counts, tau=0.5), 0.5 * offsets)
    even, _, _ = _one_epoch_loss(logit_offsets=logit_offsets([5, 5, 5]))
    assert even == pytest.approx(plain, rel=1e-6)


def test_class_weights_weigh_every_class_alike() -> None:
    weights = class_weights([10, 4, 2])
    torch.testing.assert_close(weights, 16 / (3 * torch.tensor([10.0, 4.0, 2.0])))
    torch.testing.assert_close((weights * torch.tensor([10.0, 4.0, 2.0])), torch.full((3,), 16 / 3))
    loss, logits, y = _one_epoch_loss(class_weights=weights)
    assert loss == pytest.approx(F.cross_entropy(logits, y, weight=weights).item(), rel=1e-5)


def test_balanced_sampler_draws_classes_uniformly_seeded_and_deterministic() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    x = torch.arange(len(labels)).float()[:, None]

    def drawn(seed: int, epoch: int) -> torch.Tensor:
        b = Batches(x, labels, 100, shuffle=True, seed=seed, epoch=epoch, train=True, balanced=True)
        return torch.cat([batch_y for _, batch_y in b])

    first = drawn(3, 0)
    assert len(first) == len(labels)  # an epoch is as long as the split
    assert torch.equal(first, drawn(3, 0))  # same seed and epoch: same draw
    assert not torch.equal(first, drawn(3, 1))  # each epoch draws anew
    counts = torch.cat([drawn(3, e) for e in range(5)]).bincount().double() / (5 * len(labels))
    torch.testing.assert_close(counts, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02,
                               rtol=0)
    plain = torch.cat([b[1] for b in Batches(x, labels, 100, shuffle=True, seed=3, train=True)])
    assert torch.equal(plain.sort().values, labels)  # without `balanced`: a permutation


# -- best.pt on uneven classes ------------------------------------------------------------------


def test_best_epoch_is_chosen_by_balanced_accuracy_when_uneven() -> None:
    # Epoch 1 answers the big class more often (higher top-1); epoch 2 recognises every class.
    first = {"val_acc1": 0.90, "val_bal_acc": 0.55, "val_loss": 0.5}
    second = {"val_acc1": 0.86, "val_bal_acc": 0.80, "val_loss": 0.6}
    assert is_better(second, [first], balanced=True)
    assert not is_better(second, [first], balanced=False)
    assert not is_better(first, [second], balanced=True)


def test_an_uneven_run_saves_best_pt_at_its_best_balanced_epoch(tmp_path: Path) -> None:
    uneven = _photo_folder(tmp_path / "uneven", [32, 12, 4])
    run_dir, summary = _run(tmp_path / "a", uneven, stages=[
        {"name": "all", "train": "all", "epochs": 3, "lr": 3e-3}])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = torch.load(run_dir / "best.pt", weights_only=False)
    chosen = max(range(len(rows)), key=lambda i: (rows[i]["val_bal_acc"], -rows[i]["val_loss"]))
    assert best["epoch"] == rows[chosen]["epoch"]
    assert best["val_bal_acc"] == pytest.approx(rows[chosen]["val_bal_acc"])


# -- BatchNorm in the finetune stage ------------------------------------------------------------


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("bn_frozen", [True, False])
def test_bn_frozen_keeps_batchnorm_in_inference_mode_while_training(bn_frozen: bool) -> None:
    model = _bn_model()
    bn = model[1]
    modes: list[bool] = []
    bn.register_forward_hook(lambda module, _in, _out: modes.append(module.training))
    before = (bn.running_mean.clone(), bn.weight.detach().clone())
    x, y = torch.randn(8, 3, 6, 6) * 3 + 1, torch.tensor([0, 1] * 4)
    train_one_epoch(model, Batches(x, y, 4), torch.optim.SGD(model.parameters(), lr=0.1),
                    bn_frozen=bn_frozen, quiet=True)
    assert modes == [not bn_frozen] * 2
    assert torch.equal(bn.running_mean, before[0]) is bn_frozen  # statistics fixed only when frozen
    assert not torch.equal(bn.weight.detach(), before[1])  # its scale and shift still train
    assert model[5].training  # the rest of the model trained in training mode


def test_the_finetune_recipe_sets_bn_frozen_and_the_field_can_be_turned_off() -> None:
    config = load_config(overrides={"pretrained": True})
    stages = {s.name: s for s in config.stages}
    assert stages["finetune"].bn_frozen is True
    assert stages["head"].bn_frozen is False
    lines = describe(config).splitlines()
    assert "BatchNorm frozen" in lines[2] and "BatchNorm frozen" not in lines[1]
    off = load_config(overrides={"pretrained": True}, sets=["stages.finetune.bn_frozen=false"])
    assert {s.name: s for s in off.stages}["finetune"].bn_frozen is False
