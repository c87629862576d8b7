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

`run.json` is written last after each phase: a phase counts as done only when its files are all
in place, so an interrupted run never leaves a workdir that claims more than it has.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from tl_keras import io
from tl_keras.errors import WorkdirError

RUN_FILE = "run.json"
FORMAT_VERSION = 1
# Things a workdir holds that `--overwrite` replaces (the generated data set is kept).
_RESULT_FILES = ("run.json", "config.json", "history.json", "history.csv", "curves.png")


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
        """Returns run.json, or None when the workdir holds no run yet."""
        path = self.file(RUN_FILE)
        if not os.path.isfile(path):
            return None
        try:
            run = io.read_json(path)
        except (OSError, ValueError) as e:
            raise WorkdirError(
                f"{path} is unreadable ({e}); the workdir is damaged: use another --workdir or --overwrite"
            ) from None
        if run.get("format") != FORMAT_VERSION:
            raise WorkdirError(
                f"{path} has format {run.get('format')!r}, this tl_keras reads {FORMAT_VERSION}"
            )
        return run

    def write_run(self, run: dict[str, Any]) -> None:
        io.atomic_write_json(self.file(RUN_FILE), {**run, "format": FORMAT_VERSION})

    def phases_done(self) -> dict[str, Any]:
        run = self.read_run()
        return dict(run["phases"]) if run else {}

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
