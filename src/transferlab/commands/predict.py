"""`transferlab predict IMAGE_OR_FOLDER... --model NAME --weights FILE [--top 5] [--json]`."""

from __future__ import annotations

import argparse
import json

from transferlab.choices import IMAGE_SUFFIXES
from transferlab.commands._common import config_flag, positive_int, probability
from transferlab.errors import TransferlabError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `predict` sub-command."""
    parser = subparsers.add_parser(
        "predict",
        help="top classes for image files",
        description="Print the top classes of each image with a pretrained or transferlab-trained "
        "model, or with a file written by `transferlab export` (.onnx runs with ONNX Runtime).",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_FOLDER",
        help="image files, or folders searched recursively for "
        f"{', '.join(IMAGE_SUFFIXES)} files (sorted by path)",
    )
    parser.add_argument(
        "--model", help="registry name (optional with a transferlab best.pt or exported file)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--weights", metavar="FILE",
        help="RUN_DIR/best.pt, an exported model.onnx or model.safetensors, a .safetensors or "
        "torch state dict",
    )
    source.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="folder searched by the architecture in each file's metadata",
    )
    source.add_argument(
        "--pretrained", action="store_true", help="timm's ImageNet weights (online)"
    )
    parser.add_argument("--top", type=positive_int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--min-confidence", type=probability, default=None, metavar="P",
                        help="answer 'unknown' when the top class's (calibrated) probability is "
                             "below P; `transferlab evaluate RUN_DIR` shows the accuracy and share "
                             "of photos answered at each P")
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)"
    )
    parser.add_argument(
        "--device", default=None,
        help="auto, cpu, cuda, cuda:1, mps (default auto: cuda, then mps, then cpu; an exported "
        ".onnx or .torchscript.pt file runs on the CPU)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.add_argument(
        "--explain", metavar="DIR", default=None,
        help="also write a Grad-CAM heatmap of the predicted class for each image into DIR "
        "(needs best.pt or weights, not .onnx, and captum: pip install \"transferlab[explain]\")",
    )
    config_flag(parser, "max_image_pixels")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, predict, print."""
    from transferlab.api import load

    if args.weights is None and args.weights_dir is None and not args.pretrained:
        raise TransferlabError("say which weights to use: --weights FILE, --weights-dir DIR or --pretrained")
    if args.model is None and args.weights is None:
        raise TransferlabError("--model is required unless --weights is a transferlab checkpoint")
    classifier = load(args.weights, model=args.model, weights_dir=args.weights_dir,
                      pretrained=args.pretrained, device=args.device)
    predictions = classifier.predict(args.images, top=args.top, batch_size=args.batch_size,
                                     max_pixels=args.max_image_pixels,
                                     min_confidence=args.min_confidence)
    if args.explain:
        from pathlib import Path

        from transferlab.evaluation.explain import explain_files
        from transferlab.predict import expand_images

        explain_files(classifier.model, expand_images(args.images), Path(args.explain),
                      device=classifier.device, max_pixels=args.max_image_pixels)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return 0
    for prediction in predictions:
        print(f"{prediction.source}: {prediction.label}")
        for rank, ((name, prob), index) in enumerate(zip(prediction.top, prediction.indices, strict=True),
                                                     start=1):
            print(f"  {rank}. {prob:7.2%}  {name} ({index})")
    if args.explain:
        print(f"wrote the heatmaps into {args.explain}")
    return 0
