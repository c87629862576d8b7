"""SIGTERM and Ctrl-C (SIGINT) during training: stop at a safe point, exit with a resume hint.

A spot instance's SIGTERM or a Ctrl-C must not leave a traceback or half-written files, and
must not checkpoint half an epoch as if it were whole (a resumed run would skip the rest of it).
While `handled()` is active (the `train` command), either signal raises `Interrupted`:

- inside `fit` (`deferred()`), at the end of the batch in progress, or at the end of the epoch
  once its checkpoint is written (`check`, called by the phase's last callback): the partial
  epoch is dropped, the previous epoch's checkpoint is the one `--resume` continues from;
- elsewhere (loading data, saving a phase), at once: every write is atomic (`tl_keras.io`), so
  an interrupted write leaves the previous version in place.

A second signal while the first is pending raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state = {"pending": None, "deferring": 0}


class Interrupted(BaseException):  # noqa: N818  (like KeyboardInterrupt, not an error)
    """Training was stopped by a signal (a BaseException, as KeyboardInterrupt is).

    Attributes:
      signum: the signal's number; `name` its name ('SIGTERM').
      outcome: what the stop left, when the code it stopped knows better than the checkpoints
        (an --overwrite stopped before its new run finished a phase: the old run is in place).
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.outcome: str | None = None
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def _handler(signum, frame) -> None:
    again = _state["pending"] is not None
    _state["pending"] = signum
    if again or not _state["deferring"]:
        raise Interrupted(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Interrupted` for the block (main thread only; else no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state["pending"] = None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state["pending"] = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a signal is only recorded; `check` raises it at a safe point."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    check()


def check() -> None:
    """Raises `Interrupted` when a signal arrived (the safe points of a `fit`)."""
    if _state["pending"] is not None:
        raise Interrupted(_state["pending"])
