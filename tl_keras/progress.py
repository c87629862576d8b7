"""Progress a user sees without asking, and of the long one-off passes (decode check, feature
pass, re-reading data).

Where the lines go (`say`): through the `tl_keras` logger when the program has configured
logging for it (a handler on it or on an ancestor it propagates to, or a level set on it: the
commands do, and so does any program that calls `logging.basicConfig`); otherwise printed on
stdout, so `train()` in a fresh notebook or a bare script shows its epochs without a set-up
call. The library never adds a handler to, or sets the level of, any logger: that is the
program's choice.

A pass that takes more than a moment says where it is, with counts, every few seconds and once
at the end, on the package's logger:

    [decode check] 1,024 / 3,439 images (30%), 2.1 s
    [decode check] 3,439 / 3,439 images (100%) in 6.8 s

A pass that ends within `quiet_s` shows nothing, so short runs and the tests stay quiet. Times
come from `time.monotonic`, so a wall clock that jumps (NTP, a laptop waking up) cannot make a
pass look negative or endless.

    with Progress("decode check", total=len(files)) as progress:
        for batch in batches:
            ...
            progress.update(len(batch))
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tl_keras")

# How a phase's epochs show (config `progress`): a bar on a terminal and one line per epoch
# otherwise ('auto'), always a bar, or always lines (`tl_keras.training.callbacks`).
MODES = ("auto", "bar", "lines")


def logging_configured(logger: logging.Logger | None = None) -> bool:
    """Whether the program configured logging for `logger` (default: the package's): a level
    set on it, or a handler on it or on an ancestor its records propagate to."""
    logger = logger or log
    if logger.level != logging.NOTSET:
        return True
    current: logging.Logger | None = logger
    while current is not None:
        if current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def say(message: str, *args, logger: logging.Logger | None = None) -> None:
    """One line of progress: an INFO record when logging is configured, else printed on stdout.

    Args:
      message: a %-format string, as for `logging`.
      *args: its arguments.
      logger: the logger (default: the package's).
    """
    logger = logger or log
    if logging_configured(logger):
        logger.info(message, *args)
    else:
        print(message % args if args else message, file=sys.stdout, flush=True)


class Progress:
    """Counts a pass and logs its progress at most every `every_s` seconds.

    Args:
      label: what the pass is ("decode check", "feature pass").
      total: how many units the pass has; None when unknown (then no percentage).
      unit: what is counted ("images").
      every_s: the shortest interval between two progress lines.
      quiet_s: a pass that ends sooner logs nothing at all.
      logger: where the lines go (the package's logger by default).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "images",
        every_s: float = 5.0,
        quiet_s: float = 2.0,
        logger: logging.Logger | None = None,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.every_s, self.quiet_s = every_s, quiet_s
        self.log = logger or log
        self.done = 0
        self._start = time.monotonic()
        self._last = self._start
        self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start

    def _line(self, final: bool) -> str:
        count = f"{self.done:,}"
        if self.total:
            count += f" / {self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            count += f" {self.unit}"
        when = f"in {self.elapsed_s:.1f} s" if final else f"{self.elapsed_s:.1f} s"
        return f"[{self.label}] {count}{',' if not final else ''} {when}"

    def update(self, n: int = 1) -> None:
        """Counts `n` more units; logs a line when `every_s` has passed since the last one.

        The last units of a known total log nothing here: the final line (`close`) says 100%,
        once."""
        self.done += n
        if self.total and self.done >= self.total:
            return
        now = time.monotonic()
        if now - self._start >= self.quiet_s and now - self._last >= self.every_s:
            self._last, self._shown = now, True
            say(self._line(final=False), logger=self.log)

    def close(self) -> None:
        """Logs the final count when the pass was long enough to be worth a line."""
        if self._shown or self.elapsed_s >= self.quiet_s:
            say(self._line(final=True), logger=self.log)
