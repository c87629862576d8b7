"""Errors a user can act on.

Every error raised for bad input derives from `TLKerasError`, the export's included. The CLI
prints such an error as one line and exits non-zero (2 for bad input, 1 for a run or a check that
failed: `bad_input`); anything else is a bug and keeps its traceback. Messages name the value
received, what is allowed, and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class TLKerasError(ValueError):
    """Base class for errors caused by input the user can fix."""

    # Bad input (the command-line exit status 2), or a command that ran and whose result failed
    # (status 1: a NaN stop, an export that does not reproduce its model); see tl_keras.cli.
    bad_input = True


class ConfigError(TLKerasError):
    """A config field or flag has a value that is not allowed."""


class BackboneError(TLKerasError):
    """An unknown backbone, an unsupported width or image size, or weights that do not load."""


class DataError(TLKerasError):
    """The data cannot be used as given (missing, empty, unreadable, inconsistent)."""


class DataTypeError(DataError, TypeError):
    """The data is of a type that cannot be read (not a dataset of (images, labels) pairs)."""


class WorkdirError(TLKerasError):
    """The workdir is missing what a phase needs, belongs to another run, or cannot be written."""


class DamagedFileError(WorkdirError):
    """A file the package wrote and reads back is damaged: not JSON, not of its shape, truncated.

    The message names the file, what is wrong with it, and the way out (`--overwrite`, or the
    phase to rerun); see `tl_keras.schema`.
    """


class TrainingError(TLKerasError):
    """Training cannot go on (for example the loss became NaN)."""

    bad_input = False  # the run started and failed; its last good checkpoint is kept


class DiskFullError(TLKerasError):
    """A write failed because the file system is full (or over quota); nothing was half-written.

    Attributes:
      path: the file or folder being written.
      free_bytes: the space left on its file system when it failed, or None if unknown.
    """

    bad_input = False  # the command was fine; the disk was not

    def __init__(self, message: str, *, path: str = "", free_bytes: int | None = None):
        super().__init__(message)
        self.path, self.free_bytes = path, free_bytes


class ExportError(TLKerasError):
    """An export cannot be made or checked as asked (a bad format, quantisation or input)."""


class MissingDependencyError(ExportError, ImportError):
    """A format needs a package that is not installed (ONNX: the `onnx` extra)."""


class ExportConversionError(ExportError, RuntimeError):
    """A converter cannot express the model in the asked format."""

    bad_input = False  # the command was fine; the model does not convert


class ExportParityError(ExportError):
    """An exported artifact does not reproduce the Keras model within tolerance.

    Attributes:
        report: the `ParityReport` with the measured differences.
    """

    bad_input = False  # a check failed: not bad input, a wrong artifact

    def __init__(self, report: Any, advice: str | None = None):
        self.report = report
        name = report.label
        mean = "" if report.mean_atol is None else f", mean_atol={report.mean_atol:g}"
        if advice is None:
            advice = (
                "Re-export from the model you are comparing against. For a quantised TFLite "
                "file pass quantization='float16' or 'dynamic'; if the difference is an "
                "accepted cost, pass looser atol / mean_atol."
            )
        super().__init__(
            f"{name} export at {report.path!r} does not match the Keras model: "
            f"max |diff| = {report.max_abs_diff:.3g}, mean |diff| = {report.mean_abs_diff:.3g}; "
            f"tolerance atol={report.atol:g}, rtol={report.rtol:g}{mean} "
            f"(on {report.num_images} images; top-1 agreement {report.top1_agreement:.1%}). "
            + advice
        )


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Returns ' (did you mean X?)' when `value` is close to one of `allowed`, else ''."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def refused(name: str, value: Any, allowed: str) -> ConfigError:
    """The one-line refusal of a setting: its name, the value received and what is allowed."""
    return ConfigError(f"{name}={value!r} is not allowed: {allowed}")


def refused_name(name: str, value: str, allowed: Iterable[str]) -> ConfigError:
    """`refused` for a setting that takes one of a list of names: the list, and a near miss."""
    allowed = list(allowed)
    return refused(name, value, f"one of {', '.join(allowed)}{did_you_mean(value, allowed)}")


def first_line(e: BaseException) -> str:
    """An exception as one short line for a message: its type and the first line of its text."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
