"""The shared command layer: exit codes per error family, and flags only when a command runs."""

import subprocess
import sys

import pytest
from conftest import REPO

from tl_keras import errors
from tl_keras.cli import common


@pytest.mark.parametrize(
    "error, code",
    [
        (errors.ConfigError("x"), common.EXIT_BAD_INPUT),
        (errors.DataError("x"), common.EXIT_BAD_INPUT),
        (errors.WorkdirError("x"), common.EXIT_BAD_INPUT),
        (errors.ExportError("x"), common.EXIT_BAD_INPUT),
        (errors.TrainingError("loss became nan"), common.EXIT_CHECK_FAILED),
        (errors.ExportConversionError("x"), common.EXIT_CHECK_FAILED),
    ],
)
def test_exit_code_says_bad_input_or_ran_and_failed(error, code, capsys):
    def body():
        raise error

    assert common.report_errors(body) == code
    assert capsys.readouterr().err.startswith("error: ")


def test_importing_library_functions_registers_no_flag():
    """The library side of compare and lr_find defines no command-line flag (the commands do)."""
    script = (
        "from absl import flags\n"
        "from tl_keras.config import FIELDS\n"
        "from tl_keras.training import compare, lr_finder\n"
        "import tl_keras.cli.train, tl_keras.cli.compare, tl_keras.cli.lr_find\n"
        "ours = {*FIELDS, 'workdir', 'phase', 'config', 'strategies', 'min_lr', 'unfreeze_blocks'}\n"
        "print(sorted(ours & set(flags.FLAGS)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
