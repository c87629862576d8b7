"""Runs a schedule of phases and keeps the workdir. The CLI, the notebooks and the tests call it.

`train(config, workdir)` checks the config once (`tl_keras.config.check`: every field, and the
sections the recipe does not decide), then runs the whole schedule (or one phase of it):

1. **plan** (`tl_keras.training.plan.plan_run`): which phases run from which state of the
   workdir, and every refusal, before TensorFlow loads;
2. **state** (`initial_state`): the data (listed, split and decode-checked once from the data
   section), and the model and history the first phase starts from: a new model, what the
   previous phase saved, or the newest checkpoint;
3. **recipe** (`decide_recipe`): the card, decided from facts measured on that data and model
   (`tl_keras.training.decide`) or read back from the workdir's `recipe.json`, and from it the
   run's one decided spec (`tl_keras.config.resolve`); then (`prepare`) the training batches,
   built once from its decided augmentation;
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

from tl_keras import _failpoints, io
from tl_keras import config as config_lib
from tl_keras.data import sources
from tl_keras.data.bundle import DataBundle
from tl_keras.errors import DiskFullError
from tl_keras.model.classifier import RNG_FILE, get_rng_state
from tl_keras.recipe import auto, budget_plan
from tl_keras.training import (
    budget,
    calibrate,
    checkpoint,
    class_weight,
    decide,
    distribute,
    replace,
    replan,
    rollback,
    schedules,
)
from tl_keras.training.curves import plot_history
from tl_keras.training.history import History
from tl_keras.training.phase import PhaseOptions, PhaseResult, PhaseSetup, run_phase
from tl_keras.training.plan import RunPlan, check_options, plan_run
from tl_keras.training.settings import RunSettings
from tl_keras.training.start import (
    RunState,
    decide_recipe,
    ft_epoch_s,
    initial_state,
    load_phase_model,
    phases_now,
    prepare,
    start_run,
)
from tl_keras.workdir import Workdir, nothing_left_if_refused

log = logging.getLogger("tl_keras")


@dataclasses.dataclass
class RunResult:
    """What `train` did: the final model, the stitched history, and each phase's result."""

    model: keras.Model
    history: History
    phases: list[PhaseResult]
    class_names: list[str]
    workdir: str | None = None


