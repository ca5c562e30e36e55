"""Print the markdown table of bench/RANK_RESULTS.md from a ranking and its fine-tuned comparison.

    python bench/rank_table.py RANK_DIR [COMPARE_DIR]

RANK_DIR is a `transferlab rank --out` folder; COMPARE_DIR the `compare --from-rank ... --out`
folder (its comparison.json). Only formats: nothing is measured here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from transferlab.results.ranking import load_rank, rank_agreement


def table(rank_dir: Path, compare_dir: Path | None = None) -> str:
    """Markdown: one row per ranked backbone, fine-tuned accuracy when COMPARE_DIR is given."""
    payload = load_rank(rank_dir)
    records = []
    if compare_dir is not None:
        records = json.loads((compare_dir / "comparison.json").read_text())["models"]
    tuned = {row[1]["model"]: row[2] for row in rank_agreement(payload, records)["rows"]}
    order = sorted(tuned, key=lambda m: -tuned[m])
    lines = ["| rank | backbone | LogME | probe acc (held out) | extraction img/s | backbone params | input "
             "| fine-tuned test top-1 | fine-tuned rank |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in payload["candidates"]:
        acc = tuned.get(c["model"])
        lines.append(
            f"| {c['rank']} | {c['model']} | {c['logme']:.3f} | {100 * c['probe_val_acc1']:.1f}% "
            f"| {c['extract_images_per_s']:.0f} ({c['extract_backend']}) | {c['params_backbone']:,} "
            f"| {'x'.join(map(str, c['input_size']))} | {'–' if acc is None else f'{100 * acc:.1f}%'} "
            f"| {'–' if acc is None else order.index(c['model']) + 1} |")
    text = "\n".join(lines)
    text += (f"\n\n{payload['images_train']} + {payload['images_val']} images; ranking wall time "
             f"{payload['wall_time_s']:.0f} s (rank.json `wall_time_s`: data loading, extraction, scoring).")
    if records:
        result = rank_agreement(payload, records)
        fmt = lambda v: "undefined" if math.isnan(v) else f"{v:+.2f}"  # noqa: E731
        text += (f"\nKendall's tau, LogME vs fine-tuned test top-1: {fmt(result['tau_logme'])}; "
                 f"probe vs fine-tuned: {fmt(result['tau_probe'])}; top-ranked is the best fine-tuned: "
                 f"{result['top_is_best']}.")
    return text


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    if not 1 <= len(args) <= 2:
        sys.exit(__doc__)
    print(table(*args))
