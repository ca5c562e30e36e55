"""`transferlab export` and predict on exported files: round trips against PyTorch, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.export import OnnxClassifier, export_run
from transferlab.export.contract import METADATA_KEY
from transferlab.models import create_model, load_checkpoint_model
from transferlab.predict import expand_images, load_predict_model, predict_images

DATA = "synthetic:classes=4,train=32,test=8,size=8"
CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the benchmark CNN (trained at 32 px on 8 px synthetic images)."""
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    tmp = tmp_path_factory.mktemp("cnn")
    config = config_from_dict({
        "run_name": "run", "out_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
        "dataset": DATA, "val_fraction": 0.25, "batch_size": 8, "quiet": True,
        "extract_backend": "eager", "model": "benchmark_cnn",
        "stages": [{"name": "s", "train": "all", "epochs": 2, "lr": 3e-3}],
    })
    return train_run(config)


@pytest.fixture(scope="module")
def cnn_onnx(cnn_run: Path) -> Path:
    assert main(["export", str(cnn_run), "--format", "onnx"]) == 0
    return cnn_run / "model.onnx"


@pytest.fixture(scope="module")
def mnv2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A best.pt of timm's MobileNetV2 with a linear head, laid out as training writes it."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=len(CLASSES), head="linear", input_size=32)
    # Non-trivial BatchNorm statistics, so a wrong key mapping cannot give the same logits.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    run = tmp_path_factory.mktemp("mnv2") / "run"
    run.mkdir()
    torch.save({
        "model_name": model.model_name, "model_kwargs": model.model_kwargs,
        "num_classes": len(CLASSES), "classes": CLASSES, "state_dict": model.state_dict(),
        "pretrained_cfg": {**model.pretrained_cfg.to_dict(), "crop_mode": "squash"},
    }, run / "best.pt")
    return run


