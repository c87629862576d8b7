"""Command line: `python -m tl_keras.train --phase=fe|ft|all --workdir=DIR [--config=FILE] [--FIELD=VALUE...]`.

A thin layer over `tl_keras.training.runner.train`. Every config field is a flag of the same name
(see `python -m tl_keras.train --helpfull`); precedence is defaults < the config a workdir's
earlier phase saved < --config file < flags. Bad input prints one line naming the value and what
to do, and exits with status 2 (a traceback only with --verbose); a run that stops because its
loss or weights became NaN exits with status 1.

Examples:
  python -m tl_keras.train --config=configs/quickstart.toml --workdir=runs/quickstart
  python -m tl_keras.train --phase=fe --data_dir=photos/ --backbone=efficientnet_b0 --workdir=runs/b0
  python -m tl_keras.train --phase=ft --workdir=runs/b0 --unfreeze=blocks:3 --ft_lr_factor=30
  python -m tl_keras.train --config=configs/gradual.toml --workdir=runs/gradual
"""

from __future__ import annotations

import logging
import os
import sys

from tl_keras import config as config_lib
from tl_keras import interrupt
from tl_keras.cli import common


def define_flags() -> None:
    from absl import flags

    common.define_config_flags()
    flags.DEFINE_boolean("overwrite", False, "Replace results already in --workdir.")
    flags.DEFINE_boolean(
        "resume",
        False,
        "Continue an interrupted run in --workdir from its last checkpoint (same config).",
    )


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        common.require_workdir(FLAGS.workdir, "the folder where the run's artifacts go")
        cfg = common.config_from_flags(phase=FLAGS.phase, resume=FLAGS.resume)
        spec = config_lib.resolve(cfg)  # bad flags fail in milliseconds, before TensorFlow loads
        from tl_keras.training import runner  # imports TensorFlow: after the cheap checks

        result = runner.train(
            spec, FLAGS.workdir, phase=FLAGS.phase, overwrite=FLAGS.overwrite, resume=FLAGS.resume
        )
        _log_done(result)
        return common.EXIT_OK

    with interrupt.handled():  # SIGTERM and Ctrl-C stop at a safe point, with a resume hint
        try:
            return common.report_errors(body, verbose=FLAGS.verbose)
        except interrupt.Interrupted as stop:
            print(f"interrupted: {_interrupted(stop, FLAGS.workdir)}", file=sys.stderr)
            return stop.exit_code


def _interrupted(stop: interrupt.Interrupted, workdir: str) -> str:
    """What an interrupted run kept, and the command that continues it."""
    if stop.outcome:  # an --overwrite stopped before it replaced anything
        return f"{stop.name} stopped the run; {stop.outcome}"
    from tl_keras.training import checkpoint
    from tl_keras.workdir import Workdir

    try:
        ckpt = checkpoint.latest(workdir)
        done = Workdir(workdir).phases_done() if os.path.isdir(workdir) else {}
    except Exception:  # a damaged file: --resume will say which
        ckpt, done = None, {}
    if ckpt is not None:
        kept = f"the checkpoint of epoch {ckpt.epoch} (phase {ckpt.phase!r}) is kept"
    elif done:
        kept = f"phase(s) {', '.join(done)} are done"
    else:
        kept = "no epoch was finished yet"
    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    command = " ".join(["python -m tl_keras.train", *args, "--resume"])
    return f"{stop.name} stopped the run; {kept}. Continue it with: {command}"


def _log_done(result) -> None:
    last = result.history.records[-1] if len(result.history) else {}
    summary = ", ".join(
        f"{k} {last[k]:.4f}" for k in ("accuracy", "val_accuracy") if last.get(k) is not None
    )
    logging.getLogger("tl_keras").info(
        "done: %s in %s (%s); curves: %s",
        " -> ".join(s.phase for s in result.history.spans()) or "nothing",
        result.workdir,
        summary or "no epochs",
        os.path.join(result.workdir, "curves.png"),
    )


def run_main() -> None:
    """Entry point of `python -m tl_keras.train` and the `tl-keras-train` console script."""
    common.run_main(define_flags, main)
