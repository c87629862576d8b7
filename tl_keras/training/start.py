"""Where a run starts: its data and model, its recipe card, its one decided spec.

Between the plan (`tl_keras.training.plan`) and the phase loop (`tl_keras.training.runner`):

1. `initial_state`: what is fixed before the recipe decides anything, built from the checked
   config's sections (`tl_keras.config.check`): the data, listed, split and decode-checked once
   (its training batches the data as it is), and the model the first phase starts from (new,
   saved by the previous phase, or a checkpoint's);
2. `decide_recipe`: the recipe card, decided from facts measured on them or read back from the
   workdir, and from it the run's decided spec: `tl_keras.config.resolve`, once per run;
3. `prepare`: what follows from the spec: the rates checked against the base, a new run begun
   (an old one set aside, the data doctor), the rollback reference, and the training batches
   built once from the decided augmentation;
4. `start_run`: run.json, config.json (as given) and recipe.json (the card) written.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import keras

from tl_keras import config as config_lib
from tl_keras import io, schema
from tl_keras.data import augment, sources
from tl_keras.data.bundle import DataBundle
from tl_keras.model.classifier import (
    RNG_FILE,
    RNG_SHAPE,
    calibrate_batchnorm,
    load_model,
    set_rng_state,
)
from tl_keras.model.settings import ModelSettings
from tl_keras.recipe import Phase, auto, budget_plan, parse_stages, parse_unfreeze
from tl_keras.training import budget, checkpoint, decide, distribute, optim, replace, rollback
from tl_keras.training.history import History
from tl_keras.training.plan import RunPlan, check_same_run
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")

BN_CALIBRATION_BATCHES = 8  # batches used to re-estimate BatchNorm statistics of a random base


@dataclasses.dataclass
class RunState:
    """What the loop carries from phase to phase.

    Attributes:
      model: the model the next phase starts from.
      history: the stitched history so far.
      run: `run.json` as it will be written (identity, classes, phases done, schedule).
      reference: under rollback, the best weights the next phase must beat.
      data: the data the phases that augment train on (the decided augmentation).
      card: the recipe card the run follows.
      clock: the time budget and the run's start, or None without a budget.
      save_s: how long the last phase's artifacts took to write (the budget's reserve).
      rate: the frozen base's forward rate on this data (images/s), measured by the probe.
      plain: the same data for the phases that do not augment (the decided targets, no
        augmentation, MixUp or CutMix: a head can train on cached features).
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
    plain: DataBundle | None = None


def initial_state(
    plan: RunPlan, checked: config_lib.Checked, data: DataBundle | None = None
) -> RunState:
    """The data, and the model and history the first phase of the plan starts from.

    Everything here is fixed before the recipe card exists: the data is listed, split and
    decode-checked from the data section (its training batches unaugmented until the card
    decides, `prepare`), the model built from the model section. A checkpoint's model
    (resuming), a new model (the schedule's first phase; an old run there is cleared only once
    the card is decided, `_begin`), or what the previous phase saved.

    Raises:
      WorkdirError: the workdir holds another model or classes, or a saved model is damaged.
      DataError: the data cannot be used.
    """
    wd, prev, ckpt, run = plan.workdir, plan.previous, plan.resume_from, plan.run
    keras.utils.set_random_seed(checked.run.seed)
    if data is None:
        data = sources.load(checked.data, workdir=wd.path)
    if run is not None and (prev is not None or ckpt is not None):
        check_same_run(run, checked.identity, data.class_names, wd.path)
    if ckpt is not None:
        model = ckpt.load_model()
        history = ckpt.history.truncate(ckpt.phase_first_epoch - 1)
    elif prev is None:
        # A random base's BatchNorm statistics come from training batches as the config gives
        # them: the recipe has not decided yet, so what it would add is not in them.
        model = build_initial_model(
            checked.model,
            data.for_training(checked.given.augmentation),
            head_first=starts_with_head(checked.given),
        )
        history = History()
    else:
        model = load_phase_model(wd, prev)
        history = History.load(
            wd.file("history.json"),
            fix=f"rerun phase {prev!r} (--phase={prev} --overwrite)",
        ).truncate(plan.done[prev]["last_epoch"])
        for n in replace.redone_phases(plan):  # --overwrite: staged without them
            run["phases"].pop(n)  # redone phases and everything after them
    return RunState(model, history, run, None, data)


