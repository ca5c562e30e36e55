"""Per-class scores, calibration, the error gallery and Grad-CAM heatmaps of `evaluate` and the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_evaluation import CLASSES, LABELS, RANKED, logits_from_ranking, write_fake_run
from transferlab.cli import main
from transferlab.evaluation.gallery import losses, select_gallery
from transferlab.evaluation.heatmaps import class_activation_maps, target_layer
from transferlab.evaluation.metrics import evaluate_predictions
from transferlab.metrics import expected_calibration_error, softmax
from transferlab.models import create_model

captum = pytest.importorskip("captum", reason="heatmaps need the optional captum (extra 'explain')")

# By hand from the confusion matrix [[1, 2, 0], [1, 1, 0], [1, 1, 2]] (rows true, columns
# predicted): column sums 3, 4, 2 give the precisions, row sums 3, 2, 4 the recalls.
PRECISION = [1 / 3, 1 / 4, 2 / 2]
RECALL = [1 / 3, 1 / 2, 2 / 4]
F1 = [1 / 3, 1 / 3, 2 / 3]  # 2 p r / (p + r): cat 1/3, dog 2 (1/8) / (3/4), fox 2 (1/2) / (3/2)


def test_evaluate_reports_per_class_scores_of_a_hand_computed_matrix(tmp_path, capsys):
    run_dir = write_fake_run(tmp_path / "run", LABELS, logits_from_ranking(RANKED), CLASSES)
    assert main(["evaluate", str(run_dir)]) == 0
    out = run_dir / "evaluation"
    record = json.loads((out / "evaluation.json").read_text())
    for row, p, r, f in zip(record["per_class"], PRECISION, RECALL, F1, strict=True):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f))
    assert [row["support"] for row in record["per_class"]] == [3, 2, 4]
    assert record["test_bal_acc"] == pytest.approx(sum(RECALL) / 3)
    assert record["test_macro_f1"] == pytest.approx(sum(F1) / 3)
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == CLASSES
    assert [float(r["precision"]) for r in rows] == pytest.approx(PRECISION, abs=1e-4)
    text = capsys.readouterr().out
    assert f"balanced accuracy {100 * sum(RECALL) / 3:.1f}%" in text
    assert f"macro-F1 {100 * sum(F1) / 3:.1f}%" in text
    # The per-class table, lowest recall first: cat (33.3%) before dog and fox (50.0%).
    table = text[text.index("per class"):]
    assert table.index("cat") < table.index("dog") < table.index("fox")
    assert "precision" in table and "25.0%" in table  # dog's precision


def test_calibration_and_coverage_use_the_runs_temperature(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), labels] += 1.0
    logits *= 6.0  # over-confident: right about 70% of the time, sure nearly always
    run_dir = tmp_path / "run"
    write_fake_run(run_dir, labels, logits.astype(np.float32), CLASSES)
    # The run's temperature as training stores it beside the predictions.
    np.savez(run_dir / "predictions_test.npz", labels=labels, logits=logits.astype(np.float32),
             classes=np.array(CLASSES), temperature=np.float64(6.0))
    assert main(["evaluate", str(run_dir)]) == 0
    cal = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())["calibration"]
    raw = softmax(logits.astype(np.float32))
    assert cal["temperature"] == 6.0
    assert cal["ece"] == pytest.approx(expected_calibration_error(raw, labels))
    assert cal["ece_calibrated"] == pytest.approx(
        expected_calibration_error(softmax(logits.astype(np.float32), 6.0), labels))
    assert cal["ece_calibrated"] < cal["ece"] / 2
    # Coverage at P: share of images whose calibrated top-1 probability is >= P.
    scaled = softmax(logits.astype(np.float32), 6.0)
    for row in cal["coverage_calibrated"]:
        answered = scaled.max(1) >= row["threshold"]
        assert row["answered"] == int(answered.sum())
        if answered.any():
            assert row["accuracy"] == pytest.approx((scaled.argmax(1) == labels)[answered].mean())
    assert (run_dir / "evaluation" / "reliability.png").stat().st_size > 1000
    assert (run_dir / "evaluation" / "coverage.csv").is_file()
    text = capsys.readouterr().out
    assert "temperature T = 6.000" in text and "accuracy/coverage" in text
    assert "min-confidence" in text


def test_gallery_picks_the_highest_loss_images():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=40)
    logits = rng.normal(size=(40, 3)) * 3
    loss = -np.log(softmax(logits)[np.arange(40), labels])
    np.testing.assert_allclose(losses(logits, labels), loss)
    sections = {s.key: s for s in select_gallery(labels, logits, CLASSES, top=5)}
    top = sections["top_losses"].items
    assert [i.index for i in top] == list(np.argsort(-loss)[:5])
    assert [i.loss for i in top] == pytest.approx(sorted(loss, reverse=True)[:5])
    # Per class: only mistakes, each class's highest loss first.
    predicted = logits.argmax(1)
    for item in sections["per_class"].items:
        assert item.predicted_index != item.true_index == labels[item.index]
        wrong = (labels == item.true_index) & (predicted != labels)
        worst = np.flatnonzero(wrong)[np.argsort(-loss[wrong])][:3]
        assert item.index in worst


def test_gallery_of_confused_pairs_shows_that_pairs_most_confident_mistakes():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    logits = np.array([[0, 3, 0], [0, 1, 0], [0, 2, 0], [5, 0, 0],
                       [0, 5, 0], [0, 5, 0], [0, 0, 5]], dtype=np.float64)
    result = evaluate_predictions(labels, logits, CLASSES)
    sections = {s.key: s for s in select_gallery(labels, logits, CLASSES, result.confused_pairs)}
    pair = sections["confused_pairs"].items
    assert [(i.true, i.predicted) for i in pair] == [("cat", "dog")] * 3
    assert [i.index for i in pair] == [0, 2, 1]  # p(dog) falls: logits 3, 2, 1


def square_images(n: int, rng: np.random.Generator, side: int = 64, square: int = 16):
    """Dark noise with one bright square whose colour (red, green, blue) is the class."""
    images = rng.uniform(0, 0.25, size=(n, 3, side, side)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    boxes = []
    for i, c in enumerate(labels):
        y, x = rng.integers(0, side - square + 1, size=2)
        images[i, c, y : y + square, x : x + square] = 1.0
        boxes.append((y, x))
    return torch.from_numpy(images), torch.from_numpy(labels), boxes


def test_heatmap_has_the_image_size_and_peaks_on_the_object_the_model_learned():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model("benchmark_cnn", num_classes=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        x, y, _ = square_images(64, rng)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    x, y, boxes = square_images(40, rng)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9  # it learned the task
    maps = class_activation_maps(model, x, y)
    assert maps.shape == (40, 64, 64) and maps.max() <= 1.0 and maps.min() >= 0.0
    hits = 0
    for cam, (top, left) in zip(maps, boxes, strict=True):
        r, c = np.unravel_index(cam.argmax(), cam.shape)
        hits += top <= r < top + 16 and left <= c < left + 16
    # The square covers 6% of the image. The benchmark CNN's 8 x 8 map sits about 4 px up-left
    # of the pixels each cell sees (its 2 x 2 convolutions pad only right and bottom), so a few
    # peaks fall just outside the square (measured: 35 of 40 inside).
    assert hits >= 0.75 * len(boxes), f"the heatmap peaked on the square in {hits} of 40 images"
    # Resized to another (stored) size on request.
    assert class_activation_maps(model, x[:2], y[:2], size=(48, 40)).shape == (2, 48, 40)


@pytest.mark.parametrize("name,size", [
    ("benchmark_cnn", 32), ("mobilenet_v2_paper", 32), ("mobilenet_v2", 32),
    ("efficientnet_lite0", 32), ("inception_v3", 75), ("resnet50", 32), ("timm:resnet10t", 32),
])
def test_every_backbone_family_gives_a_heatmap_from_its_last_feature_stage(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    layer = target_layer(model)
    x = torch.randn(2, 3, size, size)
    # The target is the stage whose output the head pools: a 4-D feature map.
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        maps = class_activation_maps(model, x, [0, 2], size=(20, 24))
    finally:
        handle.remove()
    assert maps.shape == (2, 20, 24) and np.isfinite(maps).all()
    assert seen and len(seen[0]) == 4 and seen[0][1] == model.num_features


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (benchmark CNN, two epochs) with best.pt and its predictions."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--dataset", "synthetic:classes=4,train=80,test=24,size=16",
                 "--set", "stages.0.epochs=2", "--out-dir", str(out), "--run-name", "r",
                 "--quiet"]) == 0
    return out / "r"


def test_evaluate_writes_the_gallery_with_heatmaps_of_a_trained_run(trained_run, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(trained_run), "--out", str(out)]) == 0
    record = json.loads((out / "evaluation.json").read_text())
    gallery = record["gallery"]
    assert gallery["heatmaps"] is True and gallery["note"] == ""
    npz = np.load(trained_run / "predictions_test.npz")
    loss = losses(npz["logits"], npz["labels"])
    top = gallery["sections"][0]
    assert top["key"] == "top_losses"
    assert [i["index"] for i in top["items"]] == list(np.argsort(-loss, kind="stable")[:12])
    for section in gallery["sections"]:
        assert (out / record["files"][f"gallery_{section['key']}"]).stat().st_size > 5000
    assert record["calibration"]["temperature"] == pytest.approx(float(npz["temperature"]))
    # --no-heatmaps draws the photos alone.
    assert main(["evaluate", str(trained_run), "--out", str(tmp_path / "plain"),
                 "--no-heatmaps"]) == 0
    plain = json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    assert plain["gallery"]["heatmaps"] is False


def test_report_shows_gallery_reliability_and_coverage_and_renders(trained_run, tmp_path):
    from tests.test_report import RENDER_PROBE, TagChecker, _chromium, _render
    from transferlab.report import write_report

    paths = write_report([trained_run], tmp_path / "report", data_figures=False)
    text = paths.markdown.read_text()
    for figure in ("reliability_r.png", "gallery_top_losses_r.png", "confusion_r.png"):
        assert (paths.figures / figure).is_file() and figure in text
    assert "Expected calibration error" in text and "min. confidence P" in text
    assert "| class | precision | recall | F1 | test images |" in text
    assert not (trained_run / "evaluation").exists()  # the report never writes into a run
    checker = TagChecker()
    checker.feed(paths.html.read_text())
    assert len(checker.images) >= 5
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH; the headless render is not checked")
    page = tmp_path / "probed.html"
    page.write_text(paths.html.read_text().replace("</body>", RENDER_PROBE + "</body>"))
    probe = _render(browser, page, 1366, 768, tmp_path / "shot.png")
    broken = [i["alt"] for i in probe["images"] if not (i["complete"] and i["natural_width"] > 0)]
    assert len(probe["images"]) == len(checker.images) and not broken
    assert probe["scroll_width"] <= probe["viewport"]


def test_report_reads_the_runs_own_evaluation_when_current(trained_run, tmp_path):
    from transferlab.report import write_report

    own = trained_run / "evaluation"
    try:
        assert main(["evaluate", str(trained_run), "--no-gallery"]) == 0
        record = json.loads((own / "evaluation.json").read_text())
        record["test_bal_acc"] = 0.123456  # a mark only the run's own file carries
        (own / "evaluation.json").write_text(json.dumps(record))
        text = write_report([trained_run], tmp_path / "report", data_figures=False).markdown.read_text()
        assert "balanced accuracy 12.3%" in text
        assert not (tmp_path / "report" / "evaluations").exists()
    finally:
        import shutil

        shutil.rmtree(own, ignore_errors=True)


def test_predict_explain_writes_a_heatmap_per_image(trained_run, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    out = tmp_path / "explained"
    assert main(["predict", *images, "--weights", str(trained_run / "best.pt"),
                 "--explain", str(out), "--device", "cpu"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["0000_a_gradcam.png", "0001_b_gradcam.png"]
    with Image.open(out / written[0]) as shot:
        assert shot.size[0] > 300
    assert f"wrote the heatmaps into {out}" in capsys.readouterr().out


def test_predict_explain_refuses_an_onnx_graph(tmp_path):
    from transferlab.errors import TransferlabError
    from transferlab.evaluation.explain import explain_files

    class Graph:  # what an exported model offers: a call and preprocessing, no feature stages
        num_classes = 2

    with pytest.raises(TransferlabError, match="not an exported ONNX graph"):
        explain_files(Graph(), ["x.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
