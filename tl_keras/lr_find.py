"""Command line and library entry of the learning-rate range test for one phase of a config.

    python -m tl_keras.lr_find --config=configs/quickstart.toml --workdir=runs/quickstart
    python -m tl_keras.lr_find --phase=ft --workdir=runs/quickstart     # after fe is done there

The model is set up exactly as the phase would train it (what is unfrozen, BatchNorm frozen, the
optimizer with its per-variable rates under `layer_decay`); for a phase after the first, it is
the model the previous phase saved in the workdir. `tl_keras.training.lr_finder.find_lr` then trains on
up to `--num_steps` batches at exponentially growing rates, and the plot and a JSON file with the
suggestion are written to `<workdir>/lr_find/<phase>.png|.json`. Nothing else in the workdir is
touched: the run's models, history and `run.json` stay as they were, and the test itself leaves
the model's weights and optimizer bitwise unchanged.

For a phase that unfreezes part of the base, the JSON also gives the implied factor `lr /
suggestion`, to compare with the [10, 100] rule of `ft_lr_factor`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info/warning chatter

from absl import app, flags  # noqa: E402

from tl_keras import config as config_lib  # noqa: E402
from tl_keras import recipe  # noqa: E402
from tl_keras.errors import ConfigError, TLKerasError, WorkdirError  # noqa: E402

# The config flags (one per field), --workdir, --config, --phase and --verbose come from here.
from tl_keras.train import EXIT_BAD_INPUT, FLAGS, flag_overrides, resolve_config, setup_logging

log = logging.getLogger("tl_keras")

LR_FIND_DIR = "lr_find"
DEFAULT_MIN_LR, DEFAULT_MAX_LR, DEFAULT_NUM_STEPS = 1e-7, 1.0, 100

flags.DEFINE_float("min_lr", DEFAULT_MIN_LR, "LR range test: the first learning rate.")
flags.DEFINE_float("max_lr", DEFAULT_MAX_LR, "LR range test: the last learning rate.")
flags.DEFINE_integer(
    "num_steps", DEFAULT_NUM_STEPS, "LR range test: steps (one batch each), at most."
)


def run_lr_find(
    config: config_lib.Config,
    workdir: str,
    *,
    phase: str | None = None,
    min_lr: float = DEFAULT_MIN_LR,
    max_lr: float = DEFAULT_MAX_LR,
    num_steps: int = DEFAULT_NUM_STEPS,
    data=None,
):
    """Runs the LR range test for one phase and writes its plot and JSON.

    Args:
      config: the resolved config.
      workdir: the run's folder; a phase after the first needs the previous phase done there.
      phase: the phase to test ('fe', 'ft' or a stage's name); None = the first phase.
      min_lr: first learning rate.
      max_lr: last learning rate.
      num_steps: steps of the test (one training batch each), at most.
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
    import keras

    from tl_keras import io
    from tl_keras.data.sources import load_data
    from tl_keras.model.classifier import set_trainable
    from tl_keras.training import runner
    from tl_keras.training.lr_finder import check_args, find_lr
    from tl_keras.workdir import Workdir

    config = config_lib.validate(config)
    try:
        check_args(min_lr, max_lr, num_steps, 0.98, 4.0)
    except ValueError as e:
        raise ConfigError(f"LR range test: {e}") from None
    schedule = recipe.build_schedule(config)
    phase = phase or schedule[0].name
    if phase == "all":
        raise ConfigError(
            f"--phase=all: the LR range test is for one phase; use one of "
            f"{', '.join(p.name for p in schedule)}"
        )
    (target,) = recipe.select_phases(schedule, phase)
    prev = recipe.previous_phase(schedule, target)
    wd = Workdir(workdir)
    wd.ensure_writable()
    run = wd.read_run()
    if prev is not None and (run is None or prev.name not in run["phases"]):
        raise WorkdirError(
            f"the LR range test of {phase!r} starts from what {prev.name!r} saved, and "
            f"{wd.path!r} has no {prev.name!r} done; run "
            f"`python -m tl_keras.train --phase={prev.name} --workdir={workdir}` first"
        )

    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = load_data(config, workdir=wd.path)
    if prev is None:
        model = runner.build_initial_model(config, data)
    else:
        runner.check_same_run(run, config, data.class_names, wd.path)
        model = runner._load_phase_model(wd, prev.name)
    set_trainable(model, config.backbone, target.unfreeze, bn_policy=config.bn_policy)
    # The sweep sets the (base) rate itself; the phase's own schedule does not apply.
    flat = dataclasses.replace(target, lr_schedule=recipe.LRSchedule())
    optimizer, _ = runner.phase_optimizer(
        model, flat, backbone=config.backbone, steps_per_epoch=data.steps_per_epoch
    )
    runner.compile_for_phase(model, flat, optimizer=optimizer)
    epochs = math.ceil(num_steps / data.steps_per_epoch)
    result = find_lr(
        model, data.train_epochs(0, epochs), min_lr=min_lr, max_lr=max_lr, num_steps=num_steps
    )

    out = wd.file(LR_FIND_DIR)
    os.makedirs(out, exist_ok=True)
    result.plot(os.path.join(out, f"{phase}.png"))
    payload = {
        "phase": target.name,
        "unfreeze": target.unfreeze,
        "phase_lr": target.lr,
        "suggestion": result.suggestion,
        "suggestion_method": result.suggestion_method,
        "implied_lr_factor": (
            config.lr / result.suggestion if result.suggestion and target.trains_base else None
        ),
        "diverged": result.diverged,
        "min_lr": min_lr,
        "max_lr": max_lr,
        "steps": len(result.lrs),
        "lrs": result.lrs,
        "losses": [v if math.isfinite(v) else None for v in result.losses],
        "smoothed_losses": [v if math.isfinite(v) else None for v in result.smoothed_losses],
    }
    io.atomic_write_json(os.path.join(out, f"{phase}.json"), payload)
    _log_suggestion(config, target, result, out)
    return result


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
    log.info(
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


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    setup_logging()
    try:
        if not FLAGS.workdir:
            raise ConfigError("--workdir is required: the folder where lr_find/ is written")
        phase = FLAGS.phase if FLAGS["phase"].present else None  # None: the first phase
        cfg = resolve_config(FLAGS.workdir, FLAGS.config, flag_overrides(), phase or "all")
        run_lr_find(
            cfg,
            FLAGS.workdir,
            phase=phase,
            min_lr=FLAGS.min_lr,
            max_lr=FLAGS.max_lr,
            num_steps=FLAGS.num_steps,
        )
    except TLKerasError as e:
        if FLAGS.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    app.run(main)
