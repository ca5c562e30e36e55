"""bench/imbalance.py's own arithmetic: the long tail it builds and the table's differences."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from imbalance import epoch_table, long_tail_counts, table  # noqa: E402


def test_long_tail_counts_fall_geometrically_by_the_ratio() -> None:
    counts = long_tail_counts(500, 10.0, 10)
    assert counts[0] == 500 and counts[-1] == 50
    assert counts == sorted(counts, reverse=True)
    ratios = [a / b for a, b in zip(counts, counts[1:], strict=False)]
    assert max(ratios) - min(ratios) < 0.05  # one common factor, 10 ** (1 / 9) = 1.29


def _run(method: str, seed: int, acc: float) -> dict:
    return {"dataset": "d", "variant": "v", "method": method, "seed": seed, "test_acc1": acc,
            "test_bal_acc": acc - 0.1, "test_macro_f1": acc - 0.2, "wall_s": 10.0,
            "rows": [{"stage": "head", "epoch": 1, "val_loss": 0.5, "val_acc1": 0.8, "train_loss": 0.4},
                     {"stage": "finetune", "epoch": 1, "val_loss": 0.7, "val_acc1": 0.7,
                      "train_loss": 0.9}]}


def test_table_averages_seeds_and_differences_against_off() -> None:
    runs = [_run("off", 0, 0.60), _run("off", 1, 0.62), _run("logit_adjust", 0, 0.66),
            _run("logit_adjust", 1, 0.66)]
    lines = table(runs)
    off, adjusted = lines[2], lines[3]
    assert "| off | 2 | 61.0 ± 1.4% |" in off
    assert "| logit_adjust | 2 | 66.0 ± 0.0% |" in adjusted
    assert "| +5.0 | +5.0 | +5.0 |" in adjusted  # 66 - 61 for each of the three metrics
    assert "0.500 / 80.0% (epoch 1) | 0.700 / 70.0% (0.90) |" in epoch_table(runs)[2]
