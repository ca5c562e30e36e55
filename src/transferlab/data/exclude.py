"""Leaving images out of a run without touching the user's folder (`--exclude FILE`).

The file is an audit CSV (`transferlab data audit`: its `path` column) or a plain list, one
source-relative path per line (`#` starts a comment). A listed path that is not in the dataset is
an error: it usually means the list belongs to another dataset or folder layout.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from transferlab.errors import TransferlabError


def read_exclude(path: str | Path) -> list[str]:
    """The sorted, distinct paths an exclude file lists."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TransferlabError(f"cannot read the exclude file {p} ({err}); give an audit CSV or a "
                               "text file with one image path per line") from err
    lines = text.splitlines()
    if lines and lines[0].split(",")[0].strip().strip('"') == "path":
        rows = csv.DictReader(io.StringIO(text))
        return sorted({r["path"].strip() for r in rows if (r.get("path") or "").strip()})
    return sorted({line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")})


def kept_rows(files: Mapping[str, Sequence[str]] | None, excluded: Iterable[str],
              source: str = "the dataset") -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Rows of each split that are not excluded, and the excluded paths by split.

    Args:
        files: per split, the source-relative path of each row (`ImageDataset.files`).
        excluded: paths to leave out.
        source: the dataset, for messages.

    Raises:
        TransferlabError: the dataset names no files (not an image folder), or a listed path is
            in no split.
    """
    excluded = set(excluded)
    if not excluded:
        return {s: np.arange(len(f)) for s, f in (files or {}).items()}, {}
    if not files:
        raise TransferlabError(f"exclude lists image files, but {source} is not an image folder; "
                               "use it with folder:PATH datasets")
    kept, dropped = {}, {}
    found: set[str] = set()
    for split, names in files.items():
        mask = np.array([n in excluded for n in names], dtype=bool)
        kept[split] = np.flatnonzero(~mask)
        dropped[split] = [n for n, m in zip(names, mask, strict=True) if m]
        found.update(dropped[split])
    missing = sorted(excluded - found)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TransferlabError(
            f"{len(missing)} path(s) in the exclude list are not images of {source}: {shown}. Paths are "
            "relative to the dataset folder, as audit.csv writes them; remove those lines or use the "
            "list made for this dataset")
    return kept, {s: d for s, d in dropped.items() if d}
