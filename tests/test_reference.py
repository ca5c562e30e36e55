"""The 2018 study's published numbers, and which runs are set beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_report import make_run, markdown_rows
from transferlab.report import write_report
from transferlab.report.tables import fmt_pct, fmt_seconds
from transferlab.results.reference import CIFAR10_CLASSES, STUDY_2018, is_study_data, study_2018_for


def test_the_study_table_pairs_each_model_with_its_own_numbers() -> None:
    """The study's results table: benchmark CNN 15.3% / 40 s, InceptionV3 49.54% / 217 s,
    MobileNetV2 50.49% / 360 s (its optimiser tables agree: InceptionV3 SGD 1e-4 fine-tuning
    "raised from 46.01% to 49.54%", MobileNetV2 Adam 50.49%)."""
    pairs = {ref.model: (ref.test_acc1, ref.epoch_time_s) for ref in STUDY_2018}
    assert pairs == {"benchmark_cnn": (0.153, 40.0), "inception_v3": (0.4954, 217.0),
                     "mobilenet_v2": (0.5049, 360.0)}
    assert study_2018_for("inception_v3", pretrained=True).test_acc1 == 0.4954
    assert study_2018_for("mobilenet_v2_paper", pretrained=False).epoch_time_s == 360.0


@pytest.mark.parametrize(("dataset", "classes", "expected"), [
    ("cifar100", None, True),
    ("cifar10", None, True),
    ("folder:../shared/data/cifar10-jpeg.tar.gz", list(CIFAR10_CLASSES), True),
    ("folder:/home/me/photos", ["cat", "dog"], False),
    ("folder:/home/me/cifar-like", list(reversed(CIFAR10_CLASSES)), False),
    ("synthetic:classes=10", [str(i) for i in range(10)], False),
])
def test_only_the_study_kind_of_data_gets_2018_numbers(dataset: str, classes: list[str] | None,
                                                       expected: bool) -> None:
    assert is_study_data(dataset, classes) is expected


def _retarget(run: Path, dataset: str, classes: list[str]) -> None:
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "dataset": dataset, "classes": classes}))


def test_a_report_of_own_photos_has_no_2018_numbers_and_a_cifar_run_does(tmp_path: Path) -> None:
    photos = make_run(tmp_path / "runs", "inception_v3", "inception_v3", 0, pretrained=True)
    _retarget(photos, "folder:/home/me/photos", ["apple", "bee", "cloud", "dolphin"])
    text = write_report([photos], tmp_path / "a", data_figures=False).markdown.read_text()
    row = markdown_rows(text, "inception_v3")[0]
    assert row[13] == "–" and row[14] == "–"
    assert "2018 study's columns are left empty" in text

    cifar = make_run(tmp_path / "runs2", "inception_v3", "inception_v3", 0, pretrained=True)
    _retarget(cifar, "folder:../shared/data/cifar10-jpeg.tar.gz", list(CIFAR10_CLASSES))
    text = write_report([cifar], tmp_path / "b", data_figures=False).markdown.read_text()
    row = markdown_rows(text, "inception_v3")[0]
    assert row[13] == fmt_pct(0.4954) and row[14] == fmt_seconds(217.0)
