"""Per-epoch checkpoints, so a killed run resumes losing at most the epoch in progress.

Keras's `BackupAndRestore` covers one `fit`; a tl_keras run is several phases, each with its own
trainable set, optimizer, learning rate and stateful callbacks. A checkpoint therefore holds:

    <workdir>/checkpoints/epoch-00007/
      model.keras          the compiled model: weights, trainable flags, optimizer state
                           (its iteration count is the learning-rate schedule position)
      rng_state.json       dropout RNG states (Keras does not save them in .keras files)
      best_weights.npz     early stopping's best weights so far, when it keeps any
      best_rollback.npz    under `rollback`: the phase's best epoch so far (`BestWeights`)
      state.json           phase, global epoch, the stitched history so far, callback state

Each checkpoint is written into a temporary folder and renamed into place when complete, so the
newest `epoch-*` folder is always whole. Older checkpoints are removed once a newer one exists;
the data order and RNG states make the resumed epochs the ones an uninterrupted run would run.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_keras import io
from tl_keras.errors import WorkdirError
from tl_keras.history import History, KeptEpoch

if TYPE_CHECKING:
    import keras

    from tl_keras.training.callbacks import ResumableEarlyStopping

CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1
_NAME = re.compile(r"^epoch-(\d{5})$")


@dataclasses.dataclass
class Checkpoint:
    """A complete checkpoint on disk."""

    path: str
    phase: str
    epoch: int  # global, 1-based: the last complete epoch
    phase_first_epoch: int
    finished_phase: bool  # the phase ended with this epoch (all epochs run, or stopped early)
    stopped_early: bool
    wall_time_s: float  # of the phase so far
    history: History
    early_stopping: dict | None
    lr: float | None = None  # the optimizer's rate when it is a float (Keras does not save it)
    callback_state: dict = dataclasses.field(default_factory=dict)
    best_meta: dict | None = None  # rollback's best snapshot of the phase so far

    def best_snapshot(self):
        """The rollback tracker's best weights so far in this phase (`phase_control.Snapshot`)."""
        from tl_keras.training.rollback import Snapshot

        if not self.best_meta:
            return None
        weights = io.load_weights(os.path.join(self.path, "best_rollback.npz"))
        m = self.best_meta
        return Snapshot(m["phase"], m["epoch"], m["monitor"], m["value"], weights)

    def load_model(self) -> keras.Model:
        """Loads the compiled model (optimizer state included) and its RNG states.

        Raises:
          WorkdirError: the checkpoint is truncated or tampered with.
        """
        import keras

        # Registers the per-variable learning-rate optimizer a checkpoint may hold.
        import tl_keras.training.lr_multipliers  # noqa: F401
        from tl_keras.model.classifier import set_rng_state

        path = os.path.join(self.path, "model.keras")
        try:
            model = keras.models.load_model(path, compile=True, safe_mode=True)
            set_rng_state(model, io.read_json(os.path.join(self.path, "rng_state.json")))
        except Exception as e:
            raise WorkdirError(
                f"checkpoint {path} cannot be loaded ({str(e).splitlines()[0][:200]}); it is damaged. "
                "Remove that checkpoint folder to resume from the last completed phase, or use --overwrite"
            ) from None
        return model

    def best_weights(self) -> list[np.ndarray] | None:
        path = os.path.join(self.path, "best_weights.npz")
        if not os.path.isfile(path):
            return None
        return io.load_weights(path)


# State of Keras callbacks that change the learning rate, by attribute: what on_train_begin resets.
_CALLBACK_STATE = {"ReduceLROnPlateau": ("wait", "best", "cooldown_counter")}


def callback_state(callback) -> dict | None:
    """The resumable state of a learning-rate callback (None for callbacks without any)."""
    names = _CALLBACK_STATE.get(type(callback).__name__)
    if not names:
        return None
    return {
        n: float(getattr(callback, n)) if n == "best" else int(getattr(callback, n)) for n in names
    }


