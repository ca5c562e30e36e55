"""A new user's first try: their own photo folder, the default command, export, predict.

The photos are made from the shared CIFAR-10 archive: two classes, upscaled to mixed sizes and
aspect ratios and saved as JPEG in the torchvision layout (train/ and val/), the way a downloaded
dataset looks. The README's first example is run exactly (no flags beyond data and weights) and
must beat chance (50%) by a wide margin, then the exported ONNX model must agree with best.pt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import require_shared
from transferlab.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from own_photos import DATASETS, make_photo_folder  # noqa: E402

# Measured with this exact data and command: 90-95% (the head alone reaches about 90%, the
# fine-tuned top adds a little); chance is 50%. 80% leaves room for the other platforms' numerics
# while still failing a recipe that wrecks the pretrained features (which lands near 50%).
MIN_TEST_ACC = 0.80


@pytest.mark.slow
def test_default_command_on_a_photo_folder_then_export_and_predict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = require_shared("data", "cifar10-jpeg.tar.gz")
    weights = require_shared("weights", "mobilenetv2_100.coral_int8_in1k.safetensors")
    classes, n_train, n_test, layout = DATASETS["two"]
    photos = make_photo_folder(archive, tmp_path / "photos", classes, n_train, n_test, layout)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # one real training run: use the machine's cores
    try:
        code = main(["train", "--dataset", f"folder:{photos}", "--model", "mobilenet_v2",
                     "--weights", str(weights), "--out-dir", str(tmp_path / "runs"),
                     "--run-name", "photos", "--data-root", str(tmp_path / "data"), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    run_dir = tmp_path / "runs" / "photos"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "finetune"
    assert summary["test_acc1"] >= MIN_TEST_ACC, summary["test_acc1"]
    assert summary["test_acc5"] is None  # two classes: no top-5
    assert summary["split_sources"]["test"].startswith("val/")
    assert summary["split_sizes"] == {"train": 96, "val": 24, "test": 60}
    assert set(summary["epochs"]) == {"head", "finetune"}
    assert 1 <= summary["epochs"]["finetune"] <= 10
    capsys.readouterr()

    # Ship it: ONNX, then predict on the exported file and on best.pt.
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert "largest logit difference" in printed
    # Mixed-size photos were stored by shorter side and centre crop: new ones must be too.
    assert "resize the shorter side to 256 px and crop 256 x 256 at the centre" in printed
    onnx_path = run_dir / "model.onnx"
    assert onnx_path.is_file()
    images = sorted((photos / "val").rglob("*.jpg"))[::6]
    tops = {}
    for weights_file in (onnx_path, run_dir / "best.pt"):
        assert main(["predict", *map(str, images), "--weights", str(weights_file), "--json",
                     "--top", "1"]) == 0
        tops[weights_file.suffix] = [p["top"][0]["name"] for p in json.loads(capsys.readouterr().out)]
    assert tops[".onnx"] == tops[".pt"]
    truth = [p.parent.name for p in images]
    assert sum(a == b for a, b in zip(tops[".onnx"], truth, strict=True)) >= 0.7 * len(images)
