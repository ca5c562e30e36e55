"""bench/data_memory.py's pieces: the photo folder it generates loads as a dataset, and its probes read memory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from transferlab.data import load_dataset

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import data_memory  # noqa: E402 - the generator's workers pickle its functions by module name


def test_generated_folder_is_photo_like_and_loads(tmp_path: Path) -> None:
    dm = data_memory
    assert dm.generate(tmp_path, 28, workers=1) > 0
    assert dm.generate(tmp_path, 28, workers=1) == 0.0  # already there
    files = sorted((tmp_path / "photos").rglob("*.jpg"))
    assert len(files) == 28
    ds = load_dataset(f"folder:{tmp_path / 'photos'}", data_root=tmp_path / "cache", image_size=32)
    assert ds.num_classes == dm.CLASSES and len(ds["train"]) + len(ds["test"]) == 28
    assert ds["train"].images.std() > 5  # not flat colour
    assert dm.pillow_loop(files[:3]) > 0


def test_memory_probes_read_this_process() -> None:
    dm = data_memory
    big = np.ones(64 * 2**20, np.uint8)  # 64 MiB of touched anonymous memory
    assert dm._anon(os.getpid(), pss=False) >= big.nbytes
    assert dm._anon(os.getpid(), pss=True) >= big.nbytes
