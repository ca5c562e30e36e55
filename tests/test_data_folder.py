"""Image folders: every layout as a directory and as archives, sizes, image kinds, clear errors, cache."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.cli import main
from transferlab.data import load_dataset
from transferlab.data.folder import load_folder
from transferlab.errors import TransferlabError

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def make_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (8, 8), mode: str = "RGB",
                splits: tuple[str, ...] = ("train", "test")) -> Path:
    """One solid-colour class per primary colour under each split folder ('' = class folders only)."""
    for split in splits:
        for name, rgb in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", size, rgb).convert(mode).save(d / f"{split or 'all'}{i}.png")
    return root


def archive(src: Path, dest: Path) -> Path:
    """`src` as the archive `dest` (kind from its suffix), wrapped in one top-level folder."""
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w") as zf:
            for p in sorted(src.rglob("*")):
                zf.write(p, Path(src.name, p.relative_to(src)))
    else:
        mode = "w:gz" if dest.name.endswith(("gz", ".tgz")) else "w"
        with tarfile.open(dest, mode) as tar:
            tar.add(src, arcname=src.name)
    return dest


def no_cache_left(cache: Path) -> bool:
    """Nothing complete-looking and no temporary directory under cache/decoded."""
    decoded = cache / "decoded"
    return not decoded.exists() or not any(p.is_dir() for p in decoded.iterdir())


def test_directory_loads_with_sorted_classes_and_rgb(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    ds = load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert ds.classes == sorted(COLOURS)
    assert ds["train"].images.shape == (9, 8, 8, 3) and len(ds["test"]) == 9
    for label, name in enumerate(ds.classes):
        img = ds["train"].images[ds["train"].labels == label][0]
        assert tuple(img[0, 0]) == COLOURS[name]  # RGB, not BGR
    assert ds.split_sources == {"train": "train/", "test": "test/"}
    # files name every row: the colour in the path matches the pixels and the label.
    for split in ("train", "test"):
        for f, label, img in zip(ds.files[split], ds[split].labels, ds[split].images, strict=True):
            assert f.startswith(f"{split}/{ds.classes[label]}/")
            assert tuple(img[0, 0]) == COLOURS[ds.classes[label]]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
def test_archives_with_a_top_folder_match_the_directory(tmp_path: Path, suffix: str) -> None:
    src = make_folder(tmp_path / "mydata")
    packed = archive(src, tmp_path / f"mydata{suffix}")
    from_dir = load_dataset(f"folder:{src}", data_root=tmp_path / "c1")
    from_arc = load_dataset(f"folder:{packed}", data_root=tmp_path / "c2")
    assert from_arc.name == "folder:mydata" and from_arc.classes == from_dir.classes
    np.testing.assert_array_equal(from_arc["train"].images, from_dir["train"].images)
    np.testing.assert_array_equal(from_arc["test"].labels, from_dir["test"].labels)
    assert from_arc.split_sources == {"train": "mydata/train/", "test": "mydata/test/"}
    assert from_arc.files["test"][0] == "mydata/test/blue/test0.png"
    # The extracted copy is gone; only the cache entry and its size record remain.
    assert sorted(p.name for p in (tmp_path / "c2" / "decoded").iterdir() if not p.name.endswith(".lock")
                  )[0].startswith("folder-mydata-")
    assert len([p for p in (tmp_path / "c2" / "decoded").iterdir() if p.is_dir()]) == 1


def test_train_val_test_keeps_val(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", splits=("train", "val", "test"), per_class=2)
    ds = load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert sorted(ds.splits) == ["test", "train", "val"]
    assert ds.split_sources == {"train": "train/", "test": "test/", "val": "val/"}
    assert all(f.startswith("val/") for f in ds.files["val"])


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_train_val_makes_val_the_test_split(tmp_path: Path, val_name: str) -> None:
    src = make_folder(tmp_path / "src", splits=("train", val_name), per_class=2)
    ds = load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert sorted(ds.splits) == ["test", "train"]
    assert ds.split_sources == {"train": "train/", "test": f"{val_name}/ (held-out evaluation set)"}
    assert all(f.startswith(f"{val_name}/") for f in ds.files["test"])


def test_class_folders_only_carve_a_stratified_seeded_test_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name, n in (("a", 10), ("b", 20), ("c", 5)):
        (src / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(src / name / f"{i:02d}.png")
    ds = load_folder(src, tmp_path / "c1")
    assert ds.class_counts()["test"].tolist() == [2, 4, 1]  # 20% of every class
    assert ds.class_counts()["train"].tolist() == [8, 16, 4]
    assert ds.split_sources == {"train": "class folders (80%, stratified, seed 0)",
                                "test": "class folders (20%, stratified, seed 0)"}
    assert not set(ds.files["train"]) & set(ds.files["test"])
    assert len(set(ds.files["train"]) | set(ds.files["test"])) == 35
    again = load_folder(src, tmp_path / "c2")  # a fresh decode chooses the same files
    assert again.files == ds.files
    other = load_folder(src, tmp_path / "c1", test_fraction=0.4, seed=3)
    assert other.class_counts()["test"].tolist() == [4, 8, 2]
    assert other.split_sources["test"] == "class folders (40%, stratified, seed 3)"
    assert load_folder(src, tmp_path / "c1", seed=1).files != ds.files


def test_class_folders_in_a_zip_with_a_top_folder(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "photos", splits=("",), per_class=5)
    ds = load_dataset(f"folder:{archive(src, tmp_path / 'photos.zip')}", data_root=tmp_path / "c")
    assert ds.class_counts()["test"].tolist() == [1, 1, 1]
    assert ds.split_sources["train"] == "class folders in photos/ (80%, stratified, seed 0)"


def test_mixed_sizes_keep_the_aspect_ratio_and_centre_crop(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    # A wide picture in thirds: a squash would keep all three colours, a centre crop only green.
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = COLOURS["red"]
    wide[:, 20:40] = COLOURS["green"]
    wide[:, 40:] = COLOURS["blue"]
    Image.fromarray(wide).save(src / "train" / "green" / "wide.png")
    ds = load_dataset(f"folder:{src}", data_root=tmp_path / "cache", target_size=16)
    assert ds.image_size == (16, 16)
    row = ds.files["train"].index("train/green/wide.png")
    img = ds["train"].images[row].astype(int)
    assert np.abs(img[:, 1:-1] - COLOURS["green"]).max() <= 2  # the filter bleeds into the edge columns
    assert np.abs(img - COLOURS["green"]).max() < 16
    # Without target_size the default is 256 px.
    assert load_dataset(f"folder:{src}", data_root=tmp_path / "cache").image_size == (256, 256)


def test_shared_size_stays_native_unless_larger_than_the_target(tmp_path: Path) -> None:
    small = make_folder(tmp_path / "small", size=(12, 8))  # 8 high, 12 wide
    ds = load_folder(small, tmp_path / "cache", target_size=16)
    assert ds.image_size == (8, 12)
    # Another target reuses the native cache: no second entry.
    load_folder(small, tmp_path / "cache", target_size=32)
    assert len([p for p in (tmp_path / "cache" / "decoded").iterdir() if p.is_dir()]) == 1
    big = make_folder(tmp_path / "big", size=(40, 40))
    assert load_folder(big, tmp_path / "cache", target_size=16).image_size == (16, 16)
    # --image-size overrides both.
    assert load_folder(small, tmp_path / "cache", image_size=6).image_size == (6, 6)


def _one_image_folder(root: Path, img: Image.Image, name: str, **save: object) -> Path:
    """train/ and test/ of two classes; `name` (saved from `img`) is the first train image of 'a'."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", img.size, (1, 2, 3)).save(root / split / cls / "z.png")
    img.save(root / "train" / "a" / name, **save)
    return root


