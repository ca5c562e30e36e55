"""Image-folder datasets: a directory, .tar(.gz) or .zip in any common layout (see layout.py).

Images of any size and kind are decoded once (in parallel, straight into one .npy per split)
and cached; later loads map those files in a fraction of a second. The stored size needs no
flag: images that all share one size no larger than the target keep it (CIFAR's 32 px stays
32), anything else is brought to `target_size` square by the shorter side and a centre crop
(torchvision's evaluation convention). `image_size` overrides both.

Cache entries live under <data root>/decoded/: `folder-<name>-<key>/` holds the arrays and a
meta.json written last, renamed into place whole (io.atomic_write_dir). The key covers the
source's file names, sizes and modification times and every decode setting. A small
`folder-<name>-<source key>.sizes.json` remembers the header scan, so a run with another target
size finds a native-size cache without extracting the archive again. A lock file per source
makes concurrent loaders (torchrun ranks, two terminals) wait for one decode instead of
repeating it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from transferlab.data.archive import extract as extract_archive
from transferlab.data.archive import is_archive, strip_suffix
from transferlab.data.cache import (
    CACHE_FORMAT,
    data_root,
    is_complete,
    load_arrays,
    stable_hash,
)
from transferlab.data.dataset import ImageDataset, Split
from transferlab.data.decode import decode_into, read_sizes, resolve_workers
from transferlab.data.images import SizePlan, max_image_pixels
from transferlab.data.layout import Layout, find_layout
from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_dir, atomic_write_text, check_dir_path

DEFAULT_TARGET_SIZE = 256  # px: torchvision's Resize(256) before a 224 crop


def _source_listing(path: Path) -> list[tuple[str, int, int]]:
    """What identifies the source's content cheaply: (name, size, mtime_ns) per file."""
    if is_archive(path):
        st = path.stat()
        return [(str(path.resolve()), st.st_size, st.st_mtime_ns)]
    listing = []
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath, f)
            st = p.stat()
            listing.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return sorted(listing)


def _plan_id(image_size: int | None, target: int, shared: list[int] | None) -> dict:
    """The stored-size decision as a cache-key part: native (h, w) or a resize to a square."""
    if image_size is not None:
        return {"square": image_size}
    if shared is not None and max(shared) <= target:
        return {"native": list(shared)}
    return {"square": target}


def _size_plan(plan_id: dict, shared: list[int] | None) -> SizePlan:
    if "native" in plan_id:
        h, w = plan_id["native"]
        return SizePlan((h, w), resize=False)
    side = plan_id["square"]
    return SizePlan((side, side), resize=shared != [side, side])


def _check_disk(where: Path, layout: Layout, plan: SizePlan) -> None:
    h, w = plan.size
    need = sum(len(f) for f in layout.files.values()) * h * w * 3
    free = shutil.disk_usage(where).free
    if need > free:
        raise TransferlabError(
            f"the decoded images need {need / 1e9:.1f} GB but {where} has {free / 1e9:.1f} GB free. "
            "Point --data-root (or $TRANSFERLAB_DATA) at a disk with room, or store smaller images "
            "with --image-size N."
        )


def _decode(source: Path, layout: Layout, plan: SizePlan, workers: int, max_pixels: int,
            tmp: Path) -> None:
    """Write every split's images, labels and meta.json (last) into the directory `tmp`."""
    for split, files in layout.files.items():
        decode_into(tmp / f"{split}_images.npy", [str(source / f) for f in files], files, plan,
                    workers, desc=f"decoding {split}", max_pixels=max_pixels)
        np.save(tmp / f"{split}_labels.npy", layout.labels[split], allow_pickle=False)
    meta = {"format": CACHE_FORMAT, "classes": layout.classes, "sources": layout.sources,
            "files": layout.files, "center_cropped": plan.resize}
    (tmp / "meta.json").write_text(json.dumps(meta))


