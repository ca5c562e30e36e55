"""Messages go through `logging` (logger "transferlab"): a library prints nothing of its own accord.

Every line transferlab has to say (a run's stages and epochs, a comparison's progress, a
ranking's candidates) is an INFO record of the "transferlab" logger, so a notebook or a
service can show, silence or redirect it like any library's (`logging.getLogger("transferlab")
.setLevel(logging.WARNING)`). The command line installs `print_messages()`, which prints each
record's message as the CLI always did: plain, on stdout, flushed (the records of this
logger only: the modules' own child loggers stay quiet, as before).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("transferlab")


def info(message: str) -> None:
    """Say `message` (an INFO record of the "transferlab" logger)."""
    logger.info(message)


class _StdoutHandler(logging.Handler):
    """Print a record's message on the current `sys.stdout` (looked up per record, so a
    redirected or captured stdout gets it), flushed, as the CLI printed before logging."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging's contract: a handler never raises
            self.handleError(record)


def print_messages(level: int = logging.INFO) -> logging.Handler:
    """Show transferlab's messages on stdout, plain (what the command line does). Idempotent.

    Args:
        level: the lowest level shown.

    Returns:
        The handler (installed once on the "transferlab" logger).
    """
    for handler in logger.handlers:
        if isinstance(handler, _StdoutHandler):
            handler.setLevel(level)
            logger.setLevel(level)
            return handler
    handler = _StdoutHandler(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # Only the messages said here: modules' own loggers (transferlab.models.factory, ...) keep
    # their debugging detail off the CLI's stdout (where `predict --json` writes its JSON).
    handler.addFilter(lambda record: record.name == logger.name)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler




def progress(iterable: Any = None, *, quiet: bool = False, **kwargs: Any) -> Any:
    """A progress bar: a widget in Jupyter, text on a terminal, none when the output is not a
    terminal (so logs and CI output hold no carriage returns) or when `quiet`.

    Args:
        iterable: what to iterate over (or None with `total=` and manual `update`).
        quiet: no bar at all.
        **kwargs: other tqdm options (desc, total, unit, leave, ...).
    """
    from tqdm.auto import tqdm  # notebook widgets under Jupyter (tqdm.auto picks)

    # disable=None: tqdm turns the bar off when its stream is not a terminal; tqdm.notebook
    # turns None into "show", so notebooks get their widget.
    return tqdm(iterable, disable=True if quiet else None, **kwargs)


__all__ = ["info", "logger", "print_messages", "progress"]
