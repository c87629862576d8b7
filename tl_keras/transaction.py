"""A run's replacement as a transaction: `--overwrite` stages the new run beside the old one and
swaps it in only once it has finished a phase.

    <workdir>/.replacement/      only while an --overwrite is under way (a dot-name: never a
                                 phase's name, never read by predict, evaluate or export)
      intent.json                what is replaced, and by whom (pid, command, when)
      new/                       the new run: the runner writes here (its `outdir`) until the swap
      commit.json                the commit record: the entries the swap moves out and in
      old/                       during the swap only: the replaced run's entries, moved out

The steps, each one atomic:

1. **begin**: `.replacement/` appears whole (written at a temporary name, then renamed), holding
   `new/` (for `--phase=ft --overwrite`, hard links of the phases kept, so `new/` becomes a
   complete run of its own). The workdir itself is not touched.
2. the new run trains and saves its first phase into `new/`;
3. **commit**: `commit.json` appears whole (written, flushed, renamed): the commit point;
4. **swap**: each entry of the old run moves into `old/` (run.json first), then each entry of
   `new/` into the workdir (run.json last), then `.replacement/` is renamed to a temporary name
   and deleted. What outlives a run (data/, logs/, lr_find/, the feature cache, the lock,
   evaluations and exports) is never moved.

**Recovery** (`recover`, under the workdir's lock): a `.replacement/` without `commit.json` is
discarded (roll back: the workdir still holds the old run, which nothing touched); one with it
is finished (roll forward: the moves are repeated where they are not done yet, which the record
and the two folders tell). So a SIGKILL at any moment leaves the old run, or a swap that the next
command completes into the new run: never neither, never a mix. `settle` runs recovery from
`Workdir.read_run`, the first thing every command (training, predict, evaluate, export, lr_find)
does with a workdir: a reader takes the lock for that moment; if a live writer holds it, the
reader reads the untouched old run while that writer trains, and waits for it (milliseconds)
while it swaps.

**Why a staging folder, and not restore-on-failure** (set the old run aside, train in place, put
it back on failure, recover after a kill): readers take no lock, so while a replacement trains in
place they would read the new, unfinished run; with a staging folder the workdir is the old run
to every reader until the commit point, and a failure before it (divergence, NaN, a full disk,
Ctrl-C, SIGTERM, any error) has nothing to put back: deleting `.replacement/` is the whole
rollback. A kill in the middle of putting back would also need its own recovery.
**Why a commit record, not one directory rename**: the workdir holds what outlives a run (the
lock its writer holds, data/, logs/, caches, evaluations and exports), its path is what users and
scripts name, and it may be a mount point; so the run's entries move inside it, and the record
makes that multi-step move recoverable. (An atomic exchange of two folders, renameat2's
RENAME_EXCHANGE, is Linux-only and would still move the lock.)

A reader that has read run.json just before the swap and opens a phase's files just after may
still fail to find them (the same window as a phase saved in place); it never reads a run.json
that names entries of two runs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from tl_keras import _failpoints, interrupt, io, lock
from tl_keras.errors import WorkdirError

log = logging.getLogger("tl_keras")

FOLDER = ".replacement"
NEW, OLD = "new", "old"
INTENT, COMMIT = "intent.json", "commit.json"
RUN_FILE = "run.json"  # a run's own commit point: moved out first and in last
SWAP_WAIT_S = 30.0  # how long a reader waits for a live writer's swap (it takes milliseconds)
_ACTIVE: set[str] = set()  # the transaction folders this process runs (settle leaves them)


def folder(workdir: str) -> str:
    """`<workdir>/.replacement`."""
    return os.path.join(os.path.abspath(workdir), FOLDER)


def pending(workdir: str) -> str | None:
    """'staged' (a replacement trains, or stopped before its commit point), 'committed' (stopped
    in its swap), or None: what `recover` would find."""
    path = folder(workdir)
    if not os.path.lexists(path):
        return None
    return "committed" if os.path.isfile(os.path.join(path, COMMIT)) else "staged"


# --- the writer's side ----------------------------------------------------------------------------
def begin(workdir: str, *, keep: Sequence[str] = (), intent: dict[str, Any] | None = None) -> str:
    """Starts a replacement: `.replacement/new/` appears whole, holding hard links of `keep`.

    The caller holds the workdir's lock. A replacement a dead process left is recovered first.

    Args:
      workdir: the workdir whose run is replaced.
      keep: entries of the workdir the new run keeps (a --phase=ft --overwrite keeps fe/).
      intent: what is replaced, for the log lines (the phases done, the phases redone).

    Returns:
      The staging folder, where the new run writes until `commit`.
    """
    path = folder(workdir)
    if os.path.lexists(path):
        recover(workdir)
    record = {
        **(intent or {}),
        "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", sys.argv))[:300],
    }
    with io.atomic_path(path) as tmp:
        os.makedirs(os.path.join(tmp, NEW))
        for entry in keep:
            link_tree(os.path.join(workdir, entry), os.path.join(tmp, NEW, entry))
        io.atomic_write_json(os.path.join(tmp, INTENT), record)
    _ACTIVE.add(path)
    _failpoints.hit("replace:begun")
    return os.path.join(path, NEW)


def commit(workdir: str, *, old: Iterable[str], shared: Iterable[str] = ()) -> None:
    """The commit point, then the swap: the staged run takes the old run's place.

    Signals wait until the swap is done (`interrupt.deferred`): a Ctrl-C then stops the new run.

    Args:
      workdir: the workdir.
      old: the old run's entries (`Workdir.run_entries`); entries of the new run that exist in
        the workdir under the same names move out too.
      shared: names that outlive a run: an entry of the new run by such a name is merged into
        the workdir's (what is there already stays), never swapped.

    Raises:
      DiskFullError: the commit record cannot be written: nothing was committed.
      OSError: a move of the swap failed: the next command's recovery finishes it.
    """
    path, shared = folder(workdir), set(shared)
    entries = sorted(os.listdir(os.path.join(path, NEW)))
    moved_in = [e for e in entries if e not in shared]
    out = {*old, *(e for e in moved_in if os.path.lexists(os.path.join(workdir, e)))}
    record = {
        "old": sorted(out - shared - {FOLDER, lock.LOCK_FILE}),
        "new": moved_in,
        "merge": [e for e in entries if e in shared],
    }
    _failpoints.hit("replace:commit")
    with interrupt.deferred():
        io.atomic_write_json(os.path.join(path, COMMIT), record)  # the commit point
        _swap(workdir, record)
    _ACTIVE.discard(path)


def end(workdir: str) -> str | None:
    """Ends this process's replacement in `workdir`, after a failure or after its run.

    Before the commit point the staged run is discarded; after it, a swap a failure stopped
    half-way is finished (or, if that fails too, left to the next command's recovery).

    Returns:
      'abandoned' (the workdir holds the old run, untouched), 'committed' (it holds the new
      run, or will once recovered), or None when this process runs no replacement there.
    """
    path = folder(workdir)
    if path not in _ACTIVE:
        return None
    _ACTIVE.discard(path)
    if pending(workdir) == "committed":
        with contextlib.suppress(OSError):
            _swap(workdir, io.read_json(os.path.join(path, COMMIT)))
        return "committed"
    if os.path.lexists(path):
        _discard(path)
    return "abandoned"


# --- recovery -------------------------------------------------------------------------------------
def recover(workdir: str) -> str | None:
    """Finishes or discards a replacement a stopped process left (the caller holds the lock).

    Returns:
      'committed' (rolled forward: the new run is in place), 'abandoned' (rolled back: the old
      run is), or None (nothing was pending).

    Raises:
      OSError: a move of the swap failed (a full disk): the workdir stays pending.
    """
    state = pending(workdir)
    path = folder(workdir)
    if state is None:
        return None
    intent = _read(os.path.join(path, INTENT))
    who = f"pid {intent.get('pid', '?')}, started {intent.get('started', '?')}"
    if state == "committed":
        _swap(workdir, io.read_json(os.path.join(path, COMMIT)))
        log.warning(
            "an --overwrite of %s (%s) was stopped while it swapped its new run in: the swap is "
            "now complete, and the workdir holds the new run (phases done: %s)",
            workdir,
            who,
            _phases(os.path.join(workdir, RUN_FILE)),
        )
    else:
        _discard(path)
        log.warning(
            "an --overwrite of %s (%s) was stopped before its new run finished a phase: that "
            "run was discarded, and the workdir holds the run it was replacing, untouched "
            "(phases done: %s); run the --overwrite again to replace it",
            workdir,
            who,
            _phases(os.path.join(workdir, RUN_FILE)),
        )
    return state


def settle(workdir: str) -> None:
    """Recovers a replacement a stopped process left, before the workdir is read.

    Cheap when nothing is pending (one `lstat`). Leaves this process's own replacement alone,
    and one a live writer is training (the workdir holds the untouched old run meanwhile); waits
    for one a live writer is swapping in.

    Raises:
      WorkdirError: a swap that cannot be completed here (a read-only workdir, a full disk, a
        writer that does not finish).
    """
    path = folder(workdir)
    if path in _ACTIVE or not os.path.lexists(path):
        return
    try:
        with lock.hold(workdir):
            recover(workdir)
        return
    except OSError as e:
        if pending(workdir) == "committed":
            raise _stuck(workdir, e.strerror or str(e)) from None
        return  # the old run is in place: a staged run that cannot be removed now is harmless
    except WorkdirError as e:  # a live writer holds the lock, or the workdir is read-only
        if pending(workdir) != "committed":
            return
        if not os.access(workdir, os.W_OK):
            raise _stuck(workdir, "the workdir is not writable here") from None
        busy = str(e)
    deadline = time.monotonic() + SWAP_WAIT_S
    while pending(workdir) == "committed":
        if time.monotonic() > deadline:
            raise _stuck(workdir, busy)
        time.sleep(0.05)


def _stuck(workdir: str, why: str) -> WorkdirError:
    return WorkdirError(
        f"workdir {workdir!r} is half-way through an --overwrite's swap of its new run "
        f"({os.path.join(folder(workdir), COMMIT)}) and it cannot be completed now ({why}); "
        "any tl_keras command on this workdir completes it once it can write there"
    )


# --- the moves ------------------------------------------------------------------------------------
def _swap(workdir: str, record: dict[str, Any]) -> None:
    """Moves the old run out and the new one in; repeating it finishes a stopped swap."""
    path = folder(workdir)
    new_dir, old_dir = os.path.join(path, NEW), os.path.join(path, OLD)
    os.makedirs(old_dir, exist_ok=True)
    new = set(record["new"])
    for entry in sorted(record["old"], key=lambda e: e != RUN_FILE):  # run.json first
        here = os.path.join(workdir, entry)
        # An entry of both runs whose new version is already in has moved out before.
        if os.path.lexists(here) and (entry not in new or os.path.lexists(f"{new_dir}/{entry}")):
            _failpoints.hit(f"replace:out:{entry}")
            _move(here, os.path.join(old_dir, entry))
    for entry in sorted(record["new"], key=lambda e: e == RUN_FILE):  # run.json last
        staged = os.path.join(new_dir, entry)
        if os.path.lexists(staged):
            _failpoints.hit(f"replace:in:{entry}")
            _move(staged, os.path.join(workdir, entry))
    for entry in record["merge"]:
        _merge(os.path.join(new_dir, entry), os.path.join(workdir, entry))
    _fsync_dir(workdir)
    _failpoints.hit("replace:swapped")
    _discard(path)


def _move(src: str, dst: str) -> None:
    _failpoints.check_disk_full(dst)
    os.replace(src, dst)


def _merge(src: str, dst: str) -> None:
    """Moves what `src` has and `dst` lacks (a cache entry, a log); what is there stays."""
    if not os.path.lexists(dst):
        _move(src, dst)
    elif os.path.isdir(src) and os.path.isdir(dst) and not os.path.islink(dst):
        for entry in os.listdir(src):
            _merge(os.path.join(src, entry), os.path.join(dst, entry))


def _discard(path: str) -> None:
    """Deletes a transaction folder: renamed first (one atomic step), so no reader or recovery
    ever sees half of it; a kill during the deletion leaves a temporary name that
    `io.remove_leftovers` clears."""
    parent, name = os.path.split(path)
    gone = os.path.join(parent, f".{name}{io.TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(path, gone)
    _failpoints.hit("replace:discarded")
    shutil.rmtree(gone, ignore_errors=True)


def link_tree(src: str, dst: str) -> None:
    """Hard-links a file or folder tree to `dst` (copies where links are not possible).

    Links cost no space, and the package replaces files by renaming new ones into place, so the
    linked copy keeps the old contents however the original's name is reused.
    """
    if os.path.isdir(src) and not os.path.islink(src):
        os.makedirs(dst, exist_ok=True)
        for entry in os.listdir(src):
            link_tree(os.path.join(src, entry), os.path.join(dst, entry))
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path: str) -> dict[str, Any]:
    try:
        value = io.read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _phases(run_path: str) -> str:
    phases = _read(run_path).get("phases")
    return ", ".join(phases) if isinstance(phases, dict) and phases else "none"
