"""Report section for a comparison started from a ranking: predicted order against fine-tuned order.

`compare --from-rank` copies the ranking's `rank.json` into the comparison folder; the report
reads that file through `results.ranking` (not the ranking code) and sets each fine-tuned model's test
accuracy beside its LogME score and probe accuracy, with Kendall's tau between the orders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transferlab.report.document import Document, Heading, Paragraph, Table
from transferlab.report.tables import fmt_pct
from transferlab.results.ranking import rank_agreement

HEADERS = ("model", "rank (LogME)", "LogME", "probe accuracy", "fine-tuned test top-1",
           "fine-tuned rank")


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
                      f"(`transferlab rank`), against the test accuracy after training each with the "
                      f"comparison's recipe."),
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
