"""What every `python -m tl_keras.<command>` shares: flags, logging, exit codes, the error line.

A command is a module of `tl_keras.cli` with `define_flags()` and `main(argv)`; its `run_main`
is `common.run_main(define_flags, main)`, so flags are defined only when that command runs
(importing a library function never registers a flag). Its `main` runs the library call inside
`report_errors`: an error the user can act on (`TLKerasError`) prints as one line `error: ...`
on stderr and the process exits with `exit_code(error)`:

    0  done
    1  the command ran and what it made failed: a phase stopped on NaN (`TrainingError`), an
       export that does not reproduce its model or does not convert
    2  bad input (flags, config, data, workdir): nothing was written

Anything else is a bug and keeps its traceback. Library modules never import this package.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable

from tl_keras.errors import ConfigError, TLKerasError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran and what it made failed (a NaN stop, parity, conversion)
EXIT_BAD_INPUT = 2  # the input cannot be used as given; nothing was written

# Shortcuts for --unfreeze; at most one of them (or --unfreeze itself) may be given.
UNFREEZE_SHORTCUTS = {
    "unfreeze_layers": "layers:{}",
    "unfreeze_blocks": "blocks:{}",
    "unfreeze_fraction": "fraction:{}",
}


def exit_code(error: TLKerasError) -> int:
    """The process exit status for an error: bad input (2), or ran and failed (1)."""
    return EXIT_BAD_INPUT if getattr(error, "bad_input", True) else EXIT_CHECK_FAILED


def report_errors(body: Callable[[], int], *, verbose: bool = False) -> int:
    """Runs a command's body; a `TLKerasError` becomes one `error:` line and its exit status.

    Args:
      body: the command, returning its exit status.
      verbose: re-raise the error instead, to show its traceback.

    Returns:
      The body's status, or the error's (`exit_code`).
    """
    try:
        return body()
    except TLKerasError as e:
        if verbose:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return exit_code(e)


def setup_logging(stream=None) -> None:
    """Plain timestamped lines for the tl_keras logger, on stdout unless a stream is given."""
    logger = logging.getLogger("tl_keras")
    if not any(getattr(h, "_tl_keras", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._tl_keras = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


HELP_ARGS = ("--help", "-h", "-?")


def script_name(module: str) -> str:
    """The console command installed for a command module: tl_keras.cli.lr_find -> tl-keras-lr-find
    (setup.cfg's `console_scripts`; tests/test_console_scripts.py holds the two together)."""
    return "tl-keras-" + module.rsplit(".", 1)[-1].replace("_", "-")


def command_help(module: str) -> str:
    """What `--help` prints: the command's docstring, then its flags (with the shared ones)."""
    from absl import flags

    doc = (sys.modules[module].__doc__ or "").strip()
    sections = [
        doc,
        f"Installed as `{script_name(module)}`; the same as `python -m tl_keras."
        f"{module.rsplit('.', 1)[-1]}`.",
        "flags:" + flags.FLAGS.module_help(module),
    ]
    shared = flags.FLAGS.module_help(__name__)
    if shared.strip() != f"{__name__}:":
        sections.append("shared flags:" + shared)
    sections.append("--helpfull lists every flag, TensorFlow's and absl's included.")
    return "\n\n".join(sections)


def run_main(define_flags: Callable[[], None], main: Callable[[list[str]], int]) -> None:
    """The entry point every command shares: quiet TensorFlow, define the flags, run `main`.

    `--help` prints the command's own help and exits 0 (absl's would point elsewhere and exit 1).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info/warning chatter
    from absl import app

    define_flags()
    if any(arg in HELP_ARGS for arg in sys.argv[1:]):
        print(command_help(define_flags.__module__))
        sys.exit(EXIT_OK)
    app.run(main)


def no_arguments(argv: list[str]) -> None:
    """Refuses positional arguments: every setting of these commands is a --flag.

    Raises:
      ConfigError: naming the arguments.
    """
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; every setting is a --flag")


def require_workdir(workdir: str | None, what: str) -> str:
    """Returns --workdir, refusing a command without one (`what`: the folder's role)."""
    if not workdir:
        raise ConfigError(f"--workdir is required: {what}")
    return workdir


def define_verbose() -> None:
    from absl import flags

    flags.DEFINE_boolean("verbose", False, "Show tracebacks for bad-input errors.")


def define_trust_flag() -> None:
    """--trust_model_code: the one way to load a model file whose config runs Python code."""
    from absl import flags

    flags.DEFINE_boolean(
        "trust_model_code",
        False,
        "Load a .keras model whose config runs Python code (a Lambda layer). tl_keras never "
        "writes one and refuses such a file by default (Keras safe_mode); pass this only for a "
        "file you made yourself.",
    )


def define_config_flags() -> None:
    """Every config field as a flag of the same name, and the flags of a run's config.

    --workdir, --config, --phase, --verbose and the --unfreeze shortcuts; a field's flag counts
    only when given (default None), so a config file's value is not overridden by a default.
    """
    from absl import flags

    from tl_keras import config as config_lib

    flags.DEFINE_string(
        "phase", "all", "Phase to run: 'all', or one phase's name ('fe', 'ft', or a stage's name)."
    )
    flags.DEFINE_string(
        "workdir", None, "Folder for the run's artifacts (models, history, curves)."
    )
    flags.DEFINE_string(
        "config", None, "TOML config file (see configs/); flags override its fields."
    )
    define_verbose()
    flags.DEFINE_integer("unfreeze_layers", None, "Shortcut for --unfreeze=layers:N.")
    flags.DEFINE_integer("unfreeze_blocks", None, "Shortcut for --unfreeze=blocks:K.")
    flags.DEFINE_float("unfreeze_fraction", None, "Shortcut for --unfreeze=fraction:F.")
    definers = {
        str: flags.DEFINE_string,
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        bool: flags.DEFINE_boolean,
    }
    from tl_keras.recipe import auto

    for f in dataclasses.fields(config_lib.Config):
        # The real default lives in Config (shown in the help text); a setting the recipe
        # decides shows the fixed default recipe=manual gives it.
        default = f"{f.default!r}"
        if f.name in auto.MANUAL:
            default += f"; with --recipe=manual: {auto.MANUAL[f.name]!r}"
        definers[type(f.default)](f.name, None, f"{f.metadata['help']} [default: {default}]")


def flag_overrides() -> dict:
    """Returns the config fields given on the command line (the unfreeze shortcuts included).

    Raises:
      ConfigError: more than one flag says what to unfreeze.
    """
    from absl import flags

    from tl_keras import config as config_lib

    FLAGS = flags.FLAGS
    values = {name: FLAGS[name].value for name in config_lib.FIELDS if FLAGS[name].present}
    given = [name for name in UNFREEZE_SHORTCUTS if FLAGS[name].present]
    if len(given) + ("unfreeze" in values) > 1:
        names = [f"--{n}" for n in given] + (["--unfreeze"] if "unfreeze" in values else [])
        raise ConfigError(f"{' and '.join(names)} both say what to unfreeze; give only one")
    for name in given:
        values["unfreeze"] = UNFREEZE_SHORTCUTS[name].format(FLAGS[name].value)
    return values


def config_from_flags(*, phase: str, resume: bool = False):
    """The config of a run's flags: defaults < the workdir's saved config < --config < flags."""
    from absl import flags

    from tl_keras import config as config_lib

    FLAGS = flags.FLAGS
    return config_lib.merged(
        flag_overrides(),
        workdir=FLAGS.workdir,
        config_file=FLAGS.config,
        phase=phase,
        resume=resume,
    )
