"""Runs a schedule of phases and keeps the workdir. The CLI, the notebooks and the tests call it.

`train(config, workdir)` runs the whole schedule (or one phase of it), in three steps:

1. **plan** (`tl_keras.training.plan.plan_run`): which phases run from which state of the
   workdir, and every refusal, before TensorFlow loads;
2. **state** (`initial_state`): the data, and the model and history the first phase starts
   from: a new model, what the previous phase saved, or the newest checkpoint;
3. **loop** (`run_phases`): each phase (`tl_keras.training.phase.run_phase`), then rollback when
   asked, then its artifacts and `run.json`, the commit point.

A schedule may have any number of phases (gradual unfreezing); under `rollback`, a phase that
ends worse than the previous phase's best is undone. `run_phase` runs one phase on a model in
memory, for users who want the pieces.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence

import keras

from tl_keras import _failpoints, io
from tl_keras import config as config_lib
from tl_keras.data.pipeline import DataBundle
from tl_keras.data.sources import load_data
from tl_keras.errors import WorkdirError
from tl_keras.history import History
from tl_keras.model.classifier import (
    RNG_FILE,
    build_model,
    calibrate_batchnorm,
    get_rng_state,
    set_rng_state,
)
from tl_keras.plotting import plot_history
from tl_keras.training import checkpoint, distribute, optim, rollback
from tl_keras.training.phase import PhaseResult, run_phase
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
    """

    model: keras.Model
    history: History
    run: dict
    reference: rollback.Snapshot | None
    data: DataBundle


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
      ConfigError, BackboneError, DataError, WorkdirError: bad input, before anything is written.
      TrainingError: the loss or the weights became NaN or infinite (the last good
        checkpoint is kept).

    Example:
      >>> cfg = Config(data_dir="synthetic", backbone="mobilenet", alpha=0.25, weights="none")
      >>> result = train(cfg, "runs/demo")
      >>> result.history.boundaries()
      [5.5]
    """
    spec = config_lib.resolve(config)  # the one place the config is worked out
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
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(spec, workdir, *, strategy, phase, overwrite, resume, data, callbacks) -> RunResult:
    """`train` inside the strategy's scope; only the chief's artifacts land in the workdir.

    Under multi-worker training, saving a model reads synchronised variables (BatchNorm
    statistics, metrics) with collective operations that every worker must join in the same
    order. So every worker makes the same writes; a non-chief makes them in a scratch folder that
    is deleted at the end (the pattern of TensorFlow's multi-worker guide).
    """
    chief = distribute.is_chief(strategy)
    if not chief:
        log.info("%s: training; the chief writes every artifact", distribute.describe(strategy))
    outdir = workdir if chief else tempfile.mkdtemp(prefix="tl_keras-worker-")
    try:
        plan = plan_run(
            spec, workdir, phase=phase, overwrite=overwrite, resume=resume, outdir=outdir
        )
        if plan.nothing_to_do:
            return _finished_run(plan)
        plan = _scale_learning_rates(plan, spec.config, strategy.num_replicas_in_sync)
        state = initial_state(plan, spec, data)
        distribute.enable_multi_worker_fit(state.model, strategy)  # evaluate() for rollback, too
        _start_run(plan, spec.config, state)
        results = run_phases(plan, spec, state, strategy=strategy, callbacks=callbacks)
        return RunResult(
            state.model, state.history, results, list(state.data.class_names), plan.workdir.path
        )
    finally:
        if not chief:
            shutil.rmtree(outdir, ignore_errors=True)


def _finished_run(plan: RunPlan) -> RunResult:
    """What `train --resume` returns for a run whose every phase is done."""
    wd = plan.workdir
    path = wd.file("history.json")
    history = History.load(path) if os.path.isfile(path) else History()
    return RunResult(
        _final_model(wd, plan.run), history, [], list(plan.run["class_names"]), wd.path
    )


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
        _check_rates(plan, spec, model)  # before an old run is cleared
        if run is not None and plan.chief:  # --overwrite or a restart: now clear the old run
            wd.clear_results()
            checkpoint.remove_all(wd.path)
        run = {**spec.identity, "class_names": list(data.class_names), "phases": {}}
        history = History()
    else:
        model = load_phase_model(wd, prev.name)
        history = History.load(wd.file("history.json")).truncate(plan.done[prev.name]["last_epoch"])
        if config.rollback:
            reference = rollback.load_rollback_reference(wd, prev, model, data, config.rollback)
        names = [p.name for p in plan.schedule]
        first = names.index(plan.targets[0].name)
        for n in [n for n in plan.done if n in names and names.index(n) >= first]:
            run["phases"].pop(n)  # redone phases and everything after them
    _check_rates(plan, spec, model)
    return RunState(model, history, run, reference, data)


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


def _start_run(plan: RunPlan, config: config_lib.Config, state: RunState) -> None:
    """Writes run.json (with the schedule) and config.json: a run is in progress from here on."""
    out = plan.outdir
    state.run["schedule"] = [p.to_dict() for p in plan.schedule]
    out.write_run(state.run)
    io.atomic_write_text(out.file("config.json"), config_lib.to_json(config))


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
    for p in plan.targets:
        result = run_phase(
            state.model,
            p,
            state.data,
            backbone=spec.backbone,
            initial_epoch=state.history.last_epoch,
            bn_policy=config.bn_policy,
            callbacks=[*callbacks, *_log_callbacks(config, out)],
            progress=config.progress,
            track_best=config.rollback or None,
            checkpoint_dir=out.path,
            history_before=state.history,
            resume=ckpt if ckpt is not None and ckpt.phase == p.name else None,
            feature_cache=config.feature_cache,
            cache_dir=out.path,
            jit_compile=config.jit_compile,
            strategy=strategy,
        )
        if config.rollback:
            state.reference = rollback.apply_rollback(
                state.model, result, state.reference, state.data
            )
        state.history.extend(result.history)
        _mark_kept(state.history, result)
        save_phase(out, state, config, result)
        checkpoint.remove_all(out.path)  # the phase's saved model supersedes its checkpoints
        _failpoints.hit(f"phase_saved:{p.name}")
        results.append(result)
    return results


def _mark_kept(history: History, result: PhaseResult) -> None:
    """Marks the epoch whose weights the phase handed on, when not simply its last one."""
    decision = result.rollback
    if decision is not None and decision.rolled_back:
        history.mark_kept(result.phase.name, decision.reference.epoch, "rollback")
    elif result.kept_epoch is not None:
        history.mark_kept(result.phase.name, result.kept_epoch, "early stopping")


def _log_callbacks(config: config_lib.Config, wd: Workdir) -> list[keras.callbacks.Callback]:
    cbs: list[keras.callbacks.Callback] = []
    if config.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=wd.file("logs", "tensorboard")))
    if config.csv_log:
        os.makedirs(wd.file("logs"), exist_ok=True)
        cbs.append(keras.callbacks.CSVLogger(wd.file("logs", "epochs.csv"), append=True))
    return cbs


def save_phase(
    wd: Workdir, state: RunState, config: config_lib.Config, result: PhaseResult
) -> None:
    """Writes a phase's artifacts, then run.json (the commit point), each file atomically."""
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
    run["phases"][name] = {
        k: summary[k]
        for k in ("first_epoch", "last_epoch", "epochs_run", "stopped_early", "wall_time_s")
    }
    wd.write_run(run)


def load_phase_model(wd: Workdir, phase: str) -> keras.Model:
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


def _final_model(wd: Workdir, run: dict) -> keras.Model:
    names = [p["name"] for p in run.get("schedule", [])]
    done = [n for n in names if n in run["phases"]]
    return load_phase_model(wd, done[-1])


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
