"""The ranking's file: `rank.json` in a `transferlab rank` folder, reading it back, and rank agreement.

`transferlab rank` writes it (transferlab/ranking/rank.py); `compare --from-rank` reads it and
copies it into the comparison folder, where the report reads it. Its keys are listed in
docs/ARCHITECTURE.md ("Ranking"); each record of `candidates` holds at least `rank`, `model`,
`logme` and `probe_val_acc1`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import TransferlabError

# `transferlab rank`'s default image budget (here, torch-free, so that --help can show it).
DEFAULT_MAX_IMAGES = 5000  # a few minutes for three small backbones on a laptop CPU at 96 px

RANK_FILE = "rank.json"


def load_rank(rank_dir: str | Path) -> dict[str, Any]:
    """Read RANK_DIR/rank.json (pass the folder or the file)."""
    path = Path(rank_dir)
    path = path if path.suffix == ".json" else path / RANK_FILE
    if not path.is_file():
        raise TransferlabError(f"{path} not found; pass the --out folder of `transferlab rank`")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise TransferlabError(f"{path} is not valid JSON ({err}); rerun `transferlab rank`") from err
    if not isinstance(payload, dict) or not payload.get("candidates"):
        raise TransferlabError(f"{path} holds no ranked candidates; rerun `transferlab rank`")
    return payload


def find_rank(folders: Sequence[Path]) -> dict[str, Any] | None:
    """The first readable rank.json in the given folders, else None."""
    for folder in folders:
        if (Path(folder) / RANK_FILE).is_file():
            try:
                return load_rank(folder)
            except TransferlabError:
                continue
    return None


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two paired sequences (ties counted as in tau-b).

    tau_b = (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b)) over the
    n0 = n (n - 1) / 2 pairs (Kendall, 1945); 1 = same order, -1 = reversed. Returns NaN when
    either sequence is constant or has fewer than two values. O(n^2): meant for a few dozen models.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two sequences of equal length, got {x.shape} and {y.shape}")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied_x, untied_y = int(np.count_nonzero(dx)), int(np.count_nonzero(dy))
    if len(i) == 0 or untied_x == 0 or untied_y == 0:
        return float("nan")
    # A pair tied in either sequence contributes 0 to the numerator.
    return float(np.sum(dx * dy) / np.sqrt(untied_x * untied_y))


def rank_agreement(payload: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pair each ranked candidate with the fine-tuned comparison record of the same model.

    Args:
        payload: rank.json.
        records: comparison records (`label`, `model`, `test_acc1`).

    Returns:
        {"rows": [(label, candidate, test_acc1)] in rank order, "tau_logme", "tau_probe" (Kendall's
        tau of each score against test_acc1; NaN for fewer than two models), "top_is_best": whether
        the best-LogME model has the best test accuracy (None for fewer than two models)}.
    """
    by_model: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("model") is not None and r.get("test_acc1") is not None:
            by_model.setdefault(r["model"], r)
    rows = [(by_model[c["model"]]["label"], c, float(by_model[c["model"]]["test_acc1"]))
            for c in payload["candidates"] if c["model"] in by_model]
    rows.sort(key=lambda row: row[1]["rank"])
    acc = [row[2] for row in rows]
    many = len(rows) > 1
    nan = float("nan")
    return {
        "rows": rows,
        "tau_logme": kendall_tau([row[1]["logme"] for row in rows], acc) if many else nan,
        "tau_probe": kendall_tau([row[1]["probe_val_acc1"] for row in rows], acc) if many else nan,
        "top_is_best": (acc[0] == max(acc)) if many else None,
    }
