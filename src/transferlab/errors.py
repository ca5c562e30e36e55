"""Errors shared by the library and the CLI."""


class TransferlabError(Exception):
    """A problem the user can fix (bad input, missing file, wrong setting).

    The message names the problem and the fix; the CLI prints it without a traceback.
    """
