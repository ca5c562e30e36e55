"""`tl.data_info`, `tl.rank` and `tl.compare_models`: look at a dataset, rank backbones for it,
and train several models on it, as `transferlab data info`, `rank` and `compare` do (they call
these). (`compare_models`, not `compare`: `transferlab.compare` is the module that trains a
comparison, and a submodule is an attribute of the package.)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferlab.api import html
from transferlab.api.training import dataset_spec
from transferlab.errors import TransferlabError


@dataclasses.dataclass
class DatasetInfo:
    """Images per split and per class of a dataset, and where each split came from.

    Attributes:
        name: the dataset's name.
        classes: class names in label order.
        image_size: (height, width) of the stored images.
        counts: split -> images per class (int64, one per class); `val` is the carved
            validation split when `val_fraction` was given.
        sources: split -> where its images came from, in words.
        coarse_classes: CIFAR-100's 20 superclasses with the fine labels, else None.
    """

    name: str
    classes: list[str]
    image_size: tuple[int, int]
    counts: dict[str, Any]
    sources: dict[str, str]
    coarse_classes: list[str] | None = None

    def __str__(self) -> str:
        """The text `transferlab data info` prints."""
        h, w = self.image_size
        lines = [f"{self.name}: {len(self.classes)} classes, {h}x{w} RGB images"]
        for split, c in self.counts.items():
            source = self.sources.get(split)
            lines.append(f"  {split:<5} {int(c.sum()):>7,} images  ({c.min():,} to {c.max():,} per class)"
                         + (f"  from {source}" if source else ""))
        if self.coarse_classes:
            lines.append(f"  coarse labels: {len(self.coarse_classes)} superclasses (labels: coarse)")
        width = max(len(c) for c in self.classes)
        lines.append(f"\n  {'class':<{width}} " + " ".join(f"{s:>7}" for s in self.counts))
        for i, name in enumerate(self.classes):
            lines.append(f"  {name:<{width}} " + " ".join(f"{int(c[i]):>7,}" for c in self.counts.values()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        h, w = self.image_size
        rows = [[name, *(int(c[i]) for c in self.counts.values())] for i, name in enumerate(self.classes)]
        rows.append(["total", *(int(c.sum()) for c in self.counts.values())])
        sources = "; ".join(f"{k}: {v}" for k, v in self.sources.items())
        return (html.title(f"{self.name}: {len(self.classes)} classes, {h}x{w} RGB")
                + (f"<p>{html.escape(sources)}</p>" if sources else "")
                + html.table(rows, ["class", *self.counts]))


def data_info(dataset: str | os.PathLike[str], *, data_root: str | os.PathLike[str] | None = None,
              image_size: int | None = None, labels: str = "fine", workers: int = 0,
              val_fraction: float | None = None, train_fraction: float = 1.0,
              seed: int = 0, max_image_pixels: int | None = None) -> DatasetInfo:
    """Images per split and per class (decoding the dataset into its cache if needed).

    Args:
        dataset: cifar10, cifar100, folder:PATH, synthetic[:...], or a plain folder/archive path.
        data_root: download and decoded-image cache folder.
        image_size: store every image at N x N px.
        labels: fine | coarse (CIFAR-100).
        workers: decoding processes on a cold cache (0: one per core).
        val_fraction: also show a stratified validation split of this share of train.
        train_fraction: share of the remaining training images kept.
        seed: seed of that split.
        max_image_pixels: refuse images with more pixels (decompression bombs); None:
            $TRANSFERLAB_MAX_IMAGE_PIXELS, else 250,000,000.
    """
    import numpy as np

    from transferlab.data import load_dataset, make_splits

    ds = load_dataset(dataset_spec(dataset), data_root=data_root, image_size=image_size,
                      labels=labels, workers=workers, max_image_pixels=max_image_pixels)
    counts = ds.class_counts()
    sources = dict(ds.split_sources)
    if val_fraction is not None or train_fraction != 1.0:
        y = ds["train"].labels
        idx = make_splits(y, val_fraction or 0.0, train_fraction, seed)
        carved = {"train": y[idx.train], "val": y[idx.val]}
        counts = {**{k: np.bincount(v, minlength=ds.num_classes) for k, v in carved.items()},
                  **{k: v for k, v in counts.items() if k != "train"}}
        sources["val"] = f"carved from {sources.get('train', 'the training split')}"
    return DatasetInfo(ds.name, list(ds.classes), tuple(ds.image_size), counts, sources,
                       list(ds.coarse_classes) if ds.coarse_classes else None)


def rank(dataset: str | os.PathLike[str], models: Sequence[str] | None = None, *,
         weights_dir: str | os.PathLike[str] | None = None, pretrained: bool = False,
         out: str | os.PathLike[str] = "runs/rank", **options: Any) -> dict[str, Any]:
    """Rank pretrained backbones for a dataset from their frozen features (LogME, linear probe).

    Writes rank.json, rank.csv and rank.png into `out`.

    Args:
        dataset: as for `train`.
        models: registry names or timm:<name> (default: every model with pretrained weights).
        weights_dir: offline weights: the .safetensors file whose metadata fits each model.
        pretrained: download weights from the timm hub for models not in `weights_dir`.
        out: the folder written.
        **options: other `RankOptions` fields: max_images, input_size, split_seed, cache_dir,
            batch_size, device, extract_backend, data_root, image_size, labels, workers, quiet.

    Returns:
        The ranking (the content of rank.json: `candidates`, best LogME first, `skipped`, ...).
    """
    from transferlab.ranking import RankOptions, rank_models, resolve_candidates

    valid = {f.name for f in dataclasses.fields(RankOptions)} - {"dataset", "weights_dir", "head"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TransferlabError(f"unknown rank setting(s) {unknown}; valid settings are {sorted(valid)}")
    if models is not None:
        models = [m.strip() for m in models if m.strip()]
        if not models:
            raise TransferlabError("models is empty; give names such as mobilenet_v2, efficientnet_lite0")
    candidates, skipped = resolve_candidates(models, weights_dir, pretrained)
    opts = RankOptions(dataset=dataset_spec(dataset),
                       weights_dir=None if weights_dir is None else os.fspath(weights_dir), **options)
    return rank_models(opts, candidates, skipped, out_dir=Path(out))


def compare_models(config: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] = "runs/compare", *,
            from_rank: str | os.PathLike[str] | None = None, top: int | None = None, seeds: int = 1,
            only: Sequence[str] | None = None, report: bool = True, sets: Sequence[str] = (),
            **fields: Any) -> list[Any]:
    """Train several models on the same data and splits; write comparison.json/.csv and the report.

    Finished models are skipped on a second call and an interrupted one is resumed.

    Args:
        config: a compare config YAML (e.g. configs/quick.yaml); or give `from_rank`.
        out: the comparison folder.
        from_rank: a `rank` folder: fine-tune its `top` best backbones (default 3).
        top: with `from_rank`: how many.
        seeds: runs per model (mean and std reported).
        only: train only these models of the config.
        report: also write REPORT.md and report.html.
        sets: dotted overrides applied to every run, e.g. ``["stages.0.epochs=1"]``.
        **fields: TrainConfig fields set on every run: dataset, data_root, cache_dir,
            weights_dir, device, train_fraction, quiet.

    Returns:
        One `Run` per finished model, in config order.
    """
    from transferlab.api.run import Run
    from transferlab.compare import load_compare_config, run_compare

    shared = {"dataset", "data_root", "cache_dir", "weights_dir", "device", "train_fraction", "quiet"}
    unknown = sorted(set(fields) - shared)
    if unknown:
        raise TransferlabError(f"unknown compare setting(s) {unknown}; valid settings are {sorted(shared)}")
    if (config is None) == (from_rank is None):
        raise TransferlabError("give a compare config file or a ranking folder (from_rank), not both")
    if from_rank is not None:
        if fields.get("weights_dir") is not None:
            raise TransferlabError("a comparison from a ranking uses the weights the ranking scored; "
                                   "drop weights_dir")
        from transferlab.ranking.to_compare import compare_config_from_rank

        plan = compare_config_from_rank(from_rank, 3 if top is None else top, out_dir=out)
    else:
        if top is not None:
            raise TransferlabError("top picks models of a ranking; give it with from_rank")
        plan = load_compare_config(Path(config))
    if fields.get("dataset") is not None:
        fields["dataset"] = dataset_spec(fields["dataset"])
    finished = run_compare(plan, Path(out), seeds=seeds, overrides=fields, sets=list(sets), only=only)
    if report:
        from transferlab.report import write_report

        write_report(finished, Path(out), title=plan.title, description=plan.description,
                     labels={e.name: e.label for e in plan.entries})
    return [Run(p) for p in finished]


def audit_data(dataset: str | os.PathLike[str], *, out: str | os.PathLike[str] = "audit",
          weights: str | os.PathLike[str] | None = None, weights_dir: str | os.PathLike[str] | None = None,
          pretrained: bool = False, **options: Any) -> Any:
    """Audit a dataset: duplicates and train/test leakage, likely label errors, odd images, balance.

    Writes audit.json, audit.csv (one row per finding: give it to `train(..., exclude=...)`) and
    audit.html (thumbnails) into `out`; the dataset's files are never changed.

    Args:
        dataset: as for `train`.
        out: the folder written.
        weights: the weights file of the backbone that describes the images (MobileNetV2 by default).
        weights_dir: a folder holding it (found by its metadata).
        pretrained: download the weights (online).
        **options: other `AuditOptions` fields: model, input_size, image_size, data_root, device,
            batch_size, near_threshold, label_issues, workers, max_image_pixels, quiet.

    Returns:
        The `AuditResult`: `findings` (each with path, split, kind, score, group, suggested class),
        duplicate `groups`, `class_counts`, `settings`, `timings_s`; `.count(kind)`, `.of_kind(kind)`.
    """
    from transferlab.audit import AuditOptions, run_audit

    valid = {f.name for f in dataclasses.fields(AuditOptions)} - {"dataset", "weights", "weights_dir",
                                                                   "pretrained"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TransferlabError(f"unknown audit setting(s) {unknown}; valid settings are {sorted(valid)}")
    opts = AuditOptions(dataset_spec(dataset), weights=None if weights is None else os.fspath(weights),
                        weights_dir=None if weights_dir is None else os.fspath(weights_dir),
                        pretrained=pretrained, **options)
    result, _ = run_audit(opts, Path(out))
    return result
