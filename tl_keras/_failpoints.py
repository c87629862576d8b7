"""Fault injection for the crash tests: make this process fail at a named point, as it would in
the wild.

Set TL_KERAS_FAILPOINT to one entry, or several separated by commas. An entry is a point's name
(the process is killed there with SIGKILL, exactly as a reclaimed spot instance or `kill -9`
would kill it, with no chance to clean up), or a point's name behind an action:

  NAME               SIGKILL at the point
  pause:NAME         write this process's pid to the file TL_KERAS_PAUSE_FILE names, then wait
                     there until that file is removed (a test acts on the run meanwhile)
  signal:SIG:NAME    send SIG (TERM or INT) to this process at the point, as `kill` or Ctrl-C
  enospc:TEXT        every atomic write to a path containing TEXT fails with ENOSPC ("No space
                     left on device") when it flushes, as a full disk makes fsync fail; so does
                     a move of an --overwrite's swap to such a path

The points:

  batch:E:B            during global epoch E (1-based), after batch B (0-based) trained
  before_checkpoint:E  epoch E trained and validated, its checkpoint not yet written
  after_checkpoint:E   epoch E's checkpoint written
  phase_saved:NAME     phase NAME's artifacts and run.json written, before anything else
  write:PATH           a file or folder whose path ends with PATH ('curves.png', 'ft/model.keras')
                       written at its temporary name, not yet renamed into place
                       (`tl_keras.io.atomic_path`)
  data_listed          the data's files listed, none of them read yet

An --overwrite's transaction (`tl_keras.transaction`), in the order a replacement meets them:

  replace:begun        the staging folder `.replacement/new/` made, nothing of the new run in it
  replace:commit       the new run's first phase saved there, the commit record not yet written
                       (`write:.replacement/commit.json`: written at its temporary name)
  replace:out:ENTRY    the commit record written; the old run's ENTRY ('run.json', 'fe') about to
                       move out of the workdir
  replace:in:ENTRY     the old run moved out; the new run's ENTRY about to move in
  replace:swapped      every entry moved, the transaction folder not yet deleted
  replace:discarded    the transaction folder renamed for deletion (after its swap, or abandoned
                       by a failed replacement), not yet deleted

Unset (the normal case) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "TL_KERAS_FAILPOINT"
PAUSE_FILE_ENV = "TL_KERAS_PAUSE_FILE"


def _entries() -> list[str]:
    value = os.environ.get(ENV)
    return [e.strip() for e in value.split(",") if e.strip()] if value else []


def _matches(point: str, name: str) -> bool:
    if point.startswith("write:") and name.startswith("write:"):
        return name == point or name.endswith("/" + point[len("write:") :])
    return point == name


def hit(name: str) -> None:
    """Fails here when a failpoint names this point (SIGKILL, pause or a signal)."""
    if ENV not in os.environ:
        return
    for entry in _entries():
        if entry.startswith("pause:") and _matches(entry[len("pause:") :], name):
            _pause()
        elif entry.startswith("signal:"):
            _, sig, point = entry.split(":", 2)
            if _matches(point, name):
                os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
        elif _matches(entry, name):
            os.kill(os.getpid(), signal.SIGKILL)


def _pause() -> None:
    path = os.environ[PAUSE_FILE_ENV]
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while os.path.exists(path):
        time.sleep(0.05)


def check_disk_full(path: str) -> None:
    """Raises ENOSPC for a write to `path` when an `enospc:TEXT` failpoint matches it."""
    if ENV not in os.environ:
        return
    for entry in _entries():
        if entry.startswith("enospc:") and entry[len("enospc:") :] in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
