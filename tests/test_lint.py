"""ruff format and lint are part of the test command, so CI enforces them."""

import shutil
import subprocess

import pytest
from conftest import REPO

PATHS = ["tl_keras", "tests", "benchmarks", "notebooks"]


@pytest.mark.skipif(
    shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')"
)
@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    paths = [p for p in PATHS if (REPO / p).exists()]
    proc = subprocess.run(["ruff", *args, *paths], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
