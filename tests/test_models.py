"""The model registry and the one contract every model follows (CPU, small inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.models import (
    PreprocessConfig,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    register_model,
)

# Smallest inputs that keep every model's feature map at least 1x1 (InceptionV3 needs 75 px).
SMALL_INPUT = {"inception_v3": 75}
NUM_CLASSES = 7



def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = SMALL_INPUT.get(name, 64)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=list_models())
def model_and_name(request):
    torch.manual_seed(0)
    return create_model(request.param, num_classes=NUM_CLASSES), request.param


def test_registry_lists_the_study_models():
    for name in (
        "benchmark_cnn",
        "mobilenet_v2_paper",
        "mobilenet_v2",
        "inception_v3",
        "efficientnet_lite0",
        "resnet50",
    ):
        assert name in list_models()


def test_forward_shape_finite_and_gradient_on_every_trainable_parameter(model_and_name):
    model, name = model_and_name
    model.train()
    model.zero_grad()
    out = model(_input(name))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    # None, not zero: timm zero-initialises the last BatchNorm of residual branches.
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_contract_features_head_stages(model_and_name):
    model, name = model_and_name
    model.eval()
    x = _input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.ndim == 4 and features.shape[1] == model.num_features
        assert torch.equal(model(x), model.forward_head(features))
        assert model.head.pool(features).shape == (2, model.num_features)
        assert torch.equal(model.head.fc(model.head.pool(features)), model.forward_head(features))
        y = x
        for _, stage in model.feature_stages():
            y = stage(y)
        assert torch.equal(y, features)
        if hasattr(model.backbone, "forward_features"):  # timm: our stages compose to timm's own
            assert torch.allclose(model.backbone.forward_features(x), features)
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert backbone.isdisjoint(head) and backbone | head == {id(p) for p in model.parameters()}
    assert isinstance(model.pretrained_cfg, PreprocessConfig)
    assert len(model.default_input_size) == 2


def test_reset_classifier(model_and_name):
    model, name = model_and_name
    model.reset_classifier(3)
    model.eval()
    with torch.no_grad():
        assert model(_input(name)).shape == (2, 3)
    assert model.num_classes == 3
    model.reset_classifier(NUM_CLASSES)


def test_benchmark_cnn_has_the_studys_17044_parameters():
    model = create_model("benchmark_cnn", num_classes=100)
    assert count_parameters(model) == (17_044, 17_044)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (2, 2) for c in convs)
    # 'same' padding: each block only halves the resolution (through its MaxPool).
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 4, 4)


def test_benchmark_cnn_computes_the_figures_conv_relu_maxpool_order():
    """Pooling before the ReLU (for speed) must give exactly the study's Conv, ReLU, MaxPool."""
    torch.manual_seed(0)
    model = create_model("benchmark_cnn", num_classes=100).eval()
    x = torch.randn(4, 3, 32, 32)
    reference = x
    for block in model.feature_stages():
        conv = next(m for m in block[1].modules() if isinstance(m, nn.Conv2d))
        reference = F.max_pool2d(F.relu(conv(F.pad(reference, (0, 1, 0, 1)))), 2)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), reference.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("width_mult", [1.0, 0.5])
def test_paper_mobilenet_v2_backbone_matches_torchvision(width_mult):
    ours = create_model("mobilenet_v2_paper", num_classes=100, width_mult=width_mult)
    reference = torchvision.models.mobilenet_v2(width_mult=width_mult)
    assert sum(p.numel() for p in ours.backbone_parameters()) == sum(
        p.numel() for p in reference.features.parameters()
    )
    # The study's head: dropout 0.3 then a 1x1 convolution (a Linear on the pooled map) to k.
    dropout, linear = ours.head.fc
    assert dropout.p == 0.3 and (linear.in_features, linear.out_features) == (1280, 100)


def test_paper_mobilenet_v2_cifar_stem_keeps_32px_inputs_spatial():
    plain = create_model("mobilenet_v2_paper", num_classes=10)
    cifar = create_model("mobilenet_v2_paper", num_classes=10, cifar_stem=True)
    x = torch.zeros(1, 3, 32, 32)
    assert plain.eval().forward_features(x).shape[-2:] == (1, 1)
    assert cifar.eval().forward_features(x).shape[-2:] == (4, 4)
    assert cifar.default_input_size == (32, 32) and plain.default_input_size == (224, 224)
    assert count_parameters(plain) == count_parameters(cifar)


def test_study_head_is_figure_3():
    model = create_model("efficientnet_lite0", num_classes=100, head="study")
    layers = list(model.head.fc)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert layers[0].out_features == 1024 and layers[2].p == 0.3 and layers[3].out_features == 100
    linear = create_model("efficientnet_lite0", num_classes=100, head="linear")
    assert isinstance(linear.head.fc, nn.Linear)


def test_timm_prefix_builds_any_timm_model():
    model = create_model("timm:resnet10t", num_classes=4, head="linear")
    assert model.model_name == "timm:resnet10t"
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_model_kwargs_pass_through_and_input_size_override():
    model = create_model("mobilenet_v2", num_classes=5, dropout=0.1, input_size=128)
    assert model.head.fc[2].p == 0.1
    assert model.pretrained_cfg.input_size == (128, 128)
    assert model.model_kwargs["input_size"] == [128, 128]


def test_bad_names_and_options_are_clear_errors():
    with pytest.raises(TransferlabError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(TransferlabError, match="has no option width"):
        create_model("benchmark_cnn", width=2)
    with pytest.raises(TransferlabError, match="unknown head"):
        create_model("benchmark_cnn", head="mlp")
    with pytest.raises(TransferlabError, match="no pretrained weights"):
        create_model("benchmark_cnn", pretrained=True)
    with pytest.raises(TransferlabError, match="timm has no model"):
        create_model("timm:not_a_model")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_model("benchmark_cnn", summary="again")(lambda **kw: None)


def test_model_info_counts_without_allocating():
    info = get_model_info("inception_v3", num_classes=100)
    assert info.input_size == (299, 299)
    assert info.params_total == 23_986_244  # 21,785,568 backbone + the study head for 100 classes
    assert "Mixed_7b" in info.stages
    assert get_model_info("benchmark_cnn").params_total == 17_044


def test_models_command_lists_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "17,044" in out and "299x299" in out


def test_models_command_describes_a_freeze(capsys):
    assert main(["models", "inception_v3", "--freeze", "Mixed_7b"]) == 0
    out = capsys.readouterr().out
    assert "Mixed_7b" in out and "trainable" in out and "frozen" in out
