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
    discarded and theirs is kept; a rename that loses such a race is handled the same way.
    An existing directory that is not valid is replaced.

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
        if directory.exists() and valid(directory):
            return  # another process finished the same content first
        if directory.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".stale",
                                          dir=directory.parent))
            try:
                os.replace(directory, stale / "old")  # move aside first: rmtree is not atomic
            except OSError:
                pass  # someone else moved or replaced it meanwhile
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            # Renaming onto a non-empty directory fails: another process got there first.
            if not (directory.exists() and valid(directory)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
