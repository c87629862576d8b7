"""One phase on a model in memory: set-up, callbacks, fit, outcome.

`run_phase(model, phase, data, options)` is those four steps, with how the phase runs (the
backbone, where it starts, BatchNorm, checkpoints, the feature cache, ...) in one frozen value,
`PhaseOptions`:

1. **set-up** (`set_up`, then `prepare_fit`): what trains (BatchNorm stays frozen), a fresh
   optimizer at the phase's learning rate with its own schedule (and per-block rates under
   `layer_decay`), the recompile; or, resuming, the checkpoint's compiled model as it was. Then
   the epochs the time budget plans, and the switch to cached features when the base is frozen
   and nothing changes the images (`tl_keras.training.features`).
2. **callbacks** (`make_callbacks`): fresh stateful callbacks for the phase, in the order they
   must run (`tl_keras.training.callbacks`).
3. **fit** (`fit`): from the epoch where the previous phase really ended, on the data bundle's
   batches (a pure function of seed and epoch); nothing when a resumed phase had finished.
4. **outcome** (`outcome`): the NaN error, or the history, wall time and how the phase ended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tl_keras import interrupt
from tl_keras.data import changes
from tl_keras.data.bundle import DataBundle
from tl_keras.errors import TrainingError
from tl_keras.model.classifier import TrainabilityReport, set_trainable
from tl_keras.progress import say
from tl_keras.recipe import Phase, budget_plan
from tl_keras.training import (
    bottom_views,
    checkpoint,
    distribute,
    features,
    frozen_val,
    lr_multipliers,
    optim,
    schedules,
)
from tl_keras.training.callbacks import (
    BestWeights,
    EpochCheckpoint,
    EpochLogger,
    FullModelView,
    HistoryRecorder,
    InterruptCheck,
    NonFiniteGuard,
    PhaseProgressBar,
    PhaseState,
    PhaseWindow,
    ResumableEarlyStopping,
    restore_callback_state,
    use_progress_bar,
)
from tl_keras.training.history import History
from tl_keras.training.replan import EpochReplan
from tl_keras.training.results import PhaseResult


@dataclasses.dataclass(frozen=True)
class PhaseOptions:
    """How one phase runs, besides what it trains (its `Phase`) and on what (its data).

    Attributes:
      backbone: the backbone's registry name or `BackboneSpec` (block structure).
      initial_epoch: global epochs already run (the previous phase's real end).
      history_before: the stitched history of earlier phases (stored in checkpoints).
      resume: continue this phase from a checkpoint: the model is the checkpoint's compiled
        model, which keeps its optimizer state, so it is not recompiled.
      bn_policy: 'frozen' (default) or 'train'.
      jit_compile: XLA: 'auto', 'on' or 'off'.
      strategy: the `tf.distribute` strategy the model was built under (for multi-worker fits).
      class_weight: class index -> weight of its images' training loss
        (`tl_keras.training.class_weight`); None = unweighted.
      feature_cache: 'memory', 'file' or 'off': train a frozen-base phase's head on features
        computed once (see `tl_keras.training.features`); used only when valid, with a log line
        otherwise.
      cache_dir: the workdir, where feature_cache='file' keeps its files.
      callbacks: extra Keras callbacks for this phase. Pass new instances per phase: stateful
        callbacks carried across phases are how early stopping leaks between phases.
      progress: 'auto', 'bar' or 'lines'.
      track_best: a validation metric ('val_accuracy'): keep a copy of the weights of the
        phase's best epoch by it in the result's `best` (for rollback).
      checkpoint_dir: write resumable checkpoints there (the workdir), `checkpoint_every`
        seconds of training apart (0 = after every epoch; see `EpochCheckpoint`).
      checkpoint_every: seconds of training between two checkpoints.
      epochs_planner: decides the phase's epochs once it is compiled (the time budget, see
        `tl_keras.training.budget`); its measurement leaves every variable as it was. Not used
        when resuming. A plan with a deadline is re-planned after the phase's first real epoch
        (`tl_keras.training.replan`).
      on_replan: called with the phase as re-planned and its epochs run, when a re-plan changed
        its length.
      time_budget: the run has a time budget (resumed or not): the phase trains the whole
        model at every step, as the budget's plan measured it (no frozen-bottom views).
    """

    backbone: Any
    initial_epoch: int = 0
    history_before: History | None = None
    resume: checkpoint.Checkpoint | None = None
    bn_policy: str = "frozen"
    jit_compile: str = "auto"
    strategy: Any = None
    class_weight: dict[int, float] | None = None
    feature_cache: str = "off"
    cache_dir: str | None = None
    callbacks: Sequence[keras.callbacks.Callback] = ()
    progress: str = "auto"
    track_best: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: float = 0.0
    epochs_planner: Callable[[PhaseSetup], int | budget_plan.PhasePlan] | None = None
    on_replan: Callable[[Phase, int], None] | None = None
    time_budget: bool = False


@dataclasses.dataclass
class PhaseSetup:
    """A phase ready to fit: the model compiled for it, what `fit` trains, and where it starts.

    Attributes:
      phase: the phase.
      model: the whole model (what checkpoints save and the phase hands on).
      fit_model: what `fit` trains: `model`, or its head alone on cached features.
      fit_data: the batches `fit` sees (of images, or of cached features).
      report: what trains, and the parameter counts.
      options: how the phase runs (its backbone, its checkpoint when resuming, ...).
      window: where the phase sits in the run (first and last epoch, the history before it).
      initial_epoch: global epochs done before this `fit` (the previous phase's real end, or
        the checkpoint's epoch when resuming).
      schedule_callbacks: the callbacks the phase's LR schedule needs (plateau).
      done_records: the phase's epochs a resumed checkpoint already holds.
      budget: the time budget's plan of the phase, when it re-plans after its first epoch.
      validation: puts each epoch's validation metrics in its logs instead of Keras's pass
        (`tl_keras.training.frozen_val`: the frozen bottom's outputs, computed once, or a
        BatchNorm-folded pass of the whole model).
      views_s: the seconds the frozen bottom's pass over the phase's epochs took before `fit`
        (`tl_keras.training.bottom_views`): part of the phase's wall time.
    """

    phase: Phase
    model: keras.Model
    fit_model: keras.Model
    fit_data: DataBundle
    report: TrainabilityReport
    options: PhaseOptions
    window: PhaseWindow
    initial_epoch: int
    schedule_callbacks: list[keras.callbacks.Callback]
    done_records: list[dict] = dataclasses.field(default_factory=list)
    budget: budget_plan.PhasePlan | None = None
    validation: frozen_val.FrozenBottomValidation | frozen_val.FoldedValidation | None = None
    views_s: float = 0.0

    @property
    def fit_last_epoch(self) -> int:
        """The last epoch `fit` runs up to: the phase's, or the re-plan's ceiling."""
        w, plan = self.window, self.budget
        return w.first_epoch - 1 + plan.ceiling if plan and plan.ceiling else w.last_epoch

    @property
    def backbone(self):
        """The backbone's registry name or `BackboneSpec` (its blocks)."""
        return self.options.backbone

    @property
    def resume(self) -> checkpoint.Checkpoint | None:
        """The checkpoint the phase continues from, or None."""
        return self.options.resume


def run_phase(
    model: keras.Model,
    phase: Phase,
    data: DataBundle,
    options: PhaseOptions | None = None,
    **fields: Any,
) -> PhaseResult:
    """Runs one phase: set trainability, recompile, fit from `options.initial_epoch`.

    Args:
      model: a model from `build_model` (or loaded from a phase's `model.keras`).
      phase: what trains, for how many epochs, at which learning rate.
      data: the data bundle; its training order depends only on (seed, epoch).
      options: how the phase runs (`PhaseOptions`; its `backbone` is required).
      **fields: `PhaseOptions` fields, given one by one instead of (or over) `options`.

    Returns:
      The phase's history (global epochs, the learning rate each epoch used), trainability
      report, wall time, whether early stopping ended it, and its best epoch when tracked.

    Raises:
      TrainingError: the loss or the weights became NaN or infinite (the last good
        checkpoint is kept).
      TypeError: no backbone, or a field `PhaseOptions` does not have.

    Example:
      >>> result = run_phase(model, Phase("fe", "none", 3, 1e-3), data, backbone="mobilenet")
      >>> options = PhaseOptions("mobilenet", initial_epoch=3, bn_policy="frozen")
      >>> result = run_phase(model, Phase("ft", "blocks:2", 3, 1e-4), data, options)
    """
    options = dataclasses.replace(options, **fields) if options else PhaseOptions(**fields)
    setup = prepare_fit(set_up(model, phase, data, options), data)
    state, cbs = make_callbacks(setup)
    start = time.perf_counter() - setup.views_s
    fit(setup, state, cbs)
    result = outcome(setup, state, seconds=time.perf_counter() - start)
    return dataclasses.replace(result, averaged=_averaged(setup, state))


# --- 1. set-up ------------------------------------------------------------------------------------
def set_up(model: keras.Model, phase: Phase, data: DataBundle, options: PhaseOptions) -> PhaseSetup:
    """Sets what trains and compiles a fresh optimizer; resuming, restores the checkpoint's."""
    backbone, resume = options.backbone, options.resume
    report = set_trainable(model, backbone, phase.unfreeze, bn_policy=options.bn_policy)
    monitor = "val_loss" if data.val is not None else "loss"
    optimizer, schedule_callbacks = optim.phase_optimizer(
        model, phase, backbone=backbone, steps_per_epoch=data.steps_per_epoch, monitor=monitor
    )
    initial_epoch, wall_before, done_records = options.initial_epoch, 0.0, []
    first_epoch = initial_epoch + 1
    if resume is None:
        say("[%s] %s", phase.name, report.summary())
        _log_rates(phase, optimizer)
        optim.compile_for_phase(model, phase, optimizer=optimizer, jit_compile=options.jit_compile)
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
            restore_callback_state(cb, resume.callback_state.get(type(cb).__name__))
        say(
            "[%s] resuming after epoch %d (%d of %d done) from %s; %s",
            phase.name,
            resume.epoch,
            len(done_records),
            phase.epochs,
            resume.path,
            report.summary(),
        )
    history_before = options.history_before or History()
    window = PhaseWindow(
        phase.name, first_epoch, first_epoch - 1 + phase.epochs, history_before, wall_before
    )
    return PhaseSetup(
        phase=phase,
        model=model,
        fit_model=model,
        fit_data=data,
        report=report,
        options=options,
        window=window,
        initial_epoch=initial_epoch,
        schedule_callbacks=schedule_callbacks,
        done_records=done_records,
    )


def prepare_fit(setup: PhaseSetup, data: DataBundle) -> PhaseSetup:
    """The set-up `fit` runs: the epochs the time budget plans (a phase that trains the base is
    timed on the whole model, a head on what `fit` will run), cached features when they change
    no number, and multi-worker `fit` under a strategy."""
    options = setup.options
    plan = options.epochs_planner if options.resume is None else None
    if plan is not None and setup.phase.trains_base:
        # Before the plan's measurement traces the train step; one replica (workers that
        # re-plan each on their own clock must not set different lengths).
        if getattr(options.strategy, "num_replicas_in_sync", 1) == 1:
            schedules.settable_length(getattr(setup.model.optimizer, "_learning_rate", None))
        setup = replan(setup, plan(setup), data)
    if options.feature_cache != "off":
        setup = use_cached_features(setup, data)
    setup = use_bottom_views(setup, data)
    if plan is not None and not setup.phase.trains_base:  # a head's epochs, timed on what fit runs
        setup = _replan_head(setup, plan, data)
    if options.strategy is not None:
        distribute.enable_multi_worker_fit(setup.fit_model, options.strategy)
    return _validation(setup, data)


def _validation(setup: PhaseSetup, data: DataBundle) -> PhaseSetup:
    """Validation without Keras's pass where that changes no number beyond float precision
    (`tl_keras.training.frozen_val`): a phase that trains the base, on one replica, without a
    time budget (its plan and re-plan time Keras's validation pass)."""
    options = setup.options
    if not setup.phase.trains_base or setup.fit_model is not setup.model:
        return setup
    if options.epochs_planner is not None or setup.budget is not None:
        return setup
    if getattr(options.strategy, "num_replicas_in_sync", 1) != 1:
        return setup
    callback = frozen_val.for_phase(
        setup.model,
        data.val,
        num_val=data.num_val,
        compile_top=lambda top: optim.compile_for_evaluation(top, jit_compile=options.jit_compile),
    )
    if isinstance(callback, frozen_val.FrozenBottomValidation):
        say(
            "[%s] validation: the frozen blocks run once over the %d validation images; each "
            "epoch evaluates the layers that train on their outputs",
            setup.phase.name,
            data.num_val,
        )
    elif callback is not None:
        say(
            "[%s] validation: each epoch, one pass of the whole model over the %d validation "
            "images with BatchNorm folded into the convolutions",
            setup.phase.name,
            data.num_val,
        )
    return setup if callback is None else dataclasses.replace(setup, validation=callback)


def replan(setup: PhaseSetup, plan: int | budget_plan.PhasePlan, data: DataBundle) -> PhaseSetup:
    """The setup for a phase of the planned epochs: a fresh optimizer whose schedule has that
    length, compiled again (nothing has trained yet); the setup itself when nothing changes.
    A plan that keeps the best epoch trains every epoch and hands on the best on validation."""
    plan = plan if isinstance(plan, budget_plan.PhasePlan) else budget_plan.PhasePlan(plan)
    if plan.replans:
        setup = dataclasses.replace(setup, budget=plan)
    phase, epochs = setup.phase, plan.epochs
    patience = epochs if plan.keep_best else phase.early_stopping_patience
    if epochs == phase.epochs and patience == phase.early_stopping_patience:
        return setup
    schedule = phase.lr_schedule
    if schedule.warmup_epochs >= epochs:  # a warm-up must end inside the phase: a quarter of it
        schedule = dataclasses.replace(schedule, warmup_epochs=epochs / 4)
    phase = dataclasses.replace(
        phase, epochs=epochs, lr_schedule=schedule, early_stopping_patience=patience
    )
    monitor = "val_loss" if data.val is not None else "loss"
    schedule_callbacks = setup.schedule_callbacks
    if not _resized_in_place(setup.model.optimizer, phase, data.steps_per_epoch, monitor):
        optimizer, schedule_callbacks = optim.phase_optimizer(
            setup.model,
            phase,
            backbone=setup.backbone,
            steps_per_epoch=data.steps_per_epoch,
            monitor=monitor,
        )
        jit_compile = setup.options.jit_compile
        optim.compile_for_phase(setup.model, phase, optimizer=optimizer, jit_compile=jit_compile)
    w = setup.window
    window = dataclasses.replace(w, last_epoch=w.first_epoch - 1 + epochs)
    return dataclasses.replace(
        setup, phase=phase, window=window, schedule_callbacks=schedule_callbacks
    )


def _resized_in_place(optimizer, phase: Phase, steps_per_epoch: int, monitor: str) -> bool:
    """Whether the compiled optimizer took the phase's new length as it is: its cosine's length
    held in a variable (`schedules.settable_length`), nothing else of it changed (the warm-up, no
    weight averaging, whose momentum follows the length): no new compile, no new trace."""
    if optim.ema_momentum(phase, steps_per_epoch) is not None:
        return False
    current = getattr(optimizer, "_learning_rate", None)
    new, callbacks = schedules.make_schedule(
        phase.lr_schedule,
        base_lr=phase.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=phase.epochs,
        plateau_monitor=monitor,
    )
    return not callbacks and schedules.set_length(current, new)


def _replan_head(setup: PhaseSetup, plan, data: DataBundle) -> PhaseSetup:
    """`replan` for a head-only phase, whose head on cached features is compiled again."""
    planned = replan(setup, plan(setup), data)
    if planned.phase is not setup.phase and setup.fit_model is not setup.model:
        _compile_head(planned.fit_model, planned)
    return planned


def use_cached_features(setup: PhaseSetup, data: DataBundle) -> PhaseSetup:
    """Switches `fit` to the model's head on cached features when that changes no number.

    Otherwise the setup is returned as it is, with a log line saying why for a head-only phase.
    The features are kept as `options.feature_cache` says, under `options.cache_dir`.
    """
    phase, model, options = setup.phase, setup.model, setup.options
    reason = features.why_not_cached(phase, data.pipeline)
    if reason is not None:
        if not phase.trains_base:
            say("[%s] feature extraction runs the base every epoch: %s", phase.name, reason)
        return setup
    arrays, seconds, reused = features.compute(
        model, data, mode=options.feature_cache, workdir=options.cache_dir
    )
    fit_model, fit_data = features.head_model(model), features.feature_bundle(data, arrays)
    setup = dataclasses.replace(setup, fit_model=fit_model, fit_data=fit_data)
    _compile_head(fit_model, setup)
    say(
        "[%s] cached features: %s %d train + %d validation images (%d values each)%s; the "
        "head trains on them",
        phase.name,
        "reused the features of" if reused else "ran the frozen base once over",
        len(arrays["train"]),
        len(arrays["val"]),
        arrays["train"].shape[-1],
        "" if reused else f" in {seconds:.1f}s",
    )
    return setup


def use_bottom_views(setup: PhaseSetup, data: DataBundle) -> PhaseSetup:
    """Switches `fit` to the layers that train, on the frozen bottom's outputs computed once for
    every epoch the phase runs (`tl_keras.training.bottom_views`), where that applies."""
    phase, options = setup.phase, setup.options
    replicas = getattr(options.strategy, "num_replicas_in_sync", 1)
    reason = bottom_views.why_not(
        phase,
        data,
        replicas=replicas,
        feature_cache=options.feature_cache,
        budgeted=options.time_budget or options.epochs_planner is not None,
    )
    epochs = setup.fit_last_epoch - setup.initial_epoch
    if reason is not None or setup.fit_model is not setup.model or epochs < 1:
        return setup
    start = time.perf_counter()
    views = bottom_views.make_views(
        setup.model,
        data,
        first_epoch=setup.initial_epoch,
        epochs=epochs,
        on_start=lambda: say(
            "[%s] the frozen blocks below the layers that train run once, first, over the "
            "augmented images of each of the phase's %d epoch(s)",
            phase.name,
            epochs,
        ),
    )
    if views is None:  # nothing frozen below what trains
        return setup
    if isinstance(views, str):
        say("[%s] the whole model runs at every step: %s", phase.name, views)
        return setup
    optim.compile_for_phase(
        views.top, phase, optimizer=setup.model.optimizer, jit_compile=options.jit_compile
    )
    seconds = time.perf_counter() - start
    say(
        "[%s] the frozen blocks ran once over the augmented images of the phase's %d epoch(s) "
        "(%d each) and the %d validation images in %.1fs; the layers that train run on their "
        "outputs",
        phase.name,
        epochs,
        data.num_train,
        data.num_val,
        seconds,
    )
    return dataclasses.replace(
        setup,
        fit_model=views.top,
        fit_data=bottom_views.views_bundle(data, views),
        validation=views.validation,
        views_s=seconds,
    )


def _compile_head(fit_model: keras.Model, setup: PhaseSetup) -> None:
    """Compiles the head that trains on cached features with the whole model's optimizer.

    The model's own optimizer instance: checkpoints of the model carry its state. A head step
    takes microseconds, so Keras's per-step overhead would dominate: a whole epoch runs in one
    call (the same updates; batch callbacks see one block). Not under a tf.distribute strategy:
    Keras 3.15's multi-step loop fails there at run time ("You must feed a value for
    placeholder tensor 'while/cond/Placeholder'").
    """
    steps, options = setup.fit_data.steps_per_epoch, setup.options
    optim.compile_for_phase(
        fit_model,
        setup.phase,
        optimizer=setup.model.optimizer,
        jit_compile=options.jit_compile,
        steps_per_execution=1 if options.strategy is not None else max(1, steps or 1),
    )


def _log_rates(phase: Phase, optimizer: keras.optimizers.Optimizer) -> None:
    s = phase.lr_schedule
    if s.name != "constant" or s.warmup_epochs:
        say(
            "[%s] lr %.2e, schedule %s%s",
            phase.name,
            phase.lr,
            s.name,
            f" after {s.warmup_epochs:g} warm-up epochs" if s.warmup_epochs else "",
        )
    if isinstance(optimizer, lr_multipliers.LRMultiplierOptimizer):
        rates = sorted(set(optimizer.lr_multipliers.values()))
        say(
            "[%s] discriminative learning rates (layer_decay %g%s, head x %g): %d variables at "
            "lr x %s",
            phase.name,
            phase.layer_decay,
            f", {phase.layer_decay_groups} groups" if phase.layer_decay_groups else "",
            phase.head_lr_ratio,
            len(optimizer.lr_multipliers),
            " .. ".join(f"{r:.3g}" for r in (rates[0], rates[-1])) if rates else "-",
        )


# --- 2. callbacks ---------------------------------------------------------------------------------
def make_callbacks(setup: PhaseSetup) -> tuple[PhaseState, list[keras.callbacks.Callback]]:
    """The phase's fresh callbacks, in the order they must run, and its stateful ones: the
    phase's own, then `options.callbacks` (the user's), then the interrupt check."""
    phase, resume, options = setup.phase, setup.resume, setup.options
    track_best, checkpoint_dir = options.track_best, options.checkpoint_dir
    recorder = HistoryRecorder(phase.name)
    recorder.history.records.extend(dict(r) for r in setup.done_records)
    guard = NonFiniteGuard(losses_before=[r.get("loss") for r in setup.done_records])
    state = PhaseState(recorder, guard, schedule=setup.schedule_callbacks)
    cbs: list[keras.callbacks.Callback] = [recorder, state.guard]
    if setup.validation is not None:  # first: every later callback reads its val_* metrics
        cbs.insert(0, setup.validation)
    if track_best:  # before early stopping, which may restore other weights at the end
        state.best = BestWeights(phase.name, track_best, source_model=setup.model)
        if resume is not None:
            state.best.best = resume.best_snapshot(
                like=[tuple(w.shape) for w in setup.model.weights]
            )
        cbs.append(state.best)
    if phase.early_stopping_patience:
        state.early = ResumableEarlyStopping(
            monitor="val_loss" if setup.fit_data.val is not None else "loss",
            patience=phase.early_stopping_patience,
            restore_best_weights=True,
            resume_state=resume.early_stopping if resume else None,
            best_weights=(
                resume.best_weights(like=[tuple(w.shape) for w in setup.fit_model.weights])
                if resume
                else None
            ),
        )
        cbs.append(state.early)
    cbs += state.schedule  # they change the rate at epoch ends: before the checkpoint
    replanner = _replanner(setup)
    cbs += [replanner] if replanner is not None else []  # before the checkpoint, too
    if checkpoint_dir:
        state.checkpoints = EpochCheckpoint(
            checkpoint_dir,
            setup.window,
            state,
            save_model=setup.model,
            every_s=options.checkpoint_every,
        )
        cbs.append(state.checkpoints)
    w = setup.window
    if use_progress_bar(options.progress):
        cbs.append(PhaseProgressBar(phase.name, w.first_epoch - 1, phase.epochs))
    else:
        cbs.append(EpochLogger(phase.name, w.first_epoch - 1, phase.epochs, recorder))
    if replanner is not None:
        replanner.retarget = [c for c in (state.checkpoints, cbs[-1], state.early) if c]
    user_callbacks = list(options.callbacks)
    if setup.fit_model is not setup.model:  # cached features: callbacks still see the whole model
        user_callbacks = [FullModelView(cb, setup.model) for cb in user_callbacks]
    return state, [*cbs, *user_callbacks, InterruptCheck()]


def _replanner(setup: PhaseSetup) -> EpochReplan | None:
    """The re-plan after the phase's first real epoch, when the time budget planned it."""
    plan = setup.budget
    if plan is None or not plan.replans or setup.resume is not None:
        return None
    monitor = "val_loss" if setup.fit_data.val is not None else "loss"

    def learning_rate(phase: Phase):
        rate, _ = schedules.make_schedule(
            phase.lr_schedule,
            base_lr=phase.lr,
            steps_per_epoch=setup.fit_data.steps_per_epoch,
            epochs=phase.epochs,
            plateau_monitor=monitor,
        )
        return rate

    return EpochReplan(setup, plan, on_change=setup.options.on_replan, make_schedule=learning_rate)


# --- 3. fit ---------------------------------------------------------------------------------------
def fit(setup: PhaseSetup, state: PhaseState, callbacks: list[keras.callbacks.Callback]) -> None:
    """Fits the phase's remaining epochs (none when a resumed phase had already finished).

    `options.class_weight` weights each training image's loss by its class (Keras maps the
    one-hot targets of each batch to sample weights); validation stays unweighted.
    """
    last_epoch, initial_epoch = setup.fit_last_epoch, setup.initial_epoch
    remaining = last_epoch - initial_epoch
    resume, early = setup.resume, state.early
    if resume is not None and resume.finished_phase:
        remaining = 0
        optimizer = setup.fit_model.optimizer
        if getattr(optimizer, "use_ema", False):  # as fit does when its last epoch ends
            optimizer.finalize_variable_values(setup.fit_model.trainable_weights)
        best = None if early is None else early.resumed_best_weights()
        if best is not None:
            setup.fit_model.set_weights(best)  # as EarlyStopping.on_train_end would
    if remaining > 0:
        data = setup.fit_data
        with interrupt.deferred():  # a signal stops the fit at a batch's end, cleanly
            _fit(setup, data, callbacks, last_epoch=last_epoch, initial_epoch=initial_epoch)


def _fit(setup, data, callbacks, *, last_epoch, initial_epoch) -> None:
    """`fit`, with a failed read of an image file (the data changed under the run) in words."""
    try:
        setup.fit_model.fit(
            distribute.train_input(data, initial_epoch, last_epoch - initial_epoch),
            validation_data=data.val if setup.validation is None else None,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            steps_per_epoch=data.steps_per_epoch,
            shuffle=False,  # the order is the data bundle's: a pure function of (seed, epoch)
            callbacks=callbacks,
            verbose=1 if use_progress_bar(setup.options.progress) else 0,
            class_weight=setup.options.class_weight,
        )
    except tf.errors.OpError as e:
        changed = changes.changed_files(e, data.files)
        if changed is None:
            raise
        raise TrainingError(
            f"the data changed while the run read it: {changed}. Training stopped in phase "
            f"{setup.phase.name!r} and the last good checkpoint was kept: restore those files and "
            "continue with --resume, or start again on the data as it is now with --overwrite"
        ) from None


def _averaged(setup: PhaseSetup, state: PhaseState) -> dict | None:
    """Under weight averaging: the validation metrics of the averaged weights (logged), beside
    the last epoch's, whose weights the average replaced."""
    model, data = setup.fit_model, setup.fit_data
    if not getattr(model.optimizer, "use_ema", False) or data.val is None:
        return None
    last = state.recorder.history.records[-1] if len(state.recorder.history) else {}
    scores = model.evaluate(data.val, verbose=0, return_dict=True)
    averaged = {f"val_{k}": float(v) for k, v in scores.items()}
    say(
        "[%s] weight averaging (EMA): the saved weights score val_accuracy %.4f (the last "
        "epoch's: %.4f)",
        setup.phase.name,
        averaged.get("val_accuracy", float("nan")),
        last.get("val_accuracy", float("nan")),
    )
    return {"last_epoch": {k: last[k] for k in averaged if k in last}, "averaged": averaged}


# --- 4. outcome -----------------------------------------------------------------------------------
def outcome(setup: PhaseSetup, state: PhaseState, *, seconds: float) -> PhaseResult:
    """The phase's result; a NaN stop becomes a `TrainingError` naming the phase and epoch.

    Raises:
      TrainingError: the loss or the weights became NaN or infinite.
    """
    phase, window, early = setup.phase, setup.window, state.early
    if state.guard.bad is not None:
        epoch, batch, problem, kind = state.guard.bad
        written = [setup.resume.epoch] if setup.resume is not None else []
        written += state.checkpoints.written if state.checkpoints is not None else []
        kept = f"checkpoint of epoch {written[-1]}" if written else "the start of the phase"
        if kind == "diverged":
            advice = (
                f"The phase's learning rate, {phase.lr:g}, is too high for it: lower it (--lr, "
                "--ft_lr_factor or the stage's factor)"
            )
        else:
            advice = (
                "Check the inputs for NaN or infinite values, lower the learning rate (phase lr "
                f"{phase.lr:g})"
            )
        raise TrainingError(
            f"{problem} in phase {phase.name!r}, epoch {epoch}"
            f"{'' if batch is None else f', batch {batch}'}: training stopped and the last good "
            f"state was kept ({kept}). {advice}, and rerun the phase with "
            f"--phase={phase.name} --overwrite"
        )
    stopped = bool(early is not None and early.stopped_epoch > 0) or bool(
        setup.resume and setup.resume.stopped_early
    )
    epochs_run = len(state.recorder.history)
    if stopped and not phase.trains_base:
        say(
            "[%s] %s stopped improving for %d epochs: switching to the next phase after %d of "
            "%d epochs, with the phase's best weights (epoch %d)",
            phase.name,
            early.monitor,
            phase.early_stopping_patience,
            epochs_run,
            phase.epochs,
            early.best_epoch + 1,  # Keras counts global epochs from 0 when fit has initial_epoch
        )
    elif stopped:
        say(
            "[%s] early stopping after %d of %d epochs; restored the phase's best weights (epoch %d)",
            phase.name,
            epochs_run,
            phase.epochs,
            early.best_epoch + 1 if early else -1,
        )
    best = state.best.best if state.best is not None else None
    return PhaseResult(
        phase,
        state.recorder.history,
        setup.report,
        window.wall_before + seconds,
        stopped,
        best,
        kept_epoch=early.kept_epoch() if early is not None else None,
        validation=setup.validation,
    )
