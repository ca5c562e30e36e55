"""Offline weights: read a safetensors or torch file, honour its metadata, load it strictly.

A safetensors header may carry metadata (see ../shared/README.md): `architecture` (which
network the tensors fit, e.g. "timm:mobilenetv2_100"), `timm_kwargs` (JSON keyword arguments
such as `{"pad_type": "same"}`), `avg_pool_count_include_pad`, `input_size`, `mean`, `std`,
`crop_pct`, `interpolation`, `num_classes`. Honouring all of it is what makes the same file give
the same predictions as its origin. transferlab writes the same keys plus `model_kwargs` (JSON).

Keys are checked strictly: a missing, unexpected or wrongly shaped backbone tensor is an error
that lists them. The only thing allowed to differ is the classifier: when its class count (or
the head type) differs from the model's, the backbone is loaded and the head is re-initialised,
and the load report says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from transferlab.errors import TransferlabError
from transferlab.io import atomic_write
from transferlab.models.base import PreprocessConfig, TransferModel
from transferlab.models.heads import final_linear_name

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_LIST_LIMIT = 12  # key names shown in an error before "... and N more"


@dataclasses.dataclass
class WeightsFile:
    """A weights file and its metadata (all values are strings, as in a safetensors header).

    Attributes:
        path: the file.
        metadata: header metadata (or the equivalent fields of a transferlab checkpoint).
        checkpoint: the whole dict when the file is a transferlab torch checkpoint, else None.
    """

    path: Path
    metadata: dict[str, str]
    checkpoint: dict[str, Any] | None = None

    @property
    def architecture(self) -> str | None:
        """Which network the tensors fit, e.g. "timm:mobilenetv2_100"; None if the file is silent."""
        return self.metadata.get("architecture")

    @property
    def num_classes(self) -> int | None:
        """Classes of the stored classifier (0: backbone only; None: unknown)."""
        value = self.metadata.get("num_classes")
        return int(value) if value not in (None, "") else None

    @property
    def classes(self) -> list[str] | None:
        """Class names in label order, when the file records them."""
        if self.checkpoint is not None and self.checkpoint.get("classes") is not None:
            return list(self.checkpoint["classes"])
        return list(_json(self.metadata, "classes")) if self.metadata.get("classes") else None

    @cached_property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors (read on first use)."""
        if self.checkpoint is not None:
            return dict(self.checkpoint["state_dict"])
        if self.path.suffix == SAFETENSORS_SUFFIX:
            return load_file(self.path)
        return _torch_state_dict(_torch_load(self.path))

    def model_kwargs(self) -> dict[str, Any]:
        """Builder keyword arguments the metadata asks for (timm_kwargs, pool semantics, ...)."""
        meta = self.metadata
        kwargs: dict[str, Any] = {}
        if meta.get("model_kwargs"):
            kwargs.update(_json(meta, "model_kwargs"))
        if meta.get("timm_kwargs"):
            timm_kwargs = _json(meta, "timm_kwargs")
            if timm_kwargs:
                kwargs["timm_kwargs"] = timm_kwargs
        if meta.get("avg_pool_count_include_pad", "").lower() == "false":
            kwargs["avg_pool_count_include_pad"] = False
        return kwargs

    def preprocess(self, base: PreprocessConfig) -> PreprocessConfig:
        """`base` with every preprocessing value the metadata states."""
        meta = self.metadata
        changes: dict[str, Any] = {}
        try:
            if meta.get("pretrained_cfg"):
                return PreprocessConfig.from_dict(json.loads(meta["pretrained_cfg"]))
            if meta.get("input_size"):
                size = [int(v) for v in meta["input_size"].split(",")]
                changes["input_size"] = (
                    (size[-2], size[-1]) if len(size) > 1 else (size[0], size[0])
                )
            for key in ("mean", "std"):
                if meta.get(key):
                    changes[key] = tuple(float(v) for v in meta[key].split(","))
            if meta.get("crop_pct"):
                changes["crop_pct"] = float(meta["crop_pct"])
            if meta.get("interpolation"):
                changes["interpolation"] = meta["interpolation"]
        except ValueError as err:
            raise TransferlabError(
                f"{self.path}: unreadable preprocessing metadata ({err})"
            ) from err
        return dataclasses.replace(base, **changes)


