"""Runs a schedule of phases. The CLI, the notebooks and the tests all call these functions.

`train(config, workdir)` runs the whole schedule (or one phase of it) and keeps the workdir;
`run_phase(model, phase, data, ...)` runs one phase on a model in memory, for users who want the
pieces. Each phase: set what trains (BatchNorm stays frozen), report trainable and frozen
parameters, recompile with a fresh optimizer at the phase's learning rate (its own schedule, and
per-block rates under `layer_decay`), and `fit` from the epoch where the previous phase really
ended, with fresh stateful callbacks. A schedule may have any number of phases (gradual
unfreezing); under `rollback`, a phase that ends worse than the previous phase's best is undone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np

from tl_keras import _failpoints, io, recipe
from tl_keras import config as config_lib
from tl_keras.data.pipeline import DataBundle
from tl_keras.data.sources import load_data
from tl_keras.errors import ConfigError, TrainingError, WorkdirError
from tl_keras.history import History
from tl_keras.model import backbones
from tl_keras.model.classifier import (
    TrainabilityReport,
    build_model,
    calibrate_batchnorm,
    get_rng_state,
    set_rng_state,
    set_trainable,
)
from tl_keras.plotting import plot_history
from tl_keras.recipe import Phase

# Registers the per-variable learning-rate optimizer, so `.keras` files saved with it load.
from tl_keras.training import checkpoint, distribute, features, lr_multipliers, schedules
from tl_keras.training import rollback as phase_control
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")

RNG_FILE = "rng_state.json"  # dropout RNG states, which Keras does not save in .keras files
# Under `rollback`: the weights the next phase must beat (`model.get_weights()` order), and their
# phase, epoch and score in summary.json's "rollback_reference".
BEST_WEIGHTS_FILE = "best_weights.npz"
BN_CALIBRATION_BATCHES = 8  # batches used to re-estimate BatchNorm statistics of a random base


@dataclasses.dataclass
class PhaseResult:
    """What one phase did."""

    phase: Phase
    history: History
    report: TrainabilityReport
    wall_time_s: float
    stopped_early: bool
    best: phase_control.Snapshot | None = None  # the best epoch, when tracked (rollback)
    rollback: phase_control.RollbackDecision | None = None
    # Under rollback: what the next phase must beat (the best weights kept so far).
    reference: phase_control.Snapshot | None = None


@dataclasses.dataclass
class RunResult:
    """What `train` did: the final model, the stitched history, and each phase's result."""

    model: keras.Model
    history: History
    phases: list[PhaseResult]
    class_names: list[str]
    workdir: str | None = None


# --- building blocks ------------------------------------------------------------------------------
def make_optimizer(name: str, learning_rate) -> keras.optimizers.Optimizer:
    """Returns a fresh optimizer by name (see `config.OPTIMIZERS`)."""
    factories = {
        "adam": lambda: keras.optimizers.Adam(learning_rate),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate),
        "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate),
    }
    if name not in factories:
        raise ConfigError(f"optimizer={name!r} is unknown; use one of {', '.join(factories)}")
    return factories[name]()


def discriminative_multipliers(
    model: keras.Model, backbone: str, layer_decay: float
) -> dict[str, float]:
    """Per-variable learning-rate multipliers: `layer_decay` per block, from the head down.

    The head's variables keep 1.0, the base's top block `layer_decay`, the block below
    `layer_decay**2`, ... (see `recipe.block_lr_multipliers`). Only trainable variables get an
    entry, keyed by `variable.path`.
    """
    from tl_keras.model.classifier import get_base

    infos = backbones.layer_infos(backbones.get(backbone), get_base(model))
    return lr_multipliers.variable_multipliers(
        model, recipe.block_lr_multipliers(infos, layer_decay)
    )


def phase_optimizer(
    model: keras.Model,
    phase: Phase,
    *,
    backbone: str,
    steps_per_epoch: int,
    monitor: str = "val_loss",
) -> tuple[keras.optimizers.Optimizer, list[keras.callbacks.Callback]]:
    """Returns a fresh optimizer for a phase, and the callbacks its LR schedule needs.

    The learning rate follows the phase's `lr_schedule` from the phase's first step (a fresh
    optimizer per phase, so every phase restarts its schedule, warm-up included). With
    `layer_decay` < 1 and part of the base training, every variable gets its own rate (see
    `discriminative_multipliers`). Call after `set_trainable`: the multipliers cover the
    variables that train.

    Args:
      model: the model, trainability already set for the phase.
      phase: the phase.
      backbone: the backbone's registry name (its blocks).
      steps_per_epoch: optimizer steps per epoch (the schedule counts steps).
      monitor: what the 'plateau' schedule watches ('val_loss', or 'loss' without validation).
    """
    s = phase.lr_schedule
    learning_rate, callbacks = phase.lr, []
    if phase.epochs > 0:
        learning_rate, callbacks = schedules.make_schedule(
            s.name,
            base_lr=phase.lr,
            steps_per_epoch=steps_per_epoch,
            epochs=phase.epochs,
            warmup_epochs=s.warmup_epochs,
            min_lr_ratio=s.min_lr_ratio,
            step_every=s.step_every,
            gamma=s.gamma,
            plateau_patience=s.plateau_patience,
            plateau_factor=s.plateau_factor,
            plateau_monitor=monitor,
        )
    optimizer = make_optimizer(phase.optimizer, learning_rate)
    if phase.layer_decay != 1.0 and phase.trains_base:
        multipliers = discriminative_multipliers(model, backbone, phase.layer_decay)
        optimizer = lr_multipliers.with_lr_multipliers(optimizer, multipliers)
    return optimizer, callbacks


JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


def compile_for_phase(
    model: keras.Model,
    phase: Phase,
    *,
    optimizer: keras.optimizers.Optimizer | None = None,
    jit_compile: str = "auto",
    steps_per_execution: int = 1,
) -> None:
    """Recompiles with a fresh optimizer: required after any change of `trainable`.

    Args:
      model: the model.
      phase: the phase (its optimizer and constant lr when `optimizer` is not given).
      optimizer: a fresh optimizer, e.g. from `phase_optimizer`.
      jit_compile: XLA: 'auto' (Keras decides), 'on' or 'off'.
      steps_per_execution: batches per call of the compiled train step (the same updates; batch
        callbacks run once per block).
    """
    model.compile(
        optimizer=optimizer or make_optimizer(phase.optimizer, phase.lr),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=JIT_COMPILE[jit_compile],
        steps_per_execution=steps_per_execution,
    )


def current_lr(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule is evaluated at the current step)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class HistoryRecorder(schedules.LRRecorder):
    """Records each epoch into a `History` with the phase name and the learning rate used.

    The learning rate of an epoch is the one its first step used (`schedules.LRRecorder`): the
    warm-up's 0 on a schedule's first epoch, the rate before `ReduceLROnPlateau` changes it at
    the epoch's end. With `layer_decay` it is the head's rate; block b trains at that times its
    multiplier.
    """

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self.history = History()

    @property
    def epoch_lr(self) -> float:
        """The learning rate of the epoch in progress (or just ended)."""
        return self.lrs[-1] if self.lrs else current_lr(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(self.phase, epoch + 1, self.epoch_lr, logs or {})


class EpochLogger(keras.callbacks.Callback):
    """One plain line per epoch, for logs and non-interactive runs (no progress-bar noise)."""

    def __init__(
        self, phase: str, initial_epoch: int, epochs: int, recorder: HistoryRecorder | None = None
    ):
        super().__init__()
        self.phase, self.initial_epoch, self.epochs = phase, initial_epoch, epochs
        self.recorder = recorder

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        metrics = " - ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        log.info(
            "[%s] epoch %d (%d/%d) - %.1fs - %s - lr %.2e",
            self.phase,
            epoch + 1,
            epoch + 1 - self.initial_epoch,
            self.epochs,
            time.perf_counter() - self._start,
            metrics,
            self.recorder.epoch_lr if self.recorder else current_lr(self.model),
        )


def _use_progress_bar(progress: str) -> bool:
    return progress == "bar" or (progress == "auto" and sys.stdout.isatty())


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, or at the end of the
    first epoch whose trained weights are, and remembers where.

    Under `steps_per_execution` > 1 Keras calls the batch hooks once per block of batches, so the
    bad batch is known to the block ('3-5'); the loss is the epoch's running mean, which stays
    non-finite from the first bad batch on. The weights are checked too because the loss alone
    can miss a divergence: on CPUs where TensorFlow fuses a Dense layer with its ReLU (oneDNN),
    the fused ReLU turns a NaN input into 0, so NaN images give a finite loss while their NaN
    gradients overwrite the weights.
    """

    def __init__(self):
        super().__init__()
        # (global epoch 1-based, batch(es) or None, what went wrong)
        self.bad: tuple[int, str | None, str] | None = None
        self._epoch, self._begin = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._begin = epoch + 1, 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        for b in range(self._begin, batch + 1):  # every batch this block trained
            _failpoints.hit(f"batch:{self._epoch}:{b}")
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.bad is None:
            where = str(batch) if batch == self._begin else f"{self._begin}-{batch}"
            self.bad = (self._epoch, where, f"the loss became {float(loss)}")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad is not None:
            return
        weights = self.model.trainable_weights
        finite = [keras.ops.all(keras.ops.isfinite(w)) for w in weights]
        if weights and not bool(keras.ops.all(keras.ops.stack(finite))):  # one sync per epoch
            broken = [w.path for w, ok in zip(weights, finite, strict=True) if not bool(ok)]
            self.bad = (
                self._epoch,
                None,
                f"the weights became NaN or infinite ({', '.join(broken[:3])}"
                f"{', ...' if len(broken) > 3 else ''}) although the loss stayed finite",
            )
            self.model.stop_training = True


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a resumable checkpoint at the end of every epoch (see `tl_keras.checkpoint`).

    It runs after every callback that changes state at an epoch's end (early stopping, the
    learning-rate schedule's), so a resumed epoch starts exactly where this one left off.
    """

    def __init__(
        self,
        workdir,
        phase,
        first_epoch,
        last_epoch,
        history_before,
        recorder,
        guard,
        early,
        wall_before,
        schedule_callbacks=(),
        best=None,
        save_model=None,
    ):
        super().__init__()
        self.workdir, self.phase = workdir, phase
        self.first_epoch, self.last_epoch = first_epoch, last_epoch
        self.history_before, self.recorder, self.guard = history_before, recorder, guard
        self.early, self.wall_before = early, wall_before
        self.schedule_callbacks, self.best = list(schedule_callbacks), best
        self.save_model = save_model  # the full model when fit trains its head on cached features

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.bad is not None:
            return  # never checkpoint a diverged model: the previous checkpoint stays the last good one
        e = epoch + 1
        _failpoints.hit(f"before_checkpoint:{e}")
        stopped = bool(self.early is not None and self.early.stopped_epoch > 0)
        checkpoint.write(
            self.workdir,
            self.save_model or self.model,
            phase=self.phase.name,
            epoch=e,
            phase_first_epoch=self.first_epoch,
            finished_phase=stopped or e == self.last_epoch,
            stopped_early=stopped,
            wall_time_s=self.wall_before + time.perf_counter() - self._start,
            history=History(self.history_before.records + self.recorder.history.records),
            early_stopping=self.early,
            callback_state={
                type(cb).__name__: checkpoint.callback_state(cb) for cb in self.schedule_callbacks
            },
            best=self.best.best if self.best is not None else None,
        )
        _failpoints.hit(f"after_checkpoint:{e}")


