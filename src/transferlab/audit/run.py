"""`audit_dataset`: every check of the audit, in order, on one dataset.

1. load the dataset as training would, and describe every image with pretrained features
   (`audit.features`, cached);
2. exact duplicates from pixel hashes, near-duplicates from one blocked similarity search
   and a pixel check of feature neighbours (`data.duplicates`); copies in two splits are leakage,
   copies with two labels a conflict;
3. likely label errors from out-of-sample probe probabilities and confident learning
   (`audit.labels`);
4. outliers, blank, tiny and oddly shaped images (`audit.outliers`); and the class balance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.audit import outliers as out
from transferlab.audit.findings import AuditResult, Finding
from transferlab.data import duplicates as dup
from transferlab.data.dataset import ImageDataset
from transferlab.errors import TransferlabError
from transferlab.io import check_dir_path
from transferlab.logs import info

SPLIT_ORDER = ("train", "val", "test")  # the copy kept from a duplicate group is the earliest here
DEFAULT_MODEL = "mobilenet_v2"  # the backbone of the README's first example
MAX_LABEL_ISSUES = 1000  # label issues written at most (ranked; the rest are counted)


@dataclass
class AuditOptions:
    """Settings of one audit (the flags of `transferlab data audit`)."""

    dataset: str  # load_dataset spec
    data_root: str | None = None  # dataset download/cache folder
    image_size: int | None = None  # store folder images at this square size (px)
    workers: int | None = None  # decoding processes on a cold cache (None = one per core)
    model: str = DEFAULT_MODEL  # the pretrained backbone that describes the images
    weights: str | None = None  # its weights file
    weights_dir: str | None = None  # a folder searched for its weights file
    pretrained: bool = False  # download the weights from the timm hub
    input_size: int | None = None  # px; None = the model's own, at most 3x the images' size
    max_image_pixels: int | None = None  # refuse larger images (None = $TRANSFERLAB_MAX_IMAGE_PIXELS, else 250M)
    device: str = "auto"
    batch_size: int = 256  # extraction batch (images)
    near_threshold: float = dup.NEAR_THRESHOLD  # cosine similarity of near-duplicates
    # Also compare the pixels of feature neighbours (data.duplicates.pixel_pairs). Off by default:
    # it finds heavily re-encoded small copies the features miss (CIFAR-10: planted-copy recall
    # 47.5% -> 98.5%), but on real photos of objects on a plain background (TrashNet) it paired
    # about 40 different photos whose grey thumbnails correlate >= 0.9.
    pixel_check: bool = False
    label_issues: bool = True  # run the label check (needs cleanlab: transferlab[audit])
    quiet: bool = False  # no progress bars


def _weights(options: AuditOptions) -> str | None:
    """The weights file of the backbone, or None for the hub; an error when there is neither."""
    if options.weights:
        return options.weights
    if options.weights_dir:
        from transferlab.models import find_weights, get_model_entry

        # An error naming the folder and what it holds when no file fits the model.
        return str(find_weights(options.weights_dir, get_model_entry(options.model).accepts(),
                                options.model))
    if options.pretrained:
        return None
    raise TransferlabError(
        f"the audit describes images with a pretrained backbone ({options.model}): give its weights "
        "file (--weights FILE), a folder holding it (--weights-dir DIR), or --pretrained (online)")


def _path(files: dict[str, list[str]] | None, split: str, row: int) -> str:
    return files[split][row] if files and split in files else f"{split}[{row}]"


def load_for_audit(options: AuditOptions) -> ImageDataset:
    """The dataset as the audit (and a training run at the same input size) stores it."""
    from transferlab.data import load_dataset

    target = round(options.input_size / 0.875) if options.input_size else None
    return load_dataset(options.dataset, data_root=options.data_root, image_size=options.image_size,
                        workers=options.workers, target_size=target,
                        max_image_pixels=options.max_image_pixels)


def audit_dataset(options: AuditOptions, dataset: ImageDataset | None = None) -> AuditResult:
    """Run every check of the audit on `options.dataset` (nothing is written; see `run_audit`).

    Args:
        options: the settings.
        dataset: the dataset already loaded by `load_for_audit` (loaded here when None).
    """
    from transferlab.audit.features import build_backbone, describe
    from transferlab.training.device import select_device

    timings: dict[str, float] = {}
    start = time.perf_counter()
    weights = _weights(options)
    ds = dataset if dataset is not None else load_for_audit(options)
    splits = [s for s in SPLIT_ORDER if s in ds.splits]
    timings["load_s"] = time.perf_counter() - start
    k = len(ds.classes)
    result = AuditResult(
        dataset=options.dataset, classes=list(ds.classes),
        split_sizes={s: len(ds[s]) for s in splits},
        class_counts={s: np.bincount(ds[s].labels, minlength=k).tolist() for s in splits},
        settings={"model": options.model, "near_threshold": options.near_threshold,
                  "pixel_check": options.pixel_check})

    # Pool every split: position p is (split, row).
    owner = np.concatenate([np.full(len(ds[s]), i) for i, s in enumerate(splits)])
    rows = np.concatenate([np.arange(len(ds[s])) for s in splits])
    labels = np.concatenate([ds[s].labels for s in splits])
    paths = [_path(ds.files, splits[o], int(r)) for o, r in zip(owner, rows, strict=True)]

    def finding(p: int, kind: str, score: float, **extra: object) -> Finding:
        return Finding(paths[p], splits[owner[p]], int(rows[p]), ds.classes[labels[p]], kind,
                       float(score), **extra)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    device = select_device(options.device)
    backbone = build_backbone(options.model, weights, options.pretrained, ds.image_size,
                              options.input_size, device)
    result.settings.update(weights=backbone.weights, input_size=list(backbone.input_size))
    info(f"audit of {ds.name}: {len(labels):,} images ({', '.join(f'{s} {len(ds[s]):,}' for s in splits)}), "
             f"{k} classes; describing them with {options.model} at {backbone.input_size[0]} px")
    features = describe(ds, backbone, batch_size=options.batch_size, cache_root=options.data_root,
                        quiet=options.quiet, log=info)
    pooled = np.concatenate([features[s] for s in splits])
    timings["features_s"] = time.perf_counter() - t0

    # Duplicates: exact by pixels, near by features; one group per connected set of copies.
    t0 = time.perf_counter()
    hashes = [h for s in splits for h in dup.pixel_hashes(ds[s].images)]
    exact = dup.exact_groups(hashes)
    found = dup.similar_pairs(pooled, options.near_threshold)
    exact_pairs = [(g[0], m) for g in exact for m in g[1:]]
    by_pixels = np.zeros((0, 2), dtype=np.int64)
    if options.pixel_check:
        thumbs = np.concatenate([dup.thumbnails(ds[s].images) for s in splits])
        cropped = np.concatenate([dup.thumbnails(ds[s].images, dup.CROP) for s in splits])
        by_pixels, _ = dup.pixel_pairs(found, thumbs, cropped)
    edges = np.concatenate([found.pairs, by_pixels, np.array(exact_pairs, dtype=np.int64).reshape(-1, 2)])
    similarity = {(int(a), int(b)): float(s) for (a, b), s in zip(found.pairs, found.similarity, strict=True)}
    # A pair found by its pixels is scored by its feature similarity (what the threshold speaks of).
    for a, b in by_pixels:
        similarity.setdefault((int(a), int(b)), float(np.dot(pooled[a], pooled[b])
                                                      / (np.linalg.norm(pooled[a]) * np.linalg.norm(pooled[b]) + 1e-12)))
    for a, b in exact_pairs:
        similarity[(a, b)] = 1.0
    groups = dup.connected_groups(edges, len(labels))
    exact_members = {m for g in exact for m in g}
    for gid, members in enumerate(groups):
        # Keep the earliest copy (train before val before test); flag the others.
        keep = min(members, key=lambda p: (owner[p], p))
        kinds = {splits[owner[p]] for p in members}
        conflict = len({int(labels[p]) for p in members}) > 1
        is_exact = all(m in exact_members for m in members) and len({hashes[m] for m in members}) == 1
        result.groups.append({
            "group": gid, "exact": is_exact, "splits": sorted(kinds, key=SPLIT_ORDER.index),
            "labels": sorted({ds.classes[labels[p]] for p in members}),
            "members": [{"path": paths[p], "split": splits[owner[p]], "label": ds.classes[labels[p]]}
                        for p in members]})
        for p in members:
            best = max((similarity.get((min(p, q), max(p, q)), 0.0) for q in members if q != p), default=0.0)
            if conflict:
                result.findings.append(finding(p, "label_conflict", best, group=gid, other=paths[keep],
                                               detail="labels " + ", ".join(result.groups[-1]["labels"])))
            if p == keep:
                continue
            kind = "leakage" if owner[p] != owner[keep] else "duplicate"
            result.findings.append(finding(p, kind, best, group=gid, other=paths[keep],
                                           detail="exact copy" if is_exact else "near copy"))
    timings["duplicates_s"] = time.perf_counter() - t0

    # Likely label errors (one pool over all splits: a wrong label anywhere costs accuracy).
    if options.label_issues and len(labels) >= 5 * k:
        t0 = time.perf_counter()
        from transferlab.audit.labels import find_label_issues

        issues = find_label_issues(pooled, labels, k)
        believed = issues.probabilities.argmax(axis=1)
        for p in issues.ranked[:MAX_LABEL_ISSUES]:
            result.findings.append(finding(int(p), "label_issue", 1.0 - issues.self_confidence[p],
                                           suggested=ds.classes[believed[p]],
                                           detail=f"p(given) {issues.self_confidence[p]:.2f}, "
                                                  f"p({ds.classes[believed[p]]}) {issues.probabilities[p].max():.2f}"))
        result.settings["label_issues_total"] = int(len(issues.ranked))
        timings["labels_s"] = time.perf_counter() - t0
    elif options.label_issues:
        result.settings["label_issues_skipped"] = f"fewer than 5 images per class on average ({len(labels)} for {k})"

    # Outliers and odd images.
    t0 = time.perf_counter()
    z = out.robust_z(out.class_distance(pooled, labels, k))
    for p in np.argsort(-z):
        if z[p] <= out.OUTLIER_Z:
            break
        result.findings.append(finding(int(p), "outlier", z[p], detail=f"robust z {z[p]:.1f}"))
    stds = np.concatenate([out.pixel_std(ds[s].images) for s in splits])
    for p in np.flatnonzero(stds < out.CONSTANT_STD):
        result.findings.append(finding(int(p), "blank", stds[p], detail=f"pixel std {stds[p]:.1f}"))
    source = _folder_source(options.dataset)
    if source is not None and ds.files:
        sizes = out.source_sizes(source, paths, options.workers)
        for p, (h, w) in enumerate(sizes):
            if min(h, w) < out.TINY_SIDE:
                result.findings.append(finding(p, "tiny", min(h, w), detail=f"{w} x {h} px"))
            elif max(h, w) / max(min(h, w), 1) > out.EXTREME_ASPECT:
                result.findings.append(finding(p, "extreme_aspect", max(h, w) / min(h, w),
                                               detail=f"{w} x {h} px"))
    timings["outliers_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    result.timings_s = timings
    return result


def _folder_source(spec: str) -> Path | None:
    """The source path of a `folder:` spec (or a plain path), else None."""
    kind, _, arg = spec.partition(":")
    if kind == "folder":
        return Path(arg).expanduser()
    return None


def summary_lines(result: AuditResult) -> Sequence[str]:
    """A short terminal summary: counts per kind and the class balance."""
    from transferlab.audit.findings import KIND_TEXT, KINDS

    lines = [f"audit of {result.dataset}: " + ", ".join(f"{s} {n:,}" for s, n in result.split_sizes.items())
             + f" images, {len(result.classes)} classes"]
    for kind in KINDS:
        n = result.count(kind)
        if n:
            extra = ""
            if kind == "label_issue" and result.settings.get("label_issues_total", n) > n:
                extra = f" (the {n:,} most likely of {result.settings['label_issues_total']:,})"
            lines.append(f"  {kind}: {n:,} image(s){extra}: {KIND_TEXT[kind]}")
    if not result.findings:
        lines.append("  nothing flagged")
    train = result.class_counts.get("train", [])
    if train and min(train) > 0:
        ratio = max(train) / min(train)
        lines.append(f"  class balance (train): {min(train):,} to {max(train):,} images per class "
                     f"(ratio {ratio:.1f})")
    return lines


def run_audit(options: AuditOptions, out_dir: str | Path) -> tuple[AuditResult, dict[str, Path]]:
    """Audit `options.dataset` and write audit.json, audit.csv and audit.html into `out_dir`."""
    from transferlab.audit.write import write_audit

    out = check_dir_path(out_dir, "the audit output")  # before any work, not after minutes
    if options.input_size is not None:
        from transferlab.models.input_size import check_input_size

        check_input_size(options.model, options.input_size)  # before the images are decoded
    ds = load_for_audit(options)
    result = audit_dataset(options, ds)
    splits = list(result.split_sizes)
    index = {}
    for split in splits:
        for row in range(len(ds[split])):
            index[_path(ds.files, split, row)] = (split, row)
    paths = write_audit(result, out, {s: ds[s].images for s in splits}, index)
    return result, paths
