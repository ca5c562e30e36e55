"""The cheap part of the data audit, run by every training run: copies across splits.

A test (or validation) image that is a copy of a training image inflates the score the user
trusts. A run checks what it can afford: exact copies from pixel hashes of its splits (when they
are small enough to hash in seconds), and near copies (resized, re-compressed, cropped, colour-
shifted) from the pooled features a head stage extracts anyway. It warns with the count and the
command that shows them (`transferlab data audit`), records them in summary.json (`leakage`), and
never stops the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.data import duplicates as dup
from transferlab.training.context import RunContext

HASH_MAX_BYTES = 2 * 2**30  # hash the splits' pixels only up to this size (a few seconds)
# Stricter than the audit's dup.NEAR_THRESHOLD: a run's own pooled features are not mirror-averaged
# and may come from a small input size, where unrelated photos score higher (0.93 at 96 px on
# CIFAR-10, audit.features), and a run only warns, so it should cry wolf less.
RUN_NEAR_THRESHOLD = 0.97
SHOWN = 20  # pairs kept in summary.json


def _source(run: RunContext, split: str) -> str:
    """The dataset split a run split's rows index (a carved val indexes train)."""
    return "train" if split == "val" and "val" not in run.dataset.splits else split


def _name(run: RunContext, split: str, row: int) -> str:
    files = getattr(run.dataset, "files", None)
    source = _source(run, split)
    return files[source][row] if files else f"{source}[{row}]"


def check_exact(run: RunContext) -> None:
    """Find val/test images whose pixels equal a training image's; warn and record them."""
    splits = [s for s in ("train", "val", "test") if s in run.indices]
    run.leakage = {"exact": [], "near": None, "threshold": RUN_NEAR_THRESHOLD}
    images = {s: run.dataset[_source(run, s)].images for s in splits}
    size = sum(images[s][:1].nbytes * len(run.indices[s]) for s in splits)
    if size > HASH_MAX_BYTES or len(splits) < 2:
        run.leakage["exact"] = None  # not checked: too large to hash in seconds
        return
    seen: dict[bytes, int] = {}
    for h, r in zip(dup.pixel_hashes(images["train"], run.indices["train"]), run.indices["train"], strict=True):
        seen.setdefault(h, int(r))
    for split in splits[1:]:
        for h, r in zip(dup.pixel_hashes(images[split], run.indices[split]), run.indices[split], strict=True):
            if h in seen:
                run.leakage["exact"].append({"split": split, "path": _name(run, split, int(r)),
                                             "train_path": _name(run, "train", seen[h]), "similarity": 1.0})
    _warn(run, run.leakage["exact"], "exact")


def check_near(run: RunContext, features: dict[str, Any]) -> None:
    """Find val/test images whose pooled features are nearly a training image's; warn and record them."""
    import torch

    if getattr(run, "leakage", None) is None or run.leakage.get("near") is not None:
        return
    if "train" not in features or any(len(v.shape) != 2 for v in features.values()):
        return  # only pooled (N, C) features describe whole images

    def unit(v: Any) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.as_tensor(np.asarray(v[:]), dtype=torch.float32), dim=1)

    train = unit(features["train"])
    exact = {(f["split"], f["path"]) for f in run.leakage.get("exact") or []}
    found = []
    for split in ("val", "test"):
        if split not in features:
            continue
        x = unit(features[split])
        for block in dup.chunks(len(x), dup.BLOCK_ROWS):
            best, where = (x[block].to(train.device) @ train.T).max(dim=1)
            for i in torch.nonzero(best >= RUN_NEAR_THRESHOLD).flatten().tolist():
                path = _name(run, split, int(run.indices[split][block.start + i]))
                if (split, path) not in exact:
                    found.append({"split": split, "path": path, "similarity": round(float(best[i]), 4),
                                  "train_path": _name(run, "train", int(run.indices["train"][int(where[i])]))})
    run.leakage["near"] = sorted(found, key=lambda f: -f["similarity"])
    _warn(run, run.leakage["near"], "near")


def _warn(run: RunContext, found: list[dict[str, Any]], kind: str) -> None:
    if not found:
        return
    splits = "/".join(sorted({f["split"] for f in found}))
    run.log(f"warning: {len(found):,} {splits} image(s) are {kind} copies of training images, so the "
            f"{splits} score may be inflated (e.g. {found[0]['path']} = {found[0]['train_path']}). "
            f"See them: transferlab data audit {run.config.dataset} --weights ...; "
            "leave them out: --exclude AUDIT_DIR/audit.csv")


def summary_record(run: RunContext) -> dict[str, Any] | None:
    """The `leakage` entry of summary.json: counts (None = not checked) and the first pairs."""
    leak = getattr(run, "leakage", None)
    if leak is None:
        return None
    pairs = [{**f, "kind": k} for k in ("exact", "near") for f in (leak.get(k) or [])]
    return {"exact": None if leak["exact"] is None else len(leak["exact"]),
            "near": None if leak["near"] is None else len(leak["near"]),
            "threshold": leak["threshold"], "pairs": pairs[:SHOWN]}
