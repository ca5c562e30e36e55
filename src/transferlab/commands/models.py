"""`transferlab models`: list the registered models, or show one model's stages and freezing."""

from __future__ import annotations

import argparse
import json

from transferlab.choices import HEADS
from transferlab.commands._common import positive_int
from transferlab.errors import TransferlabError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `models` sub-command."""
    parser = subparsers.add_parser(
        "models",
        help="list models (parameters, input size, pretrained weights)",
        description="List every model, or describe the named ones: stages and what a freeze leaves trainable.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="models to describe (registry or timm:<name>)"
    )
    parser.add_argument(
        "--num-classes", type=positive_int, default=100, help="classes of the head (default 100)"
    )
    parser.add_argument(
        "--head", default="study", choices=HEADS,
        help="classifier head the parameter counts include (default study)"
    )
    parser.add_argument(
        "--weights-dir", metavar="DIR", help="also show which file in DIR each model would load"
    )
    parser.add_argument(
        "--freeze",
        metavar="BOUNDARY",
        help="with NAME: 'all' or a stage name; prints trainable/frozen counts",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)
    return parser


def _weights_file(name: str, weights_dir: str | None) -> str | None:
    from transferlab.models import find_weights, get_model_entry

    if weights_dir is None:
        return None
    try:
        return find_weights(weights_dir, get_model_entry(name).accepts(), name).name
    except TransferlabError:
        return "-"


def run(args: argparse.Namespace) -> int:
    """Print the table (no names) or the per-model description."""
    from transferlab.models import get_model_info, list_models

    if args.freeze and not args.names:
        raise TransferlabError(
            "--freeze needs a model NAME, e.g. `transferlab models inception_v3 --freeze Mixed_7b`"
        )
    if args.names:
        return _describe(args)
    rows = []
    for name in list_models():
        info = get_model_info(name, num_classes=args.num_classes, head=args.head)
        rows.append(
            {
                "name": name,
                "params": info.params_total,
                "input_size": list(info.input_size),
                "pretrained": info.pretrained_source,
                **(
                    {"weights_file": _weights_file(name, args.weights_dir)}
                    if args.weights_dir
                    else {}
                ),
                "summary": info.summary,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'params':>12}  {'input':>9}  pretrained weights")
    for row in rows:
        size = "x".join(str(v) for v in row["input_size"])
        weights = row["pretrained"] + (
            f"; in dir: {row['weights_file']}" if args.weights_dir else ""
        )
        print(f"{row['name']:<20} {row['params']:>12,}  {size:>9}  {weights}")
    print(
        f"(parameters with a {args.head} head for {args.num_classes} classes; any timm model works as timm:<name>)"
    )
    return 0


def _describe(args: argparse.Namespace) -> int:
    from transferlab.models import create_model, freeze, get_model_info

    out = []
    for name in args.names:
        info = get_model_info(name, num_classes=args.num_classes, head=args.head)
        entry = {
            "name": name,
            "summary": info.summary,
            "params": info.params_total,
            "params_backbone": info.params_backbone,
            "input_size": list(info.input_size),
            "default_input_size": list(info.default_input_size),
            "pretrained": info.pretrained_source,
            "stages": list(info.stages),
        }
        if args.freeze:
            import torch

            with torch.device("meta"):
                model = create_model(name, num_classes=args.num_classes, head=args.head)
            report = freeze(model, args.freeze)
            entry.update(freeze=args.freeze, trainable=report.trainable, frozen=report.frozen)
        out.append(entry)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for e in out:
        print(f"{e['name']}: {e['summary']}")
        print(
            f"  parameters {e['params']:,} (backbone {e['params_backbone']:,}); input "
            f"{'x'.join(map(str, e['input_size']))}; pretrained: {e['pretrained']}"
        )
        print(f"  stages (freeze boundaries): {', '.join(e['stages'])}")
        if "freeze" in e:
            print(
                f"  freeze {e['freeze']}: trainable {e['trainable']:,} / frozen {e['frozen']:,} parameters"
            )
    return 0
