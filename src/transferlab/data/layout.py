"""Which images form which split, for every common image-folder layout.

Recognised layouts (one wrapping top-level folder above them is allowed):

    train/<class>/*  test/<class>/*              train and test as given
    train/ + val/ + test/                         the folder's val/ stays the "val" split
    train/<class>/*  val/<class>/*               torchvision's and ImageNet's layout: val/ is the
                                                  held-out evaluation set and becomes "test"
                                                  (the run carves its own validation from train)
    <class>/*                                     class folders only: a stratified, seeded test
                                                  split is carved

Images are found recursively under each class folder by extension (as torchvision's
ImageFolder does); hidden files and folders (.DS_Store, __MACOSX) are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.errors import TransferlabError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif",
                    ".tiff", ".webp")
# A class-folders-only source gives every class at least one training and one test image.
MIN_IMAGES_PER_CLASS = 2
# Folder names (lower case) recognised for each split.
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
               "test": ("test", "testing")}


@dataclass
class Layout:
    """The images of a folder dataset, split and labelled, before decoding.

    Attributes:
        classes: class names (the training split's class folders), sorted: label i is classes[i].
        files: per split, the image paths relative to the source root, in row order.
        labels: per split, the label of each file.
        sources: per split, where it came from in words (printed and saved with the run).
    """

    classes: list[str]
    files: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    sources: dict[str, str]
_ALL_SPLIT_NAMES = {n for names in SPLIT_NAMES.values() for n in names}


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(p.name))


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under `folder`, sorted so the order never depends on the file system."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        found += [Path(dirpath, f) for f in filenames
                  if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _unwrap(root: Path) -> Path:
    """Descend into a single wrapping folder ("photos/train/...") when there is one."""
    entries = [p for p in root.iterdir() if _visible(p.name)]
    if (len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in _ALL_SPLIT_NAMES
            and _subdirs(entries[0])
            and not any(f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)
                        for f in entries[0].iterdir())):
        return entries[0]
    return root


def _class_files(split_dir: Path, source: Path) -> dict[str, list[str]]:
    """Class name -> image paths (relative to `source`) under `split_dir`/<class>/."""
    classes = {}
    for class_dir in _subdirs(split_dir):
        images = _images_under(class_dir)
        if not images:
            raise TransferlabError(
                f"class folder {class_dir} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}). "
                "Add images to it or delete the folder."
            )
        classes[class_dir.name] = [p.relative_to(source).as_posix() for p in images]
    return classes


def _check_classes(classes: list[str], where: str) -> None:
    if not classes:
        raise TransferlabError(
            f"{where} has no class folders. Lay it out as {where}<class>/*.jpg "
            "(one folder per class), or as train/<class>/*.jpg with test/<class>/*.jpg or val/<class>/*.jpg."
        )
    if len(classes) == 1:
        raise TransferlabError(
            f"{where} has only one class folder ({classes[0]!r}); a classifier needs at least two. "
            "Add a folder of images for every other class."
        )


def _check_counts(classes: dict[str, list[str]], where: str) -> None:
    """Every class of a class-folders-only source needs MIN_IMAGES_PER_CLASS images for the carve."""
    few = {name: len(files) for name, files in sorted(classes.items())
           if len(files) < MIN_IMAGES_PER_CLASS}
    if few:
        named = ", ".join(f"{name}/ ({n} image{'s' if n != 1 else ''})" for name, n in few.items())
        raise TransferlabError(
            f"class folder(s) {named} in {where} have fewer than {MIN_IMAGES_PER_CLASS} images. "
            f"With class folders only, every class needs at least {MIN_IMAGES_PER_CLASS}: one to "
            "train on and one for the test split carved from it. Add images to those folders, "
            "remove them, or lay the source out as train/ + test/."
        )


def carve(counts: dict[str, list[str]], fraction: float, seed: int) -> tuple[dict, dict]:
    """Split every class's files: `fraction` of each (at least one where a class has two) to test.

    The choice depends only on the sorted file names, the fraction and the seed.
    """
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for name in sorted(counts):
        files = counts[name]
        n = len(files)
        k = min(n - 1, max(1, round(n * fraction))) if n >= 2 else 0
        chosen = set(rng.choice(n, size=k, replace=False).tolist()) if k else set()
        test[name] = [f for i, f in enumerate(files) if i in chosen]
        train[name] = [f for i, f in enumerate(files) if i not in chosen]
    return train, test


def find_layout(source: Path, test_fraction: float = 0.2, seed: int = 0) -> Layout:
    """Find the splits and classes of the image folder at `source` (an existing directory).

    Args:
        source: the folder (an extracted archive is a folder too).
        test_fraction: share of every class carved as the test split when the folder has only
            class folders.
        seed: seed of that carve.

    Returns:
        The layout; its file lists are relative to `source`.

    Raises:
        TransferlabError: an unrecognised layout, one class, an empty class folder, or a class
            in test/ or val/ that train/ does not have.
    """
    if not 0.0 < test_fraction < 1.0:
        raise TransferlabError(f"the test fraction must be in (0, 1), got {test_fraction}")
    root = _unwrap(source)
    prefix = "" if root == source else f"{root.name}/"
    present: dict[str, Path] = {}
    for folder in _subdirs(root):
        for split, names in SPLIT_NAMES.items():
            if folder.name.lower() in names and split not in present:
                present[split] = folder
    per_split: dict[str, dict[str, list[str]]] = {}
    sources: dict[str, str] = {}

    def take(split: str, folder: Path, note: str = "") -> None:
        per_split[split] = _class_files(folder, source)
        sources[split] = f"{prefix}{folder.name}/{note}"

    if "train" in present and ("test" in present or "val" in present):
        take("train", present["train"])
        _check_classes(sorted(per_split["train"]), sources["train"])
        if "test" in present:
            take("test", present["test"])
            if "val" in present:
                take("val", present["val"])
        else:
            take("test", present["val"], " (held-out evaluation set)")
    elif present:
        raise TransferlabError(
            f"{source} has {', '.join(f'{p.name}/' for p in present.values())} but needs train/ "
            "together with test/ or val/ (the evaluation set). Add the missing folder, or put the "
            "class folders directly at the top to have a test split carved from them."
        )
    else:
        everything = _class_files(root, source)
        _check_classes(sorted(everything), f"{source}/{prefix}")
        _check_counts(everything, f"{source}/{prefix}")
        per_split["train"], per_split["test"] = carve(everything, test_fraction, seed)
        pct = round(100 * test_fraction)
        where = f"class folders in {prefix}" if prefix else "class folders"
        sources["train"] = f"{where} ({100 - pct}%, stratified, seed {seed})"
        sources["test"] = f"{where} ({pct}%, stratified, seed {seed})"
    classes = sorted(per_split["train"])
    for split, found in per_split.items():
        if not found:
            raise TransferlabError(
                f"{sources[split]} has no class folders, so the {split} split would be empty. Put "
                f"its images in {sources[split].split(' ')[0]}<class>/ folders named as in "
                f"{sources['train']}, or remove the empty folder."
            )
        extra = sorted(set(found) - set(classes))
        if extra:
            raise TransferlabError(
                f"the {split} split ({sources[split]}) has class folder(s) {', '.join(extra)} that "
                f"{sources['train']} does not have: the model could never predict them. Add "
                f"training images for them under {sources['train']}<class>/ or remove those folders."
            )
    index = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    for split, found in per_split.items():
        files[split] = [f for c in sorted(found) for f in found[c]]
        labels[split] = np.asarray([index[c] for c in sorted(found) for _ in found[c]], dtype=np.int64)
    return Layout(classes=classes, files=files, labels=labels, sources=sources)
