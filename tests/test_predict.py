"""`transferlab predict`: top-k with class names, from checkpoints and pretrained files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import require_shared
from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.models import CHECKPOINT_KEYS, create_model, load_checkpoint_model
from transferlab.predict import eval_transform, load_predict_model, predict_images

CLASSES = ["apple", "bee", "cat", "dog"]



def _checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A best.pt laid out as the training layer writes it (plus an unrelated config key)."""
    torch.manual_seed(0)
    model = create_model(
        "mobilenet_v2_paper", num_classes=len(CLASSES), width_mult=0.35, cifar_stem=True
    )
    model.eval()
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    torch.save(
        {
            "model_name": model.model_name,
            "model_kwargs": model.model_kwargs,
            "num_classes": len(CLASSES),
            "classes": CLASSES,
            "state_dict": model.state_dict(),
            "pretrained_cfg": model.pretrained_cfg.to_dict(),
            "config": {"epochs": 1},
        },
        path,
    )
    return path, model


def _images(tmp_path: Path, n: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_load_checkpoint_model_rebuilds_the_model(tmp_path):
    path, model = _checkpoint(tmp_path)
    loaded = load_checkpoint_model(path)
    assert set(CHECKPOINT_KEYS) <= set(torch.load(path, weights_only=True))
    assert loaded.classes == CLASSES and loaded.pretrained_cfg == model.pretrained_cfg
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_predict_json_from_a_transferlab_checkpoint(tmp_path, capsys):
    path, model = _checkpoint(tmp_path)
    images = _images(tmp_path)
    assert (
        main(
            ["predict", *images, "--weights", str(path), "--top", "3", "--json", "--device", "cpu"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == images
    transform = eval_transform(model.pretrained_cfg)
    for result, image in zip(results, images, strict=True):
        top = result["top"]
        assert len(top) == 3 and set(top[0]) == {"index", "name", "prob"}
        assert [t["name"] for t in top] == [CLASSES[t["index"]] for t in top]
        probs = [t["prob"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        with torch.no_grad():
            expected = model(transform(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
        assert top[0]["index"] == int(expected.argmax())
        assert top[0]["prob"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_predict_text_output(tmp_path, capsys):
    path, _ = _checkpoint(tmp_path)
    images = _images(tmp_path, 1)
    assert main(["predict", *images, "--weights", str(path), "--top", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    # The image and the answer (its top class), then the top classes with probabilities.
    assert out[0].startswith(f"{images[0]}: ") and len(out) == 3 and "%" in out[1]
    assert out[0].split(": ")[1] == out[1].split("%")[1].strip().rsplit(" (", 1)[0]


def test_predict_errors_are_clear(tmp_path, capsys):
    path, _ = _checkpoint(tmp_path)
    assert main(["predict", str(tmp_path / "missing.jpg"), "--weights", str(path)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(TransferlabError, match="--model is required"):
        load_predict_model(None)
    with pytest.raises(TransferlabError, match="say which weights"):
        load_predict_model("mobilenet_v2")
    with pytest.raises(TransferlabError, match="not resnet50"):
        load_predict_model("resnet50", weights=path)


def test_predict_images_matches_direct_forward(tmp_path):
    path, model = _checkpoint(tmp_path)
    images = _images(tmp_path, 2)
    predictions = predict_images(load_checkpoint_model(path), images, top=1, batch_size=1)
    assert [p.top[0].name in CLASSES for p in predictions] == [True, True]


def _imagenet_scores(capsys, model: str, weights: Path, samples: Path) -> tuple[int, int]:
    images = sorted(str(p) for p in samples.glob("*.jpg"))
    assert len(images) == 20
    assert (
        main(
            [
                "predict",
                *images,
                "--model",
                model,
                "--weights",
                str(weights),
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    top1 = top5 = 0
    for result in results:
        label = int(Path(result["image"]).stem.rsplit("_", 1)[1])  # imagenet_II_LABEL.jpg
        indices = [t["index"] for t in result["top"]]
        top1 += indices[0] == label
        top5 += label in indices
    return top1, top5


@pytest.mark.parametrize(
    "model, weights",
    [
        ("mobilenet_v2", "mobilenetv2_100.coral_int8_in1k.safetensors"),
        ("efficientnet_lite0", "tf_efficientnet_lite0.in1k.safetensors"),
    ],
)
def test_pretrained_weights_and_preprocessing_on_imagenet_samples(capsys, model, weights):
    """Weak correctness (Keras applications_test style): wrong size or normalisation fails it."""
    samples = require_shared("data", "samples", "imagenet")
    path = require_shared("weights", weights)
    top1, top5 = _imagenet_scores(capsys, model, path, samples)
    assert top1 >= 15 and top5 >= 18, (top1, top5)


def test_backbone_only_file_cannot_predict():
    path = require_shared("weights", "inception_v3.nsfwjs_partial_in1k.safetensors")
    with pytest.raises(TransferlabError, match="no classifier"):
        load_predict_model("inception_v3", weights=path)


@pytest.mark.parametrize("train", ["all", "head"])  # through the model, and on cached features
def test_predict_on_a_run_checkpoint_reproduces_the_runs_test_logits(tmp_path, train):
    """predict prepares a file as the run prepared its test set (8 px images trained at 32 px)."""
    from transferlab.config import config_from_dict
    from transferlab.data import load_dataset
    from transferlab.training import train_run

    data = "synthetic:classes=4,train=32,test=8,size=8"
    config = config_from_dict({
        "run_name": "run", "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "dataset": data, "val_fraction": 0.25, "batch_size": 8, "quiet": True,
        "extract_backend": "eager", "model": "benchmark_cnn",
        "stages": [{"name": "s", "train": train, "epochs": 1, "lr": 3e-3}],
    })
    run_dir = train_run(config)
    with np.load(run_dir / "predictions_test.npz") as z:
        expected = torch.from_numpy(z["logits"])
    test = load_dataset(data)["test"]
    model = load_predict_model(None, weights=run_dir / "best.pt")
    cfg = model.pretrained_cfg
    assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode) == ((32, 32), 1.0, "squash")
    transform = eval_transform(cfg)
    for i in (0, 5):
        path = tmp_path / f"test{i}.png"  # PNG: lossless, the same pixels as the dataset's
        Image.fromarray(test.images[i]).save(path)
        with torch.no_grad():
            logits = model.eval()(transform(Image.open(path))[None])[0]
        torch.testing.assert_close(logits, expected[i], rtol=1e-4, atol=1e-5)
        top = predict_images(model, [str(path)], top=1)[0].top[0]
        probs = (expected[i] / model.temperature).softmax(0)  # calibrated by the run's temperature
        assert top.index == int(probs.argmax()) and top.prob == pytest.approx(float(probs.max()), abs=1e-5)
