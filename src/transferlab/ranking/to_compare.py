"""`compare --from-rank RANK_DIR --top K`: a comparison of the K best-ranked backbones.

Each of the K best candidates (by LogME) becomes a compare entry with the same recipe: its
pretrained weights (the exact file the ranking scored, or the timm hub), the ranking's head and
input size, and no explicit stages, so every model trains with `TrainConfig`'s default stages
(change them for all at once with `--set stages.0.epochs=3`). The shared part repeats the
ranking's data and split (dataset, `val_fraction`, `train_fraction`, `split_seed`): the models
fine-tune on the images they were ranked on, and a head stage reuses the ranking's cached
features. The ranking's `rank.json` is copied into the comparison folder for the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from transferlab.compare import CompareConfig, parse_compare_config
from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_text
from transferlab.logs import info
from transferlab.results.ranking import RANK_FILE, load_rank


def entry_name(model: str) -> str:
    """A run-directory name for a model name (`timm:convnext_tiny.fb_in1k` -> `timm_convnext_tiny_fb_in1k`)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", model)


def compare_dict_from_rank(payload: dict[str, Any], top: int) -> dict[str, Any]:
    """The compare config (as a dict) that fine-tunes the `top` best candidates of a ranking."""
    if top < 1:
        raise TransferlabError(f"--top {top}: give at least 1")
    ranked = sorted(payload["candidates"], key=lambda c: c["rank"])
    chosen = ranked[:top]
    shared: dict[str, Any] = {"dataset": payload["dataset"], "val_fraction": payload["val_fraction"],
                              "train_fraction": payload["train_fraction"],
                              "split_seed": payload["split_seed"], "labels": payload.get("labels", "fine")}
    for key in ("data_root", "image_size", "cache_dir", "exclude"):  # the same images as ranked
        if payload.get(key) is not None:
            shared[key] = payload[key]
    models = []
    for c in chosen:
        size = c["input_size"]
        entry: dict[str, Any] = {
            "name": entry_name(c["model"]),
            "label": f"{c['model']} (rank {c['rank']}, LogME {c['logme']:.3f})",
            "model": c["model"], "pretrained": True, "head": c["head"],
            "input_size": size[0] if size[0] == size[1] else list(size),
        }
        if c.get("weights"):
            entry["weights"] = c["weights"]
        models.append(entry)
    names = ", ".join(c["model"] for c in chosen)
    return {
        "title": f"Fine-tuning the {len(chosen)} best-ranked backbone(s) on {payload.get('dataset_name', payload['dataset'])}",
        "description": f"The {len(chosen)} best of {len(ranked)} backbones by LogME (`transferlab rank`: "
                       f"{names}), each fine-tuned with the same recipe on the "
                       f"{payload['images_train']} training images it was ranked on "
                       f"({payload['images_val']} for validation), tested on the full test split.",
        "shared": shared,
        "models": models,
    }


def compare_config_from_rank(rank_dir: str | Path, top: int, out_dir: str | Path | None = None,
                             log: Any = info) -> CompareConfig:
    """Read RANK_DIR/rank.json and build the comparison of its `top` best candidates.

    Args:
        rank_dir: the `transferlab rank --out` folder (or its rank.json).
        top: how many of the best-ranked candidates to fine-tune (all of them when fewer).
        out_dir: the comparison folder; rank.json is copied there for the report.
        log: where a note about a short ranking goes.
    """
    payload = load_rank(rank_dir)
    if top > len(payload["candidates"]):
        log(f"--top {top}: the ranking has {len(payload['candidates'])} candidate(s); fine-tuning all of them")
    data = compare_dict_from_rank(payload, top)
    source = ("# made by `transferlab compare --from-rank " + str(rank_dir) + f" --top {top}`\n"
              + yaml.safe_dump(data, sort_keys=False))
    config = parse_compare_config(data, where=f"--from-rank {rank_dir}", source=source)
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / RANK_FILE, json.dumps(payload, indent=2) + "\n")
    return config
