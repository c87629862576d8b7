"""Command line: the learning-rate range test for one phase of a config.

    python -m tl_keras.lr_find --config=configs/quickstart.toml --workdir=runs/quickstart
    python -m tl_keras.lr_find --phase=ft --workdir=runs/quickstart     # after fe is done there

A thin layer over `tl_keras.training.lr_find.run_lr_find`: the config flags of
`python -m tl_keras.train` (every config field, --config, --phase; without --phase, the
schedule's first phase), and the range of the test. The plot and a JSON file with the
suggestion go to `<workdir>/lr_find/<phase>.png|.json`; nothing else in the workdir is touched.
"""

from __future__ import annotations

from tl_keras.cli import common
from tl_keras.training import lr_find


def define_flags() -> None:
    from absl import flags

    common.define_config_flags()
    flags.DEFINE_float("min_lr", lr_find.DEFAULT_MIN_LR, "LR range test: the first learning rate.")
    flags.DEFINE_float("max_lr", lr_find.DEFAULT_MAX_LR, "LR range test: the last learning rate.")
    flags.DEFINE_integer(
        "num_steps", lr_find.DEFAULT_NUM_STEPS, "LR range test: steps (one batch each), at most."
    )
    flags.DEFINE_string(
        "suggest",
        lr_find.SUGGEST_RULES[0],
        "How the suggestion is read off the loss curve: 'valley' (half-way along the longest "
        "fall, fastai's default) or 'steepest' (the steepest fall before the minimum).",
    )


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        common.require_workdir(FLAGS.workdir, "the folder where lr_find/ is written")
        phase = FLAGS.phase if FLAGS["phase"].present else None  # None: the first phase
        cfg = common.config_from_flags(phase=phase or "all")
        lr_find.run_lr_find(
            cfg,
            FLAGS.workdir,
            phase=phase,
            min_lr=FLAGS.min_lr,
            max_lr=FLAGS.max_lr,
            num_steps=FLAGS.num_steps,
            suggest=FLAGS.suggest,
        )
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.lr_find`."""
    common.run_main(define_flags, main)