def run_phase(
    model: keras.Model,
    phase: Phase,
    data: DataBundle,
    *,
    backbone: str,
    initial_epoch: int = 0,
    bn_policy: str = "frozen",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    progress: str = "auto",
    track_best: str | None = None,
    checkpoint_dir: str | None = None,
    history_before: History | None = None,
    resume: checkpoint.Checkpoint | None = None,
    feature_cache: str = "off",
    cache_dir: str | None = None,
    jit_compile: str = "auto",
    strategy=None,
) -> PhaseResult:
    """Runs one phase: set trainability, recompile, fit from `initial_epoch`.

    Args:
      model: a model from `build_model` (or loaded from a phase's `model.keras`).
      phase: what trains, for how many epochs, at which learning rate.
      data: the data bundle; its training order depends only on (seed, epoch).
      backbone: the backbone's registry name (block structure).
      initial_epoch: global epochs already run (the previous phase's real end).
      bn_policy: 'frozen' (default) or 'train'.
      callbacks: extra Keras callbacks for this phase. Pass new instances per phase: stateful
        callbacks carried across phases are how early stopping leaks between phases.
      progress: 'auto', 'bar' or 'lines'.
      track_best: a validation metric ('val_accuracy'): keep a copy of the weights of the
        phase's best epoch by it in the result's `best` (for rollback).
      checkpoint_dir: write a resumable checkpoint there after every epoch (the workdir).
      history_before: the stitched history of earlier phases (stored in checkpoints).
      resume: continue this phase from a checkpoint: `model` is the checkpoint's compiled model,
        which keeps its optimizer state, so it is not recompiled.
      feature_cache: 'memory', 'file' or 'off': train a frozen-base phase's head on features
        computed once (see `tl_keras.features`); used only when valid, with a log line otherwise.
      cache_dir: the workdir, where feature_cache='file' keeps its files.
      jit_compile: XLA: 'auto', 'on' or 'off'.
      strategy: the `tf.distribute` strategy the model was built under (for multi-worker fits).

    Returns:
      The phase's history (global epochs, the learning rate each epoch used), trainability
      report, wall time, whether early stopping ended it, and its best epoch when tracked.

    Raises:
      TrainingError: the loss or the weights became NaN or infinite (the last good
        checkpoint is kept).

    Example:
      >>> result = run_phase(model, Phase("fe", "none", 3, 1e-3), data, backbone="mobilenet")
    """
    history_before = history_before or History()
    report = set_trainable(model, backbone, phase.unfreeze, bn_policy=bn_policy)
    monitor = "val_loss" if data.val is not None else "loss"
    optimizer, schedule_callbacks = phase_optimizer(
        model, phase, backbone=backbone, steps_per_epoch=data.steps_per_epoch, monitor=monitor
    )
    if resume is None:
        first_epoch, wall_before, done_records = initial_epoch + 1, 0.0, []
        log.info("[%s] %s", phase.name, report.summary())
        _log_rates(phase, optimizer)
        compile_for_phase(model, phase, optimizer=optimizer, jit_compile=jit_compile)
    else:
        # The checkpoint's compiled model keeps its optimizer: moments, step count (the schedule
        # position) and per-variable rates. Recompiling would reset them, so the fresh optimizer
        # is dropped; only its schedule's callbacks are used, with their saved state.
        first_epoch, wall_before = resume.phase_first_epoch, resume.wall_time_s
        initial_epoch = resume.epoch
        done_records = [r for r in resume.history.records if r["phase"] == phase.name]
        if resume.lr is not None:  # a float rate (e.g. lowered on a plateau) is not in .keras
            model.optimizer.learning_rate = resume.lr
        for cb in schedule_callbacks:
            checkpoint.restore_callback_state(cb, resume.callback_state.get(type(cb).__name__))
        log.info(
            "[%s] resuming after epoch %d (%d of %d done) from %s; %s",
            phase.name,
            resume.epoch,
            len(done_records),
            phase.epochs,
            resume.path,
            report.summary(),
        )
    fit_model, fit_data = model, data
    if feature_cache != "off":
        reason = features.why_not_cached(phase, data.pipeline)
        if reason is None:
            arrays, seconds, reused = features.compute(
                model, data, mode=feature_cache, workdir=cache_dir
            )
            fit_model, fit_data = features.head_model(model), features.feature_bundle(data, arrays)
            # The model's own optimizer instance: checkpoints of the model carry its state. A
            # head step takes microseconds, so Keras's per-step overhead would dominate: a whole
            # epoch runs in one call (the same updates; batch callbacks see one block). Not under
            # a tf.distribute strategy: Keras 3.15's multi-step loop fails there at run time
            # ("You must feed a value for placeholder tensor 'while/cond/Placeholder'").
            compile_for_phase(
                fit_model,
                phase,
                optimizer=model.optimizer,
                jit_compile=jit_compile,
                steps_per_execution=(
                    1 if strategy is not None else max(1, fit_data.steps_per_epoch or 1)
                ),
            )
            log.info(
                "[%s] cached features: %s %d train + %d validation images (%d values each)%s; the "
                "head trains on them",
                phase.name,
                "reused the features of" if reused else "ran the frozen base once over",
                len(arrays["train"]),
                len(arrays["val"]),
                arrays["train"].shape[-1],
                "" if reused else f" in {seconds:.1f}s",
            )
        elif not phase.trains_base:
            log.info("[%s] feature extraction runs the base every epoch: %s", phase.name, reason)
    if strategy is not None:
        distribute.enable_multi_worker_fit(fit_model, strategy)
    last_epoch = first_epoch - 1 + phase.epochs
    recorder = HistoryRecorder(phase.name)
    recorder.history.records.extend(dict(r) for r in done_records)
    guard = NonFiniteGuard()
    cbs: list[keras.callbacks.Callback] = [recorder, guard]
    best = (
        phase_control.BestWeights(phase.name, track_best, source_model=model)
        if track_best
        else None
    )
    if best is not None:  # before early stopping, which may restore other weights at the end
        if resume is not None:
            best.best = resume.best_snapshot()
        cbs.append(best)
    early = None
    if phase.early_stopping_patience:
        es_state = resume.early_stopping if resume else None
        early = checkpoint.ResumableEarlyStopping(
            monitor="val_loss" if data.val is not None else "loss",
            patience=phase.early_stopping_patience,
            restore_best_weights=True,
            resume_state=es_state,
            best_weights=resume.best_weights() if resume else None,
        )
        cbs.append(early)
    cbs += schedule_callbacks  # they change the rate at epoch ends: before the checkpoint
    if checkpoint_dir:
        cbs.append(
            EpochCheckpoint(
                checkpoint_dir,
                phase,
                first_epoch,
                last_epoch,
                history_before,
                recorder,
                guard,
                early,
                wall_before,
                schedule_callbacks,
                best,
                save_model=model,
            )
        )
    bar = _use_progress_bar(progress)
    if not bar:
        cbs.append(EpochLogger(phase.name, first_epoch - 1, phase.epochs, recorder))
    if fit_model is not model:  # cached features: callbacks still see the whole model
        callbacks = [features.FullModelView(cb, model) for cb in callbacks]
    cbs += list(callbacks)
    start = time.perf_counter()
    remaining = last_epoch - initial_epoch
    if resume is not None and resume.finished_phase:
        remaining = 0
        if early is not None and early.best_weights is not None:
            fit_model.set_weights(early.best_weights)  # as EarlyStopping.on_train_end would
    if remaining > 0:
        fit_model.fit(
            fit_data.train_epochs(initial_epoch, remaining),
            validation_data=fit_data.val,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            steps_per_epoch=fit_data.steps_per_epoch,
            shuffle=False,  # the order is the data bundle's: a pure function of (seed, epoch)
            callbacks=cbs,
            verbose=1 if bar else 0,
        )
    if guard.bad is not None:
        epoch, batch, problem = guard.bad
        kept = (
            f"checkpoint of epoch {epoch - 1}"
            if checkpoint_dir and epoch > first_epoch
            else "the start of the phase"
        )
        raise TrainingError(
            f"{problem} in phase {phase.name!r}, epoch {epoch}"
            f"{'' if batch is None else f', batch {batch}'}: training stopped and the last good "
            f"state was kept ({kept}). Check the inputs for NaN or infinite values, lower the "
            f"learning rate (phase lr {phase.lr:g}), and rerun the phase with "
            f"--phase={phase.name} --overwrite"
        )
    wall = wall_before + time.perf_counter() - start
    stopped = bool(early is not None and early.stopped_epoch > 0) or bool(
        resume and resume.stopped_early
    )
    if stopped and not phase.trains_base:
        log.info(
            "[%s] %s stopped improving for %d epochs: switching to the next phase after %d of "
            "%d epochs, with the phase's best weights (epoch %d)",
            phase.name,
            early.monitor,
            phase.early_stopping_patience,
            len(recorder.history),
            phase.epochs,
            early.best_epoch + 1,  # Keras counts global epochs from 0 when fit has initial_epoch
        )
    elif stopped:
        log.info(
            "[%s] early stopping after %d of %d epochs; restored the phase's best weights (epoch %d)",
            phase.name,
            len(recorder.history),
            phase.epochs,
            early.best_epoch + 1 if early else -1,
        )
    return PhaseResult(
        phase, recorder.history, report, wall, stopped, best=best.best if best else None
    )