def run_doctor(spec, data: DataBundle, model, outdir: str, workdir: str | None = None) -> dict:
    """The data doctor before the first phase (`tl_keras.doctor.workflow.before_training`): one
    log line, the report in `<workdir>/doctor/`; what run.json records of it.

    `spec`: the run's `RunSpec` (its model and run sections); `workdir`: the workdir the run ends
    in, when `outdir` is its staged replacement."""
    from tl_keras.doctor import workflow

    return workflow.before_training(spec, data, model, outdir, workdir=workdir)


def phases_now(plan: RunPlan, spec: config_lib.RunSpec) -> list[Phase]:
    """The decided phases the plan runs now."""
    return [spec.phase(name) for name in plan.targets]


def _check_rates(plan: RunPlan, spec: config_lib.RunSpec, model: keras.Model) -> None:
    """Refuses per-block rates that do not fit the base (more groups than blocks) before any
    phase trains, rather than when the first phase that unfreezes starts.

    Raises:
      ConfigError: naming `layer_decay_groups` and the base's blocks.
    """
    for p in phases_now(plan, spec):
        if p.per_variable_rates:
            optim.discriminative_multipliers(
                model,
                spec.model.backbone,
                p.layer_decay,
                groups=p.layer_decay_groups,
                head=p.head_lr_ratio,
            )


def decide_recipe(
    plan: RunPlan,
    checked: config_lib.Checked,
    state: RunState,
    *,
    started: float,
    replicas: int = 1,
) -> config_lib.RunSpec:
    """The run's recipe card, then its decided spec: the one `config.resolve` of the run.

    The first phase of a run decides the card from facts measured on the data and the model; a
    later phase or a resumed run reads it from the workdir. The time budget's clock starts
    counting from `started`.

    Raises:
      WorkdirError: a damaged `recipe.json`.
    """
    card, rate, _ = decide.decide(
        checked, state.data, state.model, plan.workdir, first_phase=_first(plan)
    )
    spec = config_lib.resolve(checked, card, replicas=replicas)
    if spec.run.scale_lr_with_replicas and replicas > 1:
        log.info(
            "scale_lr_with_replicas: every learning rate x%d (%d replicas)", replicas, replicas
        )
    if spec.run.time_budget_s is not None:
        state.clock = budget.Clock(spec.run.time_budget_s, started)
    state.card, state.rate = card, rate
    return spec


def _first(plan: RunPlan) -> bool:
    """Whether the plan starts the run: its first phase, from no checkpoint."""
    return plan.previous is None and plan.resume_from is None


def _check_budget(spec: config_lib.RunSpec, state: RunState, rate: float) -> None:
    """Refuses a budget that cannot hold one epoch of each phase (estimated from the compiled
    forward rate: fe one pass over train + validation, an ft epoch `budget.TRAIN_FORWARDS`
    passes over train and one over validation)."""
    data, schedule = state.data, spec.schedule
    fe_s = (data.num_train + data.num_val) / rate
    ft = [p for p in schedule if p.trains_base and p.epochs > 0]
    budget_plan.check_budget_holds(
        spec.run.time_budget_s,
        state.clock.elapsed_s,
        fe_s,
        ft_epoch_s(data, rate),
        ft_runs=bool(ft),
    )


def prepare(plan: RunPlan, spec: config_lib.RunSpec, state: RunState, strategy) -> None:
    """What follows from the decided spec before the first phase trains.

    The per-block rates checked against the base; a new run begun (`_begin`), and the refusal
    of a time budget that cannot hold one epoch of each phase; under rollback, the reference
    the first phase must beat; then the training batches, built once from the decided
    augmentation (and, for phases that do not augment, without it), each worker's part.

    Raises:
      ConfigError: per-block rates the base cannot take, or a time budget too small.
    """
    _check_rates(plan, spec, state.model)
    if _first(plan):
        _begin(plan, spec, state)
        if state.clock is not None and state.rate:
            _check_budget(spec, state, state.rate)
    if spec.run.rollback and plan.previous is not None:
        state.reference = rollback.load_rollback_reference(
            plan.workdir, spec.phase(plan.previous), state.model, state.data, spec.run.rollback
        )
    data = distribute.shard_data(state.data, strategy)  # each worker its own part
    state.data = data.for_training(spec.augmentation)
    state.plain = data.for_training(spec.augmentation.unaugmented)
    if state.data.pipeline is not None:
        augment.log_training(state.data.pipeline)
    distribute.enable_multi_worker_fit(state.model, strategy)  # rollback evaluates


