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
import typing
from typing import Any

import yaml

from transferlab.commands._common import flag_type, yaml_value
from transferlab.config import (
    FIELD_CHOICES,
    EarlyStoppingConfig,
    StageConfig,
    TrainConfig,
    config_to_dict,
    field_help,
)
from transferlab.errors import TransferlabError

# Fields set through --set (lists and dicts) rather than a flag of their own.
_NOT_FLAGS = {"stages", "model_kwargs"}


def _default_text(value: Any) -> str:
    return "none" if value is None else ("''" if value == "" else str(value))


def _stage_fields_text() -> str:
    """The epilog: every stage field with its meaning, settable with --set."""
    lines = ["stage fields (--set stages.<index or name>.<field>=VALUE):"]
    for cls, prefix in ((StageConfig, ""), (EarlyStoppingConfig, "early_stopping.")):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, text in field_help(cls).items():
            if name == "early_stopping":
                continue
            default = defaults[name]
            shown = "" if default is dataclasses.MISSING else f" [default {_default_text(default)}]"
            lines.append(f"  {prefix + name:<28} {text}{shown}")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `train`: --config, --resume, --set, and one flag per top-level config field.

    Each flag's help is the field's comment in `transferlab.config` and its choices are the
    config's choice constants, so `--help` and the config cannot disagree.
    """
    parser = subparsers.add_parser(
        "train", help="train a model (recipes, stages, cached features, checkpoints, resume, DDP)",
        description="Train one model on one dataset and write a run directory. With pretrained "
        "weights (--weights, --weights-dir or --pretrained) and no stages named, the finetune "
        "recipe trains the head on cached features, then the top of the backbone with "
        "augmentation, each stage stopped early on validation loss. Precedence: defaults < "
        "--config YAML < flags < --set. Under torchrun it trains with DDP.",
        epilog=_stage_fields_text(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (keys are the flags "
                        "below in snake_case, plus stages: a list of stage mappings)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its "
                        "last.pt, exactly where it stopped")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. stages.0.lr=1e-3 or stages.head.epochs=3 "
                        "(repeatable; values are YAML; stage fields are listed below)")
    parser.add_argument("--model-kwargs", metavar="YAML", type=yaml_value,
                        help=field_help(TrainConfig)["model_kwargs"] + ", e.g. '{drop_rate: 0.2}'")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (with the recipe's stages) as YAML and exit")
    hints = typing.get_type_hints(TrainConfig)
    helps = field_help(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = flag_type(hints[f.name], f.name)
        text = f"{helps[f.name]} [default {_default_text(f.default)}]"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            choices = FIELD_CHOICES.get(f.name)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, choices=choices,
                                metavar="{" + ",".join(choices) + "}" if choices else f.name.upper(),
                                help=text)
    parser.set_defaults(func=run)
    return parser


def resolve(args: argparse.Namespace) -> TrainConfig:
    """The config from --config, flags and --set (the rules are the API's `training_config`)."""
    from transferlab.api.training import training_config

    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)
                 if f.name not in _NOT_FLAGS}
    if args.model_kwargs is not None:
        if not isinstance(args.model_kwargs, dict):
            raise TransferlabError("--model-kwargs must be a YAML mapping, e.g. '{drop_rate: 0.2}'")
        overrides["model_kwargs"] = args.model_kwargs
    return training_config(overrides, args.config, args.sets)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) and print where the results are."""
    from transferlab.api import Run
    from transferlab.training import train_run

    if args.resume:
        from transferlab.training.run import RUNTIME_FIELDS

        allowed = RUNTIME_FIELDS - {"out_dir", "run_name"}
        extra = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None}
        if args.config or args.sets or set(extra) - allowed:
            raise TransferlabError("--resume continues a run with its saved config; only "
                                   f"{', '.join('--' + a.replace('_', '-') for a in sorted(allowed))} "
                                   "may be given with it")
        run = Run(args.resume).resume(**extra)
    else:
        config = resolve(args)
        if args.print_config:
            print(yaml.safe_dump(config_to_dict(config), sort_keys=False))
            return 0
        run = Run(train_run(config))
    s = run.summary
    if s and not getattr(args, "quiet", False):
        acc5 = f", acc5 {s['test_acc5']:.4f}" if s.get("test_acc5") is not None else ""
        print(f"{s['run_name']}: test acc1 {s['test_acc1']:.4f}{acc5}, "
              f"{s['epoch_time_s']:.2f} s/epoch -> {run.path}")
    return 0
