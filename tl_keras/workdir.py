"""The workdir: what each phase saves, and what a later phase trusts.

    <workdir>/
      run.json                  identity of the run (backbone, size, classes...) and phases done
      config.json               resolved config of the latest invocation
      history.json, history.csv stitched history of every phase done so far
      curves.png                accuracy and loss across phases, boundaries marked
      <phase>/model.keras       the model at the end of the phase (with optimizer state)
      <phase>/rng_state.json    its dropout RNG states (Keras does not save them in .keras)
      <phase>/history.json      that phase's epochs
      <phase>/config.json       the resolved config the phase ran with
      <phase>/summary.json      trainable/frozen parameters, epochs run, wall time
      <phase>/best_weights.npz  under `rollback`: the best weights the next phase must beat
      lr_find/                  plots and JSON of `python -m tl_keras.lr_find` (kept on --overwrite)
      logs/                     optional TensorBoard and CSV logs
      data/synthetic/           the generated data set when data_dir='synthetic'
      replaced-YYYYmmdd-HHMMSS/ the run an --overwrite replaced, until the new run finishes a phase

`run.json` is written last after each phase: a phase counts as done only when its files are all
in place, so an interrupted run never leaves a workdir that claims more than it has, and a
reader (evaluate, predict, export) that goes by it reads complete phases only.

`--overwrite` never destroys a run before its replacement has shown something: the results it
replaces are set aside (`set_aside`) into `replaced-*/`, a complete workdir of its own, and
removed only once the new run has finished a phase (`drop_replaced`).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from typing import Any

from tl_keras import io, schema
from tl_keras.errors import WorkdirError

log = logging.getLogger("tl_keras")

RUN_FILE = "run.json"
FORMAT_VERSION = 1
# Things a workdir holds that `--overwrite` replaces (the generated data set is kept).
_RESULT_FILES = ("run.json", "config.json", "history.json", "history.csv", "curves.png")
CHECKPOINTS = "checkpoints"  # tl_keras.training.checkpoint's folder
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

    def __init__(self, path: str):
        if not path:
            raise WorkdirError("no workdir given: pass --workdir=FOLDER for the run's artifacts")
        self.path = os.path.abspath(path)

    # --- paths --------------------------------------------------------------------------------
    def file(self, *parts: str) -> str:
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

    # --- --overwrite: set aside, then drop ----------------------------------------------------
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

    def set_aside(self, remove: list[str], *, run_after: dict[str, Any] | None) -> str | None:
        """Keeps the run an --overwrite replaces, complete, in `replaced-<time>/`.

        Every result (run.json, config.json, history, curves, each phase's folder, checkpoints)
        is linked (or copied) into a new folder that appears whole, so the replaced run is a
        workdir of its own. Only then are the entries in `remove` removed here: after writing
        `run_after` as run.json (a partial --overwrite: the redone phases no longer count), or,
        for the whole run (`run_after` None), run.json first, so a reader never sees a phase
        listed whose folder is gone.

        Args:
          remove: the entries (phase folder names, result file names) to take out of the workdir.
          run_after: run.json as it is to read once they are out; None removes run.json too.

        Returns:
          The folder, or None when the workdir held no results.
        """
        entries = [e for e in self.result_entries() if os.path.lexists(self.file(e))]
        if not entries:
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside, n = self.file(f"{REPLACED_PREFIX}{stamp}"), 1
        while os.path.exists(aside):
            n += 1
            aside = self.file(f"{REPLACED_PREFIX}{stamp}-{n}")
        with io.atomic_path(aside) as tmp:
            os.mkdir(tmp)
            for e in entries:
                _link_tree(self.file(e), os.path.join(tmp, e))
        if run_after is not None:
            self.write_run(run_after)
        order = sorted(remove, key=lambda e: e != RUN_FILE)  # run.json (the commit point) first
        for e in order:
            io.remove(self.file(e))
        return aside

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

    def result_entries(self) -> list[str]:
        run = self.read_run()
        phases = list(run["phases"]) if run else []
        out = [e for e in _RESULT_FILES if os.path.lexists(self.file(e))]
        for entry in sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []:
            full = self.file(entry)
            if entry in ("data", "logs", "lr_find") or not os.path.isdir(full):
                continue
            if entry == CHECKPOINTS or entry in phases or os.path.isfile(self.model_path(entry)):
                out.append(entry)
        return out

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


def _peek_format(path: str) -> Any:
    """run.json's "format", when it parses as an object that has one (checked before its shape)."""
    try:
        value = io.read_json(path)
    except (OSError, ValueError):
        return None
    return value.get("format") if isinstance(value, dict) else None


def _link_tree(src: str, dst: str) -> None:
    """Hard-links a file or folder tree to `dst` (copies where links are not possible).

    Links cost no space, and the package replaces files by renaming new ones into place, so the
    linked copy keeps the old contents however the original's name is reused.
    """
    if os.path.isdir(src) and not os.path.islink(src):
        os.makedirs(dst, exist_ok=True)
        for entry in os.listdir(src):
            _link_tree(os.path.join(src, entry), os.path.join(dst, entry))
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
