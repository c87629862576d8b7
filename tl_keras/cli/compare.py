"""Command line: `python -m tl_keras.compare --config=FILE --workdir=DIR [--strategies=...] [--seeds=N]`.

    python -m tl_keras.compare --config=configs/compare_flowers.toml --workdir=runs/compare_flowers
    python -m tl_keras.compare --config=configs/compare_flowers.toml --workdir=runs/cmp --seeds=3

A thin layer over `tl_keras.training.compare.compare`: the config flags of
`python -m tl_keras.train` (every config field, --config), --overwrite, and which strategies to
run, and on how many seeds (each difference then gets a paired interval over seeds as well as
over images). --phase does not apply: the comparison runs every strategy whole.
"""

from __future__ import annotations

from tl_keras.cli import common
from tl_keras.errors import ConfigError
from tl_keras.training import compare as compare_lib


def define_flags() -> None:
    from absl import flags

    common.define_config_flags()
    flags.DEFINE_boolean("overwrite", False, "Replace strategy runs already in --workdir.")
    flags.DEFINE_list(
        "strategies",
        list(compare_lib.STRATEGIES),
        f"Strategies to compare, in this order: any of {', '.join(compare_lib.STRATEGIES)}.",
    )
    flags.DEFINE_integer(
        "seeds",
        1,
        "Run every strategy on this many seeds (--seed, --seed + 1, ...) and give each "
        "difference its paired 95% interval over seeds and over images.",
    )


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        common.require_workdir(FLAGS.workdir, "the folder where the comparison goes")
        if FLAGS["phase"].present:
            raise ConfigError("--phase does not apply: the comparison runs every strategy whole")
        cfg = common.config_from_flags(phase="all")
        compare_lib.compare(
            cfg,
            FLAGS.workdir,
            strategies=FLAGS.strategies,
            overwrite=FLAGS.overwrite,
            seeds=FLAGS.seeds,
        )
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.compare`."""
    common.run_main(define_flags, main)
