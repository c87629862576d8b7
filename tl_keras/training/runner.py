"""Runs a schedule of phases and keeps the workdir. The CLI, the notebooks and the tests call it.

`train(config, workdir)` runs the whole schedule (or one phase of it), in three steps:

1. **plan** (`tl_keras.training.plan.plan_run`): which phases run from which state of the
   workdir, and every refusal, before TensorFlow loads;
2. **state** (`initial_state`): the data, and the model and history the first phase starts
   from: a new model, what the previous phase saved, or the newest checkpoint;
3. **recipe** (`decide_recipe`): the settings left to the recipe, decided from the data and the
   model (`tl_keras.training.decide`) or read back from the workdir's `recipe.json`;
4. **loop** (`run_phases`): each phase (`tl_keras.training.phase.run_phase`, its epochs planned
   from the time budget when there is one), then rollback when asked, then its artifacts and
   `run.json`, the commit point; after the last phase, the temperature fitted on validation
   (`tl_keras.training.calibrate`), in run.json's "inference".

A schedule may have any number of phases (gradual unfreezing); under `rollback`, a phase that
ends worse than the previous phase's best is undone. `run_phase` runs one phase on a model in
memory, for users who want the pieces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import keras

from tl_keras import _failpoints, io, lock, schema
from tl_keras import config as config_lib
from tl_keras.data import augment
from tl_keras.data.pipeline import DataBundle
from tl_keras.data.sources import load_data
from tl_keras.errors import DiskFullError
from tl_keras.model.classifier import (
    RNG_FILE,
    RNG_SHAPE,
    build_model,
    calibrate_batchnorm,
    get_rng_state,
    load_model,
    set_rng_state,
)
from tl_keras.recipe import auto, budget_plan
from tl_keras.training import (
    budget,
    calibrate,
    checkpoint,
    class_weight,
    decide,
    distribute,
    optim,
    replace,
    rollback,
)
from tl_keras.training.curves import plot_history
from tl_keras.training.history import History
from tl_keras.training.phase import PhaseOptions, PhaseResult, PhaseSetup, run_phase
from tl_keras.training.plan import RunPlan, check_options, check_same_run, plan_run
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")

BN_CALIBRATION_BATCHES = 8  # batches used to re-estimate BatchNorm statistics of a random base


@dataclasses.dataclass
class RunResult:
    """What `train` did: the final model, the stitched history, and each phase's result."""

    model: keras.Model
    history: History
    phases: list[PhaseResult]
    class_names: list[str]
    workdir: str | None = None


