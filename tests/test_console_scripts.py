"""A console command for every entry point, as `pip install -e .` installs them.

setup.cfg's `console_scripts` and the commands in `tl_keras/cli/` agree one to one (the name is
`tl_keras.cli.common.script_name`); each installed script runs and answers `--help` with its own
flags (exit 0); one of them does a real job end to end.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import REPO

from tl_keras.cli.common import script_name

COMMANDS = sorted(
    p.stem for p in (REPO / "tl_keras" / "cli").glob("*.py") if p.stem not in ("__init__", "common")
)
BIN = pathlib.Path(sys.executable).parent  # where pip put the scripts of this environment


def declared() -> dict[str, str]:
    """setup.cfg's console_scripts: command -> 'module:function'."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_every_command_has_a_console_script_and_no_other():
    def entry(c: str) -> str:  # a command that is a package (the doctor) runs its __main__
        package = (REPO / "tl_keras" / c).is_dir()
        return f"tl_keras.{c}.__main__:run_main" if package else f"tl_keras.{c}:run_main"

    assert declared() == {script_name(f"tl_keras.cli.{c}"): entry(c) for c in COMMANDS}
    assert set(COMMANDS) == {
        "compare",
        "doctor",
        "evaluate",
        "export",
        "lr_find",
        "predict",
        "train",
        "weights",
    }


def test_the_installed_scripts_are_the_declared_ones():
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name.startswith("tl-keras-")
    }
    assert installed == declared(), "the install is stale: rerun `pip install -e .`"
    for name in installed:
        assert (BIN / name).is_file(), f"{BIN / name} missing: rerun `pip install -e .`"


def run_script(name: str, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_each_script_answers_help_with_its_own_flags(command):
    name = script_name(f"tl_keras.cli.{command}")
    proc = run_script(name, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Installed as `{name}`; the same as `python -m tl_keras.{command}`" in proc.stdout
    if command != "weights":  # every command but the weights conversion works on a workdir
        assert "--workdir" in proc.stdout
    own = {"train": "--epochs_fe", "lr_find": "--suggest", "evaluate": "--top_k",
           "predict": "--output", "export": "--formats", "compare": "--strategies",
           "doctor": "tl_keras.doctor.workflow.doctor_workdir",
           "weights": "--include_top"}  # fmt: skip
    assert own[command] in proc.stdout


@pytest.mark.slow
def test_tl_keras_evaluate_does_a_real_evaluation(trained_workdir, tmp_path):
    proc = run_script(
        "tl-keras-evaluate", f"--workdir={trained_workdir}", "--split=val", f"--out_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["data"]["split"] == "val" and saved["model"]["phase"] == "ft"
    assert f"accuracy {saved['accuracy']:.4f}" in proc.stdout


@pytest.mark.slow
def test_bad_input_through_a_script_is_one_line_and_exit_2(tmp_path):
    proc = run_script("tl-keras-predict", f"--workdir={tmp_path / 'nothing'}", "x.jpg")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
