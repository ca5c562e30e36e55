"""Image folders as directories and archives, decode errors, sizes, and cache invalidation."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data import load_dataset
from transferlab.errors import TransferlabError

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def make_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Path:
    """train/ and test/ with one solid-colour class per primary colour."""
    for split in ("train", "test"):
        for name, rgb in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", size, rgb).convert(mode).save(d / f"{i}.png")
    return root


def test_directory_loads_with_sorted_classes_and_rgb(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    ds = load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert ds.classes == sorted(COLOURS)
    assert ds["train"].images.shape == (9, 8, 8, 3) and len(ds["test"]) == 9
    for label, name in enumerate(ds.classes):
        img = ds["train"].images[ds["train"].labels == label][0]
        assert tuple(img[0, 0]) == COLOURS[name]  # RGB, not BGR


def test_tar_archive_with_top_folder_matches_directory(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "mydata")
    archive = tmp_path / "mydata.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="mydata")
    from_dir = load_dataset(f"folder:{src}", data_root=tmp_path / "c1")
    from_tar = load_dataset(f"folder:{archive}", data_root=tmp_path / "c2")
    assert from_tar.classes == from_dir.classes
    np.testing.assert_array_equal(from_tar["train"].images, from_dir["train"].images)
    np.testing.assert_array_equal(from_tar["test"].labels, from_dir["test"].labels)


def test_any_mode_becomes_rgb_and_sizes_unify(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", mode="L")
    Image.new("RGBA", (20, 12), (0, 0, 255, 128)).save(src / "train" / "blue" / "big.png")
    with pytest.raises(TransferlabError, match="--image-size"):
        load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    ds = load_dataset(f"folder:{src}", data_root=tmp_path / "cache", image_size=16)
    assert ds["train"].images.shape[1:] == (16, 16, 3) and ds["train"].images.dtype == np.uint8


def test_broken_image_is_named(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    bad = src / "train" / "green" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(TransferlabError, match="train/green/broken.jpg"):
        load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert not (tmp_path / "cache" / "decoded").exists() or not any((tmp_path / "cache" / "decoded").iterdir())


def test_missing_split_and_path_errors(tmp_path: Path) -> None:
    with pytest.raises(TransferlabError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", data_root=tmp_path)
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "train" / "a" / "x.png")
    with pytest.raises(TransferlabError, match="test/<class>"):
        load_dataset(f"folder:{tmp_path / 'only'}", data_root=tmp_path / "cache")


def test_cache_is_reused_then_invalidated_by_a_changed_source(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    cache = tmp_path / "cache"
    first = load_dataset(f"folder:{src}", data_root=cache)
    again = load_dataset(f"folder:{src}", data_root=cache)
    assert again.fingerprint == first.fingerprint
    assert len(list((cache / "decoded").iterdir())) == 1
    # Replace one image's content: the next load must see the new pixels.
    target = src / "train" / "red" / "0.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = load_dataset(f"folder:{src}", data_root=cache)
    assert changed.fingerprint != first.fingerprint
    assert (changed["train"].images[:, 0, 0] == (10, 20, 30)).all(axis=-1).sum() == 1
    # A different decode setting is a different cache entry too.
    resized = load_dataset(f"folder:{src}", data_root=cache, image_size=4)
    assert resized.fingerprint not in (first.fingerprint, changed.fingerprint)


def test_unknown_spec_is_explained() -> None:
    with pytest.raises(TransferlabError, match="cifar100, cifar10, folder:PATH"):
        load_dataset("imagenet")
