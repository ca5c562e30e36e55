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

from transferlab.config import FIELD_CHOICES, TrainConfig, field_help, parse_yaml


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    return _int_at_least(text, 1)


def probability(text: str) -> float:
    """argparse type: a number in [0, 1] (a confidence threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a probability such as 0.8") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be {'positive' if low == 1 else '>= 0'}")
    return value


def yaml_value(text: str) -> Any:
    """argparse type: a YAML value; a malformed one is refused with its line and column."""
    from transferlab.errors import TransferlabError

    try:
        return parse_yaml(text, "the value")
    except TransferlabError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# Counts among the config's integer fields: validated at the flag, so its message names the flag.
COUNT_FIELDS = {
    "batch_size": positive_int, "eval_batch_size": positive_int, "input_size": positive_int,
    "image_size": positive_int, "max_image_pixels": positive_int, "workers": non_negative_int,
    "checkpoint_every": non_negative_int, "seed": non_negative_int, "split_seed": non_negative_int,
}


def flag_type(hint: Any, name: str | None = None) -> Any:
    """The argparse type of a resolved field type hint ("int | None" -> int); for the count
    field `name`, its checked type from COUNT_FIELDS."""
    if name in COUNT_FIELDS:
        return COUNT_FIELDS[name]
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
    kind = flag_type(typing.get_type_hints(TrainConfig)[name], name)
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
    config_flag(parser, "max_image_pixels")
    config_flag(parser, "labels", default="fine")


def dataset_from_args(args: argparse.Namespace) -> Any:
    """Load the dataset the shared arguments describe (an `ImageDataset`)."""
    from transferlab.data import load_dataset

    return load_dataset(args.dataset, data_root=args.data_root, image_size=args.image_size,
                        labels=args.labels, workers=args.workers,
                        max_image_pixels=args.max_image_pixels)
