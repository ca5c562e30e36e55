"""safetensors: the weights, in timm's own layout where timm can rebuild the model, with metadata.

Two layouts:
- "timm": a timm backbone with a linear head. The keys are timm's own (no transferlab prefixes;
  the head's Linear under timm's classifier name), so
  `timm.create_model(arch, num_classes=k, pretrained=False).load_state_dict(load_file(PATH))`
  works. This layout is written only after checking exactly that: the timm model built from the
  file gives the same logits as the run's model (largest difference within `tolerance`).
- "transferlab": anything else (the study head, the paper MobileNetV2, the benchmark CNN, Keras
  average pools in InceptionV3): the run's state dict with its `backbone.`/`head.` prefixes,
  rebuilt with `transferlab.models.create_model(name, num_classes=k, head=..., weights=PATH)`.

Both layouts load back into transferlab the same way, and `transferlab predict --weights PATH`
reads the model name, head, classes and preprocessing from the metadata. Metadata values are
strings (JSON where structured): architecture, transferlab_model, model_kwargs, num_classes,
classes, input_size, mean, std, interpolation, crop_pct, crop_mode, pretrained_cfg, layout, usage,
and timm_kwargs / avg_pool_count_include_pad when the model has them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from transferlab.export.onnx_file import tolerance
from transferlab.io import atomic_write
from transferlab.models import TransferModel
from transferlab.models.heads import final_linear_name
from transferlab.models.onnx_io import max_abs_diff


@dataclasses.dataclass(frozen=True)
class SafetensorsLayout:
    """Which layout was written and how to load it.

    Attributes:
        layout: "timm" or "transferlab".
        usage: one line of Python that rebuilds the model from the file.
        reason: why the timm layout was not possible ("" for the timm layout).
        max_abs_diff: largest logit difference of the timm rebuild (None for "transferlab").
    """

    layout: str
    usage: str
    reason: str
    max_abs_diff: float | None


def _timm_state(model: TransferModel) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The state dict in timm's naming, or None and the reason it cannot be."""
    arch = model.model_kwargs.get("arch")
    classifier = (getattr(model.backbone, "pretrained_cfg", None) or {}).get("classifier")
    if not arch or not isinstance(classifier, str):
        return None, f"{model.model_name} is not a timm model"
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        return None, (
            f"its head is {model.model_kwargs.get('head')!r} ({len(linears)} Linear layers), and "
            "timm's classifier is one Linear layer (train with head=linear for a timm-loadable file)"
        )
    if model.model_kwargs.get("avg_pool_count_include_pad") is False:
        return None, "its Keras-style average pools (padding excluded) are not a timm option"
    state = dict(model.backbone.state_dict())
    linear = model.head.get_submodule(final_linear_name(model.head))
    state[f"{classifier}.weight"] = linear.weight
    state[f"{classifier}.bias"] = linear.bias
    return state, ""


def _check_timm(model: TransferModel, state: dict[str, torch.Tensor]) -> tuple[float | None, str]:
    """Build the timm model from `state` and compare logits; (difference, "") or (None, reason)."""
    import timm

    kwargs = dict(model.model_kwargs.get("timm_kwargs") or {})
    try:
        net = timm.create_model(
            model.model_kwargs["arch"], num_classes=model.num_classes, pretrained=False, **kwargs
        )
        net.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001 - any failure means: use the transferlab layout
        return None, f"timm cannot load it ({str(err)[:200]})"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *model.pretrained_cfg.input_size, generator=g)
    with torch.no_grad():
        reference, got = model.eval()(x), net.eval()(x)
    diff = max_abs_diff(got, reference)
    if not diff <= tolerance(reference):
        return None, f"timm's {model.model_kwargs['arch']} computes other logits (difference {diff:.3g})"
    return diff, ""


def write_safetensors(model: TransferModel, path: Path, source: str) -> SafetensorsLayout:
    """Write the weights and metadata atomically, in the timm layout when it checks out."""
    model = model.eval()
    cfg = model.pretrained_cfg
    k = model.num_classes
    kwargs = model.model_kwargs
    state, reason = _timm_state(model)
    diff = None
    if state is not None:
        diff, reason = _check_timm(model, state)
    timm_layout = state is not None and diff is not None
    head = kwargs.get("head", "study")
    transferlab_usage = (
        f"transferlab.models.create_model({model.model_name!r}, num_classes={k}, "
        f"head={head!r}, weights={str(path)!r})"
    )
    if timm_layout:
        extra = kwargs.get("timm_kwargs")
        extra_args = "".join(f", {key}={value!r}" for key, value in (extra or {}).items())
        usage = (
            f"m = timm.create_model({kwargs['arch']!r}, num_classes={k}, pretrained=False"
            f"{extra_args}); m.load_state_dict(safetensors.torch.load_file({str(path)!r}))"
        )
        architecture = f"timm:{kwargs['arch']}"
    else:
        state = model.state_dict()
        usage = transferlab_usage
        architecture = f"transferlab:{model.model_name}"
    metadata = {
        "architecture": architecture,
        "layout": "timm" if timm_layout else "transferlab",
        "usage": usage,
        "source": source,
        "transferlab_model": model.model_name,
        "model_kwargs": json.dumps(kwargs),
        "num_classes": str(k),
        "input_size": f"{cfg.input_size[0]},{cfg.input_size[1]}",
        "mean": ",".join(str(v) for v in cfg.mean),
        "std": ",".join(str(v) for v in cfg.std),
        "crop_pct": str(cfg.crop_pct),
        "crop_mode": cfg.crop_mode,
        "interpolation": cfg.interpolation,
        "pretrained_cfg": json.dumps(cfg.to_dict()),
    }
    if model.classes is not None:
        metadata["classes"] = json.dumps(list(model.classes))
    if kwargs.get("timm_kwargs"):
        metadata["timm_kwargs"] = json.dumps(kwargs["timm_kwargs"])
    if kwargs.get("avg_pool_count_include_pad") is False:
        metadata["avg_pool_count_include_pad"] = "false"
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))
    return SafetensorsLayout(
        layout=metadata["layout"], usage=usage, reason=reason, max_abs_diff=diff
    )
