"""Fault injection for the crash tests: kill this process with SIGKILL at a named point.

Set TL_KERAS_FAILPOINT to one of the names below and the process dies there, exactly as a
reclaimed spot instance or `kill -9` would kill it, with no chance to clean up:

  batch:E:B            during global epoch E (1-based), after batch B (0-based) trained
  before_checkpoint:E  epoch E trained and validated, its checkpoint not yet written
  after_checkpoint:E   epoch E's checkpoint written
  phase_saved:NAME     phase NAME's artifacts and run.json written, before anything else

Unset (the normal case) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV = "TL_KERAS_FAILPOINT"


def hit(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
