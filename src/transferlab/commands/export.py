"""`transferlab export RUN_DIR [--format onnx|torchscript|safetensors] [--out PATH] [--opset N]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.choices import EXPORT_FORMATS as FORMATS
from transferlab.choices import EXPORT_NAMES as DEFAULT_NAMES
from transferlab.choices import ONNX_LOGIT_TOLERANCE as LOGIT_TOLERANCE
from transferlab.commands._common import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `export` sub-command."""
    parser = subparsers.add_parser(
        "export",
        help="write a run's model as ONNX, TorchScript or safetensors, to ship",
        description="Write the trained model of RUN_DIR/best.pt with its preprocessing and class "
        "names. onnx and torchscript take float32 RGB pixels (N, H, W, 3) in [0, 255], resized to "
        "the run's input size, and return logits: normalisation is inside the model. The ONNX file "
        "is checked with ONNX Runtime against PyTorch before it is written (largest logit "
        f"difference at most {LOGIT_TOLERANCE:g} x max(1, max |logit|)). safetensors holds the "
        "weights with their metadata, loadable by timm.create_model where the model is a timm "
        "backbone with a linear head.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="run directory written by `transferlab train` (or its best.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="file format: " + ", ".join(FORMATS) + " (default onnx)")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="file to write (default RUN_DIR/" + ", RUN_DIR/".join(
                            DEFAULT_NAMES.values()) + " by format)")
    parser.add_argument("--opset", type=positive_int, default=None, metavar="N",
                        help="ONNX opset version (onnx only; default: the exporter's, 20 with torch 2.14)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Export and say what was written and how to use it."""
    # torch and ONNX: only when the command runs, not for --help.
    from transferlab.export import export_run
    from transferlab.export.contract import resize_rule

    result = export_run(args.run_dir, args.format, out=args.out, opset=args.opset)
    model = result.model
    cfg = model.pretrained_cfg
    h, w = cfg.input_size
    print(f"wrote {result.path} ({result.format}, {model.model_name}, {model.num_classes} classes)")
    if result.format in ("onnx", "torchscript"):
        checker = "ONNX Runtime" if result.format == "onnx" else "the reloaded TorchScript module"
        print(f"checked with {checker} against PyTorch: largest logit difference "
              f"{result.max_abs_diff:.2g} (tolerance {LOGIT_TOLERANCE:g} x max(1, max |logit|))")
        print(f"input 'images': float32 (batch, {h}, {w}, 3), RGB, pixels in [0, 255]; "
              "normalisation is inside the model")
        print(f"resize first: {resize_rule(cfg)}")
        print("output 'logits': (batch, classes); softmax gives probabilities")
    if result.safetensors is not None:
        layout = result.safetensors
        if layout.layout == "timm":
            print(f"timm layout (checked: timm's rebuild gives the same logits, largest "
                  f"difference {layout.max_abs_diff:.2g})")
        else:
            print(f"transferlab layout: not loadable by timm.create_model because {layout.reason}")
        print(f"load it: {layout.usage}")
        print(f"preprocess: {resize_rule(cfg)}; scale to [0, 1], normalise with mean {cfg.mean} "
              f"std {cfg.std}")
    if model.classes is not None:
        shown = ", ".join(model.classes[:10]) + (" ..." if len(model.classes) > 10 else "")
        print(f"classes (in the metadata): {shown}")
    if result.format == "onnx":
        print(f"try it: transferlab predict IMAGE_OR_FOLDER --weights {result.path}")
    return 0
