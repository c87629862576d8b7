"""Runs a schedule of phases. The CLI, the notebooks and the tests all call these functions.

`train(config, workdir)` runs the whole schedule (or one phase of it) and keeps the workdir;
`run_phase(model, phase, data, ...)` runs one phase on a model in memory, for users who want the
pieces. Each phase: set what trains (BatchNorm stays frozen), report trainable and frozen
parameters, recompile with a fresh optimizer at the phase's learning rate, and `fit` from the
epoch where the previous phase really ended, with fresh stateful callbacks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence

import keras

from tl_keras import backbones, io_utils, recipe
from tl_keras import config as config_lib
from tl_keras.data import DataBundle, load_data
from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.history import History
from tl_keras.model import (
    TrainabilityReport,
    build_model,
    calibrate_batchnorm,
    get_rng_state,
    set_rng_state,
    set_trainable,
)
from tl_keras.plotting import plot_history
from tl_keras.recipe import Phase
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")

RNG_FILE = "rng_state.json"  # dropout RNG states, which Keras does not save in .keras files
BN_CALIBRATION_BATCHES = 8  # batches used to re-estimate BatchNorm statistics of a random base


@dataclasses.dataclass
class PhaseResult:
    """What one phase did."""

    phase: Phase
    history: History
    report: TrainabilityReport
    wall_time_s: float
    stopped_early: bool


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


def compile_for_phase(model: keras.Model, phase: Phase) -> None:
    """Recompiles with a fresh optimizer: required after any change of `trainable`."""
    model.compile(
        optimizer=make_optimizer(phase.optimizer, phase.lr),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def current_lr(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule is evaluated at the current step)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class HistoryRecorder(keras.callbacks.Callback):
    """Records each epoch into a `History` with the phase name and the learning rate used.

    It must run before callbacks that change the learning rate at epoch end (ReduceLROnPlateau),
    so the runner puts it first.
    """

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self.history = History()

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(self.phase, epoch + 1, current_lr(self.model), logs or {})


class EpochLogger(keras.callbacks.Callback):
    """One plain line per epoch, for logs and non-interactive runs (no progress-bar noise)."""

    def __init__(self, phase: str, initial_epoch: int, epochs: int):
        super().__init__()
        self.phase, self.initial_epoch, self.epochs = phase, initial_epoch, epochs

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
            current_lr(self.model),
        )


def _use_progress_bar(progress: str) -> bool:
    return progress == "bar" or (progress == "auto" and sys.stdout.isatty())


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

    Returns:
      The phase's history (global epochs), trainability report, wall time and whether early
      stopping ended it.

    Example:
      >>> result = run_phase(model, Phase("fe", "none", 3, 1e-3), data, backbone="mobilenet")
    """
    report = set_trainable(model, backbone, phase.unfreeze, bn_policy=bn_policy)
    log.info("[%s] %s", phase.name, report.summary())
    compile_for_phase(model, phase)
    recorder = HistoryRecorder(phase.name)
    cbs: list[keras.callbacks.Callback] = [recorder]
    early = None
    if phase.early_stopping_patience:
        early = keras.callbacks.EarlyStopping(
            monitor="val_loss" if data.val is not None else "loss",
            patience=phase.early_stopping_patience,
            restore_best_weights=True,
        )
        cbs.append(early)
    bar = _use_progress_bar(progress)
    if not bar:
        cbs.append(EpochLogger(phase.name, initial_epoch, phase.epochs))
    cbs += list(callbacks)
    start = time.perf_counter()
    if phase.epochs > 0:
        model.fit(
            data.train_epochs(initial_epoch, phase.epochs),
            validation_data=data.val,
            epochs=initial_epoch + phase.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=data.steps_per_epoch,
            shuffle=False,  # the order is the data bundle's: a pure function of (seed, epoch)
            callbacks=cbs,
            verbose=1 if bar else 0,
        )
    wall = time.perf_counter() - start
    stopped = bool(early is not None and early.stopped_epoch > 0)
    if stopped:
        log.info(
            "[%s] early stopping after %d of %d epochs; restored the phase's best weights",
            phase.name,
            len(recorder.history),
            phase.epochs,
        )
    return PhaseResult(phase, recorder.history, report, wall, stopped)


