"""Data preparation for a run: dataset, splits, uint8 tensors; then the model and its transforms."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from transferlab.config import StageConfig, TrainConfig
from transferlab.errors import TransferlabError
from transferlab.training.context import RunContext


def load_data(run: RunContext) -> None:
    """Load the dataset and the splits (the saved ones when resuming) as uint8 tensors."""
    from transferlab.data import SplitIndices, load_dataset, make_splits

    c = run.config
    run.dataset = load_dataset(c.dataset, data_root=c.data_root, image_size=c.image_size,
                               labels=c.labels, workers=c.workers, target_size=stored_size(c),
                               max_image_pixels=c.max_image_pixels)
    # Rows of each split the run uses: all, less the files `exclude` lists (the source is untouched).
    kept, run.excluded = excluded_rows(run)
    if len(kept["test"]) == 0:
        raise TransferlabError(f"dataset {c.dataset} has no test images (after exclude), so the run "
                               "could not be evaluated; give it a test split (e.g. synthetic:test=50)")
    # A folder's own val/ (beside train/ and test/) is the validation set; otherwise it is carved.
    own_val = "val" in run.dataset.splits
    split_path = run.run_dir / "splits.npz"
    if run.resume and split_path.is_file():
        run.splits = SplitIndices.load(split_path)
    else:
        train_split = run.dataset["train"]
        run.splits = make_splits(train_split.labels[kept["train"]],
                                 val_fraction=0.0 if own_val else c.val_fraction,
                                 train_fraction=c.train_fraction, seed=c.split_seed)
        # Back to rows of the whole split, so splits.npz, split_files.json and the feature-cache
        # keys all speak of the dataset's own rows.
        run.splits = dataclasses.replace(run.splits, train=kept["train"][run.splits.train],
                                         val=kept["train"][run.splits.val])
    if len(run.splits.train) == 0:
        raise TransferlabError("the training split is empty; raise train_fraction or lower val_fraction")
    train, test = run.dataset["train"], run.dataset["test"]
    labels = {"train": train.labels[run.splits.train], "test": test.labels[kept["test"]]}
    rows = {"train": train.rows(run.splits.train), "test": test.rows(kept["test"])}
    run.indices = {"train": run.splits.train, "test": kept["test"]}
    if own_val:
        val = run.dataset["val"]
        labels["val"], rows["val"] = val.labels[kept["val"]], val.rows(kept["val"])
        run.indices["val"] = kept["val"]
    elif len(run.splits.val):
        labels["val"] = train.labels[run.splits.val]
        rows["val"] = train.rows(run.splits.val)
        run.indices["val"] = run.splits.val
    # Images stay uint8 (4x smaller than float). On the CPU every split is a view that gathers
    # each batch from the dataset's array (memory-mapped when large): no split is ever copied.
    # On CUDA, in-memory datasets move to the GPU whole; memory-mapped ones stay views.
    to_gpu = run.device.type == "cuda" and not isinstance(train.images, np.memmap)
    home = run.device if to_gpu else torch.device("cpu")
    run.data = {}
    for split, view in rows.items():
        images = view[:].to(home) if to_gpu else view
        run.data[split] = (images, torch.from_numpy(np.asarray(labels[split], dtype=np.int64)).to(home))
    run.split_sources = split_sources(run)
    for split in ("train", "val", "test"):
        if split in run.data:
            run.log(f"{split}: {len(run.data[split][1]):,} images from {run.split_sources[split]}")


def excluded_rows(run: RunContext) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """(rows kept per split, excluded source paths per split) under the config's `exclude` file."""
    from transferlab.data.exclude import kept_rows, read_exclude

    c = run.config
    splits = run.dataset.splits
    if not c.exclude:
        return {s: np.arange(len(v)) for s, v in splits.items()}, {}
    kept, dropped = kept_rows(run.dataset.files, read_exclude(c.exclude), source=c.dataset)
    for split, lost in dropped.items():
        run.log(f"{split}: {len(lost):,} image(s) left out, as listed in {c.exclude}")
    for split, rows in kept.items():
        if len(rows) == 0:
            raise TransferlabError(f"the exclude list {c.exclude} leaves no image in the {split} split")
    return kept, dropped


