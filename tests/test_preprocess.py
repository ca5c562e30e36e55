"""One preprocessing path: `predict` and the exports reproduce a photo-folder run's own test logits.

A tiny run trains on an image folder made here, then the test split's own files (named in the
run's split_files.json) go through `predict` (the Python function and the CLI) and through the
ONNX and TorchScript exports, and `evaluate` predicts the decoded test split from best.pt; every one must give the logits of the run's `predictions_test.npz`.
Two folders: JPEG photos of mixed sizes (stored by shorter side and centre crop at 37 px, then
resized to the 32 px input per batch: two resamples, and the larger photos decoded by libjpeg at
a reduced scale), and PNGs that all share one 24 px size (kept native, resized per batch).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.data.preprocess import Preprocess, PreprocessConfig, decode_plan
from transferlab.predict import load_predict_model, predict_images

TOLERANCE = 1e-4  # largest |logit| difference allowed against the run's test pass
# (height, width) of the mixed-size photos: portrait, landscape, square, some larger than twice
# the stored 37 px so that libjpeg decodes them at half scale (Image.draft).
PHOTO_SIZES = [(90, 120), (60, 45), (37, 50), (120, 100), (48, 48), (80, 77), (41, 66), (100, 75)]
NATIVE_SIZE = (24, 24)


def _image(rng: np.random.Generator, label: int, size: tuple[int, int]) -> np.ndarray:
    """A smooth gradient in a class colour plus noise: learnable, and not flat (resampling shows)."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    base = np.stack([xs / w, ys / h, (xs + ys) / (h + w)], axis=-1) * 160
    base[..., label] += 80
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _folder(root: Path, kind: str) -> Path:
    """Two class folders of 10 images each (the run carves a 20% test split from them)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("ant", "bee")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            if kind == "photo":
                size = PHOTO_SIZES[(i + 3 * label) % len(PHOTO_SIZES)]
                Image.fromarray(_image(rng, label, size)).save(root / name / f"{i}.jpg", quality=90)
            else:
                Image.fromarray(_image(rng, label, NATIVE_SIZE)).save(root / name / f"{i}.png")
    return root


def _train(tmp_path: Path, kind: str, train: str) -> tuple[Path, Path]:
    from transferlab.config import config_from_dict
    from transferlab.training import train_run

    source = _folder(tmp_path / kind, kind)
    config = config_from_dict({
        "run_name": "run", "out_dir": str(tmp_path / "runs"), "data_root": str(tmp_path / "data"),
        "cache_dir": str(tmp_path / "features"), "dataset": f"folder:{source}", "workers": 1,
        "val_fraction": 0.25, "batch_size": 4, "quiet": True, "extract_backend": "eager",
        "model": "benchmark_cnn", "stages": [{"name": "s", "train": train, "epochs": 1, "lr": 3e-3}],
    })
    return train_run(config), source


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(("kind", "train"), [("photo", "all"), ("photo", "head"), ("native", "all")])
def test_predict_and_exports_reproduce_the_runs_test_logits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, train: str) -> None:
    from transferlab.export import OnnxClassifier, export_run

    run_dir, source = _train(tmp_path, kind, train)
    with np.load(run_dir / "predictions_test.npz") as z:
        expected = torch.from_numpy(z["logits"])
    files = [str(source / f) for f in json.loads((run_dir / "split_files.json").read_text())["test"]]
    assert len(files) == len(expected) == 4
    model = load_predict_model(None, weights=run_dir / "best.pt").eval()
    cfg = model.pretrained_cfg
    if kind == "photo":
        assert cfg.stored_size == (37, 37) and cfg.input_size == (32, 32)
        assert len({Image.open(f).size for f in files}) > 1  # the test split really is mixed
    else:
        assert cfg.stored_size is None and cfg.crop_mode == "squash"

    # The Python path predict uses: both steps, then the model.
    prepare = Preprocess(cfg)
    with torch.no_grad():
        logits = model(prepare(files))
    torch.testing.assert_close(logits, expected, rtol=0, atol=TOLERANCE)

    # evaluate without the predictions file: best.pt on the run's decoded test split.
    from transferlab.evaluation import predict_from_checkpoint

    _, logits, _ = predict_from_checkpoint(run_dir, device="cpu")
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=TOLERANCE)

    # predict_images and the CLI (--json): the run's test probabilities, top class first.
    # The probabilities are calibrated by the temperature the run fitted on its validation split.
    assert model.temperature == pytest.approx(json.loads((run_dir / "summary.json").read_text())
                                              ["calibration"]["temperature"])
    probs = (expected / model.temperature).softmax(dim=1)
    for predictions in (
        [p.to_dict() for p in predict_images(model, files, top=2, batch_size=3)],
        _cli_predict(capsys, files, run_dir / "best.pt"),
    ):
        assert [p["image"] for p in predictions] == files
        for row, prediction in zip(probs, predictions, strict=True):
            assert prediction["top"][0]["index"] == int(row.argmax())
            got = {t["index"]: t["prob"] for t in prediction["top"]}
            assert got == pytest.approx({i: float(row[i]) for i in range(2)}, abs=1e-5)

    # The exports take the resized pixels (float, [0, 255]) and normalise in the graph.
    onnx = OnnxClassifier(export_run(run_dir, "onnx").path)
    assert onnx.pretrained_cfg == cfg and onnx.temperature == pytest.approx(model.temperature)
    pixels = Preprocess(onnx.pretrained_cfg).resized(files).numpy().astype(np.float32)
    torch.testing.assert_close(torch.from_numpy(onnx(pixels)), expected, rtol=0, atol=TOLERANCE)
    # The same answers and, to float noise (probabilities are printed to 6 places), the same
    # probabilities from the export as from best.pt.
    from_onnx = _cli_predict(capsys, files, onnx.path)
    from_best = _cli_predict(capsys, files, run_dir / "best.pt")
    assert [p["answer"] for p in from_onnx] == [p["answer"] for p in from_best]
    for a, b in zip(from_onnx, from_best, strict=True):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=2e-6)
    scripted = torch.jit.load(str(export_run(run_dir, "torchscript").path))
    with torch.no_grad():
        torch.testing.assert_close(scripted(torch.from_numpy(pixels)), expected, rtol=0, atol=TOLERANCE)

    if kind == "photo":
        # The check can fail: one resample straight to the input size (what predict did before
        # the stored size was recorded) gives other logits for the same files.
        with torch.no_grad():
            once = model(Preprocess(dataclasses.replace(cfg, stored_size=None))(files))
        assert float((once - expected).abs().max()) > 10 * TOLERANCE


def _cli_predict(capsys: pytest.CaptureFixture[str], files: list[str], weights: Path) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *files, "--weights", str(weights), "--json", "--top", "2",
                 "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_decode_plan_follows_what_the_run_recorded() -> None:
    """Stored size: shorter side + crop to it; squash: as decoded; ImageNet weights: timm's rule."""
    run = decode_plan(PreprocessConfig(input_size=(224, 224), stored_size=(256, 256)))
    assert run is not None and (run.size, run.resize, run.crop_pct) == ((256, 256), True, 1.0)
    assert decode_plan(PreprocessConfig(crop_mode="squash")) is None
    timm = decode_plan(PreprocessConfig(input_size=(224, 224), crop_pct=0.875))
    assert timm is not None and (timm.size, timm.crop_pct) == ((224, 224), 0.875)
    cfg = PreprocessConfig(stored_size=[40, 40])
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg and cfg.stored_size == (40, 40)


def test_every_input_kind_gets_the_same_pixels(tmp_path: Path) -> None:
    """A lossless file, its PIL image and its uint8 array give the same model input."""
    rng = np.random.default_rng(1)
    array = _image(rng, 0, (50, 70))
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    prepare = Preprocess(PreprocessConfig(input_size=(32, 32), stored_size=(37, 37)))
    batch = prepare([path, Image.open(path), array])
    assert batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch[1], batch[0], rtol=0, atol=0)
    torch.testing.assert_close(batch[2], batch[0], rtol=0, atol=0)
    assert prepare.pixels(path).shape == (37, 37, 3)
    # timm's rule for ImageNet weights: shorter side to 32 / 0.5 = 64, then the centre 32 px.
    timm = Preprocess(PreprocessConfig(input_size=(32, 32), crop_pct=0.5, crop_mode="center"))
    assert timm.pixels(path).shape == (32, 32, 3)
    with pytest.raises(Exception, match="uint8"):
        prepare.pixels(array.astype(np.float32))
