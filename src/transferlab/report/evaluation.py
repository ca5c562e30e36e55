"""The report's evaluation section, read from the files `transferlab evaluate` writes.

Each model's first run is shown from `RUN_DIR/evaluation/` when that evaluation is current (newer
than the run's predictions and checkpoint, and of this version); otherwise the run is evaluated
into the report's own folder (never into the run) and read back from there, so the report always
reads files, as it reads the other run files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.evaluation import (
    EVALUATION_DIR,
    EVALUATION_FILE,
    PREDICTIONS_FILE,
    evaluate_run,
    write_evaluation,
)
from transferlab.report.document import Document, Figure, Heading, Paragraph, Table
from transferlab.report.tables import fmt_pct
from transferlab.results.runs import GroupSummary

NUM_PAIRS = 10  # most-confused pairs shown per model
MAX_CLASS_ROWS = 20  # per-class rows shown; more classes show the lowest recall first
# Keys an evaluation.json must hold to be read (older files lack them and are redone).
REQUIRED_KEYS = ("per_class", "calibration", "files")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _current(folder: Path, run_dir: Path) -> dict | None:
    """The evaluation record in `folder` when it is complete and newer than the run's outputs."""
    path = folder / EVALUATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED_KEYS):
        return None
    inputs = [run_dir / PREDICTIONS_FILE, run_dir / "best.pt"]
    if any(p.is_file() and p.stat().st_mtime > path.stat().st_mtime for p in inputs):
        return None
    return record


def load_evaluation(run_dir: Path, scratch: Path, title: str) -> tuple[dict, Path]:
    """The run's evaluation record and the folder holding its files.

    Args:
        run_dir: the run directory.
        scratch: where to evaluate the run when it has no current evaluation of its own.
        title: the figures' title when evaluated here.

    Raises:
        TransferlabError: the run cannot be evaluated (no predictions, no checkpoint).
    """
    own = Path(run_dir) / EVALUATION_DIR
    record = _current(own, Path(run_dir))
    if record is not None:
        return record, own
    result = evaluate_run(run_dir, num_pairs=NUM_PAIRS)
    if (Path(run_dir) / "best.pt").is_file():
        from transferlab.evaluation.gallery import gallery_for_run

        try:
            result.gallery = gallery_for_run(run_dir, result.labels, result.logits, result.classes,
                                             result.confused_pairs, result.calibration.temperature)
        except (TransferlabError, OSError):
            result.gallery = None  # the data moved: the report shows the numbers without photos
    write_evaluation(result, scratch, title=title)
    return json.loads((scratch / EVALUATION_FILE).read_text(encoding="utf-8")), scratch


def _figure(folder: Path, record: dict, key: str, fig_dir: Path, name: str, caption: str) -> Figure | None:
    """The evaluation's PNG `key`, copied next to the report's other figures."""
    file = (record.get("files") or {}).get(key)
    if not file or not (folder / file).is_file():
        return None
    fig_dir.mkdir(parents=True, exist_ok=True)
    target = fig_dir / name
    shutil.copyfile(folder / file, target)
    return Figure(target, caption)


def _per_class_table(record: dict, label: str) -> Table:
    rows = sorted(record["per_class"],
                  key=lambda r: (float("inf") if r["recall"] is None else r["recall"], r["class"]))
    shown = rows[:MAX_CLASS_ROWS]
    more = (f" The {len(shown)} classes with the lowest recall of {len(rows)}; all are in "
            "per_class.csv." if len(rows) > len(shown) else "")
    return Table(["class", "precision", "recall", "F1", "test images"],
                 [[r["class"], fmt_pct(r["precision"]), fmt_pct(r["recall"]), fmt_pct(r["f1"]),
                   str(r["support"])] for r in shown],
                 caption=f"{label}: per-class scores, lowest recall first.{more}")


def _pairs_table(pairs: Sequence[Mapping[str, Any]], caption: str) -> Table:
    return Table(["true class", "predicted as", "images", "share of the true class"],
                 [[p["true"], p["predicted"], str(p["count"]), fmt_pct(p["fraction_of_true"])]
                  for p in pairs], caption=caption)


