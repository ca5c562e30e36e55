"""CIFAR archives: official layout and pickle keys, checksum, offline errors, nothing left behind."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from transferlab.data.cifar import CIFAR100_SOURCE, load_cifar
from transferlab.errors import TransferlabError

FINE = [f"fine_{i}" for i in range(6)]
COARSE = ["coarse_a", "coarse_b", "coarse_c"]


def _planes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images as the pickles store them (R plane, G plane, B plane), and the same in NHWC."""
    nhwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    flat = nhwc.transpose(0, 3, 1, 2).reshape(n, 3072)
    return flat, nhwc


def _member(tar: tarfile.TarFile, name: str, obj: object) -> None:
    blob = pickle.dumps(obj)
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def make_cifar100_archive(path: Path, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    """Write a small archive with the official CIFAR-100 layout and keys; returns the truth."""
    rng = np.random.default_rng(0)
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", n_train), ("test", n_test)):
            flat, nhwc = _planes(n, rng)
            fine = rng.integers(0, len(FINE), n)
            coarse = fine % len(COARSE)
            truth[f"{split}_images"], truth[f"{split}_fine"], truth[f"{split}_coarse"] = nhwc, fine, coarse
            entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                     "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist(), "data": flat}
            _member(tar, f"cifar-100-python/{split}", entry)
        _member(tar, "cifar-100-python/meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})
    return truth


def _source_for(archive: Path):
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    # Only the expected checksum (and an unreachable URL) are the test's own.
    return dataclasses.replace(CIFAR100_SOURCE, md5=md5, url="http://127.0.0.1:9/cifar-100-python.tar.gz")


def test_cifar100_archive_loads_fine_and_coarse(tmp_path: Path) -> None:
    archive = tmp_path / CIFAR100_SOURCE.filename
    truth = make_cifar100_archive(archive)
    source = _source_for(archive)
    ds = load_cifar(source, root=tmp_path, labels="fine")
    assert ds.classes == FINE and ds.coarse_classes == COARSE
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds[split].images, truth[f"{split}_images"])
        np.testing.assert_array_equal(ds[split].labels, truth[f"{split}_fine"])
        np.testing.assert_array_equal(ds.coarse_labels[split], truth[f"{split}_coarse"])
    coarse = load_cifar(source, root=tmp_path, labels="coarse")
    assert coarse.classes == COARSE and coarse.fingerprint != ds.fingerprint
    np.testing.assert_array_equal(coarse["train"].labels, truth["train_coarse"])


def test_second_load_uses_the_cache(tmp_path: Path) -> None:
    archive = tmp_path / CIFAR100_SOURCE.filename
    make_cifar100_archive(archive)
    source = _source_for(archive)
    first = load_cifar(source, root=tmp_path)
    archive.unlink()  # a cached dataset no longer needs its archive
    second = load_cifar(source, root=tmp_path)
    np.testing.assert_array_equal(first["train"].images, second["train"].images)


def test_corrupt_archive_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / CIFAR100_SOURCE.filename
    make_cifar100_archive(archive)
    source = _source_for(archive)
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    archive.write_bytes(bytes(blob))
    with pytest.raises(TransferlabError, match=f"MD5 .* expected {source.md5}"):
        load_cifar(source, root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


def test_offline_error_says_which_file_goes_where(tmp_path: Path) -> None:
    source = dataclasses.replace(CIFAR100_SOURCE, url="http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(TransferlabError) as err:
        load_cifar(source, root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / CIFAR100_SOURCE.filename) in message and CIFAR100_SOURCE.md5 in message
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_archive_with_wrong_layout_is_named(tmp_path: Path) -> None:
    archive = tmp_path / CIFAR100_SOURCE.filename
    with tarfile.open(archive, "w:gz") as tar:
        _member(tar, "something-else/train", {"data": []})
    with pytest.raises(TransferlabError, match="layout of the official"):
        load_cifar(_source_for(archive), root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


def test_sources_agree_with_torchvisions_record() -> None:
    tv = pytest.importorskip("torchvision.datasets")
    from transferlab.data.cifar import CIFAR10_SOURCE

    for source, cls in ((CIFAR10_SOURCE, tv.CIFAR10), (CIFAR100_SOURCE, tv.CIFAR100)):
        assert (source.url, source.filename, source.md5, source.base_folder) == (
            cls.url, cls.filename, cls.tgz_md5, cls.base_folder)
        assert source.train_files == tuple(f for f, _ in cls.train_list)
        assert source.test_files == tuple(f for f, _ in cls.test_list)
        assert (source.meta_file, source.names_key) == (cls.meta["filename"], cls.meta["key"])


def test_importing_the_data_layer_does_not_import_torch() -> None:
    # `transferlab data info` on a warm cache must not pay for torch/torchvision (seconds).
    import subprocess
    import sys

    code = ("import sys, transferlab.data, transferlab.data.cifar; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
