"""The cache plan of a stage: whether it trains on cached features, and getting those features.

A stage that trains only a tail of the model (`train: head` or `from:<stage>`) without
augmentation can run its frozen prefix once over every split and train the tail on the stored
outputs. `cache_plan` decides; `cached_features` loads them from the on-disk cache or extracts them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.config import StageConfig
from transferlab.errors import TransferlabError
from transferlab.training import distributed as dist_utils
from transferlab.training import features as feats
from transferlab.training.context import RunContext
from transferlab.training.prepare import stage_augment


def cache_plan(run: RunContext, stage: StageConfig,
               recorded: bool | None = None) -> tuple[nn.Module, nn.Module] | None:
    """(prefix, tail) when this stage trains on cached features, else None.

    Args:
        run, stage: the run and the stage about to train.
        recorded: on resume, whether the run this one continues trained the stage on cached
            features (its `cached_features` in last.pt); None for a stage not begun yet. The
            free disk space can change between the two sessions, and the other path rounds
            differently, so a resumed stage keeps to the recorded one.
    """
    c = run.config
    if recorded is False:
        return None
    if stage.cache_features == "false" or stage.train == "all":
        if stage.cache_features == "true" and stage.train == "all":
            raise TransferlabError(f"stage {stage.name}: cache_features=true needs a frozen part "
                                   "(train: head or from:<stage>)")
        return None
    augment = stage_augment(c, stage)
    if augment != "none":
        if stage.cache_features == "true":
            raise TransferlabError(f"stage {stage.name}: cache_features=true but augment={augment} "
                                   "changes the frozen part's inputs every epoch; set augment none")
        return None
    parts = feats.split_model(run.model, stage.train)
    if parts is None:
        return None
    prefix, _ = parts
    sample = next(iter(run.image_batches("train", 1)))[0]
    total = sum(len(v[1]) for v in run.data.values())
    need = feats.activation_bytes(prefix, sample, total)
    if need > c.cache_memory_gb * 2**30:
        # Over the memory budget the features live in memory-mapped files (cached_features);
        # only a disk that cannot hold them either makes the stage train through the prefix.
        root = _cache_root(run)
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        msg = (f"stage {stage.name}: cached activations need {need / 2**30:.1f} GiB, over "
               f"cache_memory_gb={c.cache_memory_gb}")
        if need > 0.9 * free:
            msg += f" and over the {free / 2**30:.1f} GiB free in {root}"
            if stage.cache_features == "true" or recorded:
                why = ("; the run this one continues trained the stage on cached features"
                       if recorded else "")
                raise TransferlabError(msg + why + "; free disk space or point cache_dir elsewhere")
            run.log(msg + ": training through the frozen part instead")
            return None
        run.log(msg + ": written to disk and memory-mapped")
    return parts


def _cache_root(run: RunContext) -> Path:
    from transferlab.data.cache import data_root

    c = run.config
    return Path(c.cache_dir) if c.cache_dir else data_root(c.data_root)


def cached_features(run: RunContext, stage: StageConfig, prefix: nn.Module, tail: nn.Module,
                    backend: str | None = None, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Features of every split for this stage's frozen prefix, from disk or freshly extracted.

    Args:
        run, stage: the run and the stage being trained.
        prefix, tail: the stage's frozen part and trainable part (`cache_plan`).
        backend: the extraction backend (None: the config's `extract_backend`; a resumed run
            passes the one it recorded).
        record: receives the backend choice when anything is extracted (`features.make_extractor`).

    Returns:
        {"features": split -> features, "backend", "extract_time_s", "extracted_images",
        "feature_backends": split -> the backend that computed that split's features (read
        from the cache entry when it came from there; "unknown" for entries older than that)}.
    """
    from transferlab.data import ArrayRows
    from transferlab.data.cache import (
        MMAP_MIN_BYTES,
        load_arrays,
        save_arrays,
        save_streamed,
    )
    from transferlab.models.freezing import boundary_for

    c = run.config
    # "top" names a stage by position: key by the stage itself, so both spellings share a cache.
    boundary = stage.train if stage.train == "head" else f"from:{boundary_for(run.model, stage.train)}"
    frozen = feats.frozen_state_hash(run.model, tail)
    pre = run.model.pretrained_cfg
    info: dict[str, Any] = {"backend": "cache", "extract_time_s": 0.0, "extracted_images": 0,
                            "feature_backends": {}}
    backend = backend or c.extract_backend
    root = _cache_root(run)
    # Feature sets over the memory budget are memory-mapped when read back, whatever their size.
    mmap_min = int(min(MMAP_MIN_BYTES, c.cache_memory_gb * 2**30))
    out: dict[str, Any] = {}
    shape: tuple[int, ...] | None = None
    # One extractor for every split, chosen for all their images: the export or compile is paid
    # once, and a small test split is not extracted eagerly after a fast path was built for train.
    reuse: dict[str, Any] = {}
    total = sum(len(run.data[split][1]) for split in run.data)
    for split in run.data:
        # The same key function as `transferlab rank`, so the two share cached features.
        key = feats.feature_cache_key(
            model_name=c.model, frozen=frozen, boundary=boundary,
            fingerprint=run.dataset.fingerprint, split=split, indices=run.indices[split],
            input_size=run.input_size, mean=pre.mean, std=pre.std,
            interpolation=pre.interpolation, model_kwargs=run.model_kwargs(),
            precision=run.precision.name)
        directory = feats.features_dir(root, key)
        loaded = load_arrays(directory, mmap_min) if run.ctx.is_main else None
        if run.ctx.is_main and loaded is None:
            batches = run.image_batches(split, c.eval_batch())  # rank 0 extracts everything
            n = len(run.data[split][1])
            if shape is None:
                shape = feats.output_shape(prefix, next(iter(run.image_batches(split, 1)))[0])
            kwargs = dict(backend=backend, num_images=total, precision=run.precision,
                          desc=f"extract {split}", quiet=c.quiet, log=run.log, reuse=reuse,
                          record=record)
            if n * int(np.prod(shape)) * 4 > c.cache_memory_gb * 2**30:
                # Too large for memory: each batch goes straight into a memory-mapped file,
                # renamed into place whole, and mapped again below. The backend is in the entry's
                # metadata: it is the numerical path the features came from.
                result: list = []
                meta: dict[str, Any] = {"split": split, "shape": [n, *shape]}

                def write(array: np.ndarray, b: Any = batches, kw: dict = kwargs,
                          r: list = result, m: dict = meta) -> None:
                    _, seconds, used = feats.extract(prefix, b, out=array, **kw)
                    r.extend([seconds, used])
                    m["backend"] = used  # meta.json is written after the array

                save_streamed(directory, "features", (n, *shape), np.float32, write, meta)
                seconds, used = result
            else:
                values, seconds, used = feats.extract(prefix, batches, **kwargs)
                save_arrays(directory, {"features": values.numpy()},
                            {"split": split, "shape": list(values.shape), "backend": used})
            run.log(f"extracted {split} features {(n, *shape)} in {seconds:.1f} s "
                    f"({n / max(seconds, 1e-9):.0f} img/s, {used})")
            info["backend"] = used
            info["feature_backends"][split] = used
            info["extract_time_s"] += seconds
            info["extracted_images"] += n
        dist_utils.barrier(run.ctx)
        if not run.ctx.is_main or loaded is None:
            loaded = load_arrays(directory, mmap_min)
        if loaded is None:
            raise TransferlabError(f"feature cache {directory} could not be read; delete it and rerun")
        info["feature_backends"].setdefault(split, str(loaded[1].get("backend", "unknown")))
        array = loaded[0]["features"]
        if isinstance(array, np.memmap):
            out[split] = ArrayRows(array)  # batches gather from the file; nothing copied
        else:
            home = run.device if run.device.type == "cuda" else torch.device("cpu")
            out[split] = torch.from_numpy(array).to(home)
    if run.ctx.is_main and stage.train == "head":
        from transferlab.training.leakage import check_near

        check_near(run, out)  # pooled features describe whole images: near copies across splits
    if info["extracted_images"]:
        info["extract_images_per_s"] = info["extracted_images"] / max(info["extract_time_s"], 1e-9)
    info["features"] = out
    return info


__all__ = ["cache_plan", "cached_features"]
