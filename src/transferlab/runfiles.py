"""The files a run directory holds, and the one rule for "this run finished".

`summary.json` is written last and atomically (training/summary.py), so its presence is what
"finished" means everywhere: training refuses to start over it, `compare` and `sweep` skip such
runs, the results readers and the Python API's `Run` require it.
"""

from __future__ import annotations

import os
from pathlib import Path

SUMMARY = "summary.json"
CONFIG = "config.yaml"
BEST = "best.pt"
LAST = "last.pt"
PREDICTIONS = "predictions_test.npz"
SPLIT_FILES = "split_files.json"


def is_finished(run_dir: str | os.PathLike[str]) -> bool:
    """Whether a run completed: `summary.json` is written last, atomically."""
    return (Path(run_dir) / SUMMARY).is_file()


__all__ = ["BEST", "CONFIG", "LAST", "PREDICTIONS", "SPLIT_FILES", "SUMMARY", "is_finished"]
