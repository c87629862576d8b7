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

import contextlib
import dataclasses
import importlib.abc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

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
    """The entry point every command shares: define the flags, quiet TensorFlow, run `main`.

    `--help` prints the command's own help and exits 0 (absl's would point elsewhere and exit 1).
    TensorFlow's start-up lines stay off stderr unless `--verbose` (`quiet_tensorflow`): set up
    once the flags are read and before `main` imports TensorFlow.
    """
    from absl import app, flags

    define_flags()
    if any(arg in HELP_ARGS for arg in sys.argv[1:]):
        print(command_help(define_flags.__module__))
        sys.exit(EXIT_OK)

    def quiet_then_main(argv: list[str]) -> int:
        quiet_tensorflow(verbose="verbose" in flags.FLAGS and bool(flags.FLAGS.verbose))
        return main(argv)

    app.run(quiet_then_main)


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

    flags.DEFINE_boolean(
        "verbose",
        False,
        "Show tracebacks for bad-input errors, and TensorFlow's start-up and log lines.",
    )


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


# --- TensorFlow's start-up lines, kept off a command's stderr (`--verbose` shows them) ---------
# Importing TensorFlow 2.21 writes these on stderr before any line of ours, on every command:
#
#     WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
#     I0000 00:00:... port.cc:153] oneDNN custom operations are on. ...
#     I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
#     E0000 00:00:... cuda_platform.cc:52] failed call to cuInit: ... UNKNOWN ERROR (303)
#     WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
#     I0000 00:00:... port.cc:153] oneDNN custom operations are on. ...
#     I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
#
# It is one start-up, not two (no subprocess, no worker pool, one `import tensorflow`):
#
# - the first block comes from static initialisers of `libtensorflow_framework.so.2`, logged with
#   absl's C++ logging before anything initialised it, so `TF_CPP_MIN_LOG_LEVEL` (which only
#   governs TensorFlow's own logger: it does hide the `cpu_feature_guard` line) cannot reach them;
# - the block "again, 2 s later" is tensorflow/python/profiler/internal/
#   _pywrap_profiler_plugin.so, a 90 MB extension `import tensorflow` loads for
#   `tf.profiler.experimental.client`: it links its own copy of the same platform code and
#   runs the same initialisers (`LD_DEBUG=files` shows both lines right after "calling init"
#   of that file);
# - the cuInit error is the GPU count that `tensorflow.python.distribute.combinations` registers
#   with `absl.app.call_after_init`: a command imports TensorFlow inside `absl.app.run`, so the
#   hook lists the physical devices during the import (a plain script would list them at its
#   first op instead, with the same line).
#
# None of these can be switched off by a setting, so a command reads stderr at the level of
# the file descriptor (C++ writes there directly) while TensorFlow is imported, and writes back
# every line that is not in TensorFlow's C++ log format. An import that fails writes back
# everything. Later C++ messages are TensorFlow's own logger's, held back by
# `TF_CPP_MIN_LOG_LEVEL=2` (its errors still show); its Python logger is set to errors only.

# absl / TensorFlow C++ log lines ("I0000 00:00:1796516700.137802   10282 port.cc:153] ...") and
# the line absl writes before its first message.
_NATIVE_LINE = re.compile(rb"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\s:]+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_CPU_GUARD_TAIL = b"To enable the following instructions:"  # the cpu_feature_guard's 2nd line


def is_tf_noise(line: bytes) -> bool:
    """Whether a stderr line is TensorFlow's C++ start-up logging."""
    return bool(_NATIVE_LINE.match(line)) or line.startswith((_ABSL_PREAMBLE, _CPU_GUARD_TAIL))


def quiet_tensorflow(verbose: bool) -> None:
    """Called by every command once its flags are read, before anything imports TensorFlow.

    Not verbose: TensorFlow's C++ info and warning lines hidden (`TF_CPP_MIN_LOG_LEVEL=2`,
    unless the environment sets it), its Python logger at errors, and its start-up lines
    filtered out of stderr while it is imported. Verbose: all of it shown, as TensorFlow
    prints it.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Holds what is written to file descriptor 2 in the block, then writes back all of it
    that `is_tf_noise` does not match (everything, when the block raises)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if failed or not is_tf_noise(line))
            if kept:
                os.write(2, kept)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python would, and imports it inside `native_stderr_filtered`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: later imports are TensorFlow's own
        for finder in sys.meta_path:  # the finder that would have found it without us
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # TensorFlow's package sees its own loader, as without us.
        module.__loader__ = module.__spec__.loader = self.loader
        with native_stderr_filtered():
            self.loader.exec_module(module)
