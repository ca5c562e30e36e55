"""`transferlab data info|plot` through the CLI entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.cli import main

SPEC = "synthetic:classes=4,train=40,test=20,size=16"


def test_info_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", SPEC, "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "4 classes, 16x16" in out
    for split, n in (("train", 32), ("val", 8), ("test", 20)):
        assert re.search(rf"{split}\s+{n} images", out), (split, out)
    assert "class_3" in out


def test_plot_writes_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "plot", SPEC, "--out", str(tmp_path), "--val-fraction", "0.25"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["augmentation_study.png", "class_counts.png", "class_counts_splits.png", "samples.png"]
    for p in tmp_path.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000


def test_bad_dataset_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "Traceback" not in err


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "transferlab", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("transferlab ")
