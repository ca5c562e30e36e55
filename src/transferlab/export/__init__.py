"""`transferlab export`: a run's trained model as a file to ship, with its preprocessing and classes.

Formats (see docs/ARCHITECTURE.md, "Export"):
- onnx: float32 pixels NHWC in [0, 255] at the run's input size -> logits, normalisation in the
  graph, a dynamic batch axis, metadata (JSON) under the "transferlab" metadata_props key; checked
  with ONNX Runtime against PyTorch before it is written (`onnx_file.LOGIT_TOLERANCE`).
- torchscript: the same module traced, the same metadata as the extra file "transferlab.json".
- safetensors: the weights with their metadata, in timm's layout where timm rebuilds the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transferlab.choices import EXPORT_FORMATS, EXPORT_NAMES
from transferlab.errors import TransferlabError
from transferlab.export.contract import export_metadata
from transferlab.export.onnx_file import LOGIT_TOLERANCE, OnnxClassifier, write_onnx
from transferlab.export.safetensors_file import SafetensorsLayout, write_safetensors
from transferlab.export.torchscript_file import TorchScriptClassifier, write_torchscript
from transferlab.io import check_file_path
from transferlab.models import TransferModel, load_checkpoint_model

FORMATS = EXPORT_FORMATS
CHECKPOINT = "best.pt"
DEFAULT_NAMES = EXPORT_NAMES  # file written into RUN_DIR when --out is not given

# The exported files predict runs: they take float pixels NHWC in [0, 255] and normalise inside.
ExportedClassifier = (OnnxClassifier, TorchScriptClassifier)

__all__ = ["FORMATS", "LOGIT_TOLERANCE", "ExportResult", "ExportedClassifier", "OnnxClassifier",
           "TorchScriptClassifier", "export_run"]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote.

    Attributes:
        path: the file.
        format: one of FORMATS.
        model: the model that was exported (rebuilt from the checkpoint).
        max_abs_diff: largest logit difference of the check (exported vs PyTorch), if one ran.
        safetensors: layout and usage of a safetensors file (None for other formats).
    """

    path: Path
    format: str
    model: TransferModel
    max_abs_diff: float | None
    safetensors: SafetensorsLayout | None = None


def checkpoint_path(run: str | Path) -> Path:
    """RUN_DIR/best.pt (or `run` itself when it is a checkpoint file)."""
    run = Path(run).expanduser()
    if run.is_file():
        return run
    if not run.is_dir():
        raise TransferlabError(f"run directory {run} not found; pass a folder written by `transferlab train`")
    path = run / CHECKPOINT
    if not path.is_file():
        raise TransferlabError(
            f"{run} has no {CHECKPOINT}; pass a run directory written by `transferlab train` "
            "(training writes best.pt when its first stage ends)"
        )
    return path


def export_run(
    run: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int | None = None
) -> ExportResult:
    """Export a run's best.pt as `fmt` to `out` (default RUN_DIR/model.<ext>).

    Args:
        run: the run directory (or its best.pt).
        fmt: one of FORMATS.
        out: the file to write; its folder is created.
        opset: ONNX opset (onnx only; None: the exporter's default).

    Raises:
        TransferlabError: unknown format, no checkpoint, or an export that fails its check (in
            which case no file is written).
    """
    if fmt not in FORMATS:
        raise TransferlabError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise TransferlabError("--opset applies to --format onnx only; drop it")
    source = checkpoint_path(run)
    path = Path(out).expanduser() if out is not None else source.parent / DEFAULT_NAMES[fmt]
    if path.is_dir():
        raise TransferlabError(f"the export path {path} is a folder; give a file name, e.g. "
                               f"{path / DEFAULT_NAMES[fmt]}")
    check_file_path(path, "the export path")
    model = load_checkpoint_model(source).eval()
    if fmt == "safetensors":
        layout = write_safetensors(model, path, str(source))
        return ExportResult(path, fmt, model, layout.max_abs_diff, layout)
    metadata = export_metadata(model, str(source))
    if fmt == "onnx":
        diff = write_onnx(model, path, metadata, opset=opset)
    else:
        diff = write_torchscript(model, path, metadata)
    return ExportResult(path, fmt, model, diff)
