"""The `transferlab` command line: a thin shell that parses, validates and calls library code.

Each sub-command lives in `transferlab.commands.<name>` with two functions,
`add_parser(subparsers)` and `run(args) -> int`, so that this file stays a dispatcher.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Sequence

from transferlab import __version__
from transferlab.errors import TransferlabError

# Order is the order `transferlab --help` lists them in.
COMMANDS = (
    "data", "models", "rank", "predict", "train", "compare", "sweep", "evaluate", "export", "report",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per command module."""
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="Image classification by transfer learning (the 2018 CIFAR-100 study, rerun).",
    )
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"transferlab.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"transferlab.commands.{name}":
                raise
            continue  # a command not built yet is simply not offered
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 success, 1 failure, 2 bad input, 130 Ctrl-C,
    141 output into a closed pipe)."""
    from transferlab.logs import print_messages

    print_messages()  # the library's messages, printed plain on stdout as the CLI always did
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # argparse: --help (0) or a bad flag (2, message already printed)
            return int(exit_.code or 0)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except TransferlabError as err:
        print(f"transferlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`transferlab predict ... | head -1`): stop quietly, as a program
        # killed by SIGPIPE would (exit 128 + 13). Python docs, "Note on SIGPIPE": point stdout
        # at devnull so the interpreter's final flush does not raise again.
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Send whatever is still buffered for stdout to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # stdout is not a file descriptor (a test's capture): nothing is flushed to a pipe


if __name__ == "__main__":
    sys.exit(main())
