"""Assemble the report document from runs and sweeps, and write REPORT.md and report.html."""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transferlab.errors import TransferlabError
from transferlab.evaluation import figures
from transferlab.io import atomic_write_text, check_dir_path
from transferlab.report.document import (
    Bullets,
    Code,
    Document,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from transferlab.report.evaluation import evaluation_section
from transferlab.report.ranking import ranking_section
from transferlab.report.tables import (
    COMPARISON_HEADERS,
    comparison_rows,
    fmt_pct,
    fmt_seconds,
)
from transferlab.results.comparison import comparison_records
from transferlab.results.ranking import find_rank
from transferlab.results.reference import (
    PUBLISHED_CIFAR100,
    PUBLISHED_CIFAR100_SOURCES,
    STUDY_2018,
    STUDY_2018_SOURCE,
)
from transferlab.results.runs import GroupSummary, RunRecord, find_runs, summarise_groups
from transferlab.results.sweeps import SWEEP_FILE, load_sweep, pivot


@dataclass(frozen=True)
class ReportPaths:
    """Where the report went."""

    markdown: Path
    html: Path
    figures: Path


def _slug(name: str) -> str:
    """A file-name-safe version of a run name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _split_inputs(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Separate sweep folders (holding sweep.json) from run directories and compare folders."""
    runs, sweeps = [], []
    for path in map(Path, paths):
        (sweeps if (path / SWEEP_FILE).is_file() else runs).append(path)
    return runs, sweeps


def _comparison_section(doc: Document, records: list[dict[str, Any]], fig_dir: Path) -> None:
    """The table of models beside the 2018 numbers, and accuracy against time per epoch."""
    doc.add(
        Heading("Comparison"),
        Table(COMPARISON_HEADERS, comparison_rows(records),
              caption="Test accuracy (mean ± std over seeds when there are several); mean "
                      "training and validation time per epoch (one-time feature extraction "
                      "excluded) and the final test pass; epochs run per stage; training "
                      "images per second; and the 2018 study's result for the same model and "
                      "training regime."),
    )
    devices = sorted({str(r.get("device")) for r in records if r.get("device")})
    datasets = sorted({str(r.get("dataset")) for r in records if r.get("dataset")})
    # The study's numbers belong beside runs of its models on its kind of data (CIFAR), never
    # beside a user's own photos (results.reference.is_study_data decided that per record).
    on_study_data = any(r.get("study_2018_test_acc1") is not None for r in records)
    where = (f"This comparison ran on {', '.join(devices) or 'an unrecorded device'} with "
             f"{', '.join(datasets) or 'an unrecorded dataset'}")
    doc.add(Paragraph(
        f"{where}; the 2018 columns come from {STUDY_2018_SOURCE}. Different data, input sizes "
        "and hardware make the 2018 columns a reference point, not a like-for-like comparison."
        if on_study_data else
        f"{where}. The 2018 study's columns are left empty: its numbers are for CIFAR-100, and "
        "these runs are on other data."
    ))
    points = [figures.TimePoint(r["label"], float(r["epoch_time_s"]), float(r["test_acc1"]))
              for r in records if r.get("epoch_time_s") and r.get("test_acc1") is not None]
    if on_study_data:
        points += [figures.TimePoint(ref.label.split(",")[0].split(" (")[0], ref.epoch_time_s,
                                     ref.test_acc1, group="2018 study (K80, CIFAR-100)")
                   for ref in STUDY_2018 if ref.epoch_time_s]
    if points:
        path = figures.plot_accuracy_vs_time(points, fig_dir / "accuracy_vs_time.png",
                                             title="Test accuracy against training time per epoch")
        doc.add(Figure(path, "Test top-1 accuracy against mean training time per epoch"
                       + ("; the 2018 study's models for orientation (other hardware and data)."
                          if on_study_data else ".")))


def _reference_section(doc: Document) -> None:
    """The published numbers, with sources."""
    doc.add(
        Heading("Published results"),
        Table(["model", "test top-1", "s/epoch"],
              [[r.label, fmt_pct(r.test_acc1), fmt_seconds(r.epoch_time_s)] for r in STUDY_2018],
              caption=f"Results of {STUDY_2018_SOURCE}."),
        Table(["model", "CIFAR-100 top-1", "source"],
              [[r.label, fmt_pct(r.test_acc1), PUBLISHED_CIFAR100_SOURCES[src]]
               for src, r in PUBLISHED_CIFAR100],
              caption="Published CIFAR-100 results that configs/best.yaml aims to beat."),
    )


def _curves_section(doc: Document, groups: Sequence[GroupSummary], labels: Mapping[str, str],
                    fig_dir: Path) -> None:
    """Loss and accuracy per epoch for each model, stage boundaries dashed."""
    doc.add(Heading("Learning curves"))
    for g in groups:
        run = g.runs[0]
        if not run.metrics:
            doc.add(Paragraph(f"{labels.get(g.name, g.name)}: no metrics.csv in `{run.path}`."))
            continue
        label = labels.get(g.name, g.name)
        path = figures.plot_learning_curves(run.metrics, fig_dir / f"curves_{_slug(g.name)}.png",
                                            title=label)
        doc.add(Figure(path, f"{label} ({run.name}): loss and top-1 accuracy per epoch; dashed "
                             "lines mark the start of each training stage."))


def _data_section(doc: Document, run: RunRecord, fig_dir: Path) -> None:
    """The data figures (class counts per split, samples, augmentation) for the runs' dataset."""
    from transferlab.data import SplitIndices, load_dataset
    from transferlab.data import plots as data_plots
    from transferlab.training.prepare import run_stored_size

    doc.add(Heading("Data"))
    config = yaml.safe_load(run.config_text) or {}
    spec = config.get("dataset") or run.summary.get("dataset")
    try:
        ds = load_dataset(spec, data_root=config.get("data_root"),
                          image_size=config.get("image_size"),
                          labels=config.get("labels") or "fine", download=False,
                          target_size=run_stored_size(config))
    except (TransferlabError, OSError) as err:
        doc.add(Paragraph(f"The data figures were skipped: dataset `{spec}` could not be loaded "
                          f"({err})."))
        return
    splits = None
    if (run.path / "splits.npz").is_file():
        idx = SplitIndices.load(run.path / "splits.npz")
        train_labels = ds["train"].labels
        splits = {"train": train_labels[idx.train], "val": train_labels[idx.val],
                  "test": ds["test"].labels}
    counts = data_plots.plot_class_counts(ds, fig_dir / "data_class_counts.png", splits=splits)
    samples = data_plots.plot_samples(ds, fig_dir / "data_samples.png")
    doc.add(Figure(counts, f"{ds.name}: images per class in each split the runs used."),
            Figure(samples, f"{ds.name}: one sample image per class."))
    augment = config.get("augment") or "none"
    if augment != "none":
        preview = data_plots.plot_augmentations(ds, fig_dir / "data_augmentation.png",
                                                augment=augment)
        doc.add(Figure(preview, f"{ds.name}: the '{augment}' augmentation."))


def _sweep_section(doc: Document, sweep_dirs: Sequence[Path]) -> None:
    """One table per sweep, plus an optimiser x learning-rate style pivot for two-key grids."""
    doc.add(Heading("Sweeps"))
    for path in sweep_dirs:
        sweep = load_sweep(path)
        keys = list(sweep["grid"])
        rows = sweep["rows"]
        stage = sweep.get("stage")
        doc.add(Heading(f"{Path(sweep['path']).name}: {' x '.join(keys)}", level=3))
        if len(keys) == 2 and rows:
            row_values, col_values, cells = pivot(rows, keys[0], keys[1])
            doc.add(Table([f"{keys[0]} \\ {keys[1]}", *map(str, col_values)],
                          [[str(rv), *[fmt_pct(c) for c in line]]
                           for rv, line in zip(row_values, cells, strict=True)],
                          caption="Test top-1 accuracy per grid point."))
        where = f"stage {stage}" if stage is not None else "all stages"
        doc.add(Table(
            [*keys, "test top-1", "test top-5", f"best val top-1 ({where})", "epochs",
             "train s/epoch", "wall time (s)"],
            [[*[str(r[k]) for k in keys], fmt_pct(r["test_acc1"]), fmt_pct(r["test_acc5"]),
              fmt_pct(r["best_val_acc1"]), str(r["epochs"]), fmt_seconds(r["epoch_time_s"]),
              fmt_seconds(r["wall_time_s"])] for r in rows],
            caption=f"Every grid point of `{sweep['path']}`.",
        ))


def _config_section(doc: Document, groups: Sequence[GroupSummary], labels: Mapping[str, str],
                    compare_yaml: Path | None) -> None:
    """The exact configs: the compare file if any, and each run's resolved config."""
    doc.add(Heading("Configs"))
    if compare_yaml is not None and compare_yaml.is_file():
        doc.add(Code(compare_yaml.read_text(encoding="utf-8"), "yaml",
                     summary="compare config (compare.yaml)"))
    for g in groups:
        for run in g.runs:
            doc.add(Code(run.config_text or "(no config.yaml)", "yaml",
                         summary=f"{labels.get(g.name, g.name)}: {run.path.name}/config.yaml"))


def _environment_section(doc: Document, groups: Sequence[GroupSummary]) -> None:
    """Library versions and device of every run, and where the report was generated."""
    doc.add(Heading("Environment"))
    libraries = sorted({k for g in groups for r in g.runs for k in (r.summary.get("versions") or {})})
    rows = []
    for g in groups:
        for run in g.runs:
            versions = run.summary.get("versions") or {}
            rows.append([run.name, str(run.summary.get("device", "–")),
                         *[str(versions.get(k, "–")) for k in libraries]])
    doc.add(Table(["run", "device", *libraries], rows,
                  caption="Device and library versions recorded by each run."))
    try:
        from transferlab.training.device import library_versions

        here = library_versions()
    except ImportError:  # the report also works where training is not installed
        here = {"python": platform.python_version()}
    doc.add(Paragraph(
        f"Report generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on "
        f"{platform.platform()} with " + ", ".join(f"{k} {v}" for k, v in here.items()) + "."
    ))


def build_document(
    run_dirs: Sequence[Path],
    out_dir: Path,
    title: str = "transferlab report",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    data_figures: bool = True,
) -> Document:
    """Build the report document, drawing its figures into `out_dir/figures`.

    Args:
        run_dirs: run directories, folders holding run directories (a compare), or sweep folders.
        out_dir: the report folder.
        title: the document title.
        description: an opening paragraph.
        labels: display names by run name (seed suffix removed); default the run names.
        data_figures: also load the dataset and draw the data figures.
    """
    run_paths, sweep_dirs = _split_inputs(run_dirs)
    if not run_paths and not sweep_dirs:
        raise TransferlabError("no run directories given; pass at least one RUN_DIR")
    # A sweep's own runs form the comparison only when no other runs are given.
    runs = find_runs(run_paths) if run_paths else find_runs(sweep_dirs)
    groups = summarise_groups(runs)
    labels = {g.name: g.name for g in groups} | dict(labels or {})
    fig_dir = Path(out_dir) / "figures"
    doc = Document(title)
    if description:
        doc.add(Paragraph(description.strip()))
    doc.add(Bullets([f"{labels[g.name]}: {len(g.runs)} run(s) in "
                     + ", ".join(f"`{r.path}`" for r in g.runs) for g in groups]))
    records = comparison_records(groups, labels)
    _comparison_section(doc, records, fig_dir)
    rank = find_rank([Path(out_dir), *run_paths])  # a comparison made by `compare --from-rank`
    if rank is not None:
        ranking_section(doc, rank, records)
    _reference_section(doc)
    _curves_section(doc, groups, labels, fig_dir)
    evaluation_section(doc, groups, labels, fig_dir)
    if data_figures:
        _data_section(doc, runs[0], fig_dir)
    if sweep_dirs:
        _sweep_section(doc, sweep_dirs)
    compare_yaml = Path(out_dir) / "compare.yaml"
    _config_section(doc, groups, labels, compare_yaml if compare_yaml.is_file() else None)
    _environment_section(doc, groups)
    return doc


def write_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    title: str = "transferlab report",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    data_figures: bool = True,
) -> ReportPaths:
    """Write `REPORT.md`, `report.html` and `figures/` into `out_dir` (see `build_document`)."""
    out_dir = check_dir_path(out_dir, "report folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = build_document(run_dirs, out_dir, title, description, labels, data_figures)
    markdown, html = out_dir / "REPORT.md", out_dir / "report.html"
    atomic_write_text(markdown, to_markdown(doc, out_dir))
    atomic_write_text(html, to_html(doc))
    return ReportPaths(markdown=markdown, html=html, figures=out_dir / "figures")