def stored_size(config: TrainConfig) -> int:
    """The square size (px) to store photos of mixed sizes at: the input size / 0.875.

    That is torchvision's and timm's evaluation convention (resize to 256, crop 224): the
    stored image keeps a margin around what the model sees, for crop augmentation.
    """
    if config.input_size:
        size = config.input_size
    else:
        from transferlab.models import get_model_info

        info = get_model_info(config.model, num_classes=2, **config.model_kwargs)
        size = max(info.default_input_size or info.input_size)
    return round(size / 0.875)


def run_stored_size(config: dict) -> int | None:
    """`stored_size` of a saved run config (config.yaml as a dict), so readers of a run
    (evaluate, report) find the decoded images the run used; None when it cannot be resolved."""
    from transferlab.config import config_from_dict

    try:
        return stored_size(config_from_dict(config))
    except (TransferlabError, KeyError, TypeError):
        return None


def split_sources(run: RunContext) -> dict[str, str]:
    """Where each split of the run came from, in words (printed and kept in summary.json)."""
    sources = dict(getattr(run.dataset, "split_sources", None) or {})
    train_from = sources.get("train", "the training split")
    out = {"test": sources.get("test", "the test split")}
    s = run.splits
    subset = f", {s.train_fraction:.0%} subset" if s.train_fraction < 1 else ""
    if "val" in run.dataset.splits:
        out["train"] = train_from + subset
        out["val"] = sources.get("val", "the validation split")
    else:
        carved = f"{s.val_fraction:.0%} of {train_from} (stratified, seed {s.seed})"
        held = f", less {len(s.val):,} validation images" if len(s.val) else ""
        out["train"] = train_from + held + subset
        if len(s.val):
            out["val"] = carved
    return out


def split_files(run: RunContext) -> dict[str, list[str]] | None:
    """The source file of every image of each split of the run, or None (not an image folder)."""
    files = getattr(run.dataset, "files", None)
    if not files:
        return None
    out = {"train": [files["train"][i] for i in run.splits.train],
           "test": [files["test"][i] for i in run.indices["test"]]}
    if "val" in run.dataset.splits:
        out["val"] = [files["val"][i] for i in run.indices["val"]]
    elif len(run.splits.val):
        out["val"] = [files["train"][i] for i in run.splits.val]
    return out


def build_model(run: RunContext) -> None:
    """Create the model and the train / eval transforms at the run's input size."""
    from transferlab.data.preprocess import batch_transform
    from transferlab.models import create_model

    c = run.config
    torch.manual_seed(c.seed)
    random.seed(c.seed)
    np.random.seed(c.seed % 2**32)
    run.model = create_model(c.model, num_classes=len(run.dataset.classes),
                             pretrained=c.pretrained, weights=c.weights,
                             # A weights folder is searched only for pretrained models:
                             # a from-scratch network has no file in it.
                             weights_dir=c.weights_dir if c.pretrained else None, head=c.head,
                             input_size=c.input_size, **c.model_kwargs)
    run.model.to(run.device)
    if c.channels_last:
        run.model.to(memory_format=torch.channels_last)
    pre = run.model.pretrained_cfg
    # An explicit size is already in pretrained_cfg (create_model puts it there); otherwise
    # train at the model's from-scratch default, as `transferlab evaluate` assumes.
    size = tuple(pre.input_size if c.input_size else
                 getattr(run.model, "default_input_size", None) or pre.input_size)
    run.input_size = size
    # From here on pretrained_cfg is the preprocessing this run uses, so best.pt, predict, export
    # and evaluate all repeat it through data/preprocess.py: photos stored by shorter side and
    # centre crop (mixed sizes) record that stored size, so a new file is decoded to it exactly
    # as the dataset's files were; images kept at their native size are resized whole
    # ("squash"); then the batch resize to `size` and the normalisation.
    center = getattr(run.dataset, "center_cropped", False)
    run.model.pretrained_cfg = dataclasses.replace(
        pre, input_size=size, crop_pct=1.0, crop_mode="center" if center else "squash",
        stored_size=run.dataset.image_size if center else None)
    cfg = run.model.pretrained_cfg
    native = run.dataset.image_size
    # One training transform per augmentation the stages use (a stage may set its own).
    run.transforms = {
        name: batch_transform(cfg, augment=name, native_size=native).to(run.device)
        for name in sorted({stage_augment(c, s) for s in c.stages})
    }
    run.eval_transform = batch_transform(cfg, native_size=native).to(run.device).eval()


def stage_augment(config: TrainConfig, stage: StageConfig) -> str:
    """The augmentation a stage trains with: its own, else the run's."""
    return stage.augment or config.augment


__all__ = ["build_model", "load_data", "stage_augment"]
