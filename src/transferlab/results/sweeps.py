"""The sweep table's file: `sweep.json` in a sweep folder, and reading it back.

`transferlab sweep` writes it (transferlab/sweep.py: `write_sweep`); the report reads it. Its
keys: `grid` ({key: values}), `stage` (the swept stage or null), `rows` (one flat dict per grid
point: the grid keys, then `run_name`, `test_acc1`, `test_acc5`, `best_val_acc1`, `epochs`,
`epoch_time_s`, `wall_time_s`) and `base_config`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError

SWEEP_FILE = "sweep.json"


def load_sweep(path: Path) -> dict[str, Any]:
    """Read a sweep folder's `sweep.json` (pass the folder or the file)."""
    path = Path(path)
    file = path / SWEEP_FILE if path.is_dir() else path
    if not file.is_file():
        raise TransferlabError(f"{path} holds no {SWEEP_FILE}; run `transferlab sweep` first")
    data = json.loads(file.read_text(encoding="utf-8"))
    data["path"] = str(file.parent)
    return data


def pivot(rows: Sequence[Mapping[str, Any]], row_key: str, col_key: str,
          value: str = "test_acc1") -> tuple[list[Any], list[Any], list[list[float | None]]]:
    """A two-key grid as a matrix (e.g. optimiser rows x learning-rate columns), like the study."""
    row_values = list(dict.fromkeys(r[row_key] for r in rows))
    col_values = list(dict.fromkeys(r[col_key] for r in rows))
    cells: list[list[float | None]] = [[None] * len(col_values) for _ in row_values]
    for r in rows:
        cells[row_values.index(r[row_key])][col_values.index(r[col_key])] = r.get(value)
    return row_values, col_values, cells


__all__ = ["SWEEP_FILE", "load_sweep", "pivot"]
