"""`transferlab train`: train one model through a list of stages and write a run directory.

Examples::

    transferlab train --config configs/study_inception_v3.yaml
    transferlab train --dataset synthetic --model benchmark_cnn --set stages.0.epochs=3
    transferlab train --resume runs/my-run
    torchrun --nproc_per_node=2 -m transferlab train --config FILE   # DDP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

import yaml

from transferlab.config import TrainConfig, config_to_dict, load_config
from transferlab.errors import TransferlabError

# Fields set through --set (lists and dicts) rather than a flag of their own.
_NOT_FLAGS = {"stages", "model_kwargs"}


def _flag_type(hint: Any) -> Any:
    """The argparse type of a resolved field type hint ("int | None" -> int)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `train`: --config, --resume, --set, and one flag per top-level config field."""
    parser = subparsers.add_parser(
        "train", help="train a model (stages, cached features, checkpoints, resume, DDP)",
        description="Train one model on one dataset through the config's stages. Precedence: "
        "defaults < --config YAML < flags < --set. Under torchrun it trains with DDP.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config (see transferlab.config)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. stages.0.lr=1e-3 or stages.head.epochs=3 "
                        "(repeatable; values are YAML)")
    parser.add_argument("--model-kwargs", metavar="YAML", type=yaml.safe_load,
                        help="extra create_model arguments as a YAML mapping, e.g. '{drop_rate: 0.2}'")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {f.default})")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                                help=f"(default {f.default!r})")
    parser.set_defaults(func=run)
    return parser


def resolve(args: argparse.Namespace) -> TrainConfig:
    """The config from --config, flags and --set."""
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)
                 if f.name not in _NOT_FLAGS}
    if args.model_kwargs is not None:
        if not isinstance(args.model_kwargs, dict):
            raise TransferlabError("--model-kwargs must be a YAML mapping, e.g. '{drop_rate: 0.2}'")
        overrides["model_kwargs"] = args.model_kwargs
    return load_config(args.config, overrides, args.sets)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) and print where the results are."""
    from transferlab.training import resume_run, train_run

    if args.resume:
        from transferlab.training.run import RUNTIME_FIELDS

        allowed = RUNTIME_FIELDS - {"out_dir", "run_name"}
        extra = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None}
        if args.config or args.sets or set(extra) - allowed:
            raise TransferlabError("--resume continues a run with its saved config; only "
                                   f"{', '.join('--' + a.replace('_', '-') for a in sorted(allowed))} "
                                   "may be given with it")
        run_dir = resume_run(args.resume, **extra)
    else:
        config = resolve(args)
        if args.print_config:
            print(yaml.safe_dump(config_to_dict(config), sort_keys=False))
            return 0
        run_dir = train_run(config)
    summary = run_dir / "summary.json"
    if summary.is_file() and not getattr(args, "quiet", False):
        s = json.loads(summary.read_text())
        print(f"{s['run_name']}: test acc1 {s['test_acc1']:.4f}, acc5 {s['test_acc5']:.4f}, "
              f"{s['epoch_time_s']:.2f} s/epoch -> {run_dir}")
    return 0
