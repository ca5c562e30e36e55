"""Image-folder datasets: `train/<class>/*`, `test/<class>/*`, optional `val/<class>/*`.

The source is a directory or a `.tar` / `.tar.gz` archive of that layout (one top-level folder
above the splits is allowed). Images of any size and mode are decoded once with Pillow, converted
to RGB, brought to one size and cached as arrays; the cache key covers the source's file list,
sizes and modification times and the decode settings.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from transferlab.data.cache import data_root, load_arrays, save_arrays, stable_hash
from transferlab.data.dataset import ImageDataset, Split
from transferlab.errors import TransferlabError

SPLITS = ("train", "val", "test")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_TAR_SUFFIXES)


def _locate(rel: str) -> tuple[str, str] | None:
    """(split, class) for a path ending in <split>/<class>/<file>, else None (ignored file)."""
    parts = PurePosixPath(rel).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2]


def _source_listing(path: Path) -> list[tuple[str, int, int]]:
    """What identifies the source's content cheaply: (name, size, mtime_ns) per file."""
    if _is_archive(path):
        st = path.stat()
        return [(str(path.resolve()), st.st_size, st.st_mtime_ns)]
    listing = []
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath, f)
            st = p.stat()
            listing.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return sorted(listing)


def _iter_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative name, bytes) of every file in the directory or archive."""
    if _is_archive(path):
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    yield member.name, f.read()
    else:
        for dirpath, _, files in os.walk(path):
            for name in files:
                p = Path(dirpath, name)
                yield p.relative_to(path).as_posix(), p.read_bytes()


def _to_size(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size`, then centre-crop to a square (torchvision's convention)."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _decode(path: Path, image_size: int | None) -> tuple[dict[str, np.ndarray], dict]:
    records: list[tuple[str, str, str, np.ndarray]] = []
    for rel, blob in _iter_files(path):
        where = _locate(rel)
        if where is None:
            continue
        try:
            with Image.open(io.BytesIO(blob)) as im:
                img = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise TransferlabError(
                f"{rel} in {path} is not a readable image ({err}). Remove or replace that file."
            ) from err
        if image_size is not None and img.size != (image_size, image_size):
            img = _to_size(img, image_size)
        records.append((where[0], where[1], rel, np.asarray(img, dtype=np.uint8)))
    present = {r[0] for r in records}
    if "train" not in present or "test" not in present:
        raise TransferlabError(
            f"{path} needs images under train/<class>/ and test/<class>/ (found splits: "
            f"{sorted(present) or 'none'}). Lay the folder out as train/<class>/*.jpg, test/<class>/*.jpg."
        )
    sizes = {r[3].shape[:2] for r in records}
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:5])
        raise TransferlabError(
            f"images in {path} have {len(sizes)} different sizes ({shown}, ...): "
            "pass --image-size N to resize them all to N x N."
        )
    classes = sorted({r[1] for r in records})
    index = {c: i for i, c in enumerate(classes)}
    # Sorting makes the order independent of the archive's or the file system's order.
    records.sort(key=lambda r: (r[0], r[1], r[2]))
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        rows = [r for r in records if r[0] == split]
        if rows:
            arrays[f"{split}_images"] = np.stack([r[3] for r in rows])
            arrays[f"{split}_labels"] = np.asarray([index[r[1]] for r in rows], dtype=np.int64)
    return arrays, {"classes": classes}


def load_folder(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Load an image-folder dataset from a directory or a tar archive, decoding once.

    Args:
        path: the directory or archive holding train/<class>/, test/<class>/ (and optional val/).
        root: data/cache directory; default $TRANSFERLAB_DATA, else ~/.cache/transferlab.
        image_size: resize every image to this square size; None keeps the size shared by all.

    Returns:
        The dataset with "train", "test" and, when present, "val" splits.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise TransferlabError(f"image folder {src} does not exist: give a directory or a .tar/.tar.gz archive")
    if src.is_file() and not _is_archive(src):
        raise TransferlabError(f"{src} is neither a directory nor a .tar / .tar.gz archive")
    if image_size is not None and image_size < 1:
        raise TransferlabError(f"--image-size must be a positive number of pixels, got {image_size}")
    key = stable_hash({"kind": "folder", "files": _source_listing(src), "image_size": image_size})
    name = src.name
    for suffix in _TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    cache_dir = data_root(root) / "decoded" / f"folder-{name}-{key[:16]}"
    cached = load_arrays(cache_dir)
    if cached is None:
        arrays, meta = _decode(src, image_size)
        save_arrays(cache_dir, arrays, meta)
        cached = (arrays, meta)
    arrays, meta = cached
    splits = {
        split: Split(arrays[f"{split}_images"], arrays[f"{split}_labels"])
        for split in SPLITS
        if f"{split}_images" in arrays
    }
    return ImageDataset(name=f"folder:{name}", classes=list(meta["classes"]), splits=splits, fingerprint=key)
