"""Epoch-end checkpoints, so a killed run resumes losing at most `checkpoint_every` seconds of
training and the epoch in progress.

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
import os
import re
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_keras import io, schema
from tl_keras.training.history import RECORD_SHAPE, History, KeptEpoch
from tl_keras.training.results import Snapshot

if TYPE_CHECKING:
    import keras

CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1
_NAME = re.compile(r"^epoch-(\d{5})$")
_SNAPSHOT = schema.Obj(
    {"phase": schema.Name, "epoch": schema.Int, "monitor": schema.Str, "value": schema.Num}
)
# What a checkpoint's state.json must hold before --resume trusts it.
STATE_SHAPE = schema.Obj(
    {
        "format": schema.Int,
        "phase": schema.Name,
        "epoch": schema.Int,
        "phase_first_epoch": schema.Int,
        "finished_phase": schema.Bool,
        "stopped_early": schema.Bool,
        "wall_time_s": schema.Num,
        "history": schema.ListOf(RECORD_SHAPE),
    },
    optional={
        "lr": schema.Maybe(schema.Num),
        "callback_state": schema.DictOf(schema.Maybe(schema.DictOf(schema.Num))),
        "best": schema.Maybe(_SNAPSHOT),
        "early_stopping": schema.Maybe(
            schema.Obj(
                {
                    "wait": schema.Int,
                    "best": schema.Maybe(schema.Num),
                    "best_epoch": schema.Int,
                    "stopped_epoch": schema.Int,
                }
            )
        ),
    },
)


def damage_fix(path: str) -> str:
    """The way out of a damaged checkpoint, for messages."""
    return (
        f"remove that checkpoint folder ({path}) to resume from the last completed phase, or "
        "use --overwrite"
    )


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

    def best_snapshot(self, like: list[tuple[int, ...]] | None = None) -> Snapshot | None:
        """The rollback tracker's best weights so far in this phase.

        Raises:
          DamagedFileError: its weights file is unreadable or does not fit `like`'s shapes.
        """
        if not self.best_meta:
            return None
        path = os.path.join(self.path, "best_rollback.npz")
        weights = schema.read_weights(path, like=like, fix=damage_fix(self.path))
        m = self.best_meta
        return Snapshot(m["phase"], m["epoch"], m["monitor"], m["value"], weights)

    def load_model(self) -> keras.Model:
        """Loads the compiled model (optimizer state included) and its RNG states.

        Raises:
          WorkdirError: the checkpoint is truncated or tampered with (a model file that would
            run code: `UnsafeModelError`).
        """
        # Registers the per-variable learning-rate optimizer a checkpoint may hold.
        import tl_keras.training.lr_multipliers  # noqa: F401
        from tl_keras.model.classifier import RNG_SHAPE, load_model, set_rng_state

        fix = damage_fix(self.path)
        model = load_model(os.path.join(self.path, "model.keras"), compile=True, fix=fix)
        rng_path = os.path.join(self.path, "rng_state.json")
        try:
            set_rng_state(model, schema.read_json(rng_path, RNG_SHAPE, fix=fix))
        except ValueError as e:  # states of layers the model does not have
            raise schema.damaged(rng_path, str(e), fix) from None
        return model

    def best_weights(self, like: list[tuple[int, ...]] | None = None) -> list[np.ndarray] | None:
        """Early stopping's best weights so far, or None (checked against `like`'s shapes).

        Raises:
          DamagedFileError: the file is unreadable or does not fit.
        """
        path = os.path.join(self.path, "best_weights.npz")
        if not os.path.isfile(path):
            return None
        return schema.read_weights(path, like=like, fix=damage_fix(self.path))


def _float_lr(model: keras.Model) -> float | None:
    import keras

    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    rate = getattr(optimizer, "_learning_rate", None)
    if rate is None or isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def estimate_bytes(model: keras.Model) -> int:
    """About what a checkpoint of `model` takes on disk: its weights and optimizer state."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """What a checkpoint records besides the model: state.json and the weight files beside it.

    Plain data, so this file format needs none of the phase's logic: the phase's callbacks
    (`tl_keras.training.callbacks.EpochCheckpoint`) fill it in at an epoch's end.

    Attributes:
      phase: the phase's name.
      epoch: the global epoch (1-based) just completed.
      phase_first_epoch: the phase's first global epoch.
      finished_phase: the phase ended with this epoch (all epochs run, or stopped early).
      stopped_early: early stopping ended it.
      wall_time_s: seconds of the phase so far.
      history: the stitched history so far (earlier phases and this one).
      early_stopping: early stopping's resumable counters
        (`ResumableEarlyStopping.resume_state()`), when it is on.
      early_best_weights: early stopping's best weights so far, when it keeps any.
      callback_state: the learning-rate callbacks' state, by class name.
      best: under `rollback`, the phase's best epoch so far.
    """

    phase: str
    epoch: int
    phase_first_epoch: int
    finished_phase: bool
    stopped_early: bool
    wall_time_s: float
    history: History
    early_stopping: dict | None = None
    early_best_weights: list[np.ndarray] | None = None
    callback_state: dict = dataclasses.field(default_factory=dict)
    best: Snapshot | None = None


def write(workdir: str, model: keras.Model, state: CheckpointState) -> str:
    """Writes the checkpoint of global epoch `state.epoch` (1-based) and removes older ones."""
    from tl_keras.model.classifier import get_rng_state

    root = _dir(workdir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"epoch-{state.epoch:05d}")
    # The whole folder moves into place at the end (the same epoch checkpointed again, by a
    # rerun, replaces the older folder only then).
    with io.atomic_path(final) as tmp:
        os.mkdir(tmp)
        model.save(os.path.join(tmp, "model.keras"))
        io.atomic_write_json(os.path.join(tmp, "rng_state.json"), get_rng_state(model))
        if state.early_best_weights is not None:
            io.save_weights(os.path.join(tmp, "best_weights.npz"), state.early_best_weights)
        if state.best is not None:
            io.save_weights(os.path.join(tmp, "best_rollback.npz"), state.best.weights)
        record = {
            "format": FORMAT_VERSION,
            "lr": _float_lr(model),
            "callback_state": state.callback_state or {},
            "best": state.best.to_dict() if state.best is not None else None,
            "phase": state.phase,
            "epoch": state.epoch,
            "phase_first_epoch": state.phase_first_epoch,
            "finished_phase": state.finished_phase,
            "stopped_early": state.stopped_early,
            "wall_time_s": state.wall_time_s,
            "early_stopping": state.early_stopping,
            "history": state.history.records,
            "history_kept": [dataclasses.asdict(k) for k in state.history.kept],
        }
        io.atomic_write_json(os.path.join(tmp, "state.json"), record)  # written last
    for old in glob.glob(os.path.join(root, "epoch-*")):
        m = _NAME.match(os.path.basename(old))
        if m and int(m.group(1)) < state.epoch:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(workdir: str) -> Checkpoint | None:
    """Returns the newest complete checkpoint, or None.

    Raises:
      DamagedFileError: the newest checkpoint's state file is unreadable, truncated or not of
        its shape (`STATE_SHAPE`).
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
    fix = damage_fix(path)
    state: dict[str, Any] = schema.read_json(state_path, STATE_SHAPE, fix=fix)
    if state["format"] != FORMAT_VERSION:
        raise schema.damaged(state_path, f"format {state['format']}, not {FORMAT_VERSION}", fix)
    history = History.from_records(state["history"], source=state_path, fix=fix)
    if state["epoch"] != history.last_epoch or not (
        1 <= state["phase_first_epoch"] <= state["epoch"]
    ):
        raise schema.damaged(state_path, f"epoch {state['epoch']} does not match its history", fix)
    try:
        history.kept = [KeptEpoch(**k) for k in state.get("history_kept", [])]
    except TypeError as e:
        raise schema.damaged(state_path, f"history_kept: {e}", fix) from None
    return Checkpoint(
        path=path,
        phase=state["phase"],
        epoch=state["epoch"],
        phase_first_epoch=state["phase_first_epoch"],
        finished_phase=state["finished_phase"],
        stopped_early=state["stopped_early"],
        wall_time_s=float(state["wall_time_s"]),
        history=history,
        early_stopping=state.get("early_stopping"),
        lr=state.get("lr"),
        callback_state=state.get("callback_state") or {},
        best_meta=state.get("best"),
    )


def remove_all(workdir: str) -> None:
    shutil.rmtree(_dir(workdir), ignore_errors=True)