def _calibration(doc: Document, record: dict, folder: Path, fig_dir: Path, label: str,
                 slug: str) -> None:
    cal = record.get("calibration") or {}
    t = cal.get("temperature")
    after = (f"; with the temperature T = {t:.3f} the run fitted on its validation split, "
             f"{fmt_pct(cal.get('ece_calibrated'))}" if t is not None else
             " (the run fitted no temperature)")
    doc.add(Paragraph(f"Expected calibration error (the mean gap between the model's confidence "
                      f"and its accuracy) {fmt_pct(cal.get('ece'))} with raw probabilities{after}."))
    fig = _figure(folder, record, "reliability", fig_dir, f"reliability_{slug}.png",
                  f"{label}: reliability diagram; points below the diagonal are over-confident.")
    if fig is not None:
        doc.add(fig)
    coverage = cal.get("coverage_calibrated") or cal.get("coverage") or []
    which = "with the run's temperature" if cal.get("coverage_calibrated") else "raw probabilities"
    doc.add(Table(["min. confidence P", "answered", "images", "accuracy when answered"],
                  [[f"{r['threshold']:g}", fmt_pct(r["coverage"]), str(r["answered"]),
                    fmt_pct(r["accuracy"])] for r in coverage],
                  caption=f"{label}: accuracy/coverage ({which}): answering only at top-1 "
                          "confidence >= P, as `predict --min-confidence P` does (below P it "
                          "answers `unknown`)."))


def _gallery(doc: Document, record: dict, folder: Path, fig_dir: Path, label: str,
             slug: str) -> None:
    gallery = record.get("gallery")
    if not gallery:
        return
    cams = ("; beside each photo the Grad-CAM heatmap for the predicted and for the true class "
            "(red: where the evidence for that class lies)" if gallery.get("heatmaps") else "")
    for section in gallery["sections"]:
        key = f"gallery_{section['key']}"
        fig = _figure(folder, record, key, fig_dir, f"{key}_{slug}.png",
                      f"{label}: {section['title'].lower()}, as the model saw them{cams}.")
        if fig is not None:
            doc.add(fig)
    top = gallery["sections"][0]
    doc.add(Table(["test image", "true class", "predicted", "p(predicted)", "p(true)", "loss"],
                  [[f"#{i['index']}", i["true"], i["predicted"], fmt_pct(i["p_predicted"]),
                    fmt_pct(i["p_true"]), f"{i['loss']:.2f}"] for i in top["items"]],
                  caption=f"{label}: {top['title'].lower()}."))
    if gallery.get("note"):
        doc.add(Paragraph(gallery["note"]))


def evaluation_section(doc: Document, groups: Sequence[GroupSummary], labels: Mapping[str, str],
                       fig_dir: Path) -> None:
    """Per model: accuracy, per-class scores, confusions, calibration and the error gallery."""
    doc.add(Heading("Evaluation: per-class scores, confusions, calibration and errors"))
    for g in groups:
        run = g.runs[0]
        label = labels.get(g.name, g.name)
        slug = _slug(g.name)
        doc.add(Heading(label, level=3))
        try:
            record, folder = load_evaluation(run.path, fig_dir.parent / "evaluations" / slug, label)
        except TransferlabError as err:
            doc.add(Paragraph(f"Not evaluated: {err}"))
            continue
        top5 = f", top-5 {fmt_pct(record['test_acc5'])}" if record.get("test_acc5") is not None else ""
        doc.add(Paragraph(
            f"Test top-1 {fmt_pct(record['test_acc1'])}{top5}, balanced accuracy "
            f"{fmt_pct(record.get('test_bal_acc'))}, macro-F1 {fmt_pct(record.get('test_macro_f1'))} "
            f"on {record['num_test_images']:,} test images (from {record['source']})."),
            _per_class_table(record, label))
        fig = _figure(folder, record, "confusion", fig_dir, f"confusion_{slug}.png",
                      f"{label}: confusion matrix, rows normalised to the true class.")
        if fig is not None:
            doc.add(fig)
        doc.add(_pairs_table(record["confused_pairs"][:NUM_PAIRS],
                             f"{label}: most-confused class pairs."))
        coarse = _figure(folder, record, "coarse_confusion", fig_dir, f"confusion_coarse_{slug}.png",
                         f"{label}: confusion between the 20 CIFAR-100 superclasses.")
        if coarse is not None:
            doc.add(coarse, _pairs_table(record.get("coarse_confused_pairs", [])[:NUM_PAIRS],
                                         f"{label}: most-confused superclass pairs."))
        _calibration(doc, record, folder, fig_dir, label, slug)
        _gallery(doc, record, folder, fig_dir, label, slug)
