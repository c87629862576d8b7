"""Phase control: remember a phase's best weights, and roll back a phase that made things worse.

With `rollback = "val_accuracy"` (or `"val_loss"`), the runner keeps a *reference*: the best
weights of the previous phase, by that validation metric. When a phase ends, the weights it hands
on are evaluated on the validation set; if they are worse than the reference, the reference
weights are restored and the next phase starts from them. Otherwise the phase's own best epoch
becomes the next reference. Either way one log line says which weights were kept, and the
decision is written to the phase's `summary.json`.

Why evaluate at the end instead of reading the last epoch's log: early stopping (and `fe`'s
switch to `ft`) restores a phase's best weights after its last epoch was logged, so the weights a
phase hands on are not always the ones its last logged metric describes.

The decision is plain data (`decide_rollback`); `apply_rollback` and `load_rollback_reference`
are the runner's half: evaluating, restoring, and the reference a phase run in its own process
reads from `<previous phase>/best_weights.npz`. The best epoch itself is kept during `fit` by
`tl_keras.training.callbacks.BestWeights`. This module imports no TensorFlow, so
`tl_keras.config` validates `rollback` against `MONITORS` here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from tl_keras import io, schema
from tl_keras.errors import ConfigError
from tl_keras.progress import say
from tl_keras.recipe import Phase
from tl_keras.training import optim
from tl_keras.training.history import History
from tl_keras.training.results import PhaseResult, RollbackDecision, Snapshot, is_worse
from tl_keras.workdir import Workdir

if TYPE_CHECKING:
    import keras

    from tl_keras.data.pipeline import DataBundle

log = logging.getLogger("tl_keras")

# --rollback: '' (off), or the validation metric a phase must not make worse.
MONITORS = ("", "val_accuracy", "val_loss")
# Under `rollback`: the weights the next phase must beat (`model.get_weights()` order), and their
# phase, epoch and score in summary.json's "rollback_reference".
BEST_WEIGHTS_FILE = "best_weights.npz"
# What a phase's summary.json must hold for rollback to trust it.
SUMMARY_SHAPE = schema.Obj(
    {},
    optional={
        "rollback_reference": schema.Maybe(
            schema.Obj(
                {
                    "phase": schema.Name,
                    "epoch": schema.Int,
                    "monitor": schema.Str,
                    "value": schema.Num,
                }
            )
        )
    },
)


def decide_rollback(
    phase: str, end_value: float, reference: Snapshot, phase_best: Snapshot | None
) -> tuple[RollbackDecision, Snapshot]:
    """Decides whether a phase is rolled back, and what the next phase must beat.

    Args:
      phase: the phase that ended.
      end_value: the monitored metric of the weights it hands on.
      reference: the previous phase's best.
      phase_best: this phase's best epoch (None when it ran no epoch).

    Returns:
      The decision, and the next reference: the previous reference when rolled back (those are
      the weights the run carries on with), else this phase's best epoch.
    """
    rolled_back = is_worse(end_value, reference.value, reference.monitor)
    decision = RollbackDecision(phase, reference.monitor, end_value, reference, rolled_back)
    keep = rolled_back or phase_best is None
    return decision, reference if keep else phase_best


def evaluate_metric(model: keras.Model, data: DataBundle, monitor: str) -> float:
    """The validation metric `monitor` ('val_accuracy', 'val_loss') of the model's weights now.

    Raises:
      ConfigError: the data has no validation split.
    """
    if data.val is None:
        raise ConfigError(f"rollback compares {monitor} and needs validation data; none is given")
    if not getattr(model, "compiled", False):
        optim.compile_for_phase(model, Phase("evaluate", "none", 0, 1e-3))
    logs = model.evaluate(data.val, verbose=0, return_dict=True)
    return float(logs[monitor.removeprefix("val_")])


def apply_rollback(
    model: keras.Model,
    result: PhaseResult,
    reference: Snapshot | None,
    data: DataBundle,
) -> Snapshot | None:
    """Rolls a phase back to `reference` if the weights it hands on score worse.

    Evaluates the model on the validation set (the weights the phase hands on, after any restore
    by early stopping), restores the reference weights bitwise when that is worse, logs which
    weights were kept, and records the decision and the next reference in `result`.

    Args:
      model: the model at the end of the phase.
      result: the phase's result, from `run_phase(..., track_best=MONITOR)`.
      reference: the previous phase's best; None for the first phase (nothing to compare).
      data: the data bundle (its validation split).

    Returns:
      What the next phase must beat (also stored as `result.reference`).
    """
    if reference is None:
        result.reference = result.best
        return result.reference
    end_value = evaluate_metric(model, data, reference.monitor)
    decision, result.reference = decide_rollback(
        result.phase.name, end_value, reference, result.best
    )
    if decision.rolled_back:
        model.set_weights(reference.weights)
        log.warning(decision.message())
    else:
        say(decision.message())
    result.rollback = decision
    return result.reference


def load_rollback_reference(
    wd: Workdir, prev: Phase, model: keras.Model, data: DataBundle, monitor: str
) -> Snapshot:
    """The reference a phase run in its own process must beat: what `prev` saved for it.

    A previous phase run without `rollback` saved no best weights; its reference is then the
    weights it handed on (the model just loaded), scored now.

    Raises:
      DamagedFileError: the phase's summary.json, best weights or history are damaged, or the
        weights do not fit the model.
    """
    summary_path, npz = wd.file(prev.name, "summary.json"), wd.file(prev.name, BEST_WEIGHTS_FILE)
    fix = f"rerun phase {prev.name!r} (--phase={prev.name} --overwrite)"
    saved = (
        schema.read_json(summary_path, SUMMARY_SHAPE, fix=fix).get("rollback_reference")
        if os.path.isfile(summary_path)
        else None
    )
    if saved and saved["monitor"] == monitor and os.path.isfile(npz):
        shapes = [tuple(w.shape) for w in model.weights]
        weights = schema.read_weights(npz, like=shapes, fix=fix)
        return Snapshot(saved["phase"], saved["epoch"], monitor, saved["value"], weights)
    last = History.load(wd.file(prev.name, "history.json"), fix=fix).last_epoch
    value = evaluate_metric(model, data, monitor)
    log.info(
        "[rollback] %s saved no best weights by %s; the reference is the weights it handed on "
        "(%s %.4f)",
        prev.name,
        monitor,
        monitor,
        value,
    )
    return Snapshot(prev.name, last, monitor, value, model.get_weights())


def save_rollback(wd: Workdir, result: PhaseResult, summary: dict) -> None:
    if result.rollback is not None:
        summary["rollback"] = result.rollback.to_dict()
    if result.reference is not None:
        summary["rollback_reference"] = result.reference.to_dict()
        io.save_weights(wd.file(result.phase.name, BEST_WEIGHTS_FILE), result.reference.weights)
