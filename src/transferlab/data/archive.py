"""Dataset archives (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz, .zip): recognise, fingerprint, extract.

Archives are extracted to a temporary directory once, on a cold cache, because the parallel
decoder needs random access to the files (a .tar.gz can only be read front to back).
A truncated or corrupt archive is reported as damaged, naming the file, never as a raw
EOFError from the decompressor.
"""

from __future__ import annotations

import lzma
import tarfile
import zipfile
import zlib
from pathlib import Path

from transferlab.errors import TransferlabError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ARCHIVE_SUFFIXES = (*TAR_SUFFIXES, ".zip")

# What the standard library raises for a truncated or corrupt archive, by decompressor.
_DAMAGE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


def is_archive(path: Path) -> bool:
    """Whether `path` is a file with one of the archive suffixes."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def strip_suffix(name: str) -> str:
    """`name` without its archive suffix ("photos.tar.gz" -> "photos")."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _damaged(path: Path, err: BaseException) -> TransferlabError:
    return TransferlabError(
        f"{path} is damaged (truncated or corrupt: {type(err).__name__}: {err}). "
        "Download or copy it again, and check that the copy finished "
        "(compare its size or checksum with the original)."
    )


def extract(path: Path, into: Path) -> None:
    """Extract the archive `path` into the existing directory `into`.

    Raises:
        TransferlabError: the archive is truncated or corrupt.
    """
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()  # CRC of every member: catches corruption inside the archive
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
                zf.extractall(into)  # zipfile strips absolute paths and '..'
        else:
            with tarfile.open(path, "r:*") as tar:
                if hasattr(tarfile, "data_filter"):
                    # Refuse links out of the tree, absolute paths and device files (PEP 706).
                    tar.extractall(into, filter="data")
                else:  # Python < 3.11.4: keep only plain files and folders inside the tree
                    members = [m for m in tar.getmembers() if (m.isfile() or m.isdir())
                               and not m.name.startswith("/") and ".." not in Path(m.name).parts]
                    tar.extractall(into, members=members)  # noqa: S202
    except TransferlabError:
        raise
    except _DAMAGE as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # a real system error (disk full, permission), not a damaged archive
        raise _damaged(path, err) from err
