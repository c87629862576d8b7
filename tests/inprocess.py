"""Runs a `python -m tl_keras.<command>` in the test process (a helper module, not a test file).

A new Python with TensorFlow costs seconds before a command reads its first flag; most refusal
tests fail in milliseconds after that. `command(module, *args)` does what `common.run_main` does
(define the command's flags, parse them with absl, call the command's `main`) in this process,
with stdout and stderr captured, and returns a `subprocess.CompletedProcess` like `run_cli`'s, so
the same assertions read either. What only a real process shows (absl's own flag errors, the
console scripts, signals, a SIGKILL) stays with `conftest.run_cli`: each command keeps at least
one test through it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# `python -m tl_keras.X` -> the command module holding define_flags() and main(argv).
COMMANDS = {
    "tl_keras.train": "tl_keras.cli.train",
    "tl_keras.evaluate": "tl_keras.cli.evaluate",
    "tl_keras.predict": "tl_keras.cli.predict",
    "tl_keras.export": "tl_keras.cli.export",
    "tl_keras.lr_find": "tl_keras.cli.lr_find",
    "tl_keras.compare": "tl_keras.cli.compare",
    "tl_keras.doctor": "tl_keras.cli.doctor",
    "tl_keras.weights": "tl_keras.cli.weights",
}


def fresh_flags(define_flags) -> None:
    """Only this command's flags, unparsed: every flag a tl_keras module defined is removed
    (commands share names such as --workdir), then the command defines its own."""
    from absl import flags

    FLAGS = flags.FLAGS
    for name in list(FLAGS):
        module = FLAGS.find_module_defining_flag(name) or ""
        if module.startswith("tl_keras"):
            delattr(FLAGS, name)
    FLAGS.unparse_flags()
    define_flags()


def _drop_log_handlers() -> None:
    """`common.setup_logging` adds its handler once per process, bound to the stream it found;
    removed here so each command logs into its own captured stdout."""
    logger = logging.getLogger("tl_keras")
    for handler in [h for h in logger.handlers if getattr(h, "_tl_keras", False)]:
        logger.removeHandler(handler)


def command(
    *args: str, module: str = "tl_keras.train", cwd: str | os.PathLike = REPO
) -> subprocess.CompletedProcess:
    """Runs `python -m MODULE ARGS` in this process, in `cwd` (the repository, as `run_cli`);
    returns its exit status and output.

    Raises:
      absl.flags.Error: a flag absl itself refuses (unknown, wrong type): test that through a
        real process, where absl prints it and exits 1.
    """
    from absl import flags

    cli = importlib.import_module(COMMANDS[module])
    fresh_flags(cli.define_flags)
    argv = flags.FLAGS([module, *args])
    out, err = io.StringIO(), io.StringIO()
    _drop_log_handlers()
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        os.chdir(here)
        _drop_log_handlers()
        flags.FLAGS.unparse_flags()
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def _logger_state(logger: logging.Logger) -> tuple:
    return list(logger.handlers), logger.level, logger.propagate


def _restore_logger(logger: logging.Logger, state: tuple) -> None:
    handlers, level, propagate = state
    for handler in [h for h in logger.handlers if h not in handlers]:
        logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def benchmark(
    script: str, results_dir: str | os.PathLike, *args: str
) -> subprocess.CompletedProcess:
    """Runs `python benchmarks/SCRIPT ARGS` in this process: the script's `main(argv)`, its JSON
    results in `results_dir` (as `conftest.run_benchmark` sets `TL_KERAS_BENCH_RESULTS`), stdout
    and stderr captured; returns its exit status and output like `run_benchmark`.

    What a benchmark changes in the process is put back: the root and `tl_keras` loggers (a
    script's `basicConfig`, `common.setup_logging`'s handler bound to the captured stdout), the
    working directory and Keras's dtype policy. The children a script starts stay processes;
    one smoke test keeps the real `python benchmarks/X.py` path (`conftest.run_benchmark`).
    """
    import keras

    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import _common

    module = importlib.import_module(script.removesuffix(".py"))
    loggers = [logging.getLogger(), logging.getLogger("tl_keras")]
    states = [_logger_state(logger) for logger in loggers]
    policy = keras.mixed_precision.global_policy()
    results, here = _common.RESULTS, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    _common.RESULTS = pathlib.Path(results_dir)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(list(args))
            except SystemExit as e:  # argparse's refusals, sys.exit(message)
                code = e.code
    finally:
        _common.RESULTS = results
        os.chdir(here)
        for logger, state in zip(loggers, states, strict=True):
            _restore_logger(logger, state)
        keras.mixed_precision.set_global_policy(policy)
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess([script, *args], code or 0, out.getvalue(), err.getvalue())
