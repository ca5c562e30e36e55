"""Weights files: round trips, strict key checks, metadata honoured, the shared offline files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.inception_v3 import InceptionA

from tests.conftest import require_shared
from transferlab.errors import TransferlabError
from transferlab.models import (
    create_model,
    find_weights,
    get_model_entry,
    read_weights,
    save_weights,
)
from transferlab.models.timm_backbones import (
    _avg_pool_exclude_padding,
    exclude_padding_in_avg_pools,
)


def _small_mobilenet(num_classes: int = 6):
    torch.manual_seed(0)
    return create_model(
        "mobilenet_v2_paper", num_classes=num_classes, width_mult=0.35, cifar_stem=True
    )


def test_round_trip_through_safetensors_gives_identical_outputs(tmp_path):
    model = _small_mobilenet().eval()
    model.classes = [f"c{i}" for i in range(6)]
    path = save_weights(model, tmp_path / "m.safetensors")
    loaded = create_model("mobilenet_v2_paper", num_classes=6, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # The architecture options and preprocessing travel with the file.
    assert loaded.model_kwargs["width_mult"] == 0.35 and loaded.model_kwargs["cifar_stem"] is True
    assert loaded.pretrained_cfg == model.pretrained_cfg
    assert loaded.classes == model.classes and loaded.head_pretrained
    assert "classifier loaded" in loaded.load_report
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_other_class_count_loads_backbone_and_reinitialises_classifier(tmp_path):
    model = _small_mobilenet()
    path = save_weights(model, tmp_path / "m.safetensors")
    loaded = create_model("mobilenet_v2_paper", num_classes=3, weights=path)
    assert "re-initialised" in loaded.load_report and not loaded.head_pretrained
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("backbone.stem.0.weight"), "missing: stem.0.weight"),
        (
            lambda sd: sd.__setitem__("backbone.extra.weight", torch.zeros(1)),
            "unexpected: extra.weight",
        ),
        (
            lambda sd: sd.__setitem__("backbone.stem.0.weight", torch.zeros(1, 3, 3, 3)),
            "wrong shape: stem.0.weight",
        ),
    ],
)
def test_missing_extra_or_misshapen_keys_fail_with_their_names(tmp_path, edit, message):
    path = save_weights(_small_mobilenet(), tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    edit(state)
    save_file(state, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(TransferlabError, match=message):
        create_model("mobilenet_v2_paper", num_classes=6, weights=tmp_path / "bad.safetensors")


def test_torch_state_dict_file_loads(tmp_path):
    model = create_model("benchmark_cnn", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    loaded = create_model("benchmark_cnn", num_classes=10, weights=tmp_path / "cnn.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def _timm_file(tmp_path: Path, arch: str, metadata: dict[str, str]) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    net = timm.create_model(arch, **json.loads(metadata.get("timm_kwargs", "{}"))).eval()
    path = tmp_path / f"{arch}.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        path,
        metadata={"architecture": f"timm:{arch}", **metadata},
    )
    return path, net


def test_timm_layout_file_with_metadata_reproduces_the_timm_model(tmp_path):
    meta = {
        "timm_kwargs": '{"pad_type": "same"}',
        "mean": "0.5,0.5,0.5",
        "std": "0.5,0.5,0.5",
        "input_size": "160",
        "crop_pct": "0.9",
        "num_classes": "1000",
    }
    path, net = _timm_file(tmp_path, "mobilenetv2_035", meta)
    model = create_model(
        "timm:mobilenetv2_035", num_classes=1000, head="linear", weights=path
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
    assert model.model_kwargs["timm_kwargs"] == {"pad_type": "same"}
    cfg = model.pretrained_cfg
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.crop_pct) == (
        (160, 160),
        (0.5,) * 3,
        (0.5,) * 3,
        0.9,
    )
    # The same file into the study head keeps the backbone and says the classifier is new.
    study = create_model("timm:mobilenetv2_035", num_classes=1000, weights=path)
    assert "classifier re-initialised" in study.load_report


def test_weights_for_another_architecture_are_refused(tmp_path):
    path, _ = _timm_file(tmp_path, "mobilenetv2_035", {})
    with pytest.raises(TransferlabError, match="holds weights for timm:mobilenetv2_035"):
        create_model("resnet50", weights=path)


def test_weights_dir_finds_the_file_by_metadata_architecture(tmp_path):
    path, _ = _timm_file(tmp_path, "mobilenetv2_035", {})
    save_weights(create_model("benchmark_cnn", num_classes=4), tmp_path / "cnn.safetensors")
    entry = get_model_entry("timm:mobilenetv2_035")
    assert find_weights(tmp_path, entry.accepts(), entry.name) == path
    model = create_model("benchmark_cnn", num_classes=4, weights_dir=tmp_path)
    assert "cnn.safetensors" in model.load_report
    with pytest.raises(TransferlabError, match="no weights for resnet50 .*timm:mobilenetv2_035"):
        create_model("resnet50", weights_dir=tmp_path)
    save_weights(create_model("benchmark_cnn", num_classes=4), tmp_path / "cnn2.safetensors")
    with pytest.raises(TransferlabError, match="several weights files"):
        create_model("benchmark_cnn", num_classes=4, weights_dir=tmp_path)


def test_unreadable_or_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(TransferlabError, match="not found"):
        read_weights(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TransferlabError, match="not a readable safetensors"):
        read_weights(tmp_path / "bad.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(TransferlabError, match="unknown weights format"):
        read_weights(tmp_path / "w.npz")


def test_keras_average_pool_excludes_padding():
    x = torch.randn(2, 4, 7, 9)
    padded = F.avg_pool2d(x, 3, 1, 1)
    (fixed,) = _avg_pool_exclude_padding(None, (padded,))
    assert torch.allclose(fixed, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), atol=1e-6)
    block = torch.nn.Sequential(InceptionA(8, pool_features=4)).eval()
    before = block(x.repeat(1, 2, 1, 1))
    assert exclude_padding_in_avg_pools(block) == 1
    assert not torch.allclose(block(x.repeat(1, 2, 1, 1)), before)
    with pytest.raises(TransferlabError, match="only supported for inception_v3"):
        exclude_padding_in_avg_pools(torch.nn.Conv2d(1, 1, 1))


def test_shared_inception_v3_file_loads_strictly_into_the_backbone():
    path = require_shared("weights", "inception_v3.nsfwjs_partial_in1k.safetensors")
    model = create_model("inception_v3", num_classes=100, weights=path)
    stored = load_file(path)
    assert stored.keys() == model.backbone.state_dict().keys()
    for key, value in stored.items():
        assert torch.equal(model.backbone.state_dict()[key], value.float()), key
    assert "no classifier" in model.load_report
    assert model.model_kwargs["avg_pool_count_include_pad"] is False
    cfg = model.pretrained_cfg
    assert (cfg.input_size, cfg.mean, cfg.std) == ((299, 299), (0.5,) * 3, (0.5,) * 3)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert next(model.parameters()).dtype == torch.float32


def test_shared_weights_dir_honours_the_metadata_architecture():
    weights_dir = require_shared("weights")
    model = create_model("efficientnet_lite0", num_classes=10, weights_dir=weights_dir)
    assert model.model_kwargs["arch"] == "tf_efficientnet_lite0"
    assert "tf_efficientnet_lite0.in1k.safetensors" in model.load_report
    mobilenet = create_model("mobilenet_v2", num_classes=10, weights_dir=weights_dir)
    assert mobilenet.model_kwargs["timm_kwargs"] == {"pad_type": "same"}


def test_online_pretrained_path_keeps_the_imagenet_classifier(monkeypatch):
    """timm's `pretrained=True` path, with the download replaced by a seeded random network."""
    import transferlab.models.timm_backbones as tb

    calls = []
    real_create_model = timm.create_model

    def fake_create_model(arch, pretrained=False, **kwargs):
        calls.append(pretrained)
        torch.manual_seed(2)
        return real_create_model(arch, pretrained=False, **kwargs)

    monkeypatch.setattr(tb.timm, "create_model", fake_create_model)
    reference = fake_create_model("mobilenetv2_035").eval()
    model = create_model(
        "timm:mobilenetv2_035", num_classes=1000, head="linear", pretrained=True
    ).eval()
    assert calls[-1] is True and model.head_pretrained and "classifier loaded" in model.load_report
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    study = create_model("timm:mobilenetv2_035", num_classes=10, pretrained=True)
    assert "re-initialised for 10 classes" in study.load_report


def test_offline_pretrained_download_failure_says_what_to_do(monkeypatch):
    import transferlab.models.timm_backbones as tb

    def no_network(arch, pretrained=False, **kwargs):
        raise OSError("no route to huggingface.co")

    monkeypatch.setattr(tb.timm, "create_model", no_network)
    with pytest.raises(TransferlabError, match="--weights-dir"):
        create_model("mobilenet_v2", pretrained=True)
