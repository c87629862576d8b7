"""What every `python -m tl_keras.<command>` shares: logging, and bad input as one line.

A command's `main` calls library functions inside `report_errors`: an error the user can act on
(`TLKerasError`) prints as one line `error: ...` on stderr and the process exits with the error's
`exit_code` (2 for bad input; 1 for a check that failed, such as an export that does not
reproduce its model); anything else is a bug and keeps its traceback.

This module imports neither TensorFlow nor absl, so a command can set itself up cheaply.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tl_keras.errors import TLKerasError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran and a check it makes failed (parity, verification)
EXIT_BAD_INPUT = 2  # the input cannot be used as given; nothing was written


def exit_code(error: TLKerasError) -> int:
    """The process exit status for an error (its `exit_code` attribute, else bad input)."""
    return int(getattr(error, "exit_code", EXIT_BAD_INPUT))


def report_errors(body: Callable[[], int], *, verbose: bool = False) -> int:
    """Runs a command's body; a `TLKerasError` becomes one `error:` line and its exit status.

    Args:
      body: the command, returning its exit status.
      verbose: re-raise the error instead, to show its traceback.

    Returns:
      The body's status, or the error's (`exit_code`).
    """
    try:
        return body()
    except TLKerasError as e:
        if verbose:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return exit_code(e)


def setup_logging(stream=None) -> None:
    """Plain timestamped lines for the tl_keras logger, on stdout unless a stream is given."""
    logger = logging.getLogger("tl_keras")
    if not any(getattr(h, "_tl_keras", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._tl_keras = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
