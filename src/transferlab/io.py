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
