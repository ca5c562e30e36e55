"""CIFAR-10 and CIFAR-100 from the official python archives.

Download and extraction use torchvision's dataset utilities (imported only when needed), the URLs
and MD5s are torchvision's record of the official files; parsing reads the official pickle keys ourselves because torchvision's dataset class
drops CIFAR-100's coarse labels.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.data.cache import data_root, load_arrays, save_arrays, stable_hash
from transferlab.data.dataset import ImageDataset, Split
from transferlab.errors import TransferlabError
from transferlab.io import check_dir_path


@dataclass(frozen=True)
class CifarSource:
    """Where an official CIFAR archive comes from and how it is laid out."""

    name: str
    url: str
    filename: str
    md5: str
    base_folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # fine labels ('labels' for CIFAR-10)
    names_key: str
    coarse_label_key: str | None = None
    coarse_names_key: str | None = None


# The official archives as torchvision records them (torchvision.datasets.CIFAR10/100: url,
# filename, tgz_md5, base_folder, train_list, test_list, meta); tests/test_data_cifar.py checks
# that they still agree. Written out so that `import transferlab.data` does not import torchvision
# and torch (several seconds) for a command such as `data info` that never needs them.
CIFAR10_SOURCE = CifarSource(
    name="cifar10", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
    base_folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", label_key="labels", names_key="label_names",
)
CIFAR100_SOURCE = CifarSource(
    name="cifar100", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
    base_folder="cifar-100-python", train_files=("train",), test_files=("test",),
    meta_file="meta", label_key="fine_labels", names_key="fine_label_names",
    coarse_label_key="coarse_labels", coarse_names_key="coarse_label_names",
)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_archive(source: CifarSource, root: Path, download: bool) -> Path:
    """Return the verified archive path, downloading it if allowed; never leave a partial file."""
    archive = root / source.filename
    if archive.is_file():
        actual = _md5(archive)
        if actual != source.md5:
            raise TransferlabError(
                f"{archive} is corrupt or not the official file: MD5 {actual}, expected {source.md5}. "
                f"Delete it and download it again from {source.url}."
            )
        return archive
    how_to = (
        f"download {source.url} and put it at {archive} (MD5 {source.md5}), "
        f"or pass --data-root / set $TRANSFERLAB_DATA to the folder that holds {source.filename}"
    )
    if not download:
        raise TransferlabError(f"{source.name} is not in {root}: {how_to}")
    check_dir_path(root, "the data folder (data_root, else $TRANSFERLAB_DATA)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=root))
    try:
        from torchvision.datasets.utils import download_url  # only when downloading

        # download_url verifies the MD5 and raises if it does not match.
        download_url(source.url, tmp, source.filename, source.md5)
        os.replace(tmp / source.filename, archive)
    except Exception as err:
        raise TransferlabError(f"could not download {source.name} ({err}). To work offline, {how_to}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return archive


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _parse(source: CifarSource, folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Parse the extracted pickles into arrays (images NHWC uint8, fine and coarse labels)."""
    arrays: dict[str, np.ndarray] = {}
    for split, files in (("train", source.train_files), ("test", source.test_files)):
        data, labels, coarse = [], [], []
        for fname in files:
            entry = _unpickle(folder / fname)
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            labels.extend(entry[source.label_key])
            if source.coarse_label_key:
                coarse.extend(entry[source.coarse_label_key])
        # The pickles store each image as 3072 bytes: the R plane, then G, then B (row-major).
        images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        arrays[f"{split}_images"] = np.ascontiguousarray(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
        if coarse:
            arrays[f"{split}_coarse"] = np.asarray(coarse, dtype=np.int64)
    meta_entry = _unpickle(folder / source.meta_file)
    meta = {"classes": list(meta_entry[source.names_key])}
    if source.coarse_names_key:
        meta["coarse_classes"] = list(meta_entry[source.coarse_names_key])
    return arrays, meta


def load_cifar(
    source: CifarSource,
    root: str | os.PathLike[str] | None = None,
    labels: str = "fine",
    download: bool = True,
) -> ImageDataset:
    """Load CIFAR-10 or CIFAR-100, downloading and verifying the official archive when needed.

    Args:
        source: CIFAR10_SOURCE or CIFAR100_SOURCE (or a test's own archive description).
        root: data directory; default $TRANSFERLAB_DATA, else ~/.cache/transferlab.
        labels: "fine" (100 classes for CIFAR-100) or "coarse" (its 20 superclasses).
        download: fetch the archive when it is missing.

    Returns:
        The dataset with "train" and "test" splits.
    """
    if labels not in ("fine", "coarse"):
        raise TransferlabError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    if labels == "coarse" and not source.coarse_label_key:
        raise TransferlabError(f"{source.name} has no coarse labels; use labels='fine'")
    root_path = data_root(root)
    fingerprint = stable_hash({"source": source.name, "md5": source.md5})
    cache_dir = root_path / "decoded" / f"{source.name}-{fingerprint[:16]}"
    cached = load_arrays(cache_dir)
    if cached is None:
        archive = _fetch_archive(source, root_path, download)
        with tempfile.TemporaryDirectory(prefix=".extract.", dir=root_path) as tmp:
            from torchvision.datasets.utils import extract_archive  # only on a cold cache

            extract_archive(archive, tmp)
            try:
                arrays, meta = _parse(source, Path(tmp) / source.base_folder)
            except (OSError, KeyError, pickle.UnpicklingError, ValueError) as err:
                raise TransferlabError(
                    f"{archive} does not have the layout of the official {source.name} archive ({err!r})"
                ) from err
        save_arrays(cache_dir, arrays, meta)
        cached = (arrays, meta)
    arrays, meta = cached
    coarse_classes = meta.get("coarse_classes")
    splits, coarse_labels = {}, {}
    for split in ("train", "test"):
        fine = arrays[f"{split}_labels"]
        coarse = arrays.get(f"{split}_coarse")
        chosen = coarse if labels == "coarse" else fine
        splits[split] = Split(arrays[f"{split}_images"], chosen)
        if coarse is not None and labels == "fine":
            coarse_labels[split] = coarse
    return ImageDataset(
        name=source.name if labels == "fine" else f"{source.name}-coarse",
        classes=coarse_classes if labels == "coarse" else meta["classes"],
        splits=splits,
        fingerprint=stable_hash({"base": fingerprint, "labels": labels}),
        coarse_classes=coarse_classes if labels == "fine" else None,
        coarse_labels=coarse_labels,
        split_sources={"train": f"the official {source.name} training set",
                       "test": f"the official {source.name} test set"},
    )
