"""Report section for a comparison started from a ranking: predicted order against fine-tuned order.

`compare --from-rank` copies the ranking's `rank.json` into the comparison folder; the report
reads that file (it does not import the ranking code) and sets each fine-tuned model's test
accuracy beside its LogME score and probe accuracy, with Kendall's tau between the orders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferlab.evaluation import kendall_tau
from transferlab.report.document import Document, Heading, Paragraph, Table
from transferlab.report.tables import fmt_pct

RANK_FILE = "rank.json"  # the file `transferlab rank` writes (and `compare --from-rank` copies)
HEADERS = ("model", "rank (LogME)", "LogME", "probe accuracy", "fine-tuned test top-1",
           "fine-tuned rank")


def find_rank(folders: Sequence[Path]) -> dict[str, Any] | None:
    """The first readable rank.json in the given folders, else None."""
    for folder in folders:
        path = Path(folder) / RANK_FILE
        if path.is_file():
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(payload, dict) and payload.get("candidates"):
                return payload
    return None


def rank_agreement(payload: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pair each ranked candidate with the fine-tuned run of the same model.

    Returns:
        {"rows": [(record label, candidate, test_acc1)], "tau_logme", "tau_probe" (NaN for fewer
        than two models), "top_is_best": whether the best-LogME model fine-tuned best (None if
        not known)}.
    """
    by_model = {}
    for r in records:
        if r.get("model") is not None and r.get("test_acc1") is not None:
            by_model.setdefault(r["model"], r)
    rows = [(by_model[c["model"]]["label"], c, float(by_model[c["model"]]["test_acc1"]))
            for c in payload["candidates"] if c["model"] in by_model]
    rows.sort(key=lambda row: row[1]["rank"])
    acc = [row[2] for row in rows]
    many = len(rows) > 1
    tau_logme = kendall_tau([row[1]["logme"] for row in rows], acc) if many else float("nan")
    tau_probe = kendall_tau([row[1]["probe_val_acc1"] for row in rows], acc) if many else float("nan")
    top_is_best = (acc[0] == max(acc)) if many else None
    return {"rows": rows, "tau_logme": tau_logme, "tau_probe": tau_probe, "top_is_best": top_is_best}


def _fmt_tau(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:+.2f}"


def ranking_section(doc: Document, payload: dict[str, Any], records: Sequence[dict[str, Any]]) -> None:
    """Rank scores beside fine-tuned accuracies, and the rank correlations."""
    result = rank_agreement(payload, records)
    rows = result["rows"]
    if not rows:
        return
    order = sorted(range(len(rows)), key=lambda i: -rows[i][2])
    finetuned_rank = {i: position for position, i in enumerate(order, start=1)}
    table = [(label, str(c["rank"]), f"{c['logme']:.3f}", fmt_pct(c["probe_val_acc1"]), fmt_pct(acc),
              str(finetuned_rank[i])) for i, (label, c, acc) in enumerate(rows)]
    doc.add(
        Heading("Ranking before fine-tuning"),
        Table(HEADERS, table,
              caption=f"LogME and linear-probe accuracy from frozen features on "
                      f"{payload.get('images_train')} + {payload.get('images_val')} training images "
                      f"(`transferlab rank`), against the test accuracy after fine-tuning."),
    )
    verdict = ("the best-ranked backbone also fine-tuned best" if result["top_is_best"]
               else "the best-ranked backbone did not fine-tune best" if result["top_is_best"] is False
               else "one model only: no order to compare")
    doc.add(Paragraph(
        f"Kendall's tau between the LogME order and the fine-tuned order: "
        f"{_fmt_tau(result['tau_logme'])}; between the probe order and the fine-tuned order: "
        f"{_fmt_tau(result['tau_probe'])} (over {len(rows)} models; +1 = same order, -1 = "
        f"reversed; with this few models one swapped pair moves tau a lot). {verdict.capitalize()}."
    ))