def _decoded(tmp_path: Path, img: Image.Image, name: str, **save: object) -> np.ndarray:
    src = _one_image_folder(tmp_path / "src", img, name, **save)
    ds = load_folder(src, tmp_path / "cache", workers=1)
    return ds["train"].images[ds.files["train"].index(f"train/a/{name}")].astype(int)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 high: top red, bottom blue
    stored[:8] = COLOURS["red"]
    stored[8:] = COLOURS["blue"]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    src = tmp_path / "src"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (src / split / cls).mkdir(parents=True)
            Image.fromarray(stored).save(src / split / cls / "p.jpg", exif=exif.tobytes(), quality=95)
    ds = load_folder(src, tmp_path / "cache", target_size=64)
    assert ds.image_size == (32, 16)  # displayed upright: 16 wide, 32 high, native size kept
    img = ds["train"].images[0].astype(int)
    # Clockwise: the stored top (red) is now on the right, the bottom (blue) on the left.
    assert np.abs(img[:, 12:] - COLOURS["red"]).max() < 40
    assert np.abs(img[:, :4] - COLOURS["blue"]).max() < 40


def test_grayscale_and_palette(tmp_path: Path) -> None:
    assert (_decoded(tmp_path / "L", Image.new("L", (4, 4), 100), "g.png") == 100).all()
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert (_decoded(tmp_path / "P", pal, "p.png") == (10, 200, 30)).all()
    assert (_decoded(tmp_path / "1", Image.new("1", (4, 4), 1), "b.png") == 255).all()


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent black...
    rgba[:2] = (0, 0, 255, 128)  # ...and half-transparent blue on top
    img = _decoded(tmp_path / "rgba", Image.fromarray(rgba, "RGBA"), "t.png")
    assert (img[2:] == 255).all()
    assert np.abs(img[:2] - (127, 127, 255)).max() <= 1
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    assert (_decoded(tmp_path / "la", la, "la.png") == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    assert (_decoded(tmp_path / "pt", pal, "pt.png", transparency=0) == 255).all()


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert np.abs(_decoded(tmp_path / "tif", cmyk, "c.tif") - COLOURS["red"]).max() <= 1
    assert np.abs(_decoded(tmp_path / "jpg", cmyk, "c.jpg", quality=95) - COLOURS["red"]).max() < 20


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    gradient = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16)
    wide = np.tile(gradient, (4, 1))
    path = tmp_path / "g16.png"
    Image.fromarray(wide).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really stored as 16 bits
    img = _decoded(tmp_path, Image.open(path), "g16.png")
    expected = np.rint(gradient / 257.0)
    np.testing.assert_array_equal(img[0, :, 0], expected)
    assert (img[..., 0] == img[..., 2]).all() and img.max() == 255 and img.min() == 0


