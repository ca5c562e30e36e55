"""Every flag of every command explains itself: a help line, not just a default."""

from __future__ import annotations

import argparse
import re

import pytest

from transferlab.cli import COMMANDS, build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix}{name}"] = child
                    walk(child, f"{prefix}{name} ")

    walk(parser, "")
    return found


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_flag_has_a_meaningful_help_line(command: str) -> None:
    parser = _subparsers()[command]
    assert parser.description or parser.format_usage(), command
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        text = action.help or ""
        name = "/".join(action.option_strings) or action.dest
        # The text must say something besides the default.
        meaning = re.sub(r"[\[(]default[^\])]*[\])]", "", text).strip()
        assert len(meaning) >= 8, f"{command} {name}: help {text!r} does not say what it means"


def test_every_command_is_offered() -> None:
    names = set(_subparsers())
    for command in COMMANDS:
        assert command in names, command


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out


def test_flags_that_set_a_config_field_share_its_help_and_choices() -> None:
    from transferlab.config import FIELD_CHOICES, TrainConfig, field_help

    helps = field_help(TrainConfig)
    checked = 0
    for command in ("train", "compare", "sweep", "data info"):
        for action in _subparsers()[command]._actions:
            # data info's split flags preview a split; their meaning differs from a run's.
            if action.dest in helps and not (command == "data info" and action.dest in
                                             ("val_fraction", "train_fraction", "seed")):
                assert action.help.startswith(helps[action.dest]), (command, action.dest)
                if action.dest in FIELD_CHOICES:
                    assert tuple(action.choices) == tuple(FIELD_CHOICES[action.dest]) or \
                        tuple(action.choices) == FIELD_CHOICES[action.dest][1:]
                checked += 1
    assert checked > 30
