"""The one exception users see: a clear, one-line (or few-line) message, no stack trace."""


class TuneloopError(Exception):
    """An error in the user's input or environment that the message explains how to fix.

    The CLI prints it without a traceback (unless `--debug`) and exits non-zero.
    """