def _log_rates(phase: Phase, optimizer: keras.optimizers.Optimizer) -> None:
    s = phase.lr_schedule
    if s.name != "constant" or s.warmup_epochs:
        log.info(
            "[%s] lr %.2e, schedule %s%s",
            phase.name,
            phase.lr,
            s.name,
            f" after {s.warmup_epochs:g} warm-up epochs" if s.warmup_epochs else "",
        )
    if isinstance(optimizer, lr_multipliers.LRMultiplierOptimizer):
        rates = sorted(set(optimizer.lr_multipliers.values()))
        log.info(
            "[%s] discriminative learning rates (layer_decay %g): %d variables at lr x %s",
            phase.name,
            phase.layer_decay,
            len(optimizer.lr_multipliers),
            " .. ".join(f"{r:.3g}" for r in (rates[0], rates[-1])) if rates else "-",
        )


# --- phase control: rollback --------------------------------------------------------------------
def evaluate_metric(model: keras.Model, data: DataBundle, monitor: str) -> float:
    """The validation metric `monitor` ('val_accuracy', 'val_loss') of the model's weights now.

    Raises:
      ConfigError: the data has no validation split.
    """
    if data.val is None:
        raise ConfigError(f"rollback compares {monitor} and needs validation data; none is given")
    if not getattr(model, "compiled", False):
        compile_for_phase(model, Phase("evaluate", "none", 0, 1e-3))
    logs = model.evaluate(data.val, verbose=0, return_dict=True)
    return float(logs[monitor.removeprefix("val_")])