def _begin(plan: RunPlan, spec: config_lib.RunSpec, state: RunState) -> None:
    """A run's first phase starts anew, once everything is set up: the new run.json, the data
    doctor."""
    wd, run = plan.workdir, state.run
    # --resume with nothing finished and nothing to resume from: start again. (--overwrite
    # stages its run instead, `replace.staged`: the old run stays until a phase is done.)
    if run is not None and plan.outdir.path == wd.path:
        wd.clear_results()
        checkpoint.remove_all(wd.path)
    state.run = {**spec.identity, "class_names": list(state.data.class_names), "phases": {}}
    state.run["doctor"] = run_doctor(
        spec, state.data, state.model, plan.outdir.path, plan.workdir.path
    )


def start_run(plan: RunPlan, spec: config_lib.RunSpec, state: RunState) -> None:
    """Writes run.json (with the schedule), config.json (as given: 'auto' where the recipe
    decides) and recipe.json (the card): a run is in progress from here on.

    A phase that starts afresh drops checkpoints an earlier attempt left (they would otherwise
    outrank its own on a later --resume).
    """
    out = plan.outdir
    if plan.resume_from is None:
        checkpoint.remove_all(out.path)
    state.run["schedule"] = [p.to_dict() for p in spec.schedule]
    # How the trained model is served: predict, evaluate and every export read this.
    state.run["inference"] = {**state.run.get("inference", {}), "tta": spec.tta}
    out.write_run(state.run)
    io.atomic_write_text(out.file("config.json"), config_lib.to_json(spec.given))
    decide.write_recipe_card(out, state.card)


def ft_epoch_s(data: DataBundle, rate: float) -> float:
    """One fine-tuning epoch from the compiled forward rate: a training step about
    `budget.TRAIN_FORWARDS` forward passes over train, one pass over validation."""
    return (budget.TRAIN_FORWARDS * data.num_train + data.num_val) / rate


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


def starts_with_head(given: config_lib.Config) -> bool:
    """Whether the run's first phase trains only the head: the default schedule's `fe`, or
    given stages whose first unfreezes nothing (not a scratch run's `scratch:all:N`)."""
    if not given.stages:
        return True
    return parse_unfreeze(parse_stages(given.stages)[0].unfreeze).kind == "none"


def build_initial_model(
    model: ModelSettings, data: DataBundle, *, head_first: bool = True
) -> keras.Model:
    """Builds the model the first phase starts from (base frozen, ready for `fe`).

    With `weights = "none"` the random base's BatchNorm statistics are re-estimated from a few
    of `data`'s training batches (see `calibrate_batchnorm`); pretrained bases are never
    touched.

    Args:
      model: the model section (`tl_keras.model.settings.ModelSettings`; a `Config`'s `.model`).
      data: the data bundle (its classes, and batches for the calibration).
      head_first: the first phase trains only the head on the random base, which is worth a
        warning; a run that trains the base from its first step (from scratch) is told nothing
        it did not ask for (the calibration is logged at INFO).
    """
    built = model.build(data.num_classes)
    if model.weights is None:
        n = calibrate_batchnorm(built, data.train_epochs(0, 1).take(BN_CALIBRATION_BATCHES))
        log.log(
            logging.WARNING if head_first else logging.INFO,
            "weights=none: the base starts random%s. Its BatchNorm statistics were "
            "re-estimated from %d training batches so its features do not vanish; no other "
            "weight changed",
            ", so training only the head learns what random features carry (use pretrained "
            "weights for transfer learning)"
            if head_first
            else "",
            n,
        )
    return built