# --- the whole run --------------------------------------------------------------------------------
def _identity(config: config_lib.Config) -> dict:
    spec = backbones.get(config.backbone)
    return {
        "backbone": spec.name,
        "alpha": config.alpha,
        "image_size": config.image_size or spec.default_size,
        "head_units": config.head_units,
        "dropout": config.dropout,
        "weights": backbones.normalize_weights(config.weights),
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
            set_rng_state(model, io_utils.read_json(rng_path))
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
    with io_utils.atomic_path(wd.model_path(name)) as tmp:
        model.save(tmp)
    io_utils.atomic_write_json(wd.file(name, RNG_FILE), get_rng_state(model))
    result.history.save(wd.file(name, "history.json"))
    io_utils.atomic_write_text(wd.file(name, "config.json"), config_lib.to_json(config))
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
    io_utils.atomic_write_json(wd.file(name, "summary.json"), summary)
    history.save(wd.file("history.json"), wd.file("history.csv"))
    if len(history):
        plot_history(
            history,
            wd.file("curves.png"),
            title=f"{run['backbone']}: {' -> '.join(s.phase for s in history.spans())}",
        )
    run["phases"][name] = {
        k: summary[k]
        for k in ("first_epoch", "last_epoch", "epochs_run", "stopped_early", "wall_time_s")
    }
    wd.write_run(run)


def train(
    config: config_lib.Config,
    workdir: str,
    *,
    phase: str = "all",
    overwrite: bool = False,
    data: DataBundle | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> RunResult:
    """Runs the config's schedule (or one phase of it) and writes every artifact to `workdir`.

    A phase after the first loads what the previous phase saved in `workdir`, checks that the
    config and data describe the same model (backbone, width, size, head, classes), and continues
    the epoch count where that phase really ended.

    Args:
      config: the resolved config (see `tl_keras.config`).
      workdir: the run's folder.
      phase: 'all' or the name of one phase ('fe', 'ft').
      overwrite: replace results already in `workdir` (otherwise refused).
      data: a ready `DataBundle`; default: load what `config.data_dir` names.
      callbacks: extra Keras callbacks added to every phase.

    Returns:
      The final model, the stitched history and each phase's result.

    Raises:
      ConfigError, BackboneError, DataError, WorkdirError: bad input, before anything is written.

    Example:
      >>> cfg = Config(data_dir="synthetic", backbone="mobilenet", alpha=0.25, weights="none")
      >>> result = train(cfg, "runs/demo")
      >>> result.history.boundaries()
      [5.5]
    """
    config = config_lib.validate(config)
    schedule = recipe.build_schedule(config)
    to_run = recipe.select_phases(schedule, phase)
    wd = Workdir(workdir)
    wd.ensure_writable()
    run = wd.read_run()
    done = dict(run["phases"]) if run else {}
    prev = recipe.previous_phase(schedule, to_run[0])
    redo = [p.name for p in to_run if p.name in done]
    if prev is None and run is not None and not overwrite:
        raise WorkdirError(
            f"workdir {wd.path!r} already holds a run (phases done: {', '.join(done) or 'none'}); "
            "pass --overwrite to replace it, or use another --workdir"
        )
    if prev is not None:
        if prev.name not in done:
            raise WorkdirError(
                f"--phase={to_run[0].name} needs phase {prev.name!r} done in {wd.path!r}, which has "
                f"{', '.join(done) or 'nothing'}; run --phase={prev.name} there first"
            )
        if redo and not overwrite:
            raise WorkdirError(
                f"phase(s) {', '.join(redo)} already done in {wd.path!r}; pass --overwrite to redo "
                "them from the end of the previous phase, or use another --workdir"
            )

    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = load_data(config, workdir=wd.path)
    if prev is None:
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
                "weights=none: the base is random, so feature extraction only learns what random "
                "features carry (use pretrained weights for real results). Its BatchNorm "
                "statistics were re-estimated from %d training batches so its features do not "
                "vanish; no other weight changed",
                n,
            )
        if run is not None:  # --overwrite, and the new run has been set up without error
            wd.clear_results()
        run = {**_identity(config), "class_names": list(data.class_names), "phases": {}}
        history = History()
    else:
        check_same_run(run, config, data.class_names, wd.path)
        model = _load_phase_model(wd, prev.name)
        history = History.load(wd.file("history.json")).truncate(done[prev.name]["last_epoch"])
        names = [p.name for p in schedule]
        stale = [n for n in done if n in names and names.index(n) >= names.index(to_run[0].name)]
        for n in stale:  # redone phases and everything after them
            run["phases"].pop(n)
    run["schedule"] = [p.to_dict() for p in schedule]
    io_utils.atomic_write_text(wd.file("config.json"), config_lib.to_json(config))

    results = []
    for p in to_run:
        result = run_phase(
            model,
            p,
            data,
            backbone=config.backbone,
            initial_epoch=history.last_epoch,
            bn_policy=config.bn_policy,
            callbacks=[*callbacks, *_log_callbacks(config, wd)],
            progress=config.progress,
        )
        history.extend(result.history)
        _save_phase(wd, run, config, result, history, model, data)
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