def apply_rollback(
    model: keras.Model,
    result: PhaseResult,
    reference: phase_control.Snapshot | None,
    data: DataBundle,
) -> phase_control.Snapshot | None:
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
    decision, result.reference = phase_control.decide_rollback(
        result.phase.name, end_value, reference, result.best
    )
    if decision.rolled_back:
        model.set_weights(reference.weights)
        log.warning(decision.message())
    else:
        log.info(decision.message())
    result.rollback = decision
    return result.reference


def load_rollback_reference(
    wd: Workdir, prev: Phase, model: keras.Model, data: DataBundle, monitor: str
) -> phase_control.Snapshot:
    """The reference a phase run in its own process must beat: what `prev` saved for it.

    A previous phase run without `rollback` saved no best weights; its reference is then the
    weights it handed on (the model just loaded), scored now.

    Raises:
      WorkdirError: the saved best weights do not fit the model.
    """
    summary_path, npz = wd.file(prev.name, "summary.json"), wd.file(prev.name, BEST_WEIGHTS_FILE)
    saved = (
        io.read_json(summary_path).get("rollback_reference")
        if os.path.isfile(summary_path)
        else None
    )
    if saved and saved["monitor"] == monitor and os.path.isfile(npz):
        with np.load(npz) as f:
            weights = [f[f"arr_{i}"] for i in range(len(f.files))]
        shapes = [tuple(w.shape) for w in model.get_weights()]
        if [tuple(w.shape) for w in weights] != shapes:
            raise WorkdirError(f"{npz} does not fit the model of {prev.name!r}; rerun that phase")
        return phase_control.Snapshot(
            saved["phase"], saved["epoch"], monitor, saved["value"], weights
        )
    last = History.load(wd.file(prev.name, "history.json")).last_epoch
    value = evaluate_metric(model, data, monitor)
    log.info(
        "[rollback] %s saved no best weights by %s; the reference is the weights it handed on "
        "(%s %.4f)",
        prev.name,
        monitor,
        monitor,
        value,
    )
    return phase_control.Snapshot(prev.name, last, monitor, value, model.get_weights())


