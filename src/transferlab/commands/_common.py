"""Argument groups shared by several sub-commands.

Flags that set a `TrainConfig` field take their help text and choices from the config (the
field's comment and `FIELD_CHOICES`), so every command describes a field the same way.
Heavy modules (torch, the data layer) are imported only when a command runs, which keeps
`transferlab --help` fast.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from transferlab.config import FIELD_CHOICES, TrainConfig, field_help


def flag_type(hint: Any) -> Any:
    """The argparse type of a resolved field type hint ("int | None" -> int)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint


def config_flag(parser: argparse.ArgumentParser, name: str, positional: bool = False,
                **kwargs: Any) -> argparse.Action:
    """Add a flag (or positional) for the TrainConfig field `name`, described by the config.

    Args:
        parser: the (sub-)parser.
        name: a TrainConfig field name.
        positional: add it as a positional argument instead of --<name>.
        kwargs: argparse options that differ from the field's (e.g. default=...).
    """
    kind = flag_type(typing.get_type_hints(TrainConfig)[name])
    options: dict[str, Any] = {"help": field_help(TrainConfig)[name]}
    if kind is bool:
        options.update(action="store_true", default=None)
    else:
        choices = FIELD_CHOICES.get(name)
        options.update(type=kind, choices=choices,
                       metavar="{" + ",".join(choices) + "}" if choices else name.upper())
        if not positional:
            options["default"] = None
    options.update(kwargs)
    if positional:
        return parser.add_argument(name, **options)
    return parser.add_argument("--" + name.replace("_", "-"), dest=name, **options)


def add_dataset_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """Add DATASET (or --dataset) with --data-root, --image-size and --labels."""
    config_flag(parser, "dataset", positional=positional, metavar="DATASET")
    config_flag(parser, "data_root")
    config_flag(parser, "image_size")
    config_flag(parser, "workers", default=0)
    config_flag(parser, "labels", default="fine")


def dataset_from_args(args: argparse.Namespace) -> Any:
    """Load the dataset the shared arguments describe (an `ImageDataset`)."""
    from transferlab.data import load_dataset

    return load_dataset(args.dataset, data_root=args.data_root, image_size=args.image_size,
                        labels=args.labels, workers=args.workers)