@dataclasses.dataclass
class RunState:
    """What the loop carries from phase to phase.

    Attributes:
      model: the model the next phase starts from.
      history: the stitched history so far.
      run: `run.json` as it will be written (identity, classes, phases done, schedule).
      reference: under rollback, the best weights the next phase must beat.
      data: the data every phase trains on.
      card: the recipe card the run follows.
      clock: the time budget and the run's start, or None without a budget.
      save_s: how long the last phase's artifacts took to write (the budget's reserve).
      rate: the frozen base's forward rate on this data (images/s), measured by the probe.
    """

    model: keras.Model
    history: History
    run: dict
    reference: rollback.Snapshot | None
    data: DataBundle
    card: auto.Card | None = None
    clock: budget.Clock | None = None
    save_s: float = 1.0
    rate: float | None = None


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
      config: the config (see `tl_keras.config`), or its `RunSpec` (`config.resolve`).
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
      ConfigError, BackboneError, DataError, WorkdirError: bad input, before anything is written
        (another process writing to `workdir` included: one writer per workdir, `tl_keras.lock`).
      TrainingError: the loss or the weights became NaN or infinite, or the loss diverged (the
        last good checkpoint is kept).
      DiskFullError: the disk filled up; the last good checkpoint is kept, and `resume=True`
        continues once there is space.

    Example:
      >>> cfg = Config(data_dir="synthetic", backbone="mobilenet", alpha=0.25, weights="none")
      >>> result = train(cfg, "runs/demo")
      >>> result.history.boundaries()
      [5.5]
    """
    started = time.monotonic()  # the time budget counts from here
    spec = config_lib.resolve(config)  # worked out once here, and once more with the recipe card
    config = spec.config
    check_options(overwrite=overwrite, resume=resume)
    strategy = distribute.make_strategy(config.strategy, logical_cpus=config.logical_cpus)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.precision))
    try:
        with strategy.scope():
            return _train(
                spec,
                workdir,
                strategy=strategy,
                phase=phase,
                overwrite=overwrite,
                resume=resume,
                data=data,
                callbacks=callbacks,
                started=started,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(
    spec, workdir, *, strategy, phase, overwrite, resume, data, callbacks, started
) -> RunResult:
    """`train` inside the strategy's scope; only the chief's artifacts land in the workdir.

    The chief holds the workdir's lock throughout (one writer per workdir). Under multi-worker
    training, saving a model reads synchronised variables (BatchNorm statistics, metrics) with
    collective operations that every worker must join in the same order. So every worker makes
    the same writes; a non-chief makes them in a scratch folder that is deleted at the end (the
    pattern of TensorFlow's multi-worker guide).
    """
    chief = distribute.is_chief(strategy)
    if not chief:
        log.info("%s: training; the chief writes every artifact", distribute.describe(strategy))
    Workdir(workdir)  # no workdir given: that error before anything else
    outdir = workdir if chief else tempfile.mkdtemp(prefix="tl_keras-worker-")
    try:
        with lock.hold(workdir) if chief else contextlib.nullcontext():
            if chief and resume:
                io.remove_leftovers(os.path.abspath(workdir))
            plan = plan_run(
                spec, workdir, phase=phase, overwrite=overwrite, resume=resume, outdir=outdir
            )
            if resume and (note := plan.workdir.replaced_note()):
                log.info(note)
            if plan.nothing_to_do:
                return _finished_run(plan, spec, data)
            # --overwrite of a run: a transaction, the old run in place until a phase is done
            with replace.staged(plan, overwrite=overwrite) as plan:
                state = None
                try:
                    state = initial_state(plan, spec, data)
                    spec, plan = decide_recipe(plan, spec, state, started=started)
                    plan = _scale_learning_rates(plan, spec.config, strategy.num_replicas_in_sync)
                    state.data = distribute.shard_data(state.data, strategy)  # each its own part
                    distribute.enable_multi_worker_fit(state.model, strategy)  # rollback evaluates
                    _start_run(plan, spec, state)
                    results = run_phases(plan, spec, state, strategy=strategy, callbacks=callbacks)
                except Exception as e:
                    if io.is_disk_full(e):
                        raise _disk_full(e, plan, state) from None
                    raise
            return RunResult(
                state.model, state.history, results, list(state.data.class_names), plan.workdir.path
            )
    finally:
        if not chief:
            shutil.rmtree(outdir, ignore_errors=True)


def _disk_full(error: Exception, plan: RunPlan, state: RunState | None) -> DiskFullError:
    """A full disk in a run: what failed where, what a checkpoint needs, what is kept, and how
    to go on."""
    if isinstance(error, DiskFullError):
        first = error
    else:  # a write outside tl_keras.io (a log, a TensorFlow file)
        first = io.disk_full(str(getattr(error, "filename", None) or plan.outdir.path))
    ckpt = checkpoint.latest(plan.outdir.path)
    need = io.folder_bytes(ckpt.path) if ckpt is not None else 0
    if not need and state is not None:
        need = checkpoint.estimate_bytes(state.model)
    kept = (
        f"the newest complete checkpoint (phase {ckpt.phase!r}, epoch {ckpt.epoch}) is kept"
        if ckpt is not None
        else f"phases done: {', '.join(plan.outdir.phases_done()) or 'none'}"
    )
    size = f"; a checkpoint of this run needs about {io.format_bytes(need)}" if need else ""
    return DiskFullError(
        f"{first}{size}; {kept}. Free {'at least that much ' if need else ''}space there and "
        "continue with --resume",
        path=first.path,
        free_bytes=first.free_bytes,
    )


def _finished_run(
    plan: RunPlan, spec: config_lib.RunSpec, data: DataBundle | None = None
) -> RunResult:
    """What `train --resume` returns for a run whose every phase is done.

    A run stopped after its last phase was saved but before its temperature was fitted (a kill
    during calibration) gets its calibration now, as the uninterrupted run would have.
    """
    wd = plan.workdir
    path = wd.file("history.json")
    history = (
        History.load(path, fix="rerun the last phase with --overwrite")
        if os.path.isfile(path)
        else History()
    )
    model = _final_model(wd, plan.run)
    if not calibrate.is_fitted(plan.run):
        spec = config_lib.resolve(spec, decide.read_recipe_card(wd))  # the run's tta, as decided
        phase = _final_phase(plan.run)
        log.info("the run stopped before its calibration: fitting the temperature of %r", phase)
        if data is None:
            data = load_data(spec, workdir=wd.path)
        calibrate.calibrate_run(wd, dict(plan.run), model, data, spec.config, phase)
    return RunResult(model, history, [], list(plan.run["class_names"]), wd.path)


def _scale_learning_rates(plan: RunPlan, config: config_lib.Config, replicas: int) -> RunPlan:
    """Under `scale_lr_with_replicas`, every phase's rate times the replicas (linear scaling)."""
    if not (config.scale_lr_with_replicas and replicas > 1):
        return plan
    schedule = tuple(dataclasses.replace(p, lr=p.lr * replicas) for p in plan.schedule)
    names = {t.name for t in plan.targets}
    log.info("scale_lr_with_replicas: every learning rate x%d (%d replicas)", replicas, replicas)
    return dataclasses.replace(
        plan, schedule=schedule, targets=tuple(p for p in schedule if p.name in names)
    )


def initial_state(
    plan: RunPlan, spec: config_lib.RunSpec, data: DataBundle | None = None
) -> RunState:
    """The data, and the model and history the first phase of the plan starts from.

    A checkpoint's model (resuming), a new model (the schedule's first phase; an old run there
    is cleared only now, once everything is set up), or what the previous phase saved.

    Raises:
      WorkdirError: the workdir holds another model or classes, or a saved model is damaged.
      DataError: the data cannot be used.
    """
    wd, prev, ckpt, run = plan.workdir, plan.previous, plan.resume_from, plan.run
    config = spec.config
    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = load_data(spec, workdir=wd.path)
    if run is not None and (prev is not None or ckpt is not None):
        check_same_run(run, spec, data.class_names, wd.path)
    reference = None  # under rollback: the best weights the next phase must beat
    if ckpt is not None:
        model = ckpt.load_model()
        history = ckpt.history.truncate(ckpt.phase_first_epoch - 1)
        if config.rollback and prev is not None:
            reference = rollback.load_rollback_reference(wd, prev, model, data, config.rollback)
    elif prev is None:
        model = build_initial_model(spec, data)
        _check_rates(plan, spec, model)
        # --resume with nothing finished and nothing to resume from: start again. (--overwrite
        # stages its run instead, `replace.staged`: the old run stays until a phase is done.)
        if run is not None and plan.outdir.path == wd.path:
            wd.clear_results()
            checkpoint.remove_all(wd.path)
        run = {**spec.identity, "class_names": list(data.class_names), "phases": {}}
        run["doctor"] = run_doctor(spec, data, model, plan.outdir.path)
        history = History()
    else:
        model = load_phase_model(wd, prev.name)
        history = History.load(
            wd.file("history.json"),
            fix=f"rerun phase {prev.name!r} (--phase={prev.name} --overwrite)",
        ).truncate(plan.done[prev.name]["last_epoch"])
        if config.rollback:
            reference = rollback.load_rollback_reference(wd, prev, model, data, config.rollback)
        for n in replace.redone_phases(plan):  # --overwrite: staged without them
            run["phases"].pop(n)  # redone phases and everything after them
    _check_rates(plan, spec, model)
    return RunState(model, history, run, reference, data)


def run_doctor(spec: config_lib.RunSpec, data: DataBundle, model, outdir: str) -> dict:
    """The data doctor before the first phase (`tl_keras.doctor.workflow.examine`): one log line,
    the report in `<workdir>/doctor/`; what run.json records of it."""
    if spec.config.doctor == "off":
        log.info("doctor: off (doctor='off'): the data was not examined before training")
        return {"skipped": "doctor='off'"}
    if data.images is None:
        log.info("doctor: skipped: this DataBundle does not list its images")
        return {"skipped": "the data bundle does not list its images"}
    from tl_keras.doctor import workflow

    result = workflow.examine(spec, data, model, outdir)
    return {
        "summary": result.summary,
        "report": f"{workflow.FOLDER}/report.json",
        "manifest_sha256": result.report["data"]["manifest_sha256"],
    }


def _check_rates(plan: RunPlan, spec: config_lib.RunSpec, model: keras.Model) -> None:
    """Refuses per-block rates that do not fit the base (more groups than blocks) before any
    phase trains, rather than when the first phase that unfreezes starts.

    Raises:
      ConfigError: naming `layer_decay_groups` and the base's blocks.
    """
    for p in plan.targets:
        if p.trains_base and p.layer_decay != 1.0:
            optim.discriminative_multipliers(
                model, spec.backbone, p.layer_decay, groups=p.layer_decay_groups
            )


def decide_recipe(
    plan: RunPlan, spec: config_lib.RunSpec, state: RunState, *, started: float
) -> tuple[config_lib.RunSpec, RunPlan]:
    """The run's recipe card, and the config, plan and data that follow from it.

    The first phase of a run decides the card (and refuses a time budget that cannot hold one
    epoch of each phase, before anything is written); a later phase or a resumed run reads it
    from the workdir.

    Raises:
      ConfigError: a time budget too small for the run.
      WorkdirError: a damaged `recipe.json`.
    """
    first = plan.previous is None and plan.resume_from is None
    card, rate, new = decide.decide(spec, state.data, state.model, plan.workdir, first_phase=first)
    spec = config_lib.resolve(spec, card)
    if spec.time_budget_s is not None:
        state.clock = budget.Clock(spec.time_budget_s, started)
        if new and rate:
            _check_budget(spec, state, rate)
    state.card, state.rate = card, rate
    cfg = spec.config
    if state.data.rebuildable:
        state.data = state.data.with_training(
            augment=cfg.augment,
            mixup=cfg.mixup,
            cutmix=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
        )
    if state.data.pipeline is not None:
        augment.log_training(state.data.pipeline)
    names = {p.name for p in plan.targets}
    targets = tuple(p for p in spec.schedule if p.name in names)
    return spec, dataclasses.replace(plan, schedule=spec.schedule, targets=targets)


def _check_budget(spec: config_lib.RunSpec, state: RunState, rate: float) -> None:
    """Refuses a budget that cannot hold one epoch of each phase (estimated from the compiled
    forward rate: fe one pass over train + validation, an ft epoch `budget.TRAIN_FORWARDS`
    passes over train and one over validation)."""
    data, schedule = state.data, spec.schedule
    fe_s = (data.num_train + data.num_val) / rate
    ft = [p for p in schedule if p.trains_base and p.epochs > 0]
    ft_epoch_s = _ft_epoch_s(data, rate)
    budget_plan.check_budget_holds(
        spec.time_budget_s, state.clock.elapsed_s, fe_s, ft_epoch_s, ft_runs=bool(ft)
    )


def _start_run(plan: RunPlan, spec: config_lib.RunSpec, state: RunState) -> None:
    """Writes run.json (with the schedule), config.json (as given: 'auto' where the recipe
    decides) and recipe.json (the card): a run is in progress from here on.

    A phase that starts afresh drops checkpoints an earlier attempt left (they would otherwise
    outrank its own on a later --resume).
    """
    out = plan.outdir
    if plan.resume_from is None:
        checkpoint.remove_all(out.path)
    state.run["schedule"] = [p.to_dict() for p in plan.schedule]
    # How the trained model is served: predict, evaluate and every export read this.
    state.run["inference"] = {**state.run.get("inference", {}), "tta": spec.config.tta}
    out.write_run(state.run)
    io.atomic_write_text(out.file("config.json"), config_lib.to_json(spec.given or spec.config))
    if state.card is not None:
        decide.write_recipe_card(out, state.card)


def run_phases(
    plan: RunPlan,
    spec: config_lib.RunSpec,
    state: RunState,
    *,
    strategy,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> list[PhaseResult]:
    """Runs each phase of the plan, then rollback when asked, then saves the phase.

    A phase counts as done only once its artifacts and then `run.json` are written; its
    checkpoints are removed after that.
    """
    out, ckpt, config, results = plan.outdir, plan.resume_from, spec.config, []
    weights = _class_weights(config, state.data)
    unaugmented = None
    for p in plan.targets:
        data = state.data
        if not p.augment and data.rebuildable:  # e.g. fe on cached features
            unaugmented = unaugmented or data.with_training(augment="none", mixup=0.0, cutmix=0.0)
            data = unaugmented
        guard = [budget.BudgetGuard(state.clock, state.save_s)] if state.clock else []
        planner = _epochs_planner(plan, spec, state, p, guard[0] if guard else None)
        options = PhaseOptions(
            backbone=spec.backbone,
            initial_epoch=state.history.last_epoch,
            history_before=state.history,
            resume=ckpt if ckpt is not None and ckpt.phase == p.name else None,
            bn_policy=config.bn_policy,
            jit_compile=config.jit_compile,
            strategy=strategy,
            class_weight=weights,
            feature_cache=config.feature_cache,
            cache_dir=out.shared_root,  # the feature cache outlives a run
            callbacks=[*callbacks, *guard, *_log_callbacks(config, out)],
            progress=config.progress,
            track_best=config.rollback or None,
            checkpoint_dir=out.path,
            checkpoint_every=config.checkpoint_every,
            epochs_planner=planner,
        )
        result = run_phase(state.model, p, data, options)
        if result.phase.epochs != p.epochs:  # planned from the time budget
            _record_planned(plan, state, result.phase)
        if config.rollback:
            state.reference = rollback.apply_rollback(
                state.model, result, state.reference, state.data
            )
        state.history.extend(result.history)
        _mark_kept(state.history, result)
        started = time.monotonic()
        save_phase(out, state, config, result, pipeline=data.pipeline)
        state.save_s = time.monotonic() - started
        checkpoint.remove_all(out.path)  # the phase's saved model supersedes its checkpoints
        out.commit(f"this run finished phase {p.name!r}")  # an --overwrite's staged run: swapped in
        _failpoints.hit(f"phase_saved:{p.name}")
        results.append(result)
    if results:  # the temperature of the model this run ends with, fitted on validation
        calibrate.calibrate_run(out, state.run, state.model, state.data, config, p.name)
        if state.clock is not None:  # what the run used, its end included
            state.run["time_budget"] = state.clock.report()
            out.write_run(state.run)
    return results


def _class_weights(config: config_lib.Config, data: DataBundle) -> dict[int, float] | None:
    """The per-class loss weights of `class_weight`, logged once (None: unweighted)."""
    weights = class_weight.class_weights(config.class_weight, data.train_labels, data.num_classes)
    if weights is not None:
        log.info(
            "class_weight=%s: each training image's loss weighs %s",
            config.class_weight,
            ", ".join(f"{name} {weights[c]:.3g}" for c, name in enumerate(data.class_names)),
        )
    return weights


def _mark_kept(history: History, result: PhaseResult) -> None:
    """Marks the epoch whose weights the phase handed on, when not simply its last one."""
    decision = result.rollback
    if decision is not None and decision.rolled_back:
        history.mark_kept(result.phase.name, decision.reference.epoch, "rollback")
    elif result.kept_epoch is not None:
        history.mark_kept(result.phase.name, result.kept_epoch, "early stopping")


def _epochs_planner(
    plan: RunPlan,
    spec: config_lib.RunSpec,
    state: RunState,
    phase,
    guard: budget.BudgetGuard | None,
):
    """Under a time budget, what plans a phase's epochs once it is compiled; else None.

    Only for a phase whose length the recipe decided (not the user's epochs or stages): a
    fine-tuning phase gets what is left of the budget after the phases before it and the run's
    end (saving, calibration); fe gets a share of it when fine-tuning follows, and the rest
    when it ends the run (`budget_plan.plan_head_epochs`). The phase's budget guard then reserves the
    same end.
    """
    card = state.card
    if state.clock is None or card is None or plan.resume_from or spec.config.stages:
        return None
    field = "epochs_ft" if phase.trains_base else "epochs_fe"
    if phase.epochs == 0 or card.get(field).source not in ("rule", "budget"):
        return None
    later = plan.targets[plan.targets.index(phase) + 1 :]
    ft_follows = any(p.trains_base and p.epochs > 0 for p in later)
    clock = state.clock

    def planner(setup: PhaseSetup) -> budget_plan.PhasePlan:
        on_features = setup.fit_model is not setup.model  # a head on cached features
        measure = budget.measure_head_epoch_cost if on_features else budget.measure_epoch_cost
        cost = measure(
            setup.fit_model,
            setup.fit_data,
            first_epoch=setup.initial_epoch,
            save_model=setup.model,
            checkpoint_every=spec.config.checkpoint_every,
        )
        reserve = _end_reserve(spec, state, cost, empty_phases=sum(p.epochs == 0 for p in later))
        if guard is not None:
            guard.reserve_s, guard.planned_epoch_s = reserve, cost.total_s
        if phase.trains_base:
            decided = budget_plan.PhasePlan(
                budget_plan.plan_epochs(clock.budget_s, clock.elapsed_s, cost, reserve_s=reserve)
            )
        else:
            decided = budget_plan.plan_head_epochs(
                clock.budget_s,
                clock.elapsed_s,
                cost,
                rule_epochs=phase.epochs,
                ft_need_s=_ft_epoch_estimate(state) if ft_follows else None,
                reserve_s=reserve,
            )
        _log_plan(state, phase, field, cost, decided, ft_follows, reserve)
        decide.write_recipe_card(plan.outdir, state.card)  # a resumed run keeps the plan
        return decided

    return planner


def _end_reserve(
    spec: config_lib.RunSpec, state: RunState, cost: budget_plan.EpochCost, *, empty_phases: int = 0
) -> float:
    """What the run needs after its last epoch: the phase's last checkpoint, its artifacts (the
    last phase save's time, or a model save's) and those of the phases after it that train no
    epoch (a few-shot run's `ft`), calibration's pass over validation (twice under flip TTA), a
    retrace."""
    passes = 2 if spec.config.tta == "flip" else 1
    val_pass = state.data.num_val / state.rate if state.rate else cost.val_s
    saves = cost.save_s * (1 + empty_phases) + max(state.save_s, cost.save_s)
    return saves + passes * val_pass + cost.trace_s + END_FIXED_S


END_FIXED_S = 1.0  # the calibration report's reliability diagram and run.json


def _ft_epoch_s(data: DataBundle, rate: float) -> float:
    """One fine-tuning epoch from the compiled forward rate: a training step about
    `budget.TRAIN_FORWARDS` forward passes over train, one pass over validation."""
    return (budget.TRAIN_FORWARDS * data.num_train + data.num_val) / rate


def _ft_epoch_estimate(state: RunState) -> float:
    """One fine-tuning epoch (`_ft_epoch_s`) and a model save; 0 without a measured rate."""
    return _ft_epoch_s(state.data, state.rate) + state.save_s if state.rate else 0.0


def _log_plan(
    state: RunState,
    phase,
    field: str,
    cost,
    decided: budget_plan.PhasePlan,
    ft_follows,
    reserve: float,
):
    clock = state.clock
    left = budget_plan.BUDGET_TARGET * clock.budget_s - clock.elapsed_s
    how = (
        f"fine-tuning follows: fe takes at most {budget_plan.FE_SHARE:.0%} of it, still switching on "
        "a plateau"
        if ft_follows
        else "the phase ends the run: it fills the budget and keeps its best validation epoch"
        if decided.keep_best
        else "the phase ends the run"
    )
    log.info(
        "[%s] time budget: an epoch costs %.2fs (train %.2fs, validation %.2fs, checkpoints and "
        "callbacks %.2fs); %.1fs of the %.0fs budget left, %.1fs of it kept for the run's end, "
        "%s: %d epochs",
        phase.name,
        cost.total_s,
        cost.train_s,
        cost.val_s,
        cost.overhead_s,
        left,
        clock.budget_s,
        reserve,
        how,
        decided.epochs,
    )
    state.card = state.card.with_decision(
        auto.Decision(
            field,
            decided.epochs,
            "budget",
            f"planned: {cost.total_s:.2f}s per epoch measured, {left:.0f}s of the "
            f"{clock.budget_s:.0f}s time budget left"
            + ("; fe fills the budget, keeping its best epoch" if decided.keep_best else ""),
        )
    )


def _record_planned(plan: RunPlan, state: RunState, phase) -> None:
    """The schedule in run.json gets a planned phase's real length."""
    state.run["schedule"] = [
        phase.to_dict() if p["name"] == phase.name else p for p in state.run["schedule"]
    ]


def _log_callbacks(config: config_lib.Config, wd: Workdir) -> list[keras.callbacks.Callback]:
    cbs: list[keras.callbacks.Callback] = []
    if config.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=wd.file("logs", "tensorboard")))
    if config.csv_log:
        os.makedirs(wd.file("logs"), exist_ok=True)
        cbs.append(keras.callbacks.CSVLogger(wd.file("logs", "epochs.csv"), append=True))
    return cbs


