"""The learning-rate range test of one phase of a config, with its files in the workdir.

`run_lr_find(config, workdir, phase=...)` runs the test for one phase of a config, on the model
set up exactly as the phase would train it (what is unfrozen, BatchNorm frozen, the optimizer
with its per-variable rates under `layer_decay`); for a phase after the first, on the model the
previous phase saved in the workdir. It writes `<workdir>/lr_find/<phase>.png|.json` and touches
nothing else there. For a phase that unfreezes part of the base, the JSON also gives the implied
factor `lr / suggestion`, to compare with the [10, 100] rule of `ft_lr_factor`
(`python -m tl_keras.lr_find` is a thin layer over it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import TYPE_CHECKING

from tl_keras import config as config_lib
from tl_keras import io, recipe
from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.progress import say
from tl_keras.training.lr_finder import LRFinderResult, check_args, find_lr
from tl_keras.training.lr_suggest import SUGGEST_RULES

if TYPE_CHECKING:
    import keras

log = logging.getLogger("tl_keras")

LR_FIND_DIR = "lr_find"


DEFAULT_MIN_LR, DEFAULT_MAX_LR, DEFAULT_NUM_STEPS = 1e-7, 1.0, 100


def run_lr_find(
    config: config_lib.Config | config_lib.Checked,
    workdir: str,
    *,
    phase: str | None = None,
    min_lr: float = DEFAULT_MIN_LR,
    max_lr: float = DEFAULT_MAX_LR,
    num_steps: int = DEFAULT_NUM_STEPS,
    suggest: str = "valley",
    data=None,
):
    """Runs the LR range test for one phase and writes its plot and JSON.

    Args:
      config: the config (or what `config.check` made of it).
      workdir: the run's folder; a phase after the first needs the previous phase done there.
      phase: the phase to test ('fe', 'ft' or a stage's name); None = the first phase.
      min_lr: first learning rate.
      max_lr: last learning rate.
      num_steps: steps of the test (one training batch each), at most.
      suggest: how the suggestion is read off the curve: 'valley' or 'steepest'.
      data: a ready `DataBundle`; default: load what `config.data_dir` names.

    Returns:
      The `tl_keras.training.lr_finder.LRFinderResult`; the files are `<workdir>/lr_find/<phase>.png`
      and `.json`.

    Raises:
      ConfigError, WorkdirError, DataError: bad input, before anything is written.

    Example:
      >>> result = run_lr_find(cfg, "runs/demo", phase="fe", num_steps=50)
      >>> result.suggestion
    """
    checked = config if isinstance(config, config_lib.Checked) else config_lib.check(config)
    try:
        check_args(min_lr, max_lr, num_steps, 0.98, 4.0)
    except ValueError as e:
        raise ConfigError(f"LR range test: {e}") from None
    if suggest not in SUGGEST_RULES:
        raise ConfigError(
            f"--suggest={suggest!r} is not a rule of the LR range test; use one of "
            f"{', '.join(SUGGEST_RULES)}"
        )
    from tl_keras.workdir import nothing_left_if_refused

    with nothing_left_if_refused(workdir):  # a refusal leaves no folder it made
        return _run(checked, workdir, phase, min_lr, max_lr, num_steps, suggest, data)


def _run(checked, workdir, phase, min_lr, max_lr, num_steps, suggest, data):
    """`run_lr_find` once its arguments are checked."""
    import keras

    from tl_keras.data import sources
    from tl_keras.training import decide

    name, prev, wd, run = _plan(checked, workdir, phase)
    # A run's decided recipe when the workdir has one, else the fixed defaults (recipe=manual).
    card = decide.read_recipe_card(wd) or decide.fixed_card(checked.given)
    spec = config_lib.resolve(checked, card)
    target = spec.phase(name)
    keras.utils.set_random_seed(spec.run.seed)
    if data is None:
        data = sources.load(spec.data, augmentation=spec.augmentation, workdir=wd.path)
    model = _model_for(spec, target, prev, wd, run, data)
    epochs = math.ceil(num_steps / data.steps_per_epoch)
    result = find_lr(
        model,
        data.train_epochs(0, epochs),
        min_lr=min_lr,
        max_lr=max_lr,
        num_steps=num_steps,
        suggest=suggest,
    )
    out = _write(result, spec, target, wd, min_lr=min_lr, max_lr=max_lr)
    _log_suggestion(spec.decided_config(), target, result, out)
    return result


def _plan(checked, workdir: str, phase: str | None):
    """The phase to test and the one before it (names), the workdir and its run.json; refuses
    the rest.

    Raises:
      ConfigError: --phase=all or an unknown phase.
      WorkdirError: the workdir cannot be written, or lacks the phase before the one tested.
    """
    from tl_keras.workdir import Workdir

    schedule = checked.phase_names
    phase = phase or schedule[0]
    if phase == "all":
        raise ConfigError(
            f"--phase=all: the LR range test is for one phase; use one of {', '.join(schedule)}"
        )
    (target,) = recipe.select_phases(schedule, phase)
    prev = recipe.previous_phase(schedule, target)
    wd = Workdir(workdir)
    wd.ensure_writable()
    run = wd.read_run()
    if prev is not None and (run is None or prev not in run["phases"]):
        raise WorkdirError(
            f"the LR range test of {phase!r} starts from what {prev!r} saved, and "
            f"{wd.path!r} has no {prev!r} done; run "
            f"`python -m tl_keras.train --phase={prev} --workdir={workdir}` first"
        )
    return target, prev, wd, run


def _model_for(spec, target: recipe.Phase, prev, wd, run, data) -> keras.Model:
    """The model set up as `target` would train it: unfrozen, compiled with its optimizer."""
    from tl_keras.model.classifier import set_trainable
    from tl_keras.training import optim, start
    from tl_keras.training.plan import check_same_run

    if prev is None:
        model = start.build_initial_model(spec.model, data, head_first=not target.trains_base)
    else:
        check_same_run(run, spec.identity, data.class_names, wd.path)
        model = start.load_phase_model(wd, prev)
    set_trainable(model, spec.model.backbone, target.unfreeze, bn_policy=spec.model.bn_policy)
    # The sweep sets the (base) rate itself; the phase's own schedule does not apply.
    flat = dataclasses.replace(target, lr_schedule=recipe.LRSchedule())
    optimizer, _ = optim.phase_optimizer(
        model, flat, backbone=spec.model.backbone, steps_per_epoch=data.steps_per_epoch
    )
    optim.compile_for_phase(model, flat, optimizer=optimizer)
    return model


def _write(result: LRFinderResult, spec, target: recipe.Phase, wd, *, min_lr, max_lr) -> str:
    """Writes `lr_find/<phase>.png` and `.json` (the suggestion and every step); their folder."""
    out = wd.file(LR_FIND_DIR)
    os.makedirs(out, exist_ok=True)
    result.plot(os.path.join(out, f"{target.name}.png"))
    payload = {
        "phase": target.name,
        "unfreeze": target.unfreeze,
        "phase_lr": target.lr,
        "suggestion": result.suggestion,
        "suggestion_method": result.suggestion_method,
        "suggestions": result.suggestions,
        "implied_lr_factor": (
            spec.decided_config().lr / result.suggestion
            if result.suggestion and target.trains_base
            else None
        ),
        "diverged": result.diverged,
        "min_lr": min_lr,
        "max_lr": max_lr,
        "steps": len(result.lrs),
        "lrs": result.lrs,
        "losses": [v if math.isfinite(v) else None for v in result.losses],
        "smoothed_losses": [v if math.isfinite(v) else None for v in result.smoothed_losses],
    }
    io.atomic_write_json(os.path.join(out, f"{target.name}.json"), payload)
    return out


def _log_suggestion(config, target: recipe.Phase, result, out: str) -> None:
    if result.suggestion is None:
        log.warning(
            "[lr_find] %s: too few finite losses for a suggestion; see %s", target.name, out
        )
        return
    extra = ""
    if target.trains_base:
        lo, hi = recipe.LR_FACTOR_RANGE
        extra = (
            f" = lr {config.lr:.2e} / {config.lr / result.suggestion:.3g} (a fine-tuning factor "
            f"must lie in [{lo:g}, {hi:g}])"
        )
    say(
        "[lr_find] %s: suggested lr %.2e (%s, %d steps%s)%s; the phase now trains at %.2e; "
        "plot and JSON in %s",
        target.name,
        result.suggestion,
        result.suggestion_method,
        len(result.lrs),
        ", stopped at divergence" if result.diverged else "",
        extra,
        target.lr,
        out,
    )


__all__ = ["DEFAULT_MAX_LR", "DEFAULT_MIN_LR", "DEFAULT_NUM_STEPS", "LR_FIND_DIR", "run_lr_find"]
