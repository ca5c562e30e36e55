"""A module to ONNX and back: export with a dynamic batch axis, run with ONNX Runtime's CPU provider.

Two exporters exist in torch 2.x. The torch.export-based one (`dynamo=True`, the default since
torch 2.9) is the maintained one; the TorchScript-based one (`dynamo=False`) is deprecated but
exports the models here in 0.1-1.6 s against 2.4-8.5 s (benchmark CNN to InceptionV3, 2-core CPU,
torch 2.14.1), and both give logits within 1e-5 of eager. So shipping a model (`transferlab
export`, once) prefers the maintained exporter, and frozen-feature extraction (at every training
run, where export time is paid each time) prefers the fast one; each falls back to the other.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.threads import available_cpus

EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True) and (dynamo=False)
TORCHSCRIPT_OPSET = 17  # the legacy exporter's well-tested opset (it supports up to 20)


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str = "input",
    output_name: str = "output",
    opset: int | None = None,
    exporters: Sequence[str] = EXPORTERS,
) -> Any:
    """Export `module(example)` to an in-memory ONNX model with a dynamic batch axis.

    Args:
        module: in eval mode; takes one tensor, returns one tensor.
        example: an input batch of at least 2 (a batch of 1 would be specialised to 1).
        input_name: the graph input's name.
        output_name: the graph output's name.
        opset: ONNX opset (None: the exporter's default).
        exporters: which exporters to try, in order (see EXPORTERS).

    Returns:
        An `onnx.ModelProto`.

    Raises:
        TransferlabError: if every exporter fails (the message lists each failure).
    """
    import onnx

    failures = []
    for exporter in exporters:
        try:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1)
                # verbose=False keeps the exporter's progress lines off the user's terminal.
                program = torch.onnx.export(
                    module, (example,), dynamo=True, input_names=[input_name],
                    output_names=[output_name], dynamic_shapes=({0: batch},),
                    opset_version=opset, verbose=False,
                )
                return program.model_proto
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                # Its deprecation notice is known (see the module docstring) and its constant-folding
                # notes are internal; neither is the user's to act on, and the result is checked.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, (example,), buffer, dynamo=False, input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                    opset_version=opset or TORCHSCRIPT_OPSET,
                )
            return onnx.load_from_string(buffer.getvalue())
        except Exception as err:  # noqa: BLE001 - try the next exporter, report all at the end
            failures.append(f"{exporter} exporter: {type(err).__name__}: {str(err)[:300]}")
    raise TransferlabError(
        "ONNX export failed (" + "; ".join(failures) + "); the model uses an operation ONNX "
        "cannot express: report it, or use another format"
    )


def set_metadata(model: Any, metadata: Mapping[str, str]) -> None:
    """Replace or add `metadata_props` entries of an `onnx.ModelProto`."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def usable_cores() -> int:
    """CPUs this process can get: the affinity mask capped by a cgroup quota (`threads.available_cpus`)."""
    return available_cpus()


def ort_session(model: bytes | str | Path, threads: int | None = None, spin: bool = True) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations on.

    Args:
        model: serialised ONNX bytes or a path to a .onnx file.
        threads: intra-op threads (None: the usable cores).
        spin: let idle worker threads spin-wait for the next operator (ONNX Runtime's default,
            fastest when the session has the cores to itself). Off when PyTorch works between
            calls on the same cores: spinning threads would take their time.

    Raises:
        TransferlabError: if ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1  # one graph, run sequentially: the threads go to each op
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        where = f"{model}" if isinstance(model, (str, Path)) else "the exported model"
        raise TransferlabError(
            f"ONNX Runtime cannot load {where} ({str(err)[:300]}); check that it is an ONNX file"
        ) from err


def max_abs_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Largest absolute difference of two arrays of the same shape (inf on a shape mismatch)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