def save_phase(
    wd: Workdir,
    state: RunState,
    config: config_lib.Config,
    result: PhaseResult,
    *,
    pipeline=None,
) -> None:
    """Writes a phase's artifacts, then run.json (the commit point), each file atomically.

    `pipeline`: the data pipeline the phase trained on (its augmentation), for `summary.json`.
    """
    run, history, model, data = state.run, state.history, state.model, state.data
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
    if summary["data"] is not None and pipeline is not None:
        summary["data"]["pipeline"] = pipeline.describe()
    if result.averaged is not None:
        summary["weight_averaging"] = result.averaged
    rollback.save_rollback(wd, result, summary)
    io.atomic_write_json(wd.file(name, "summary.json"), summary)
    history.save(wd.file("history.json"), wd.file("history.csv"))
    if len(history):
        plot_history(
            history,
            wd.file("curves.png"),
            title=f"{run['backbone']}: {' -> '.join(s.phase for s in history.spans())}",
            show_lr=True,
        )
    calibrate.forget_temperature(run)  # fitted for the model this phase replaces
    run["phases"][name] = {
        k: summary[k]
        for k in ("first_epoch", "last_epoch", "epochs_run", "stopped_early", "wall_time_s")
    }
    if state.clock is not None:
        run["time_budget"] = state.clock.report()
    wd.write_run(run)


