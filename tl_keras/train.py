"""Command line: `python -m tl_keras.train --phase=fe|ft|all --workdir=DIR [--config=FILE] [--FIELD=VALUE...]`.

A thin layer over `tl_keras.training.runner.train`. Every config field is a flag of the same name (see
`python -m tl_keras.train --helpfull`); precedence is defaults < the config a workdir's earlier
phase saved < --config file < flags. Bad input prints one line naming the value and what to do,
and exits with status 2 (a traceback only with --verbose).

Examples:
  python -m tl_keras.train --config=configs/quickstart.toml --workdir=runs/quickstart
  python -m tl_keras.train --phase=fe --data_dir=photos/ --backbone=efficientnet_b0 --workdir=runs/b0
  python -m tl_keras.train --phase=ft --workdir=runs/b0 --unfreeze=blocks:3 --ft_lr_factor=30
  python -m tl_keras.train --config=configs/gradual.toml --workdir=runs/gradual
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info/warning chatter

from absl import app, flags  # noqa: E402

from tl_keras import config as config_lib  # noqa: E402
from tl_keras.errors import ConfigError, TLKerasError  # noqa: E402

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2

flags.DEFINE_string(
    "phase", "all", "Phase to run: 'all', or one phase's name ('fe', 'ft', or a stage's name)."
)
flags.DEFINE_string("workdir", None, "Folder for the run's artifacts (models, history, curves).")
flags.DEFINE_string("config", None, "TOML config file (see configs/); flags override its fields.")
flags.DEFINE_boolean("overwrite", False, "Replace results already in --workdir.")
flags.DEFINE_boolean(
    "resume",
    False,
    "Continue an interrupted run in --workdir from its last checkpoint (same config).",
)
flags.DEFINE_boolean("verbose", False, "Show tracebacks for bad-input errors.")
# Shortcuts for --unfreeze; at most one of them (or --unfreeze itself) may be given.
flags.DEFINE_integer("unfreeze_layers", None, "Shortcut for --unfreeze=layers:N.")
flags.DEFINE_integer("unfreeze_blocks", None, "Shortcut for --unfreeze=blocks:K.")
flags.DEFINE_float("unfreeze_fraction", None, "Shortcut for --unfreeze=fraction:F.")

_DEFINERS = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,
}
for _f in dataclasses.fields(config_lib.Config):
    # Default None: a flag counts only when given, so a config file's value is not overridden
    # by a flag default. The real default lives in Config (shown in the help text).
    _DEFINERS[type(_f.default)](_f.name, None, f"{_f.metadata['help']} [default: {_f.default!r}]")


def flag_overrides() -> dict:
    """Returns the config fields given on the command line (the unfreeze shortcuts included)."""
    values = {
        f.name: FLAGS[f.name].value
        for f in dataclasses.fields(config_lib.Config)
        if FLAGS[f.name].present
    }
    shortcuts = {
        "unfreeze_layers": "layers:{}",
        "unfreeze_blocks": "blocks:{}",
        "unfreeze_fraction": "fraction:{}",
    }
    given = [name for name in shortcuts if FLAGS[name].present]
    if len(given) + ("unfreeze" in values) > 1:
        names = [f"--{n}" for n in given] + (["--unfreeze"] if "unfreeze" in values else [])
        raise ConfigError(f"{' and '.join(names)} both say what to unfreeze; give only one")
    for name in given:
        values["unfreeze"] = shortcuts[name].format(FLAGS[name].value)
    return values


def resolve_config(
    workdir: str | None, config_file: str | None, overrides: dict, phase: str, resume: bool = False
) -> config_lib.Config:
    """Applies defaults < saved workdir config (later phases, --resume) < config file < flags."""
    cfg = config_lib.Config()
    saved = os.path.join(workdir, "config.json") if workdir else None
    if saved and os.path.isfile(saved) and (resume or phase != "all"):
        from tl_keras import io, recipe

        saved_cfg = config_lib.replace(cfg, io.read_json(saved), saved)
        names = [p.name for p in recipe.build_schedule(saved_cfg)]
        # --resume and a later phase continue the saved run; a first phase starts anew.
        if resume or phase in names[1:]:
            cfg = saved_cfg
    if config_file:
        cfg = config_lib.replace(cfg, config_lib.load_file(config_file), config_file)
    return config_lib.replace(cfg, overrides, "command line")


def setup_logging() -> None:
    """Plain timestamped lines on stdout for the tl_keras logger; TensorFlow's C++ logs quieted."""
    logger = logging.getLogger("tl_keras")
    if not any(getattr(h, "_tl_keras", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._tl_keras = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    setup_logging()
    try:
        if not FLAGS.workdir:
            raise ConfigError("--workdir is required: the folder where the run's artifacts go")
        cfg = resolve_config(
            FLAGS.workdir, FLAGS.config, flag_overrides(), FLAGS.phase, FLAGS.resume
        )
        config_lib.validate(cfg)  # bad flags fail in milliseconds, before TensorFlow loads
        from tl_keras.training import runner  # imports TensorFlow: after the cheap checks

        result = runner.train(
            cfg, FLAGS.workdir, phase=FLAGS.phase, overwrite=FLAGS.overwrite, resume=FLAGS.resume
        )
    except TLKerasError as e:
        if FLAGS.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
    return 0


def run_main() -> None:
    """Entry point of the `tl-keras-train` console script."""
    app.run(main)


if __name__ == "__main__":
    run_main()
