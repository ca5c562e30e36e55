"""The decoded-data cache: directories appear whole, and concurrent writers (torchrun ranks) never crash."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transferlab import io as tl_io
from transferlab.data.cache import CACHE_FORMAT, load_arrays, save_arrays


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        save_arrays(tmp_path / "entry", {"x": np.arange(5)}, {"split": "train"})
    finally:
        os.umask(old_umask)
    arrays, meta = load_arrays(tmp_path / "entry")
    np.testing.assert_array_equal(arrays["x"], np.arange(5))
    assert meta["split"] == "train"
    assert (tmp_path / "entry").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert os.listdir(tmp_path) == ["entry"]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = np.zeros(3, dtype=object)  # np.save without pickle refuses object arrays
    with pytest.raises(ValueError):
        save_arrays(tmp_path / "entry", {"a": np.ones(2), "b": bad}, {})
    assert os.listdir(tmp_path) == []


def test_an_existing_complete_entry_is_kept(tmp_path: Path) -> None:
    save_arrays(tmp_path / "entry", {"x": np.zeros(2)}, {"who": "rank0"})
    save_arrays(tmp_path / "entry", {"x": np.zeros(2)}, {"who": "rank1"})
    assert load_arrays(tmp_path / "entry")[1]["who"] == "rank0"
    assert os.listdir(tmp_path) == ["entry"]


def test_an_incomplete_entry_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "x.npy").write_bytes(b"half")  # no meta.json: not complete
    save_arrays(tmp_path / "entry", {"x": np.ones(2)}, {})
    np.testing.assert_array_equal(load_arrays(tmp_path / "entry")[0]["x"], np.ones(2))
    assert os.listdir(tmp_path) == ["entry"]


def test_losing_the_rename_race_uses_the_winners_entry(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another rank renames its copy into place between our check and our rename."""
    target = tmp_path / "entry"
    real_replace = os.replace

    def racing_replace(src: Any, dst: Any) -> None:
        if Path(dst) == target and not target.exists():
            target.mkdir()
            np.save(target / "x.npy", np.full(2, 7))
            (target / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, "who": "winner"}))
        real_replace(src, dst)  # now fails: the target is a non-empty directory

    monkeypatch.setattr(tl_io.os, "replace", racing_replace)
    save_arrays(target, {"x": np.zeros(2)}, {"who": "loser"})
    arrays, meta = load_arrays(target)
    assert meta["who"] == "winner" and arrays["x"].tolist() == [7, 7]
    assert os.listdir(tmp_path) == ["entry"]  # our temporary copy is gone


def _race_writers(entry: Path, x: np.ndarray, writers: int = 6) -> list[BaseException]:
    """`writers` threads save the same cache entry at once; the errors any of them raised."""
    errors: list[BaseException] = []

    def write(rank: int) -> None:
        try:
            save_arrays(entry, {"x": x}, {"rank": rank})
        except BaseException as err:  # noqa: BLE001 - collected and returned
            errors.append(err)

    threads = [threading.Thread(target=write, args=(r,)) for r in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_writers_all_succeed(tmp_path: Path) -> None:
    for _ in range(5):
        assert _race_writers(tmp_path / "entry", np.arange(1000)) == []
    np.testing.assert_array_equal(load_arrays(tmp_path / "entry")[0]["x"], np.arange(1000))
    assert os.listdir(tmp_path) == ["entry"]


def test_concurrent_writers_with_slow_file_system_calls(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race with every existence check and rename slowed down, as on a busy machine.

    Slowing them widens the windows between a check and the action that relies on it: a writer
    that checked first and renamed later moved aside the complete entry another writer had just
    put in place, and a third writer that looked in that moment found nothing and failed.
    """
    real_exists, real_replace = Path.exists, tl_io.os.replace

    def slow_exists(self: Path, *args: Any, **kwargs: Any) -> bool:
        found = real_exists(self, *args, **kwargs)
        time.sleep(0.002)
        return found

    def slow_replace(src: Any, dst: Any) -> None:
        time.sleep(0.002)
        real_replace(src, dst)

    monkeypatch.setattr(Path, "exists", slow_exists)
    monkeypatch.setattr(tl_io.os, "replace", slow_replace)
    for round_ in range(8):
        entry = tmp_path / f"entry{round_}"
        assert _race_writers(entry, np.arange(10)) == []
        assert load_arrays(entry) is not None
    assert sorted(os.listdir(tmp_path)) == [f"entry{i}" for i in range(8)]
