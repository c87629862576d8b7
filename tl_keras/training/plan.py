"""What a `train` call will do, decided before anything loads: the phases, and every refusal.

`plan_run` reads only the workdir's small files (`run.json`, `config.json`, the newest
checkpoint's `state.json`) and imports no TensorFlow, so each refusal (a finished run without
--overwrite or --resume, a phase whose predecessor is not done, a --resume with another config)
is a plain function call away from a test, like the recipe. `check_same_run`, the one refusal
that needs the data's class names, runs once the data is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

from tl_keras import config as config_lib
from tl_keras import io, recipe
from tl_keras.errors import ConfigError, DamagedFileError, WorkdirError
from tl_keras.io import available_memory
from tl_keras.model import backbones
from tl_keras.training import checkpoint
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")

# Fields that may differ when a run is resumed: they change what is logged, not what is trained.
# None of these changes what trains (a checkpoint's cadence only what a kill loses).
RESUME_MAY_CHANGE = ("progress", "tensorboard", "csv_log", "doctor", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The phases a `train` call runs and the state of the workdir it starts from.

    Phases are named, not yet decided: a plan is made before the recipe card exists (the run's
    decided spec gives each its settings, `RunSpec.phase`).

    Attributes:
      schedule: the name of every phase of the config, in order.
      targets: the names of the phases to run now; empty when a --resume finds nothing left.
      previous: the phase before the first target (its saved model is the start), or None.
      run: the workdir's `run.json` as read, None for a new workdir, or {} for a damaged one
        that --overwrite replaces.
      done: the phases done there, name -> their `run.json` entry.
      resume_from: the checkpoint the first target continues from, or None.
      workdir: the run's folder (read from).
      outdir: where this process writes (the workdir, or a non-chief worker's scratch folder).
    """

    schedule: tuple[str, ...]
    targets: tuple[str, ...]
    previous: str | None
    run: dict | None
    done: dict
    resume_from: checkpoint.Checkpoint | None
    workdir: Workdir
    outdir: Workdir

    @property
    def chief(self) -> bool:
        """Whether this process writes the workdir (directly, or staged by an --overwrite)."""
        return self.workdir.path in (self.outdir.path, self.outdir.replaces)

    @property
    def nothing_to_do(self) -> bool:
        return not self.targets


def check_options(*, overwrite: bool, resume: bool) -> None:
    """Refuses --overwrite with --resume (the one replaces a run, the other continues it)."""
    if overwrite and resume:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give only one")


def plan_run(
    checked: config_lib.Checked,
    workdir: str,
    *,
    phase: str = "all",
    overwrite: bool = False,
    resume: bool = False,
    outdir: str | None = None,
) -> RunPlan:
    """Decides which phases run from which state of the workdir, refusing what cannot run.

    Args:
      checked: the checked config (`tl_keras.config.check`).
      workdir: the run's folder.
      phase: 'all' or one phase's name.
      overwrite: replace results already there.
      resume: continue an interrupted run from its last checkpoint.
      outdir: where this process writes (default: the workdir).

    Returns:
      The plan; `nothing_to_do` when --resume finds every phase done.

    Raises:
      ConfigError: an unknown phase, or --overwrite with --resume.
      WorkdirError: the workdir is not writable, already holds a run (without --overwrite or
        --resume), lacks the phase before the first one to run, has that phase done already
        (without --overwrite), or --resume is given another config.
    """
    check_options(overwrite=overwrite, resume=resume)
    check_memory(checked)
    schedule = checked.phase_names
    targets = recipe.select_phases(schedule, phase)
    wd, out = Workdir(workdir), Workdir(outdir or workdir)
    out.ensure_writable()
    run = _read_run(wd, replaced=overwrite and targets[0] == schedule[0])
    done = dict(run["phases"]) if run else {}
    ckpt = None
    if resume and run is not None:
        check_resume_config(wd, checked.given)
        ckpt = checkpoint.latest(wd.path)
        targets = [p for p in targets if p not in done]
        if not targets:
            log.info("nothing to resume in %s: phase(s) %s already done", wd.path, ", ".join(done))
            return RunPlan(schedule, (), None, run, done, None, wd, out)
        if ckpt is not None and ckpt.phase != targets[0]:
            ckpt = None  # a leftover of a phase that has since been saved
    elif resume:
        log.info("nothing to resume in %s: starting the run", wd.path)
    plan = RunPlan(
        schedule,
        tuple(targets),
        recipe.previous_phase(schedule, targets[0]),
        run,
        done,
        ckpt,
        wd,
        out,
    )
    _refuse_conflicts(plan, overwrite=overwrite, resume=resume)
    return plan


