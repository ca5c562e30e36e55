"""Stratified validation split and training subset: exact per-class counts, seeded, saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transferlab.data import SplitIndices, make_splits
from transferlab.errors import TransferlabError


@pytest.fixture
def labels() -> np.ndarray:
    # Unequal classes (the study's data are balanced; users' folders often are not).
    counts = [500, 300, 120, 80]
    rng = np.random.default_rng(1)
    return rng.permutation(np.repeat(np.arange(4), counts))


def test_exact_per_class_counts(labels: np.ndarray) -> None:
    idx = make_splits(labels, val_fraction=0.1, train_fraction=0.5, seed=3)
    per_class_total = np.bincount(labels)
    expected_val = np.round(per_class_total * 0.1).astype(int)
    expected_train = np.round((per_class_total - expected_val) * 0.5).astype(int)
    np.testing.assert_array_equal(np.bincount(labels[idx.val], minlength=4), expected_val)
    np.testing.assert_array_equal(np.bincount(labels[idx.train], minlength=4), expected_train)
    assert len(np.intersect1d(idx.train, idx.val)) == 0


def test_validation_split_is_class_balanced_in_proportion(labels: np.ndarray) -> None:
    idx = make_splits(labels, val_fraction=0.2, seed=0)
    share = np.bincount(labels[idx.val]) / np.bincount(labels)
    np.testing.assert_allclose(share, 0.2, atol=1e-9)


def test_seeded_and_saved(labels: np.ndarray, tmp_path: Path) -> None:
    a = make_splits(labels, 0.1, 0.5, seed=7)
    b = make_splits(labels, 0.1, 0.5, seed=7)
    c = make_splits(labels, 0.1, 0.5, seed=8)
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.train, c.train)
    a.save(tmp_path / "splits.npz")
    loaded = SplitIndices.load(tmp_path / "splits.npz")
    np.testing.assert_array_equal(loaded.train, a.train)
    np.testing.assert_array_equal(loaded.val, a.val)
    assert (loaded.seed, loaded.val_fraction, loaded.train_fraction) == (7, 0.1, 0.5)


def test_no_validation_keeps_everything(labels: np.ndarray) -> None:
    idx = make_splits(labels, val_fraction=0.0)
    assert len(idx.val) == 0 and len(idx.train) == len(labels)


@pytest.mark.parametrize(("val", "train"), [(1.0, 1.0), (-0.1, 1.0), (0.1, 0.0), (0.1, 1.5)])
def test_bad_fractions(labels: np.ndarray, val: float, train: float) -> None:
    with pytest.raises(TransferlabError, match="fraction"):
        make_splits(labels, val, train)


def test_save_failure_keeps_the_old_file_and_leaves_no_temp(labels: np.ndarray, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "splits.npz"
    first = make_splits(labels, seed=1)
    first.save(path)

    def dying_savez(f: object, **arrays: object) -> None:
        f.write(b"PARTIAL")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(OSError, match="disk full"):
        make_splits(labels, seed=2).save(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(SplitIndices.load(path).train, first.train)
    assert [p.name for p in tmp_path.iterdir()] == ["splits.npz"]
