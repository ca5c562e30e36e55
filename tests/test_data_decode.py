"""The decoded cache at scale: memory-mapped splits, parallel decode, interruptions, concurrent loaders."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import ArrayRows, cache, images
from transferlab.data.folder import load_folder
from transferlab.errors import TransferlabError
from transferlab.training.engine import Batches


def photo_folder(root: Path, per_class: int = 24) -> Path:
    """train/ and test/ of three classes of smooth-plus-noise JPEGs in mixed sizes and orientations."""
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (48, 64), (80, 60), (40, 40)]
    for split in ("train", "test"):
        for c in range(3):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class if split == "train" else per_class // 3):
                w, h = sizes[i % len(sizes)]
                base = rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)
                smooth = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), np.int16)
                noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(d / f"{i:03d}.jpg", quality=90)
    return root


def entries(cache_root: Path) -> list[Path]:
    """Cache entries (directories) under decoded/, complete or not."""
    decoded = cache_root / "decoded"
    return sorted(p for p in decoded.iterdir() if p.is_dir()) if decoded.exists() else []


def test_several_workers_decode_the_same_arrays_as_one(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "src")
    one = load_folder(src, tmp_path / "c1", target_size=32, workers=1)
    three = load_folder(src, tmp_path / "c3", target_size=32, workers=3)
    assert one.image_size == (32, 32) and len(one["train"]) == 72
    for split in ("train", "test"):
        np.testing.assert_array_equal(one[split].images, three[split].images)
        np.testing.assert_array_equal(one[split].labels, three[split].labels)
    assert one.files == three.files and one.fingerprint == three.fingerprint


def test_memory_mapped_splits_give_the_same_batches_bit_for_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = photo_folder(tmp_path / "src")
    held = load_folder(src, tmp_path / "cache", target_size=32, workers=1)
    monkeypatch.setattr(cache, "MMAP_MIN_BYTES", 0)
    mapped = load_folder(src, tmp_path / "cache", target_size=32, workers=1)
    assert isinstance(mapped["train"].images, np.memmap)
    assert not isinstance(held["train"].images, np.memmap)
    idx = np.random.default_rng(1).permutation(len(held["train"]))[:50]
    labels = torch.from_numpy(held["train"].labels[idx])
    flip = lambda x, seed: x.flip(2).float() + seed % 7  # noqa: E731 - a seeded stand-in transform
    copied = Batches(torch.from_numpy(held["train"].images[idx]), labels, 8, shuffle=True, seed=3,
                     transform=flip)
    viewed = Batches(mapped["train"].rows(idx), labels, 8, shuffle=True, seed=3, transform=flip)
    pairs = list(zip(copied, viewed, strict=True))
    assert len(pairs) == 7
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_array_rows_gather_in_batch_order() -> None:
    array = np.arange(40, dtype=np.uint8).reshape(10, 2, 2)
    rows = ArrayRows(array, np.array([9, 2, 5, 5, 0]))
    assert len(rows) == 5 and rows.shape == (5, 2, 2) and rows.dtype == torch.uint8
    got = rows[torch.tensor([3, 0, 4, 1])]
    np.testing.assert_array_equal(got.numpy(), array[[5, 9, 0, 2]])
    np.testing.assert_array_equal(rows[1:3].numpy(), array[[2, 5]])
    np.testing.assert_array_equal(ArrayRows(array)[torch.tensor([7, 1])].numpy(), array[[7, 1]])


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_decode_leaves_no_cache_and_the_next_run_decodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Ctrl-C in the decoding process, or a worker process that dies mid-decode."""
    src = photo_folder(tmp_path / "src")
    real = images.decode
    calls = {"n": 0}

    def interrupted(path: Path, rel: str, plan: images.SizePlan, max_pixels: int) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 10:
            if workers == 1:
                raise KeyboardInterrupt
            os._exit(1)  # a worker killed (out of memory, a crashing decoder)
        return real(path, rel, plan, max_pixels)

    monkeypatch.setattr("transferlab.data.decode.decode", interrupted)
    # A dead worker is a clean error that says what probably happened and what to change.
    with pytest.raises(KeyboardInterrupt if workers == 1 else TransferlabError,
                       match=None if workers == 1 else "decoding worker process died"):
        load_folder(src, tmp_path / "cache", target_size=32, workers=workers)
    assert entries(tmp_path / "cache") == []  # no complete-looking entry, no temporary left
    monkeypatch.setattr("transferlab.data.decode.decode", real)
    ds = load_folder(src, tmp_path / "cache", target_size=32, workers=workers)
    assert len(ds["train"]) == 72 and len(entries(tmp_path / "cache")) == 1


def _load_in_child(args: tuple[str, str]) -> str:
    ds = load_folder(args[0], args[1], target_size=32, workers=1)
    return ds.fingerprint + str(int(ds["train"].images.sum()))


def test_two_processes_decoding_the_same_source_end_with_one_valid_cache(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "src")
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_load_in_child, [(str(src), str(tmp_path / "cache"))] * 2)
    assert results[0] == results[1]
    assert len(entries(tmp_path / "cache")) == 1
    again = load_folder(src, tmp_path / "cache", target_size=32, workers=1)
    assert again.fingerprint + str(int(again["train"].images.sum())) == results[0]
