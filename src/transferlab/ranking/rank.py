"""Rank pretrained backbones for a dataset from frozen features, before fine-tuning any of them.

For each candidate: build it as `transferlab train` would (same weights, head, input size and
preprocessing), extract its pooled features once on a stratified subset of the training split
through the run's feature cache (same keys, so a later head stage on the same split reuses them),
then score them with LogME (`ranking.logme`) and a linear probe (`ranking.probe`), and time the
forward pass. The subset is exactly the split `transferlab train --val-fraction V
--train-fraction T --split-seed S` makes (the fractions are recorded in rank.json), so
`compare --from-rank` fine-tunes on the same images.

```
RANK_DIR/
  rank.json    settings, one record per scored candidate (best LogME first), skipped candidates
  rank.csv     the table
  rank.png     LogME and probe accuracy against forward-pass cost
```
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_text, check_dir_path
from transferlab.logs import info
from transferlab.ranking.candidates import Candidate, Skipped
from transferlab.ranking.logme import logme
from transferlab.ranking.probe import linear_probe
from transferlab.results.ranking import DEFAULT_MAX_IMAGES, RANK_FILE, kendall_tau  # noqa: F401 - re-exported

RANK_CSV = "rank.csv"
RANK_FIGURE = "rank.png"
PROBE_FRACTION = 0.2  # share of the subset held out to score the linear probe
AUTO_UPSCALE = 3  # auto input size: at most this many times the images' native size ...
AUTO_MIN_SIZE = 96  # ... but at least this (ImageNet features need objects near their scale)
TIMING_BATCHES = 2  # batches timed when every feature came from the cache


@dataclass
class RankOptions:
    """Settings of one ranking (the CLI flags of `transferlab rank`)."""

    dataset: str  # load_dataset spec
    data_root: str | None = None  # dataset download/cache folder
    image_size: int | None = None  # decode size of folder datasets (px)
    labels: str = "fine"  # fine | coarse (CIFAR-100)
    workers: int | None = None  # processes decoding a folder on a cold cache (None = one per core)
    max_image_pixels: int | None = None  # refuse larger images (None = $TRANSFERLAB_MAX_IMAGE_PIXELS, else 250M)
    max_images: int = DEFAULT_MAX_IMAGES  # images of the training split used (stratified)
    input_size: int | None = None  # model input size (px); None = auto_input_size
    split_seed: int = 0  # seed of the stratified subset (as TrainConfig.split_seed)
    cache_dir: str | None = None  # cached-feature folder (None = <data cache dir>/features)
    head: str | None = None  # head the models are built with (cache key); None = TrainConfig's default
    weights_dir: str | None = None  # where offline candidates' weights were found
    batch_size: int = 256  # extraction batch (images)
    device: str = "auto"  # auto | cpu | cuda | ...
    extract_backend: str = "auto"  # auto | eager | compile
    exclude: str | None = None  # file of images to leave out (audit.csv or one path per line)
    quiet: bool = False  # no progress bars


def subset_fractions(num_images: int, max_images: int,
                     probe_fraction: float = PROBE_FRACTION) -> tuple[float, float]:
    """(val_fraction, train_fraction) for make_splits so that about `max_images` are used in all.

    `probe_fraction` of them are held out (val), the rest is the probe's training part.
    """
    if max_images < 20:
        raise TransferlabError(f"--max-images {max_images} is too few to score anything; use at least 20")
    if max_images >= num_images:
        return probe_fraction, 1.0
    val = probe_fraction * max_images / num_images
    train = (1 - probe_fraction) * max_images / (num_images - probe_fraction * max_images)
    # Rounded so the fractions read well in rank.json and a YAML config gives the same split.
    return round(val, 6), min(round(train, 6), 1.0)


def auto_input_size(pretrained_size: Sequence[int], native_size: Sequence[int]) -> int:
    """The model's own input size, but not more than AUTO_UPSCALE x the images' (at least AUTO_MIN_SIZE).

    Upscaling 32 px CIFAR images to 224 or 299 px costs 5-10x the compute of 96 px for features
    that score about the same; photos at or above the model's size keep its size.
    """
    own = max(pretrained_size)
    cap = max(AUTO_MIN_SIZE, AUTO_UPSCALE * max(native_size))
    return int(min(own, cap))


def _default_head() -> str:
    """The head `transferlab train` gives a pretrained backbone by default (its finetune recipe)."""
    from transferlab.config import config_from_dict

    return config_from_dict({"pretrained": True}).head


@dataclass
class _Prepared:
    """A candidate's model and preprocessing, built the way a training run builds them."""

    model: Any
    input_size: tuple[int, int]
    transform: Any
    model_kwargs: dict[str, Any]


