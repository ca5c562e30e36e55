"""Atomic writes: a file or a directory appears whole or not at all.

Everything is written to a temporary sibling first and moved into place with `os.replace`,
which is atomic on POSIX and Windows, so a crash or Ctrl-C leaves the old version or the new
one, never a truncated one, and no temporary file is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from transferlab.errors import TransferlabError

# Rename attempts before atomic_write_dir gives up: each lost round means another writer replaced
# an incomplete directory at that very moment, so a handful of rounds is already generous.
_PLACE_ATTEMPTS = 10


def _umask() -> int:
    """The process umask (read without changing it where the OS allows: other threads may create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # no read-only query elsewhere: set and restore at once
    os.umask(umask)
    return umask


def _umask_mode(base: int) -> int:
    """`base` (0o666 files, 0o777 directories) masked by the umask, as open() and mkdir() do."""
    return base & ~_umask()


def _unwritable(folder: Path) -> str | None:
    """Why no folder can be made or written at `folder`, or None when one can (nothing is created)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder" if existing != folder else "it is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable for this user"
    return None


def check_dir_path(path: str | os.PathLike[str], what: str) -> Path:
    """Check that a folder can be written at `path` (it exists, or can be created); create nothing.

    Called before any work, so an output path under a file or in a read-only place fails at once
    instead of after a long computation.

    Args:
        path: the folder.
        what: the input that named it, for the message (e.g. "out_dir", "--out").

    Returns:
        `path` as a Path.

    Raises:
        TransferlabError: `path` is a file, lies under a file, or is not writable.
    """
    path = Path(path).expanduser()
    reason = _unwritable(path)
    if reason is not None:
        raise TransferlabError(f"{what} {path} cannot be used as a folder: {reason}. Choose "
                               "another path (a folder you can write to), or move that file away.")
    return path


def check_file_path(path: str | os.PathLike[str], what: str) -> Path:
    """Check that a file can be written at `path` (see `check_dir_path`); create nothing.

    Raises:
        TransferlabError: `path` is a folder, or its folder is a file, lies under one, or is not
            writable.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise TransferlabError(f"{what} {path} is a folder; give a file name inside it")
    reason = _unwritable(path.parent)
    if reason is not None:
        reason = f"{path.parent} is a file, not a folder" if reason == "it is a file" else reason
        raise TransferlabError(f"{what} {path} cannot be written: {reason}. Choose another "
                               "path (in a folder you can write to), or move that file away.")
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically: `write(fileobj)` into a temp sibling, fsync, then os.replace.

    Args:
        path: the final file.
        write: writes the whole content to the binary file object it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: the old file stays intact and no temp file is left behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_dir(
    directory: str | os.PathLike[str],
    fill: Callable[[Path], None],
    is_valid: Callable[[Path], bool] | None = None,
) -> None:
    """Create a directory atomically: `fill(tmp_dir)` writes its files, then it is renamed into place.

    Several processes may build the same directory at once (ranks under torchrun): when the
    final directory already exists and `is_valid(directory)` says it is complete, our copy is
    discarded and theirs is kept. An existing directory that is not valid is replaced.

    The rename is tried first and the final path is only inspected after it fails: renaming
    onto a missing path succeeds atomically and onto a non-empty directory fails, so the kernel
    decides who wins. Checking first ("does it exist?", then "replace it") let a writer that saw
    no directory move aside a complete one that another writer had just put there; a third
    writer that looked in that moment found nothing and failed.

    Args:
        directory: the final directory.
        fill: writes the directory's files into the temporary directory it is given.
        is_valid: whether an existing directory is complete (None: any existing one is kept).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    valid = is_valid or (lambda d: d.is_dir())
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        fill(tmp)
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp creates 0700
        last_error: OSError | None = None
        for _ in range(_PLACE_ATTEMPTS):
            try:
                os.replace(tmp, directory)
                return
            except OSError as err:
                # Renaming onto a non-empty directory (or a file) fails: something is in the way.
                if valid(directory):
                    return  # another process finished the same content first: keep theirs
                last_error = err
            # What is in the way is incomplete (or was just moved by another writer): move it
            # aside (rmtree is not atomic) and try again.
            stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".stale",
                                          dir=directory.parent))
            try:
                os.replace(directory, stale / "old")
            except OSError:
                pass  # someone else moved or replaced it meanwhile
            shutil.rmtree(stale, ignore_errors=True)
        assert last_error is not None
        raise last_error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
