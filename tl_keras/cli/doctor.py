"""Command line: `python -m tl_keras.doctor --data_dir=DIR --workdir=DIR [--FIELD=VALUE...]`.

    python -m tl_keras.doctor --data_dir=photos/ --backbone=efficientnet_b0 --workdir=runs/b0
    python -m tl_keras.doctor --config=configs/flowers.toml --workdir=runs/flowers
    python -m tl_keras.doctor --workdir=runs/flowers      # a trained workdir: its own data

A thin layer over `tl_keras.doctor.workflow.doctor_workdir`: the config flags of
`python -m tl_keras.train` say which data (split as training splits it) and which pretrained base
(backbone, width, weights, image size). In a workdir that holds a run, its saved config is the
starting point (then --config, then flags). Writes `<workdir>/doctor/report.json`, `report.md`
and `thumbnails.png`, prints the summary line and where the report is, and exits 0 whatever it
finds; bad input exits 2 with one `error:` line.
"""

from __future__ import annotations

from tl_keras.cli import common
from tl_keras.errors import ConfigError


def define_flags() -> None:
    common.define_config_flags()


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        common.require_workdir(FLAGS.workdir, "the folder where doctor/ (report, features) goes")
        if FLAGS["phase"].present:
            raise ConfigError("--phase does not apply: the doctor examines the data, not a phase")
        # resume=True: a workdir's saved config (its data, its base) is where flags start from.
        cfg = common.config_from_flags(phase="all", resume=True)
        from tl_keras import config as config_lib

        checked = config_lib.check(cfg)  # bad flags fail before TensorFlow loads
        from tl_keras.doctor import workflow

        result = workflow.doctor_workdir(checked, FLAGS.workdir)
        print(result.summary)
        for name in ("text", "report", "figure"):
            if name in result.paths:
                print(result.paths[name])
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.doctor`."""
    common.run_main(define_flags, main)
