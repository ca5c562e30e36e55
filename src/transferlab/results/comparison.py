"""The comparison records: one JSON-ready record per model (mean and std over seeds).

`transferlab compare` writes them to `comparison.json` / `comparison.csv`; the report tabulates
the same records. Both sides get them here, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transferlab.results.reference import is_study_data, study_2018_for
from transferlab.results.runs import GroupSummary


def comparison_records(
    groups: Sequence[GroupSummary], labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready record per model, with the 2018 study's matching numbers when it had any.

    Only runs on the study's kind of data (CIFAR, `reference.is_study_data`) get them.
    """
    records = []
    for g in groups:
        s = g.first
        ref = (study_2018_for(str(s.get("model", "")), bool(s.get("pretrained", False)))
               if is_study_data(s.get("dataset"), s.get("classes")) else None)
        record: dict[str, Any] = {
            "name": g.name,
            "label": (labels or {}).get(g.name, g.name),
            "model": s.get("model"),
            "pretrained": bool(s.get("pretrained", False)),
            "dataset": s.get("dataset"),
            "seeds": len(g.runs),
        }
        for key in ("test_acc1", "test_acc5", "test_bal_acc", "test_macro_f1", "epoch_time_s",
                    "val_time_s", "eval_time_s", "images_per_s", "wall_time_s"):
            record[key] = g.mean.get(key)
            record[f"{key}_std"] = g.std.get(key)
        record["epochs"] = g.epochs
        record["params_trainable"] = s.get("params_trainable")
        record["params_total"] = s.get("params_total")
        record["device"] = s.get("device")
        record["study_2018_test_acc1"] = ref.test_acc1 if ref else None
        record["study_2018_epoch_time_s"] = ref.epoch_time_s if ref else None
        record["run_dirs"] = [str(r.path) for r in g.runs]
        records.append(record)
    return records


__all__ = ["comparison_records"]