def train(
    config: config_lib.Config | config_lib.Checked,
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
      config: the config (see `tl_keras.config`), or what `config.check` made of it.
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
    checked = config if isinstance(config, config_lib.Checked) else config_lib.check(config)
    check_options(overwrite=overwrite, resume=resume)
    run = checked.run
    strategy = distribute.make_strategy(run.strategy, logical_cpus=run.logical_cpus)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(distribute.precision_policy(run.precision))
    try:
        with strategy.scope():
            return _train(
                checked,
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
    checked, workdir, *, strategy, phase, overwrite, resume, data, callbacks, started
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
        # The chief's lock, and a refusal leaves nothing it created (the workdir included).
        with (
            nothing_left_if_refused(workdir, hold_lock=True) if chief else contextlib.nullcontext()
        ):
            if chief and resume:
                io.remove_leftovers(os.path.abspath(workdir))
            plan = plan_run(
                checked, workdir, phase=phase, overwrite=overwrite, resume=resume, outdir=outdir
            )
            if resume and (note := plan.workdir.replaced_note()):
                log.info(note)
            if plan.nothing_to_do:
                return _finished_run(plan, checked, data, replicas=strategy.num_replicas_in_sync)
            # --overwrite of a run: a transaction, the old run in place until a phase is done
            with replace.staged(plan, overwrite=overwrite) as plan:
                state = None
                try:
                    state = initial_state(plan, checked, data)
                    spec = decide_recipe(
                        plan,
                        checked,
                        state,
                        started=started,
                        replicas=strategy.num_replicas_in_sync,
                    )
                    prepare(plan, spec, state, strategy)
                    start_run(plan, spec, state)
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
    plan: RunPlan, checked: config_lib.Checked, data: DataBundle | None, *, replicas: int
) -> RunResult:
    """What `train --resume` returns for a run whose every phase is done.

    A run stopped after its last phase was saved but before its temperature was fitted (a kill
    during calibration) gets its calibration now, as the uninterrupted run would have: with the
    run's spec as its card decided it (`recipe.json`; its test-time augmentation), the run's
    one `config.resolve`, and its data loaded once from the data section.
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
        card = decide.read_recipe_card(wd) or decide.fixed_card(checked.given)
        spec = config_lib.resolve(checked, card, replicas=replicas)
        phase = _final_phase(plan.run)
        log.info("the run stopped before its calibration: fitting the temperature of %r", phase)
        if data is None:
            data = sources.load(spec.data, workdir=wd.path)
        calibrate.calibrate_run(wd, dict(plan.run), model, data, spec, phase)
    return RunResult(model, history, [], list(plan.run["class_names"]), wd.path)


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
    out, ckpt, run, results = plan.outdir, plan.resume_from, spec.run, []
    weights = _class_weights(run, state.data)
    for p in phases_now(plan, spec):
        data = state.data if p.augment else state.plain  # e.g. fe on cached features
        guard = [budget.BudgetGuard(state.clock, state.save_s)] if state.clock else []
        planner = _epochs_planner(plan, spec, state, p, guard[0] if guard else None)
        options = PhaseOptions(
            backbone=spec.model.backbone,
            initial_epoch=state.history.last_epoch,
            history_before=state.history,
            resume=ckpt if ckpt is not None and ckpt.phase == p.name else None,
            bn_policy=spec.model.bn_policy,
            jit_compile=run.jit_compile,
            strategy=strategy,
            class_weight=weights,
            feature_cache=run.feature_cache,
            cache_dir=out.shared_root,  # the feature cache outlives a run
            callbacks=[*callbacks, *guard, *_log_callbacks(run, out)],
            progress=run.progress,
            track_best=run.rollback or None,
            checkpoint_dir=out.path,
            checkpoint_every=run.checkpoint_every,
            epochs_planner=planner,
            on_replan=decide.card_follows(plan.outdir, state),
            time_budget=state.clock is not None,
        )
        result = run_phase(state.model, p, data, options)
        if result.phase.epochs != p.epochs:  # planned from the time budget
            _record_planned(plan, state, result.phase)
        if run.rollback:
            state.reference = rollback.apply_rollback(
                state.model, result, state.reference, state.data
            )
        state.history.extend(result.history)
        _mark_kept(state.history, result)
        started = time.monotonic()
        save_phase(out, state, spec.decided_config(), result, pipeline=data.pipeline)
        state.save_s = time.monotonic() - started
        checkpoint.remove_all(out.path)  # the phase's saved model supersedes its checkpoints
        out.commit(f"this run finished phase {p.name!r}")  # an --overwrite's staged run: swapped in
        _failpoints.hit(f"phase_saved:{p.name}")
        results.append(result)
    if results:  # the temperature of the model this run ends with, fitted on validation
        # The last phase's validation top, unless rollback may have restored weights below it.
        frozen = results[-1].validation if not run.rollback else None
        calibrate.calibrate_run(
            out, state.run, state.model, state.data, spec, p.name, frozen=frozen
        )
        if state.clock is not None:  # what the run used, its end included
            state.run["time_budget"] = state.clock.report()
            out.write_run(state.run)
    return results


def _class_weights(run: RunSettings, data: DataBundle) -> dict[int, float] | None:
    """The per-class loss weights of `class_weight`, logged once (None: unweighted)."""
    weights = class_weight.class_weights(run.class_weight, data.train_labels, data.num_classes)
    if weights is not None:
        log.info(
            "class_weight=%s: each training image's loss weighs %s",
            run.class_weight,
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
    if state.clock is None or card is None or plan.resume_from or spec.given.stages:
        return None
    field = "epochs_ft" if phase.trains_base else "epochs_fe"
    if phase.epochs == 0 or card.get(field).source not in ("rule", "budget"):
        return None
    targets = phases_now(plan, spec)
    later = targets[targets.index(phase) + 1 :]
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
            checkpoint_every=spec.run.checkpoint_every,
        )
        reserve = _end_reserve(spec, state, cost, empty_phases=sum(p.epochs == 0 for p in later))
        if guard is not None:
            guard.reserve_s, guard.planned_epoch_s = reserve, cost.total_s
        need = _ft_epoch_estimate(state) if ft_follows and not phase.trains_base else None
        if phase.trains_base:
            # A new length costs a trace of the train step, unless the cosine's length is a
            # variable (`schedules.settable_length`, set before the measurement traced it).
            optimizer = setup.model.optimizer
            if schedules.has_settable_length(getattr(optimizer, "_learning_rate", None)) and (
                phase.weight_averaging != "ema"
            ):
                cost = dataclasses.replace(cost, trace_s=0.0)
            decided = budget_plan.PhasePlan(
                budget_plan.plan_epochs(
                    clock.budget_s, clock.elapsed_s, cost, reserve_s=reserve, unchanged=phase.epochs
                )
            )
        else:
            decided = budget_plan.plan_head_epochs(
                clock.budget_s,
                clock.elapsed_s,
                cost,
                rule_epochs=phase.epochs,
                ft_need_s=need,
                reserve_s=reserve,
            )
        _log_plan(state, phase, field, cost, decided, ft_follows, reserve)
        decided = replan.with_deadline(decided, clock, cost, phase, reserve, need, ft_follows)
        decide.write_recipe_card(plan.outdir, state.card)  # a resumed run keeps the plan
        return decided

    return planner


def _end_reserve(
    spec: config_lib.RunSpec, state: RunState, cost: budget_plan.EpochCost, *, empty_phases: int = 0
) -> float:
    """What the run needs after its last epoch: the phase's last checkpoint, its artifacts (the
    last phase save's time, or a model save's) and those of the phases after it that train no
    epoch (a few-shot run's `ft`), calibration's pass over validation (twice under flip TTA) and
    the trace of its forward graph. Not the train step's trace: a phase pays that inside its
    first epoch (`budget_plan.plan_epochs`); counted here too, it left the flowers' budgeted runs
    at 0.87-0.90 of the budget (issue 24)."""
    passes = 2 if spec.tta == "flip" else 1
    val_pass = state.data.num_val / state.rate if state.rate else cost.val_s
    saves = cost.save_s * (1 + empty_phases) + max(state.save_s, cost.save_s)
    return saves + passes * val_pass + cost.eval_trace_s + END_FIXED_S


END_FIXED_S = 1.0  # the calibration report's reliability diagram and run.json


def _ft_epoch_estimate(state: RunState) -> float:
    """One fine-tuning epoch (`start.ft_epoch_s`) and a model save; 0 without a measured rate."""
    return ft_epoch_s(state.data, state.rate) + state.save_s if state.rate else 0.0


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


def _log_callbacks(run: RunSettings, wd: Workdir) -> list[keras.callbacks.Callback]:
    cbs: list[keras.callbacks.Callback] = []
    if run.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=wd.file("logs", "tensorboard")))
    if run.csv_log:
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


def _final_phase(run: dict) -> str:
    """The last phase of the schedule that is done: the one whose model the run ends with."""
    names = [p["name"] for p in run.get("schedule", [])]
    return [n for n in names if n in run["phases"]][-1]


def _final_model(wd: Workdir, run: dict) -> keras.Model:
    return load_phase_model(wd, _final_phase(run))