def _normalised(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the exported model does inside: NHWC [0, 255] -> normalised NCHW."""
    cfg = model.pretrained_cfg
    x = pixels.permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)


def _pixels(n: int, size: tuple[int, int], seed: int = 5) -> torch.Tensor:
    return torch.rand(n, *size, 3, generator=torch.Generator().manual_seed(seed)) * 255


def _images(folder: Path, n: int = 5) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_onnx_logits_match_pytorch(cnn_run, cnn_onnx, capsys):
    model = load_checkpoint_model(cnn_run / "best.pt").eval()
    exported = OnnxClassifier(cnn_onnx)
    assert exported.classes == model.classes and exported.num_classes == model.num_classes
    assert exported.pretrained_cfg == model.pretrained_cfg
    assert exported.metadata["input"]["layout"] == "NHWC"
    pixels = _pixels(7, model.pretrained_cfg.input_size)  # another batch size than the export's
    with torch.no_grad():
        expected = model(_normalised(model, pixels))
    got = exported(pixels.numpy())
    assert got.shape == (7, model.num_classes)
    assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_export_prints_the_checked_difference(cnn_run, tmp_path, capsys):
    out = tmp_path / "deep" / "m.onnx"
    assert main(["export", str(cnn_run / "best.pt"), "--out", str(out), "--opset", "18"]) == 0
    text = capsys.readouterr().out
    diff = float(text.split("largest logit difference ")[1].split()[0])
    assert out.is_file() and 0 <= diff <= 1e-4
    assert "float32 (batch, 32, 32, 3)" in text


def test_predict_on_onnx_gives_the_top1_of_best_pt(cnn_run, cnn_onnx, tmp_path, capsys):
    images = _images(tmp_path / "photos")
    results = {}
    for weights in (cnn_run / "best.pt", cnn_onnx):
        assert main(["predict", str(tmp_path / "photos"), "--weights", str(weights), "--json",
                     "--top", "2", "--device", "cpu"]) == 0
        results[weights.suffix] = json.loads(capsys.readouterr().out)
    pt, onnx = results[".pt"], results[".onnx"]
    assert [r["image"] for r in onnx] == [r["image"] for r in pt] == images
    assert [r["top"][0]["index"] for r in onnx] == [r["top"][0]["index"] for r in pt]
    for a, b in zip(onnx, pt, strict=True):
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(cnn_run, tmp_path, capsys):
    path = tmp_path / "m.pt"
    assert main(["export", str(cnn_run), "--format", "torchscript", "--out", str(path)]) == 0
    files = {f"{METADATA_KEY}.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=files)
    metadata = json.loads(files[f"{METADATA_KEY}.json"])
    model = load_checkpoint_model(cnn_run / "best.pt").eval()
    assert metadata["classes"] == model.classes
    assert tuple(metadata["preprocess"]["input_size"]) == model.pretrained_cfg.input_size
    pixels = _pixels(3, model.pretrained_cfg.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(_normalised(model, pixels)),
                                   rtol=0, atol=1e-4)


def test_safetensors_loads_into_timm_and_back_into_transferlab(mnv2_run, capsys):
    import timm

    assert main(["export", str(mnv2_run), "--format", "safetensors"]) == 0
    assert "timm layout" in capsys.readouterr().out
    path = mnv2_run / "model.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "timm:mobilenetv2_100" and meta["layout"] == "timm"
    assert json.loads(meta["classes"]) == CLASSES and meta["input_size"] == "32,32"
    assert not any(k.startswith(("backbone.", "head.")) for k in load_file(path))

    model = load_checkpoint_model(mnv2_run / "best.pt").eval()
    net = timm.create_model("mobilenetv2_100", num_classes=len(CLASSES), pretrained=False)
    net.load_state_dict(load_file(path), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(net.eval()(x), expected, rtol=0, atol=1e-5)
        again = create_model("mobilenet_v2", num_classes=len(CLASSES), head="linear", weights=path)
        torch.testing.assert_close(again.eval()(x), expected, rtol=0, atol=1e-5)
    assert again.classes == CLASSES and again.pretrained_cfg == model.pretrained_cfg
    # predict reads the model name, head, classes and preprocessing from the metadata.
    predictor = load_predict_model(None, weights=path)
    assert predictor.model_name == "mobilenet_v2" and predictor.classes == CLASSES


def test_safetensors_of_a_non_timm_model_says_how_to_load_it(cnn_run, tmp_path, capsys):
    path = tmp_path / "cnn.safetensors"
    assert main(["export", str(cnn_run), "--format", "safetensors", "--out", str(path)]) == 0
    text = capsys.readouterr().out
    assert "not loadable by timm.create_model because benchmark_cnn is not a timm model" in text
    assert "transferlab.models.create_model('benchmark_cnn'" in text
    model = load_checkpoint_model(cnn_run / "best.pt").eval()
    again = create_model("benchmark_cnn", num_classes=model.num_classes, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert again.classes == model.classes


def test_predict_expands_folders_recursively_images_only(tmp_path):
    top = _images(tmp_path / "a", 2)
    nested = _images(tmp_path / "a" / "z" / "deeper", 1)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "UPPER.JPG")
    single = _images(tmp_path / "b", 1)
    got = expand_images([tmp_path / "a", single[0]])
    assert got == sorted([*top, *nested, str(tmp_path / "a" / "UPPER.JPG")]) + single
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferlabError, match="holds no images"):
        expand_images([tmp_path / "empty"])


def test_export_errors_are_clear(cnn_run, tmp_path, capsys):
    (tmp_path / "norun").mkdir()
    assert main(["export", str(tmp_path / "norun")]) == 2
    assert "has no best.pt" in capsys.readouterr().err
    with pytest.raises(TransferlabError, match="unknown export format 'tflite'"):
        export_run(cnn_run, "tflite")
    assert main(["export", str(cnn_run), "--format", "tflite"]) == 2  # argparse: invalid choice
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(TransferlabError, match="--opset applies to --format onnx only"):
        export_run(cnn_run, "torchscript", opset=17)


def test_a_failed_onnx_check_leaves_no_file(cnn_run, tmp_path, monkeypatch):
    import transferlab.export.onnx_file as onnx_file

    monkeypatch.setattr(onnx_file, "LOGIT_TOLERANCE", -1.0)  # any difference fails
    (tmp_path / "out").mkdir()
    with pytest.raises(TransferlabError, match="disagrees with PyTorch.*nothing was written"):
        export_run(cnn_run, "onnx", out=tmp_path / "out" / "m.onnx")
    assert not list((tmp_path / "out").iterdir())  # neither the file nor a temporary one


def test_onnx_without_transferlab_metadata_is_refused(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    onnx_path = tmp_path / "plain.onnx"  # a valid ONNX model that transferlab did not write
    io_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", *[[i] for i in io_info])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              onnx_path)
    images = _images(tmp_path / "img", 1)
    assert main(["predict", *images, "--weights", str(onnx_path)]) == 2
    assert "has no transferlab metadata" in capsys.readouterr().err
    assert main(["predict", *images, "--weights", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_predict_on_onnx_refuses_another_model_name(cnn_onnx):
    with pytest.raises(TransferlabError, match="not mobilenet_v2; drop --model"):
        load_predict_model("mobilenet_v2", weights=cnn_onnx)
    assert predict_images(load_predict_model(None, weights=cnn_onnx), [], top=1) == []


def test_predict_decodes_photos_as_training_does(tmp_path):
    """A phone photo stored sideways with an EXIF orientation tag is predicted upright."""
    from transferlab.predict import load_image

    upright = np.zeros((20, 30, 3), dtype=np.uint8)
    upright[:, :10] = 255  # white left third
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # stored rotated 90 degrees left
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (20, 30, 3)
    assert pixels[:, :8].mean() > 200 and pixels[:, 12:].mean() < 50