def _save_rollback(wd: Workdir, result: PhaseResult, summary: dict) -> None:
    if result.rollback is not None:
        summary["rollback"] = result.rollback.to_dict()
    if result.reference is not None:
        summary["rollback_reference"] = result.reference.to_dict()
        with io.atomic_path(wd.file(result.phase.name, BEST_WEIGHTS_FILE)) as tmp:
            np.savez(tmp, *result.reference.weights)


# --- the whole run --------------------------------------------------------------------------------
def build_initial_model(config: config_lib.Config, data: DataBundle) -> keras.Model:
    """Builds the model the first phase starts from (base frozen, ready for `fe`).

    With `weights = "none"` the random base's BatchNorm statistics are re-estimated from a few
    training batches (see `calibrate_batchnorm`); pretrained bases are never touched.
    """
    model = build_model(
        config.backbone,
        data.num_classes,
        image_size=config.image_size or None,
        weights=backbones.normalize_weights(config.weights),
        alpha=config.alpha,
        head_units=config.head_units,
        dropout=config.dropout,
        seed=config.seed,
    )
    if backbones.normalize_weights(config.weights) is None:
        n = calibrate_batchnorm(model, data.train_epochs(0, 1).take(BN_CALIBRATION_BATCHES))
        log.warning(
            "weights=none: the base starts random, so training only the head learns what random "
            "features carry (use pretrained weights for transfer learning). Its BatchNorm "
            "statistics were re-estimated from %d training batches so its features do not "
            "vanish; no other weight changed",
            n,
        )
    return model


def _identity(config: config_lib.Config) -> dict:
    spec = backbones.get(config.backbone)
    return {
        "backbone": spec.name,
        "alpha": config.alpha,
        "image_size": config.image_size or spec.default_size,
        "head_units": config.head_units,
        "dropout": config.dropout,
        "weights": backbones.normalize_weights(config.weights),
        "precision": config.precision,
    }


def check_same_run(
    run: dict, config: config_lib.Config, class_names: Sequence[str], workdir: str
) -> None:
    """Refuses to continue a workdir with a config or data that describe a different model.

    Raises:
      WorkdirError: naming each field that differs, its saved and its given value.
    """
    given = _identity(config)
    diffs = [f"{k}: saved {run[k]!r}, given {v!r}" for k, v in given.items() if run.get(k) != v]
    if list(run["class_names"]) != list(class_names):
        saved, now = run["class_names"], list(class_names)
        diffs.append(
            f"classes: saved {len(saved)} {saved[:6]}{'...' if len(saved) > 6 else ''}, "
            f"data has {len(now)} {now[:6]}{'...' if len(now) > 6 else ''}"
        )
    if diffs:
        raise WorkdirError(
            f"workdir {workdir!r} holds a different run ({'; '.join(diffs)}). Continue it with the "
            "settings it was made with (omit these flags), or start a new --workdir"
        )


def _load_phase_model(wd: Workdir, phase: str) -> keras.Model:
    path = wd.model_path(phase)
    if not os.path.isfile(path):
        raise WorkdirError(
            f"{path} is missing: the workdir is damaged; rerun phase {phase!r} or use --overwrite"
        )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
        rng_path = wd.file(phase, RNG_FILE)
        if os.path.isfile(rng_path):
            set_rng_state(model, io.read_json(rng_path))
    except Exception as e:
        raise WorkdirError(
            f"cannot load {path} ({str(e).splitlines()[0][:200]}); rerun phase {phase!r}"
        ) from None
    return model


def _save_phase(
    wd: Workdir,
    run: dict,
    config: config_lib.Config,
    result: PhaseResult,
    history: History,
    model: keras.Model,
    data: DataBundle,
) -> None:
    """Writes a phase's artifacts, then run.json (the commit point), each file atomically."""
    name = result.phase.name
    os.makedirs(wd.phase_dir(name), exist_ok=True)
    with io.atomic_path(wd.model_path(name)) as tmp:
        model.save(tmp)
    io.atomic_write_json(wd.file(name, RNG_FILE), get_rng_state(model))
    result.history.save(wd.file(name, "history.json"))
    io.atomic_write_text(wd.file(name, "config.json"), config_lib.to_json(config))
    summary = {
        "phase": result.phase.to_dict(),
        "epochs_run": len(result.history),
        "first_epoch": result.history.records[0]["epoch"] if len(result.history) else None,
        "last_epoch": history.last_epoch,
        "stopped_early": result.stopped_early,
        "wall_time_s": round(result.wall_time_s, 3),
        "trainability": dataclasses.asdict(result.report),
        # What the phase trained on: counts, skipped unreadable files, pipeline settings.
        "data": data.report.to_dict() if data.report is not None else None,
    }
    _save_rollback(wd, result, summary)
    io.atomic_write_json(wd.file(name, "summary.json"), summary)
    history.save(wd.file("history.json"), wd.file("history.csv"))
    if len(history):
        plot_history(
            history,
            wd.file("curves.png"),
            title=f"{run['backbone']}: {' -> '.join(s.phase for s in history.spans())}",
            show_lr=True,
        )
    run["phases"][name] = {
        k: summary[k]
        for k in ("first_epoch", "last_epoch", "epochs_run", "stopped_early", "wall_time_s")
    }
    wd.write_run(run)