def restore_callback_state(callback, state: dict | None) -> None:
    """Makes `callback` start its next `fit` with `state` instead of its reset values."""
    if not state:
        return
    reset = callback.on_train_begin

    def on_train_begin(logs=None):
        reset(logs)
        for name, value in state.items():
            setattr(callback, name, value)

    callback.on_train_begin = on_train_begin


def _float_lr(model: keras.Model) -> float | None:
    import keras

    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    rate = getattr(optimizer, "_learning_rate", None)
    if rate is None or isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def write(
    workdir: str,
    model: keras.Model,
    *,
    phase: str,
    epoch: int,
    phase_first_epoch: int,
    finished_phase: bool,
    stopped_early: bool,
    wall_time_s: float,
    history: History,
    early_stopping: ResumableEarlyStopping | None,
    callback_state: dict | None = None,
    best=None,
) -> str:
    """Writes the checkpoint of global epoch `epoch` (1-based) and removes older ones."""
    from tl_keras.model.classifier import get_rng_state

    root = _dir(workdir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"epoch-{epoch:05d}")
    # The whole folder moves into place at the end (the same epoch checkpointed again, by a
    # rerun, replaces the older folder only then).
    with io.atomic_path(final) as tmp:
        os.mkdir(tmp)
        model.save(os.path.join(tmp, "model.keras"))
        io.atomic_write_json(os.path.join(tmp, "rng_state.json"), get_rng_state(model))
        es_state = None
        if early_stopping is not None:
            es_state = early_stopping.resume_state()
            if early_stopping.best_weights is not None:
                io.save_weights(os.path.join(tmp, "best_weights.npz"), early_stopping.best_weights)
        best_meta = None
        if best is not None:
            best_meta = best.to_dict()
            io.save_weights(os.path.join(tmp, "best_rollback.npz"), best.weights)
        state = {
            "format": FORMAT_VERSION,
            "lr": _float_lr(model),
            "callback_state": callback_state or {},
            "best": best_meta,
            "phase": phase,
            "epoch": epoch,
            "phase_first_epoch": phase_first_epoch,
            "finished_phase": finished_phase,
            "stopped_early": stopped_early,
            "wall_time_s": wall_time_s,
            "early_stopping": es_state,
            "history": history.records,
            "history_kept": [dataclasses.asdict(k) for k in history.kept],
        }
        io.atomic_write_json(os.path.join(tmp, "state.json"), state)  # written last
    for old in glob.glob(os.path.join(root, "epoch-*")):
        m = _NAME.match(os.path.basename(old))
        if m and int(m.group(1)) < epoch:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(workdir: str) -> Checkpoint | None:
    """Returns the newest complete checkpoint, or None.

    Raises:
      WorkdirError: the newest checkpoint's state file is unreadable (tampered or truncated).
    """
    found = []
    for path in glob.glob(os.path.join(_dir(workdir), "epoch-*")):
        m = _NAME.match(os.path.basename(path))
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path))
    if not found:
        return None
    _, path = max(found)
    state_path = os.path.join(path, "state.json")
    try:
        state: dict[str, Any] = io.read_json(state_path)
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {state.get('format')!r}")
        history = History()
        for r in state["history"]:
            history.append(r["phase"], r["epoch"], r.get("lr"), r)
        history.kept = [KeptEpoch(**k) for k in state.get("history_kept", [])]
        return Checkpoint(
            path=path,
            phase=state["phase"],
            epoch=int(state["epoch"]),
            phase_first_epoch=int(state["phase_first_epoch"]),
            finished_phase=bool(state["finished_phase"]),
            stopped_early=bool(state["stopped_early"]),
            wall_time_s=float(state["wall_time_s"]),
            history=history,
            early_stopping=state.get("early_stopping"),
            lr=state.get("lr"),
            callback_state=state.get("callback_state") or {},
            best_meta=state.get("best"),
        )
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise WorkdirError(
            f"checkpoint state {state_path} is unreadable ({e}); it is damaged. Remove that "
            "checkpoint folder to resume from the last completed phase, or use --overwrite"
        ) from None


def remove_all(workdir: str) -> None:
    shutil.rmtree(_dir(workdir), ignore_errors=True)
