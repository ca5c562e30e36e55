"""Where downloads and decoded arrays live, and how they are written without ever half-existing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from transferlab.io import atomic_write_dir

ENV_VAR = "TRANSFERLAB_DATA"
# Bump when the decoded format changes so old caches are ignored rather than misread.
CACHE_FORMAT = 2
# Arrays stored in files larger than this are memory-mapped instead of read: the operating
# system's page cache then holds what fits, shared by every process (torchrun ranks) on the
# machine, and nothing copies a whole split into process memory. Smaller ones (CIFAR's 150 MB
# training set) are read, which costs little and keeps them off the disk's critical path.
MMAP_MIN_BYTES = 256 * 2**20


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data/cache directory: `root`, else $TRANSFERLAB_DATA, else ~/.cache/transferlab."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "transferlab"


def stable_hash(obj: object) -> str:
    """A hex digest of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def save_arrays(directory: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays (one .npy each) and meta.json into `directory` atomically.

    Everything goes to a temporary sibling first and is renamed into place at the end, so a crash
    or Ctrl-C never leaves a directory that looks complete but is not. When several processes
    (torchrun ranks) write the same directory at once, the first complete one wins and the
    others keep it.
    """

    def fill(tmp: Path) -> None:
        for key, value in arrays.items():
            np.save(tmp / f"{key}.npy", value, allow_pickle=False)
        # meta.json last: its presence marks a complete directory.
        (tmp / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, **meta}, indent=1))

    atomic_write_dir(directory, fill, is_valid=is_complete)


def save_streamed(directory: Path, name: str, shape: tuple[int, ...], dtype: np.dtype | type,
                  write: Callable[[np.ndarray], None], meta: dict) -> None:
    """Like `save_arrays` for one array too large for memory: `write(array)` fills a .npy
    memory-mapped in the temporary directory (pages go to the file, not to process memory)."""

    def fill(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        write(array)
        array.flush()
        del array
        (tmp / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, **meta}, indent=1))

    atomic_write_dir(directory, fill, is_valid=is_complete)


def is_complete(directory: Path) -> bool:
    """Whether `directory` holds a finished cache entry of this format."""
    try:
        return json.loads((directory / "meta.json").read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def load_arrays(directory: Path, mmap_min_bytes: int | None = None
                ) -> tuple[dict[str, np.ndarray], dict] | None:
    """Read what `save_arrays` (or a folder decode) wrote; None when absent or of another format.

    Args:
        directory: the cache entry.
        mmap_min_bytes: files at least this large are opened read-only memory-mapped
            (None: MMAP_MIN_BYTES).
    """
    if mmap_min_bytes is None:
        mmap_min_bytes = MMAP_MIN_BYTES
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    arrays = {}
    for p in sorted(directory.glob("*.npy")):
        big = p.stat().st_size >= mmap_min_bytes
        arrays[p.stem] = np.load(p, mmap_mode="r" if big else None, allow_pickle=False)
    return arrays, meta