# Fields that may differ when a run is resumed: they change what is logged, not what is trained.
RESUME_MAY_CHANGE = ("progress", "tensorboard", "csv_log")


def _check_resume_config(wd: Workdir, config: config_lib.Config) -> None:
    saved_path = wd.file("config.json")
    if not os.path.isfile(saved_path):
        return
    saved = config_lib.from_dict(io.read_json(saved_path), saved_path)
    diffs = [
        f"{name}: saved {getattr(saved, name)!r}, given {getattr(config, name)!r}"
        for name in config_lib.FIELDS
        if name not in RESUME_MAY_CHANGE and getattr(saved, name) != getattr(config, name)
    ]
    if diffs:
        raise WorkdirError(
            f"--resume continues the run in {wd.path!r} exactly as it was configured, but "
            f"{'; '.join(diffs)}. Drop those flags to resume, or start the changed run in a new "
            "--workdir (or with --overwrite)"
        )


def _final_model(wd: Workdir, run: dict) -> keras.Model:
    names = [p["name"] for p in run.get("schedule", [])]
    done = [n for n in names if n in run["phases"]]
    return _load_phase_model(wd, done[-1])


def train(
    config: config_lib.Config,
    workdir: str,
    *,
    phase: str = "all",
    overwrite: bool = False,
    resume: bool = False,
    data: DataBundle | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> RunResult:
    """Runs the config's schedule (or one phase of it) and writes every artifact to `workdir`.

    A phase after the first loads what the previous phase saved in `workdir`, checks that the
    config and data describe the same model (backbone, width, size, head, classes), and continues
    the epoch count where that phase really ended. A checkpoint is written after every epoch;
    `resume=True` continues a killed run from the newest one, in any phase.

    Args:
      config: the resolved config (see `tl_keras.config`).
      workdir: the run's folder.
      phase: 'all' or the name of one phase ('fe', 'ft', or a stage of `config.stages`).
      overwrite: replace results already in `workdir` (otherwise refused).
      resume: continue an interrupted run: skip the phases already done, continue the phase in
        progress from its last checkpoint. The config must be the one the run was started with.
      data: a ready `DataBundle`; default: load what `config.data_dir` names.
      callbacks: extra Keras callbacks added to every phase.

    Returns:
      The final model, the stitched history and each phase's result.

    Raises:
      ConfigError, BackboneError, DataError, WorkdirError: bad input, before anything is written.
      TrainingError: the loss or the weights became NaN or infinite (the last good
        checkpoint is kept).

    Example:
      >>> cfg = Config(data_dir="synthetic", backbone="mobilenet", alpha=0.25, weights="none")
      >>> result = train(cfg, "runs/demo")
      >>> result.history.boundaries()
      [5.5]
    """
    config = config_lib.validate(config)
    if overwrite and resume:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give only one")
    strategy = distribute.make_strategy(config.strategy, logical_cpus=config.logical_cpus)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.precision))
    try:
        with strategy.scope():
            return _train(
                config,
                workdir,
                strategy=strategy,
                phase=phase,
                overwrite=overwrite,
                resume=resume,
                data=data,
                callbacks=callbacks,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config, workdir, *, strategy, phase, overwrite, resume, data, callbacks) -> RunResult:
    """`train` inside the strategy's scope; only the chief's artifacts land in the workdir.

    Under multi-worker training, saving a model reads synchronised variables (BatchNorm
    statistics, metrics) with collective operations that every worker must join in the same
    order. So every worker makes the same writes; a non-chief makes them in a scratch folder that
    is deleted at the end (the pattern of TensorFlow's multi-worker guide).
    """
    if distribute.is_chief(strategy):
        return _train_into(
            config,
            workdir,
            workdir,
            strategy=strategy,
            phase=phase,
            overwrite=overwrite,
            resume=resume,
            data=data,
            callbacks=callbacks,
        )
    log.info("%s: training; the chief writes every artifact", distribute.describe(strategy))
    scratch = tempfile.mkdtemp(prefix="tl_keras-worker-")
    try:
        return _train_into(
            config,
            workdir,
            scratch,
            strategy=strategy,
            phase=phase,
            overwrite=overwrite,
            resume=resume,
            data=data,
            callbacks=callbacks,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_into(
    config, workdir, outdir, *, strategy, phase, overwrite, resume, data, callbacks
) -> RunResult:
    """Reads the run's state from `workdir` and writes its artifacts to `outdir`."""
    chief = outdir == workdir
    schedule = recipe.build_schedule(config)
    targets = recipe.select_phases(schedule, phase)
    wd, out = Workdir(workdir), Workdir(outdir)
    out.ensure_writable()
    run = wd.read_run()
    done = dict(run["phases"]) if run else {}
    ckpt = None

    if resume and run is not None:
        _check_resume_config(wd, config)
        ckpt = checkpoint.latest(wd.path)
        targets = [p for p in targets if p.name not in done]
        if not targets:
            log.info("nothing to resume in %s: phase(s) %s already done", wd.path, ", ".join(done))
            history = (
                History.load(wd.file("history.json"))
                if os.path.isfile(wd.file("history.json"))
                else History()
            )
            return RunResult(_final_model(wd, run), history, [], list(run["class_names"]), wd.path)
        if ckpt is not None and ckpt.phase != targets[0].name:
            ckpt = None  # a leftover of a phase that has since been saved
    elif resume:
        log.info("nothing to resume in %s: starting the run", wd.path)
    prev = recipe.previous_phase(schedule, targets[0])
    redo = [p.name for p in targets if p.name in done]
    if prev is None and run is not None and not overwrite and not resume and chief:
        state = f"phases done: {', '.join(done)}" if done else "unfinished: no phase completed"
        if checkpoint.latest(wd.path) is not None:
            state += ", a checkpoint to resume from"
        raise WorkdirError(
            f"workdir {wd.path!r} already holds a run ({state}); rerun with --resume to continue "
            "it, --overwrite to replace it, or use another --workdir"
        )
    if prev is not None:
        if prev.name not in done:
            raise WorkdirError(
                f"--phase={targets[0].name} needs phase {prev.name!r} done in {wd.path!r}, which has "
                f"{', '.join(done) or 'nothing'}; run --phase={prev.name} there first"
            )
        if redo and not overwrite:
            raise WorkdirError(
                f"phase(s) {', '.join(redo)} already done in {wd.path!r}; pass --overwrite to redo "
                "them from the end of the previous phase, or use another --workdir"
            )

    replicas = strategy.num_replicas_in_sync
    if config.scale_lr_with_replicas and replicas > 1:
        schedule = [dataclasses.replace(p, lr=p.lr * replicas) for p in schedule]
        targets = [p for p in schedule if p.name in {t.name for t in targets}]
        log.info(
            "scale_lr_with_replicas: every learning rate x%d (%d replicas)", replicas, replicas
        )
    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = load_data(config, workdir=wd.path)
    if run is not None and (prev is not None or ckpt is not None):
        check_same_run(run, config, data.class_names, wd.path)
    reference = None  # under rollback: the best weights the next phase must beat
    if ckpt is not None:
        model = ckpt.load_model()
        history = ckpt.history.truncate(ckpt.phase_first_epoch - 1)
        if config.rollback and prev is not None:
            reference = load_rollback_reference(wd, prev, model, data, config.rollback)
    elif prev is None:
        model = build_initial_model(config, data)
        if run is not None and chief:  # --overwrite or a restart, set up: now clear the old run
            wd.clear_results()
            checkpoint.remove_all(wd.path)
        run = {**_identity(config), "class_names": list(data.class_names), "phases": {}}
        history = History()
    else:
        model = _load_phase_model(wd, prev.name)
        history = History.load(wd.file("history.json")).truncate(done[prev.name]["last_epoch"])
        if config.rollback:
            reference = load_rollback_reference(wd, prev, model, data, config.rollback)
        names = [p.name for p in schedule]
        for n in [n for n in done if n in names and names.index(n) >= names.index(targets[0].name)]:
            run["phases"].pop(n)  # redone phases and everything after them
    distribute.enable_multi_worker_fit(model, strategy)  # evaluate() for rollback, too
    run["schedule"] = [p.to_dict() for p in schedule]
    out.write_run(run)  # from here on the workdir says a run is in progress
    io.atomic_write_text(out.file("config.json"), config_lib.to_json(config))

    results = []
    for p in targets:
        result = run_phase(
            model,
            p,
            data,
            backbone=config.backbone,
            initial_epoch=history.last_epoch,
            bn_policy=config.bn_policy,
            callbacks=[*callbacks, *_log_callbacks(config, out)],
            progress=config.progress,
            track_best=config.rollback or None,
            checkpoint_dir=out.path,
            history_before=history,
            resume=ckpt if ckpt is not None and ckpt.phase == p.name else None,
            feature_cache=config.feature_cache,
            cache_dir=out.path,
            jit_compile=config.jit_compile,
            strategy=strategy,
        )
        if config.rollback:
            reference = apply_rollback(model, result, reference, data)
        history.extend(result.history)
        _save_phase(out, run, config, result, history, model, data)
        checkpoint.remove_all(out.path)  # the phase's saved model supersedes its checkpoints
        _failpoints.hit(f"phase_saved:{p.name}")
        results.append(result)
    return RunResult(model, history, results, list(data.class_names), wd.path)


def _log_callbacks(config: config_lib.Config, wd: Workdir) -> list[keras.callbacks.Callback]:
    cbs: list[keras.callbacks.Callback] = []
    if config.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=wd.file("logs", "tensorboard")))
    if config.csv_log:
        os.makedirs(wd.file("logs"), exist_ok=True)
        cbs.append(keras.callbacks.CSVLogger(wd.file("logs", "epochs.csv"), append=True))
    return cbs
