"""Freezing: frozen weights and BatchNorm statistics stay bit-identical through training steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.models import count_parameters, create_model, freeze


def _model():
    torch.manual_seed(0)
    return create_model("mobilenet_v2_paper", num_classes=5, width_mult=0.35, cifar_stem=True)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_steps(model: nn.Module, steps: int = 2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    model.train()  # must not wake up frozen BatchNorm
    for step in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_weights_and_batchnorm_statistics_do_not_move():
    model = _model()
    report = freeze(model, "rows.3")
    stages = dict(model.feature_stages())
    frozen = ["stem", "rows.0", "rows.1", "rows.2"]
    assert report.frozen_stages == tuple(frozen)
    before = {name: _snapshot(stages[name]) for name in stages}
    head_before = _snapshot(model.head)
    _train_steps(model)
    for name, module in stages.items():
        after = module.state_dict()
        if name in frozen:
            # weights, biases, running_mean, running_var, num_batches_tracked: all bit-identical
            assert all(torch.equal(after[k], v) for k, v in before[name].items()), name
            assert not any(m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d))
        else:
            changed = [k for k, v in before[name].items() if not torch.equal(after[k], v)]
            assert any(k.endswith("running_mean") for k in changed), name
            assert any(k.endswith("weight") for k in changed), name
    assert not torch.equal(model.head.state_dict()["fc.1.weight"], head_before["fc.1.weight"])


def test_freeze_all_trains_only_the_head():
    model = _model()
    report = freeze(model, "all")
    head = sum(p.numel() for p in model.head_parameters())
    assert (report.total, report.trainable) == count_parameters(model)
    assert report.trainable == head and report.frozen == report.total - head
    assert "trainable" in str(report) and "frozen" in str(report)
    backbone = _snapshot(model.backbone)
    _train_steps(model)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in backbone.items())


def test_unfreeze_restores_training_mode_everywhere():
    model = _model()
    freeze(model, "all")
    report = freeze(model, None)
    model.train()
    assert report.trainable == report.total and report.frozen_stages == ()
    assert all(m.training for m in model.modules())


def test_eval_then_train_keeps_frozen_batchnorm_in_inference_mode():
    model = _model()
    freeze(model, "rows.1")
    model.eval()
    model.train()
    stem_bn = model.backbone.stem[1]
    assert not stem_bn.training and model.backbone.conv_head[1].training


def test_unknown_boundary_lists_the_stages():
    with pytest.raises(TransferlabError, match="not a stage of mobilenet_v2_paper.*rows.0"):
        freeze(_model(), "Mixed_7b")


def test_inception_v3_studys_boundary_leaves_the_top_two_blocks_trainable():
    with torch.device("meta"):  # shapes and counts only: nothing allocated
        model = create_model("inception_v3", num_classes=100)
    report = freeze(model, "Mixed_7b")
    top = [model.backbone.Mixed_7b, model.backbone.Mixed_7c, model.head]
    assert report.trainable == sum(p.numel() for m in top for p in m.parameters())
    assert report.frozen_stages[-1] == "Mixed_7a"