def load_phase_model(wd: Workdir, phase: str) -> keras.Model:
    """Loads what phase `phase` saved (its model and RNG states), checked.

    Raises:
      WorkdirError: the model is missing, truncated, or would run code when loaded.
      DamagedFileError: its rng_state.json is damaged.
    """
    fix = f"rerun phase {phase!r} (--phase={phase} --overwrite)"
    model = load_model(wd.model_path(phase), compile=False, fix=fix)
    rng_path = wd.file(phase, RNG_FILE)
    if os.path.isfile(rng_path):
        try:
            set_rng_state(model, schema.read_json(rng_path, RNG_SHAPE, fix=fix))
        except ValueError as e:  # states of layers the model does not have
            raise schema.damaged(rng_path, str(e), fix) from None
    return model


def _final_phase(run: dict) -> str:
    """The last phase of the schedule that is done: the one whose model the run ends with."""
    names = [p["name"] for p in run.get("schedule", [])]
    return [n for n in names if n in run["phases"]][-1]


def _final_model(wd: Workdir, run: dict) -> keras.Model:
    return load_phase_model(wd, _final_phase(run))


def build_initial_model(
    config: config_lib.Config | config_lib.RunSpec, data: DataBundle
) -> keras.Model:
    """Builds the model the first phase starts from (base frozen, ready for `fe`).

    With `weights = "none"` the random base's BatchNorm statistics are re-estimated from a few
    training batches (see `calibrate_batchnorm`); pretrained bases are never touched.

    Args:
      config: the config, or its `RunSpec`.
      data: the data bundle (its classes, and batches for the calibration).
    """
    spec = config_lib.resolve(config)
    model = build_model(
        spec.backbone,
        data.num_classes,
        image_size=spec.image_size,
        weights=spec.weights,
        alpha=spec.config.alpha,
        head_units=spec.config.head_units,
        dropout=spec.config.dropout,
        seed=spec.config.seed,
    )
    if spec.weights is None:
        n = calibrate_batchnorm(model, data.train_epochs(0, 1).take(BN_CALIBRATION_BATCHES))
        log.warning(
            "weights=none: the base starts random, so training only the head learns what random "
            "features carry (use pretrained weights for transfer learning). Its BatchNorm "
            "statistics were re-estimated from %d training batches so its features do not "
            "vanish; no other weight changed",
            n,
        )
    return model