def _json(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise TransferlabError(
            f"weights metadata {key!r} is not valid JSON: {meta[key]!r}"
        ) from err


def _torch_load(path: Path) -> Any:
    try:
        # weights_only: a weights file must not be able to run code when loaded.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same to the user
        raise TransferlabError(
            f"{path} cannot be read as a torch weights file ({err}); pass a .safetensors file, a "
            "state dict saved with torch.save, or a transferlab best.pt"
        ) from err


def _torch_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a torch file: the object itself or its "state_dict"/"model" entry."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TransferlabError("the torch file does not hold a state dict (name -> tensor)")
    return obj


def is_transferlab_checkpoint(obj: Any) -> bool:
    """Whether a loaded torch object is a checkpoint written by `transferlab train`."""
    return isinstance(obj, dict) and {"model_name", "state_dict", "num_classes"} <= obj.keys()


def read_weights(path: str | Path) -> WeightsFile:
    """Open a weights file (safetensors, a torch state dict, or a transferlab checkpoint).

    Raises:
        TransferlabError: if it is missing, unreadable, or of an unknown kind.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferlabError(f"weights file {path} not found; check the path")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            with safe_open(path, "pt") as f:
                metadata = dict(f.metadata() or {})
        except (SafetensorError, OSError) as err:
            raise TransferlabError(f"{path} is not a readable safetensors file ({err})") from err
        return WeightsFile(path, metadata)
    if path.suffix not in TORCH_SUFFIXES:
        raise TransferlabError(
            f"{path}: unknown weights format {path.suffix!r}; use .safetensors or a torch file "
            f"({', '.join(TORCH_SUFFIXES)})"
        )
    obj = _torch_load(path)
    if is_transferlab_checkpoint(obj):
        metadata = {
            "architecture": f"transferlab:{obj['model_name']}",
            "num_classes": str(obj["num_classes"]),
            "model_kwargs": json.dumps(obj.get("model_kwargs") or {}),
        }
        if obj.get("pretrained_cfg"):
            metadata["pretrained_cfg"] = json.dumps(obj["pretrained_cfg"])
        return WeightsFile(path, metadata, checkpoint=obj)
    wf = WeightsFile(path, {})
    wf.__dict__["state_dict"] = _torch_state_dict(obj)  # already in memory: fill the cache
    return wf


def find_weights(
    weights_dir: str | Path, architectures: Mapping[str, Any], model_name: str
) -> Path:
    """The one .safetensors file in `weights_dir` whose metadata architecture is accepted.

    Args:
        weights_dir: folder to search (not recursive).
        architectures: accepted `architecture` metadata values.
        model_name: for messages.

    Raises:
        TransferlabError: if the folder is missing, or no file or several files match.
    """
    folder = Path(weights_dir).expanduser()
    if not folder.is_dir():
        raise TransferlabError(f"weights folder {folder} not found; check --weights-dir")
    found: dict[Path, str | None] = {}
    for path in sorted(folder.glob(f"*{SAFETENSORS_SUFFIX}")):
        found[path] = read_weights(path).architecture
    matches = [p for p, arch in found.items() if arch in architectures]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        seen = ", ".join(
            f"{p.name} ({arch or 'no architecture metadata'})" for p, arch in found.items()
        )
        raise TransferlabError(
            f"no weights for {model_name} in {folder}: it needs a .safetensors file whose metadata "
            f"architecture is one of {', '.join(architectures)}; found: {seen or 'no .safetensors files'}"
        )
    raise TransferlabError(
        f"several weights files in {folder} fit {model_name}: {', '.join(p.name for p in matches)}; "
        "pass the one you want with --weights FILE"
    )


def key_problems(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
) -> list[str]:
    """Human-readable lists of missing, unexpected and wrongly shaped keys (empty if they fit)."""

    def listing(keys: list[str]) -> str:
        more = f" ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
        return ", ".join(keys[:_LIST_LIMIT]) + more

    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    shapes = sorted(
        f"{k} (file {tuple(got[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected.keys() & got.keys()
        if got[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape: {listing(shapes)}")
    return problems


def _split_state_dict(
    model: TransferModel, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone tensors, head tensors) in the model's own naming.

    transferlab files use "backbone." / "head." prefixes; other files (timm, torchvision) use the
    backbone's native names with the classifier under timm's `pretrained_cfg["classifier"]`,
    which maps onto the final Linear layer of our head.
    """
    if state and all(k.startswith(("backbone.", "head.")) for k in state):
        backbone = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        return backbone, head
    classifier = (getattr(model.backbone, "pretrained_cfg", None) or {}).get("classifier")
    prefix = f"{classifier}." if isinstance(classifier, str) else None
    backbone, head = {}, {}
    target = final_linear_name(model.head)
    for key, value in state.items():
        if prefix and key.startswith(prefix):
            head[f"{target}.{key.removeprefix(prefix)}"] = value
        else:
            backbone[key] = value
    return backbone, head


def load_weights(model: TransferModel, weights: WeightsFile) -> str:
    """Load a weights file into `model` strictly; returns a one-line report.

    Sets `model.head_pretrained` when the file's classifier fit the head and was loaded.

    Raises:
        TransferlabError: listing every missing, unexpected or wrongly shaped backbone key.
    """
    backbone_sd, head_sd = _split_state_dict(model, weights.state_dict)
    problems = key_problems(model.backbone.state_dict(), backbone_sd)
    if problems:
        raise TransferlabError(
            f"{weights.path.name} does not fit the {model.model_name} backbone "
            f"({weights.architecture or 'no architecture metadata'}): " + "; ".join(problems)
        )
    model.backbone.load_state_dict(backbone_sd, strict=True)
    report = f"backbone loaded from {weights.path.name}"
    if not head_sd:
        return (
            report
            + f"; the file has no classifier: head initialised for {model.num_classes} classes"
        )
    if key_problems(model.head.state_dict(), head_sd):
        file_classes = weights.num_classes or _classes_in(head_sd)
        return report + (
            f"; classifier re-initialised ({model.num_classes} classes, {model.model_kwargs.get('head')} "
            f"head; the file's classifier has {file_classes} classes)"
        )
    model.head.load_state_dict(head_sd, strict=True)
    model.head_pretrained = True
    return report + "; classifier loaded"


def _classes_in(head_sd: Mapping[str, torch.Tensor]) -> int | str:
    biases = [v for k, v in head_sd.items() if k.endswith("bias")]
    return int(biases[-1].shape[0]) if biases else "an unknown number of"


def save_weights(model: TransferModel, path: str | Path) -> Path:
    """Write the model as a safetensors file with the metadata `create_model(weights=...)` honours.

    The file is written to a temporary sibling first and moved into place, so a crash never leaves
    a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.pretrained_cfg
    metadata = {
        "architecture": f"transferlab:{model.model_name}",
        "model_kwargs": json.dumps(model.model_kwargs),
        "num_classes": str(model.num_classes),
        "input_size": f"{cfg.input_size[0]},{cfg.input_size[1]}",
        "mean": ",".join(str(v) for v in cfg.mean),
        "std": ",".join(str(v) for v in cfg.std),
        "crop_pct": str(cfg.crop_pct),
        "interpolation": cfg.interpolation,
    }
    if model.classes is not None:
        metadata["classes"] = json.dumps(list(model.classes))
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))
    return path