def _build(candidate: Candidate, num_classes: int, options: RankOptions, native: Sequence[int],
           device: torch.device) -> _Prepared:
    """Create the model as `_Run.build_model` does for `input_size` set (so the cache keys agree)."""
    from transferlab.data.preprocess import batch_transform
    from transferlab.models import create_model

    head = options.head or _default_head()
    if options.input_size is None:
        # The size comes from the weights' own preprocessing: read it from a meta-device build.
        with torch.device("meta"):
            probe = create_model(candidate.model, num_classes=num_classes, head=head)
        size = auto_input_size(probe.pretrained_cfg.input_size, native)
        if candidate.weights is not None:
            from transferlab.models import read_weights

            size = auto_input_size(read_weights(candidate.weights).preprocess(probe.pretrained_cfg).input_size,
                                   native)
    else:
        from transferlab.models.input_size import check_input_size

        size = options.input_size
        check_input_size(candidate.model, size)  # the candidate is skipped, naming its minimum
    model = create_model(candidate.model, num_classes=num_classes, pretrained=candidate.weights is None,
                         weights=candidate.weights, head=head, input_size=size)
    model.to(device).to(memory_format=torch.channels_last).eval()
    pre = model.pretrained_cfg
    input_size = tuple(pre.input_size)
    model.pretrained_cfg = dataclasses.replace(pre, crop_pct=1.0, crop_mode="squash")
    transform = batch_transform(model.pretrained_cfg, native_size=native).to(device).eval()
    kwargs = dict(getattr(model, "model_kwargs", {}) or {})
    kwargs.setdefault("head", head)
    return _Prepared(model, input_size, transform, kwargs)