def load_folder(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    target_size: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    max_pixels: int | None = None,
) -> ImageDataset:
    """Load an image-folder dataset from a directory or an archive, decoding once.

    Args:
        path: a directory, .tar / .tar.gz / .tgz / .zip in one of the layouts of layout.py.
        root: data/cache directory; default $TRANSFERLAB_DATA, else ~/.cache/transferlab.
        image_size: store every image at this square size (px), whatever the sources are.
        target_size: the square size (px) for images that do not all share one size no larger
            than it; None means 256. A run passes round(model input size / 0.875).
        test_fraction: share of every class carved as the test split when the folder holds
            only class folders.
        seed: seed of that carve.
        workers: decoding processes; None or 0 means one per usable core.
        max_pixels: refuse images whose header claims more pixels (decompression bombs);
            None means $TRANSFERLAB_MAX_IMAGE_PIXELS, else `images.DEFAULT_MAX_IMAGE_PIXELS`.

    Returns:
        The dataset with "train", "test" and, when the folder has both val/ and test/, "val";
        `split_sources` says where each split came from and `files` names every image.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise TransferlabError(
            f"image folder {src} does not exist: give a directory or a .tar / .tar.gz / .zip archive")
    if src.is_file() and not is_archive(src):
        raise TransferlabError(f"{src} is neither a directory nor a .tar / .tar.gz / .tgz / .zip archive")
    for flag, value in (("--image-size", image_size), ("target size", target_size)):
        if value is not None and value < 1:
            raise TransferlabError(f"{flag} must be a positive number of pixels, got {value}")
    target = target_size or DEFAULT_TARGET_SIZE
    pixel_limit = max_image_pixels(max_pixels)
    name = strip_suffix(src.name)
    decoded = data_root(root) / "decoded"
    source_key = stable_hash({"kind": "folder", "files": _source_listing(src),
                              "test_fraction": test_fraction, "seed": seed})
    stem = f"folder-{name}-{source_key[:16]}"
    sizes_record = decoded / f"{stem}.sizes.json"

    def entry(plan_id: dict) -> tuple[Path, str]:
        key = stable_hash({"source": source_key, "plan": plan_id})
        return decoded / f"folder-{name}-{key[:16]}", key

    def known_shared() -> tuple[bool, list[int] | None]:
        try:
            return True, json.loads(sizes_record.read_text())["shared"]
        except (OSError, ValueError, KeyError):
            return False, None

    def try_load() -> ImageDataset | None:
        known, shared = known_shared()
        if image_size is None and not known:
            return None
        cache_dir, key = entry(_plan_id(image_size, target, shared))
        return _from_cache(cache_dir, key, name)

    found = try_load()
    if found is not None:
        return found
    check_dir_path(decoded, "the decoded-image cache (under data_root, else $TRANSFERLAB_DATA)")
    decoded.mkdir(parents=True, exist_ok=True)
    # One decode per source at a time; whoever waited finds the finished cache.
    with FileLock(str(decoded / f".{stem}.lock")):
        found = try_load()
        if found is not None:
            return found
        n_workers = resolve_workers(workers)
        extracted = None
        try:
            if is_archive(src):
                extracted = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".extract", dir=decoded))
                extract_archive(src, extracted)
            tree = extracted or src
            layout = find_layout(tree, test_fraction=test_fraction, seed=seed)
            known, shared = known_shared()
            if not known and image_size is None:  # an explicit size needs no header scan
                files = [f for split in layout.files.values() for f in split]
                sizes = set(read_sizes([str(tree / f) for f in files], files, n_workers,
                                       pixel_limit))
                shared = list(sizes.pop()) if len(sizes) == 1 else None
                atomic_write_text(sizes_record, json.dumps({"shared": shared}))
            plan_id = _plan_id(image_size, target, shared)
            cache_dir, key = entry(plan_id)
            if not is_complete(cache_dir):
                plan = _size_plan(plan_id, shared)
                _check_disk(decoded, layout, plan)
                atomic_write_dir(cache_dir, lambda tmp: _decode(tree, layout, plan, n_workers, pixel_limit,
                                                                 tmp),
                                 is_valid=is_complete)
        finally:
            if extracted is not None:
                shutil.rmtree(extracted, ignore_errors=True)
    found = _from_cache(cache_dir, key, name)
    if found is None:
        raise TransferlabError(f"the decoded cache {cache_dir} vanished while loading; run again")
    return found


def _from_cache(cache_dir: Path, key: str, name: str) -> ImageDataset | None:
    cached = load_arrays(cache_dir)
    if cached is None:
        return None
    arrays, meta = cached
    splits = {
        split: Split(arrays[f"{split}_images"], arrays[f"{split}_labels"])
        for split in ("train", "val", "test")
        if f"{split}_images" in arrays
    }
    return ImageDataset(name=f"folder:{name}", classes=list(meta["classes"]), splits=splits,
                        fingerprint=key, split_sources=dict(meta["sources"]),
                        files={k: list(v) for k, v in meta["files"].items()},
                        center_cropped=bool(meta.get("center_cropped", False)))