def test_broken_image_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    (src / "train" / "green" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(TransferlabError, match="train/green/broken.jpg"):
        load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert no_cache_left(tmp_path / "cache")
    # A truncated JPEG (decodable header, missing data) is named too.
    (src / "train" / "green" / "broken.jpg").unlink()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(src / "train" / "green" / "cut.jpg")
    data = (src / "train" / "green" / "cut.jpg").read_bytes()
    (src / "train" / "green" / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(TransferlabError, match="train/green/cut.jpg"):
        load_dataset(f"folder:{src}", data_root=tmp_path / "cache")
    assert no_cache_left(tmp_path / "cache")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar", ".zip"])
def test_truncated_archive_is_named_as_damaged(tmp_path: Path, suffix: str) -> None:
    src = make_folder(tmp_path / "data", per_class=20, size=(32, 32))
    packed = archive(src, tmp_path / f"data{suffix}")
    blob = packed.read_bytes()
    packed.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(TransferlabError, match=rf"{re.escape(str(packed))} is damaged"):
        load_dataset(f"folder:{packed}", data_root=tmp_path / "cache")
    assert no_cache_left(tmp_path / "cache")


def test_corrupt_zip_member_is_damaged(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "data")
    packed = tmp_path / "data.zip"
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, p.relative_to(src))
    blob = bytearray(packed.read_bytes())
    blob[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    packed.write_bytes(bytes(blob))
    with pytest.raises(TransferlabError, match="is damaged"):
        load_dataset(f"folder:{packed}", data_root=tmp_path / "cache")


def test_layout_errors_name_the_problem(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(TransferlabError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", data_root=cache)
    only = make_folder(tmp_path / "only", splits=("train",))
    with pytest.raises(TransferlabError, match="train/ together with test/ or val/"):
        load_dataset(f"folder:{only}", data_root=cache)

    one = tmp_path / "one"
    (one / "cats").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "cats" / "x.png")
    Image.new("RGB", (4, 4)).save(one / "cats" / "y.png")
    (one / "dogs").mkdir()
    (one / "dogs" / "notes.txt").write_text("no images here")
    with pytest.raises(TransferlabError, match=r"class folder .*dogs has no images.*delete the folder"):
        load_dataset(f"folder:{one}", data_root=cache)
    shutil.rmtree(one / "dogs")
    with pytest.raises(TransferlabError, match=r"only one class folder \('cats'\).*at least two"):
        load_dataset(f"folder:{one}", data_root=cache)

    extra = make_folder(tmp_path / "extra")
    (extra / "test" / "purple").mkdir()
    Image.new("RGB", (8, 8)).save(extra / "test" / "purple" / "x.png")
    with pytest.raises(TransferlabError, match=r"test split \(test/\) has class folder\(s\) purple"):
        load_dataset(f"folder:{extra}", data_root=cache)
    val = make_folder(tmp_path / "val", splits=("train", "val"))
    (val / "val" / "purple").mkdir()
    Image.new("RGB", (8, 8)).save(val / "val" / "purple" / "x.png")
    with pytest.raises(TransferlabError, match=r"val/ \(held-out evaluation set\)\) has class folder\(s\) purple"):
        load_dataset(f"folder:{val}", data_root=cache)
    assert no_cache_left(cache)


def test_cache_is_reused_then_invalidated_by_a_changed_source(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    cache = tmp_path / "cache"
    first = load_dataset(f"folder:{src}", data_root=cache)
    again = load_dataset(f"folder:{src}", data_root=cache)
    assert again.fingerprint == first.fingerprint
    assert len([p for p in (cache / "decoded").iterdir() if p.is_dir()]) == 1
    # Replace one image's content: the next load must see the new pixels.
    target = src / "train" / "red" / "train0.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = load_dataset(f"folder:{src}", data_root=cache)
    assert changed.fingerprint != first.fingerprint
    assert (changed["train"].images[:, 0, 0] == (10, 20, 30)).all(axis=-1).sum() == 1
    # A different decode setting is a different cache entry too.
    resized = load_dataset(f"folder:{src}", data_root=cache, image_size=4)
    assert resized.fingerprint not in (first.fingerprint, changed.fingerprint)


def test_data_info_names_where_each_split_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "photos"
    for cls, size in (("cat", (30, 20)), ("dog", (20, 30))):  # mixed sizes, no flag needed
        (src / "train" / cls).mkdir(parents=True)
        (src / "val" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", size, (i, 0, 0)).save(src / "train" / cls / f"{i}.jpg")
        Image.new("RGB", size).save(src / "val" / cls / "v.jpg")
    packed = archive(src, tmp_path / "photos.tar.gz")
    assert main(["data", "info", f"folder:{packed}", "--data-root", str(tmp_path / "c"),
                 "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "2 classes, 256x256 RGB images" in out
    assert re.search(r"train\s+8 images .* from photos/train/", out), out
    assert re.search(r"val\s+2 images .* from carved from photos/train/", out), out
    assert re.search(r"test\s+2 images .* from photos/val/ \(held-out evaluation set\)", out), out


def test_unknown_spec_is_explained() -> None:
    with pytest.raises(TransferlabError, match="cifar100, cifar10, folder:PATH"):
        load_dataset("imagenet")


def test_every_aspect_ratio_resizes_to_the_target() -> None:
    """Float rounding in the crop box never leaves the image (a ValueError from Pillow)."""
    from transferlab.data.images import _shorter_side_then_crop

    for w in range(1, 120, 7):
        for h in (1, 3, 37, 75, 100, 113, 375):
            for side in (16, 32, 224, 256):
                out = _shorter_side_then_crop(Image.new("RGB", (w, h)), (side, side))
                assert out.size == (side, side)
    for w, h in ((98, 98), (82, 49), (500, 375), (4032, 3024), (333, 1000), (1001, 667)):
        assert _shorter_side_then_crop(Image.new("RGB", (w, h)), (256, 256)).size == (256, 256)