def _features(prepared: _Prepared, candidate: Candidate, dataset: Any, splits: dict[str, np.ndarray],
              options: RankOptions, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    """Pooled features of each split (from the cache or freshly extracted) and the forward-pass rate."""
    from transferlab.data.cache import data_root, load_arrays, save_arrays
    from transferlab.training import features as feats
    from transferlab.training.device import select_precision
    from transferlab.training.engine import Batches

    model = prepared.model
    prefix, tail = feats.split_model(model, "head")
    frozen = feats.frozen_state_hash(model, tail)
    precision = select_precision("auto", device)
    pre = model.pretrained_cfg
    root = Path(options.cache_dir) if options.cache_dir else data_root(options.data_root)
    dirs = {split: feats.features_dir(root, feats.feature_cache_key(
        model_name=candidate.model, frozen=frozen, boundary="head", fingerprint=dataset.fingerprint,
        split=split, indices=idx, input_size=prepared.input_size, mean=pre.mean, std=pre.std,
        interpolation=pre.interpolation, model_kwargs=prepared.model_kwargs, precision=precision.name))
        for split, idx in splits.items()}
    loaded = {split: load_arrays(d) for split, d in dirs.items()}
    train = dataset["train"]
    order = np.concatenate(list(splits.values()))
    images = train.rows(order)  # gathered batch by batch: a memory-mapped split is never copied
    labels = torch.from_numpy(np.asarray(train.labels[order], dtype=np.int64))
    batches = Batches(images, labels, options.batch_size, transform=prepared.transform, device=device,
                      channels_last=True)
    out: dict[str, Any] = {}
    if all(v is not None for v in loaded.values()):
        out["features"] = {s: v[0]["features"] for s, v in loaded.items()}
        rates = [v[1].get("images_per_s") for v in loaded.values()]
        if all(r is not None for r in rates):
            out.update(images_per_s=float(rates[0]), backend=str(loaded["train"][1].get("backend")),
                       cached=True)
        else:  # written by a training run, which records no rate: time a few batches now
            n = min(len(images), TIMING_BATCHES * options.batch_size)
            timed = Batches(train.rows(order[:n]), labels[:n], options.batch_size, transform=prepared.transform,
                            device=device, channels_last=True)
            _, seconds, backend = feats.extract(prefix, timed, backend="eager", num_images=n,
                                                precision=precision, quiet=True, log=log)
            out.update(images_per_s=n / max(seconds, 1e-9), backend=backend, cached=True)
        log(f"  features from the cache ({', '.join(f'{s} {v.shape}' for s, v in out['features'].items())})")
        return out
    # One pass over all splits: one compilation, then each split is cached under its own key.
    # The backend changes the features (~1e-6), so its choice goes into rank.json.
    choice: dict[str, Any] = {}
    values, seconds, backend = feats.extract(prefix, batches, backend=options.extract_backend,
                                             num_images=len(order), precision=precision,
                                             desc=f"extract {candidate.model}", quiet=options.quiet, log=log,
                                             record=choice)
    rate = len(order) / max(seconds, 1e-9)
    start = 0
    out["features"] = {}
    for split, idx in splits.items():
        part = values[start:start + len(idx)].numpy()
        start += len(idx)
        save_arrays(dirs[split], {"features": part},
                    {"split": split, "shape": list(part.shape), "images_per_s": rate, "backend": backend})
        out["features"][split] = part
    out.update(images_per_s=rate, backend=backend, cached=False, backend_choice=choice)
    log(f"  extracted {len(order)} images in {seconds:.1f} s ({rate:.0f} img/s, {backend})")
    return out


def score_candidate(candidate: Candidate, dataset: Any, splits: dict[str, np.ndarray],
                    options: RankOptions, device: torch.device,
                    log: Callable[[str], None] = info) -> dict[str, Any]:
    """Build, extract (or load cached features), score and time one candidate; one record of rank.json."""
    start = time.perf_counter()
    train = dataset["train"]
    prepared = _build(candidate, len(dataset.classes), options, dataset.image_size, device)
    got = _features(prepared, candidate, dataset, splits, options, device, log)
    f_train, f_val = got["features"]["train"], got["features"]["val"]
    y_train, y_val = train.labels[splits["train"]], train.labels[splits["val"]]
    t0 = time.perf_counter()
    score = logme(np.concatenate([f_train, f_val]), np.concatenate([y_train, y_val]))
    logme_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    probe = linear_probe(f_train, y_train, f_val, y_val, num_classes=len(dataset.classes))
    probe_s = time.perf_counter() - t0
    model = prepared.model
    return {
        "model": candidate.model,
        "weights": str(candidate.weights.resolve()) if candidate.weights else None,
        "source": candidate.source,
        "head": prepared.model_kwargs["head"],
        "input_size": list(prepared.input_size),
        "num_features": int(f_train.shape[1]),
        "params_backbone": int(sum(p.numel() for p in model.backbone_parameters())),
        "logme": score,
        "probe_val_acc1": probe.val_acc1,
        "probe_train_acc1": probe.train_acc1,
        "extract_images_per_s": got["images_per_s"],
        "extract_ms_per_image": 1000.0 / max(got["images_per_s"], 1e-9),
        "extract_backend": got["backend"],
        "extract_backend_choice": got.get("backend_choice"),  # None: the features came from the cache
        "features_cached": got["cached"],
        "logme_time_s": logme_s,
        "probe_time_s": probe_s,
        "wall_time_s": time.perf_counter() - start,
    }


def rank_models(options: RankOptions, candidates: Sequence[Candidate], skipped: Sequence[Skipped],
                out_dir: str | Path | None = None, log: Callable[[str], None] = info) -> dict[str, Any]:
    """Score every candidate on the same stratified subset; write rank.json/.csv/.png into `out_dir`.

    A candidate whose model cannot be built or whose weights cannot be loaded is skipped with the
    reason; it is an error only when no candidate is left.

    Returns:
        The rank.json payload (records sorted by LogME, best first).
    """
    from transferlab.data import load_dataset, make_splits
    from transferlab.training.device import library_versions, select_device

    if out_dir is not None:
        check_dir_path(out_dir, "ranking folder")
    skipped = list(skipped)
    for s in skipped:
        log(f"skipped {s.model}: {s.reason}")
    if not candidates:
        raise TransferlabError("no candidate has pretrained weights: "
                               + "; ".join(f"{s.model}: {s.reason}" for s in skipped)
                               + ". Put the weights files into --weights-dir or use --pretrained online")
    wall = time.perf_counter()
    # Photos of mixed sizes are stored at input size / 0.875 as training runs store them
    # (training.prepare.stored_size), so a given --input-size keys the same cached features.
    target = round(options.input_size / 0.875) if options.input_size else None
    dataset = load_dataset(options.dataset, data_root=options.data_root, image_size=options.image_size,
                           labels=options.labels, workers=options.workers, target_size=target,
                           max_image_pixels=options.max_image_pixels)
    kept = np.arange(len(dataset["train"]))
    if options.exclude:
        from transferlab.data.exclude import kept_rows, read_exclude

        rows, dropped = kept_rows(dataset.files, read_exclude(options.exclude), source=options.dataset)
        kept = rows["train"]
        log(f"{len(dropped.get('train', [])):,} training image(s) left out, as listed in {options.exclude}")
    labels = dataset["train"].labels[kept]
    val_fraction, train_fraction = subset_fractions(len(labels), options.max_images)
    split = make_splits(labels, val_fraction=val_fraction, train_fraction=train_fraction,
                        seed=options.split_seed)
    # Rows of the whole training split, as training's splits.npz holds them (same cache keys).
    split = dataclasses.replace(split, train=kept[split.train], val=kept[split.val])
    if len(split.val) < len(dataset.classes):
        raise TransferlabError(f"--max-images {options.max_images} leaves {len(split.val)} held-out images "
                               f"for {len(dataset.classes)} classes; raise --max-images")
    splits = {"train": split.train, "val": split.val}
    device = select_device(options.device)
    log(f"ranking {len(candidates)} backbone(s) on {dataset.name}: {len(split.train)} + {len(split.val)} "
        f"images (probe fit + held out; val_fraction {val_fraction}, train_fraction {train_fraction}, "
        f"split_seed {options.split_seed}), device {device}")
    records = []
    for i, candidate in enumerate(candidates, start=1):
        log(f"[{i}/{len(candidates)}] {candidate.model} ({candidate.source})")
        try:
            records.append(score_candidate(candidate, dataset, splits, options, device, log))
        except (TransferlabError, OSError, RuntimeError) as err:
            # Typically a failed download or a weights file that does not fit: skip, keep going.
            reason = f"{type(err).__name__}: {err}" if not isinstance(err, TransferlabError) else str(err)
            log(f"  skipped: {reason}")
            skipped.append(Skipped(candidate.model, reason))
    if not records:
        raise TransferlabError("every candidate failed: " + "; ".join(f"{s.model}: {s.reason}" for s in skipped))
    records.sort(key=lambda r: -r["logme"])
    for position, record in enumerate(records, start=1):
        record["rank"] = position
    payload = {
        "dataset": options.dataset,
        "dataset_name": dataset.name,
        "data_root": options.data_root,
        "image_size": options.image_size,
        "labels": options.labels,
        "cache_dir": options.cache_dir,
        "weights_dir": str(Path(options.weights_dir).resolve()) if options.weights_dir else None,
        "num_classes": len(dataset.classes),
        "max_images": options.max_images,
        "exclude": str(Path(options.exclude).resolve()) if options.exclude else None,
        "images_train": int(len(split.train)),
        "images_val": int(len(split.val)),
        "val_fraction": val_fraction,
        "train_fraction": train_fraction,
        "split_seed": options.split_seed,
        "device": str(device),
        "logme_vs_probe_tau": _finite(kendall_tau([r["logme"] for r in records],
                                                  [r["probe_val_acc1"] for r in records])
                                      if len(records) > 1 else float("nan")),
        "wall_time_s": time.perf_counter() - wall,
        "candidates": records,
        "skipped": [dataclasses.asdict(s) for s in skipped],
        "versions": library_versions(),
    }
    if out_dir is not None:
        write_rank(payload, Path(out_dir))
    return payload


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


CSV_COLUMNS = ("rank", "model", "logme", "probe_val_acc1", "extract_images_per_s", "extract_backend",
               "params_backbone", "input_size", "num_features", "source")


def format_table(payload: dict[str, Any]) -> str:
    """The ranking as an aligned text table (what `transferlab rank` prints)."""
    rows = [("rank", "model", "LogME", "probe acc", "img/s", "params", "input")]
    for r in payload["candidates"]:
        rows.append((str(r["rank"]), r["model"], f"{r['logme']:.3f}", f"{100 * r['probe_val_acc1']:.1f}%",
                     f"{r['extract_images_per_s']:.0f}", f"{r['params_backbone']:,}",
                     "x".join(map(str, r["input_size"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join(lines)


def write_rank(payload: dict[str, Any], out_dir: Path) -> None:
    """Write rank.json, rank.csv and rank.png into `out_dir` (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / RANK_FILE, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in payload["candidates"]:
        writer.writerow(["x".join(map(str, r[c])) if c == "input_size" else r[c] for c in CSV_COLUMNS])
    atomic_write_text(out_dir / RANK_CSV, buffer.getvalue())
    from transferlab.ranking.figure import plot_rank

    plot_rank(payload, out_dir / RANK_FIGURE)
