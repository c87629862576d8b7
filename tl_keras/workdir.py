"""The workdir: what each phase saves, and what a later phase trusts.

    <workdir>/
      run.json                  identity of the run (backbone, size, classes...) and phases done
      config.json               resolved config of the latest invocation
      history.json, history.csv stitched history of every phase done so far
      curves.png                accuracy and loss across phases, boundaries marked
      recipe.json               the recipe card the run follows (tl_keras.training.decide)
      calibration/, doctor/     the temperature's report; the data doctor's report
      checkpoints/              epoch-end checkpoints of the phase in progress
      <phase>/model.keras       the model at the end of the phase (with optimizer state)
      <phase>/rng_state.json    its dropout RNG states (Keras does not save them in .keras)
      <phase>/history.json      that phase's epochs
      <phase>/config.json       the resolved config the phase ran with
      <phase>/summary.json      trainable/frozen parameters, epochs run, wall time
      <phase>/best_weights.npz  under `rollback`: the best weights the next phase must beat
      lr_find/                  plots and JSON of `python -m tl_keras.lr_find` (kept on --overwrite)
      logs/                     optional TensorBoard and CSV logs
      data/synthetic/           the generated data set when data_dir='synthetic'
      .replacement/             only while an --overwrite runs: the new run, staged until it has
                                finished a phase, then swapped in (`tl_keras.transaction`)
      replaced-YYYYmmdd-HHMMSS/ a run an --overwrite of an earlier tl_keras set aside; dropped
                                once a new run finishes a phase

`run.json` is written last after each phase: a phase counts as done only when its files are all
in place, so an interrupted run never leaves a workdir that claims more than it has, and a
reader (evaluate, predict, export) that goes by it reads complete phases only.

`--overwrite` is a transaction (`tl_keras.transaction`): the new run trains in
`.replacement/new/` while the workdir still holds the old run, untouched, for every reader; once
the new run has saved a phase there, it is swapped in (`Workdir.commit`). A replacement that
fails before that (divergence, a full disk, a signal, SIGKILL) leaves the old run as it was;
`read_run`, the first thing every command does, recovers one a killed process left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

from tl_keras import io, lock, schema, transaction
from tl_keras.errors import TLKerasError, WorkdirError

log = logging.getLogger("tl_keras")

RUN_FILE = "run.json"
FORMAT_VERSION = 1
# Things a workdir holds that `--overwrite` replaces (the generated data set is kept).
_RESULT_FILES = ("run.json", "config.json", "history.json", "history.csv", "curves.png")
CHECKPOINTS = "checkpoints"  # tl_keras.training.checkpoint's folder
# The run's other files and folders (tl_keras.training.decide, .calibrate, tl_keras.doctor).
_RUN_ENTRIES = (*_RESULT_FILES, "recipe.json", CHECKPOINTS, "calibration", "doctor")
# What outlives a run: kept by --overwrite, and written straight to the workdir by a staged run
# (data sets and their caches, logs that gather every attempt, lr_find's plots).
SHARED = ("data", "logs", "cache", "lr_find")
REPLACED_PREFIX = "replaced-"
_PHASE_ENTRY = schema.Obj(
    {"last_epoch": schema.Int},
    optional={
        "first_epoch": schema.Maybe(schema.Int),
        "epochs_run": schema.Int,
        "stopped_early": schema.Bool,
        "wall_time_s": schema.Num,
    },
)
# What run.json must hold before anything trusts it (phase names become folder names).
RUN_SHAPE = schema.Obj(
    {
        "format": schema.Int,
        "backbone": schema.Str,
        "image_size": schema.Int,
        "class_names": schema.ListOf(schema.Str),
        "phases": schema.DictOf(_PHASE_ENTRY, keys=schema.Name),
    },
    optional={
        "alpha": schema.Num,
        "head_units": schema.Int,
        "dropout": schema.Num,
        "weights": schema.Maybe(schema.Str),
        "precision": schema.Str,
        "schedule": schema.ListOf(schema.Obj({"name": schema.Name})),
    },
)
RUN_FIX = "the record of the run is lost: start it again with --overwrite, or use another --workdir"


class Workdir:
    """Paths and state of one run's folder."""

    def __init__(self, path: str, *, replaces: str | None = None):
        """Args:
        path: the folder.
        replaces: for the staging folder of an --overwrite (`stage`): the workdir whose run it
          replaces; `path` becomes that workdir at `commit`.
        """
        if not path:
            raise WorkdirError("no workdir given: pass --workdir=FOLDER for the run's artifacts")
        self.path = os.path.abspath(path)
        self.replaces = os.path.abspath(replaces) if replaces else None

    # --- paths --------------------------------------------------------------------------------
    @property
    def shared_root(self) -> str:
        """Where what outlives a run (`SHARED`: data, logs, caches) is: this folder, or for a
        staged run (`stage`) the workdir it replaces."""
        return self.replaces or self.path

    def file(self, *parts: str) -> str:
        """A path in the folder; a staged run's `SHARED` folders are its workdir's."""
        if parts and parts[0] in SHARED:
            return os.path.join(self.shared_root, *parts)
        return os.path.join(self.path, *parts)

    def phase_dir(self, phase: str) -> str:
        return self.file(phase)

    def model_path(self, phase: str) -> str:
        return self.file(phase, "model.keras")

    # --- state --------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Creates the folder and proves a file can be written there.

        Raises:
          WorkdirError: the folder cannot be created or written.
        """
        try:
            os.makedirs(self.path, exist_ok=True)
            io.atomic_write_text(self.file(".write-test"), "ok\n")
            os.unlink(self.file(".write-test"))
        except OSError as e:
            raise WorkdirError(
                f"workdir {self.path!r} is not writable ({e.strerror}); pass a --workdir you can write to"
            ) from None

    def read_run(self) -> dict[str, Any] | None:
        """Returns run.json, or None when the workdir holds no run yet.

        Raises:
          DamagedFileError: run.json is not JSON, or not of its shape (`RUN_SHAPE`).
          WorkdirError: it was written by a tl_keras of another format.
        """
        transaction.settle(self.path)  # a replacement a killed process left: finished or undone
        path = self.file(RUN_FILE)
        if not os.path.isfile(path):
            return None
        if isinstance(raw := _peek_format(path), int) and raw != FORMAT_VERSION:
            raise WorkdirError(f"{path} has format {raw!r}, this tl_keras reads {FORMAT_VERSION}")
        return schema.read_json(path, RUN_SHAPE, fix=RUN_FIX)

    def write_run(self, run: dict[str, Any]) -> None:
        io.atomic_write_json(self.file(RUN_FILE), {**run, "format": FORMAT_VERSION})

    def phases_done(self) -> dict[str, Any]:
        run = self.read_run()
        return dict(run["phases"]) if run else {}

    # --- --overwrite: a transaction ----------------------------------------------------------
    def stage(
        self, *, keep: Sequence[str] = (), replacing: dict[str, Any] | None = None
    ) -> Workdir:
        """Starts an --overwrite of this workdir's run (`tl_keras.transaction.begin`).

        The caller holds the lock. Nothing here changes until `commit`.

        Args:
          keep: entries the new run keeps (hard-linked into the staging folder).
          replacing: what is replaced, for the log lines.

        Returns:
          The staging folder, where the new run writes until its first phase is saved.
        """
        staged = transaction.begin(self.path, keep=keep, intent=replacing)
        return Workdir(staged, replaces=self.path)

    def commit(self, reason: str) -> None:
        """Makes what this run wrote count, once a phase is saved.

        A staged run (`stage`) takes its workdir's place: the old run is swapped out, the new
        one in (`tl_keras.transaction.commit`), and from then on this object is that workdir.
        Runs earlier tl_keras versions set aside (`replaced-*`) are dropped.
        """
        if self.replaces is not None:
            home = Workdir(self.replaces)
            transaction.commit(home.path, old=home.run_entries(), shared=SHARED)
            self.path, self.replaces = home.path, None
            log.info(
                "--overwrite: %s, so %s now holds it: the run it replaced is gone",
                reason,
                home.path,
            )
        self.drop_replaced(reason)

    def run_entries(self) -> list[str]:
        """The entries of the run here, which an --overwrite replaces.

        Its files, checkpoints, calibration, doctor report and phase folders (those run.json
        names, and any folder holding a `model.keras`); not what outlives a run (`SHARED`), the
        lock, evaluations, exports or anything else.
        """
        if not os.path.isdir(self.path):
            return []
        run = _read_tolerant(self.file(RUN_FILE))
        phases = set(run.get("phases") or ()) if isinstance(run.get("phases"), dict) else set()
        for p in run.get("schedule") or () if isinstance(run.get("schedule"), list) else ():
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                phases.add(p["name"])
        out = []
        for entry in sorted(os.listdir(self.path)):
            full = self.file(entry)
            if entry in SHARED or entry.startswith(".") or entry.startswith(REPLACED_PREFIX):
                continue
            if entry in _RUN_ENTRIES or (
                os.path.isdir(full) and (entry in phases or os.path.isfile(self.model_path(entry)))
            ):
                out.append(entry)
        return out

    # --- runs set aside by earlier tl_keras versions ------------------------------------------
    def replaced(self) -> list[str]:
        """The folders holding runs an --overwrite replaced, not yet dropped (oldest first)."""
        if not os.path.isdir(self.path):
            return []
        return sorted(
            self.file(e)
            for e in os.listdir(self.path)
            if e.startswith(REPLACED_PREFIX)
            and os.path.isdir(self.file(e))
            and io.TMP_MARK not in e
        )

    def drop_replaced(self, reason: str) -> None:
        """Removes the runs earlier --overwrites replaced (the new run has shown something)."""
        for path in self.replaced():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, the run --overwrite replaced: %s", path, reason)

    def replaced_note(self) -> str:
        """A sentence about replaced runs still kept here, or ''."""
        kept = self.replaced()
        if not kept:
            return ""
        return (
            f"the run an earlier --overwrite replaced is kept in {kept[-1]} (a complete workdir) "
            "until the new run finishes a phase; to get it back, move it out of the workdir "
            f"(mv {kept[-1]} SOMEWHERE) and use it as the --workdir"
        )

    def clear_results(self, keep_phases: tuple[str, ...] = ()) -> None:
        """Removes run results (all phases but `keep_phases`); keeps generated data and logs."""
        run = self.read_run()
        phases = list(run["phases"]) if run else []
        for entry in os.listdir(self.path) if os.path.isdir(self.path) else []:
            full = self.file(entry)
            is_phase_dir = os.path.isfile(os.path.join(full, "model.keras")) or entry in phases
            if entry in keep_phases:
                continue
            if entry in _RESULT_FILES and not keep_phases:
                os.unlink(full)
            elif os.path.isdir(full) and is_phase_dir and entry not in ("data", "logs"):
                shutil.rmtree(full)


class Made:
    """What `nothing_left_if_refused` yields: `keep()` once the block has a result to keep."""

    def __init__(self) -> None:
        self.kept = False

    def keep(self) -> None:
        """From now on a refusal removes nothing (a comparison whose first run finished)."""
        self.kept = True


@contextlib.contextmanager
def nothing_left_if_refused(path: str, *, hold_lock: bool = False) -> Iterator[Made]:
    """Removes what the block created in `path` when it ends in bad input (exit status 2).

    A command that creates its workdir (the lock, `ensure_writable`) and is then refused (a
    phase whose predecessor is not done, data that cannot be read, a budget too small) leaves
    nothing it created: the new entries of the folder, then the folder and the parents it
    created, if they are empty. What was there before is never touched, nor anything once the
    block has written `run.json` or a checkpoint there (a run that started keeps its state) or
    called `Made.keep`.

    Args:
      path: the workdir.
      hold_lock: take the workdir's lock for the block (`tl_keras.lock.hold`); the new entries
        are removed under it, the folder after it is released (with the lock file gone).

    Yields:
      A `Made`, to say when the block has written something to keep.
    """
    made = Made()
    if not path:  # no workdir: `Workdir` refuses it, with nothing to tidy
        yield made
        return
    path = os.path.abspath(path)
    top = _first_missing(path)
    try:
        with lock.hold(path) if hold_lock else contextlib.nullcontext():
            before = _entries(path)
            run_before = _stat(os.path.join(path, RUN_FILE))
            try:
                yield made
            except TLKerasError as e:
                # Without the lock, a writer's lock file says the new entries may be its own.
                busy = not hold_lock and os.path.lexists(os.path.join(path, lock.LOCK_FILE))
                if e.bad_input and not busy and not made.kept:
                    _remove_new(path, before, run_before)
                raise
    except TLKerasError as e:
        if e.bad_input and top is not None and not made.kept:
            _remove_empty(path, top)
        raise


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` (itself or a parent) that does not exist yet, or None."""
    missing = None
    while not os.path.lexists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _entries(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _remove_new(path: str, before: set[str], run_before: tuple | None) -> None:
    """Removes the entries of `path` not in `before`, unless a run was recorded meanwhile."""
    new = _entries(path) - before
    if CHECKPOINTS in new or _stat(os.path.join(path, RUN_FILE)) != run_before:
        return
    for entry in sorted(new - {lock.LOCK_FILE}):
        with contextlib.suppress(OSError):
            io.remove(os.path.join(path, entry))


def _remove_empty(path: str, top: str) -> None:
    """Removes `path` and its parents up to `top`, each only if empty (`rmdir`)."""
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == top or os.path.dirname(path) == path:
            return
        path = os.path.dirname(path)


def _read_tolerant(path: str) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing or damaged (what an --overwrite replaces)."""
    try:
        value = io.read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _peek_format(path: str) -> Any:
    """run.json's "format", when it parses as an object that has one (checked before its shape)."""
    try:
        value = io.read_json(path)
    except (OSError, ValueError):
        return None
    return value.get("format") if isinstance(value, dict) else None