def _read_run(wd: Workdir, *, replaced: bool) -> dict | None:
    """The workdir's run.json; {} when it is damaged and `replaced` (an --overwrite from the
    first phase replaces the run, whose record it does not need).

    Raises:
      DamagedFileError: run.json is damaged and the run is not replaced (naming the file and
        --overwrite).
    """
    try:
        return wd.read_run()
    except DamagedFileError as e:
        if not replaced:
            raise
        log.warning("--overwrite: %s; the run there is replaced", str(e).split("; ")[0])
        return {}


def check_memory(checked: config_lib.Checked, available: int | None = None) -> None:
    """Refuses a batch that cannot fit in memory, before anything is built or decoded.

    A step needs at least the batch's input and the base's largest layer output at once
    (`backbones.memory_estimate`, `floor`); below that no run can go. A step that trains the
    whole base may need far more (`step`): that only gets a warning, since frozen layers keep
    no activations for the backward pass.

    Args:
      checked: the checked config (its model and data sections).
      available: bytes available (default: `available_memory()`; unknown: no check).

    Raises:
      ConfigError: the floor exceeds the memory available, naming both and the flags to lower.
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    model, batch_size = checked.model, checked.data.batch_size
    need = backbones.memory_estimate(
        model.backbone, image_size=model.image_size, batch_size=batch_size, alpha=model.alpha
    )
    what = f"image_size={model.image_size} with batch_size={batch_size} on {model.backbone.name}"
    if need.floor > available:
        raise ConfigError(
            f"{what} cannot fit in memory: one batch needs at least {io.format_bytes(need.floor)} "
            f"(its images and the base's largest layer output), and "
            f"{io.format_bytes(available)} is available. Lower --image_size ({model.backbone.name}'s "
            f"own is {model.backbone.default_size}) or --batch_size"
        )
    if need.step > available:
        log.warning(
            "%s: a step that trains the whole base may need up to %s, more than the %s "
            "available; if it runs out of memory, lower --batch_size or --image_size",
            what,
            io.format_bytes(need.step),
            io.format_bytes(available),
        )


def _refuse_conflicts(plan: RunPlan, *, overwrite: bool, resume: bool) -> None:
    """Refuses to replace a run silently, to skip a phase, or to redo one without --overwrite."""
    wd, done, prev, first = plan.workdir, plan.done, plan.previous, plan.targets[0]
    if prev is None and plan.run is not None and not overwrite and not resume and plan.chief:
        state = f"phases done: {', '.join(done)}" if done else "unfinished: no phase completed"
        if checkpoint.latest(wd.path) is not None:
            state += ", a checkpoint to resume from"
        note = wd.replaced_note()
        raise WorkdirError(
            f"workdir {wd.path!r} already holds a run ({state}); rerun with --resume to continue "
            "it, --overwrite to replace it, or use another --workdir"
            + (f". Also, {note}" if note else "")
        )
    if prev is None:
        return
    if prev not in done:
        raise WorkdirError(
            f"--phase={first} needs phase {prev!r} done in {wd.path!r}, which has "
            f"{', '.join(done) or 'nothing'}; run --phase={prev} there first"
        )
    redo = [p for p in plan.targets if p in done]
    if redo and not overwrite:
        raise WorkdirError(
            f"phase(s) {', '.join(redo)} already done in {wd.path!r}; pass --overwrite to redo "
            "them from the end of the previous phase, or use another --workdir"
        )


def check_resume_config(wd: Workdir, config: config_lib.Config) -> None:
    """Refuses --resume with a config other than the one the run was started with.

    Raises:
      WorkdirError: naming each field that differs (only RESUME_MAY_CHANGE may).
    """
    saved_path = wd.file("config.json")
    if not os.path.isfile(saved_path):
        return
    saved = config_lib.read_saved(saved_path, fix=config_lib.SAVED_CONFIG_FIX)
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


def check_same_run(run: dict, identity: dict, class_names: Sequence[str], workdir: str) -> None:
    """Refuses to continue a workdir with a config or data that describe a different model.

    Args:
      run: the workdir's `run.json`.
      identity: what the config's model is (`Checked.identity`).
      class_names: the data's classes.
      workdir: the run's folder, for the message.

    Raises:
      WorkdirError: naming each field that differs, its saved and its given value.
    """
    given = identity
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
