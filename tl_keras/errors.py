"""Errors a user can act on.

Every error raised for bad input derives from `TLKerasError`. The CLI prints such an error as one
line and exits non-zero; anything else is a bug and keeps its traceback. Messages name the value
received, what is allowed, and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TLKerasError(ValueError):
    """Base class for errors caused by input the user can fix."""


class ConfigError(TLKerasError):
    """A config field or flag has a value that is not allowed."""


class BackboneError(TLKerasError):
    """An unknown backbone, an unsupported width or image size, or weights that do not load."""


class DataError(TLKerasError):
    """The data cannot be used as given (missing, empty, unreadable, inconsistent)."""


class WorkdirError(TLKerasError):
    """The workdir is missing what a phase needs, belongs to another run, or cannot be written."""


class TrainingError(TLKerasError):
    """Training cannot go on (for example the loss became NaN)."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Returns ' (did you mean X?)' when `value` is close to one of `allowed`, else ''."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
