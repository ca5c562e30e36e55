"""`transferlab rank` end to end on synthetic data with a weights folder made in the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.models import create_model, save_weights

DATA = "synthetic:classes=4,train=60,test=12,size=16,seed=0"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one benchmark-CNN weights file (metadata architecture transferlab:benchmark_cnn)."""
    folder = tmp_path_factory.mktemp("weights")
    save_weights(create_model("benchmark_cnn", num_classes=4), folder / "bcnn.safetensors")
    return folder


def rank_args(tmp_path: Path, weights_dir: Path, *extra: str) -> list[str]:
    return ["rank", "--dataset", DATA, "--data-root", str(tmp_path / "data"), "--weights-dir",
            str(weights_dir), "--max-images", "200", "--input-size", "32", "--quiet", *extra]


def test_rank_writes_table_files_and_skips_models_without_weights(tmp_path, weights_dir, capsys):
    out = tmp_path / "rank"
    assert main(rank_args(tmp_path, weights_dir, "--models", "benchmark_cnn,resnet50",
                          "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "skipped resnet50: no weights for resnet50" in printed
    assert "LogME" in printed and "benchmark_cnn" in printed
    payload = json.loads((out / "rank.json").read_text())
    [record] = payload["candidates"]
    assert record["model"] == "benchmark_cnn" and record["rank"] == 1
    assert record["input_size"] == [32, 32]
    assert 0.0 <= record["probe_val_acc1"] <= 1.0 and record["extract_images_per_s"] > 0
    assert payload["images_train"] + payload["images_val"] == 60  # fewer images than --max-images
    assert [s["model"] for s in payload["skipped"]] == ["resnet50"]
    rows = list(csv.DictReader((out / "rank.csv").open()))
    assert rows[0]["model"] == "benchmark_cnn"
    assert (out / "rank.png").stat().st_size > 1000


def test_rank_features_are_the_cache_a_training_run_reads(tmp_path, weights_dir, capsys):
    """rank, then train the same model on the same split: train extracts only the test split."""
    assert main(rank_args(tmp_path, weights_dir, "--models", "benchmark_cnn",
                          "--out", str(tmp_path / "rank"))) == 0
    payload = json.loads((tmp_path / "rank" / "rank.json").read_text())
    capsys.readouterr()
    assert main(["train", "--dataset", DATA, "--data-root", str(tmp_path / "data"), "--model",
                 "benchmark_cnn", "--pretrained", "--weights-dir", str(weights_dir), "--input-size",
                 "32", "--val-fraction", str(payload["val_fraction"]), "--train-fraction",
                 str(payload["train_fraction"]), "--out-dir", str(tmp_path / "runs"), "--run-name", "r",
                 "--quiet", "--set", "stages.0.train=head", "--set", "stages.0.epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "extracted test features" in printed
    assert "extracted train features" not in printed and "extracted val features" not in printed
    # The engine that computed the features is recorded by both: rank.json, and the run's summary
    # from the cache entries that the ranking wrote.
    record = payload["candidates"][0]
    assert record["extract_backend_choice"]["setting"] == "auto"
    assert record["extract_backend_choice"]["used"] == record["extract_backend"]
    stages = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["stages"]
    stage = next(iter(stages.values()))  # stage 0: the head, on cached features
    assert stage["feature_backends"]["train"] == stage["feature_backends"]["val"] == record["extract_backend"]
    # ... and a second ranking reads the cache too.
    assert main(rank_args(tmp_path, weights_dir, "--models", "benchmark_cnn",
                          "--out", str(tmp_path / "rank2"))) == 0
    assert "features from the cache" in capsys.readouterr().out
    again = json.loads((tmp_path / "rank2" / "rank.json").read_text())
    assert again["candidates"][0]["logme"] == pytest.approx(payload["candidates"][0]["logme"])
    assert again["candidates"][0]["extract_backend_choice"] is None  # nothing was extracted


@pytest.mark.parametrize("extra, message", [
    (["--models", "no_such_net"], "unknown model 'no_such_net'"),
    (["--models", "resnet50"], "no candidate has pretrained weights"),
    (["--models", "benchmark_cnn,benchmark_cnn"], "twice"),
    (["--models", "benchmark_cnn", "--max-images", "5"], "too few"),
    (["--models", "benchmark_cnn", "--input-size", "0"], "argument --input-size: 0 must be positive"),
])
def test_rank_errors_name_the_problem(tmp_path, weights_dir, capsys, extra, message):
    assert main(rank_args(tmp_path, weights_dir, "--out", str(tmp_path / "r"), *extra)) == 2
    assert message in capsys.readouterr().err


def test_rank_needs_weights_dir_or_pretrained(tmp_path, capsys):
    assert main(["rank", "--dataset", DATA, "--models", "mobilenet_v2", "--out", str(tmp_path)]) == 2
    assert "--weights-dir DIR" in capsys.readouterr().err


def test_compare_from_rank_fine_tunes_the_best_and_reports_the_rank_correlation(tmp_path, capsys):
    weights = tmp_path / "w"
    weights.mkdir()
    save_weights(create_model("benchmark_cnn", num_classes=4), weights / "bcnn.safetensors")
    save_weights(create_model("mobilenet_v2_paper", num_classes=4, width_mult=0.25, cifar_stem=True),
                 weights / "mnv2.safetensors")
    rank = tmp_path / "rank"
    assert main(rank_args(tmp_path, weights, "--models", "benchmark_cnn,mobilenet_v2_paper",
                          "--out", str(rank))) == 0
    payload = json.loads((rank / "rank.json").read_text())
    best = payload["candidates"][0]["model"]
    out = tmp_path / "cmp"
    assert main(["compare", "--from-rank", str(rank), "--top", "1", "--out", str(out),
                 "--set", "stages.0.epochs=1", "--set", "batch_size=16", "--quiet"]) == 0
    assert [p.name for p in out.iterdir() if (p / "summary.json").is_file()] == [best]
    # Both, then: the report pairs each LogME with its fine-tuned accuracy.
    assert main(["compare", "--from-rank", str(rank), "--top", "5", "--out", str(out),
                 "--set", "stages.0.epochs=1", "--set", "batch_size=16", "--quiet"]) == 0
    assert "the ranking has 2 candidate(s)" in capsys.readouterr().out
    report = (out / "REPORT.md").read_text()
    assert "Ranking before fine-tuning" in report and "Kendall's tau" in report
    config = (out / "compare.yaml").read_text()
    assert f"val_fraction: {payload['val_fraction']}" in config and "bcnn.safetensors" in config
    summary = json.loads((out / best / "summary.json").read_text())
    assert summary["input_size"] == [32, 32]


@pytest.mark.parametrize("args, message", [
    (["--from-rank", "nowhere"], "rank.json not found"),
    (["--config", "configs/quick.yaml", "--top", "2"], "give it with from_rank"),
    (["--from-rank", "RANK", "--top", "0"], "argument --top: 0 must be positive"),
])
def test_compare_from_rank_errors(tmp_path, capsys, args, message):
    rank = tmp_path / "rank"
    rank.mkdir()
    (rank / "rank.json").write_text(json.dumps({"candidates": [{"model": "benchmark_cnn", "rank": 1}]}))
    args = [str(rank) if a == "RANK" else a for a in args]
    assert main(["compare", *args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
