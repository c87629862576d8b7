"""The LR range test for a phase of a config: library call and `python -m tl_keras.lr_find`."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, tiny_config
from inprocess import command
from test_cli import TINY, assert_one_line_error, digest

from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.training import runner
from tl_keras.training.lr_find import run_lr_find


def run_lr_find_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tl_keras.lr_find", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_fe_range_test_writes_plot_and_json(tmp_path):
    result = run_lr_find(tiny_config(), str(tmp_path), num_steps=12, max_lr=10.0)
    assert 2 <= len(result.lrs) <= 12 and result.suggestion is not None
    payload = json.loads((tmp_path / "lr_find" / "fe.json").read_text())
    assert payload["phase"] == "fe" and payload["phase_lr"] == pytest.approx(1e-3)
    assert payload["suggestion"] == pytest.approx(result.suggestion)
    assert payload["suggestion_method"] in ("valley", "min/10")  # valley is the default rule
    assert set(payload["suggestions"]) == {"valley", "steepest"}
    assert payload["implied_lr_factor"] is None  # fe trains only the head: no factor rule
    assert len(payload["lrs"]) == len(payload["losses"]) == len(result.lrs)
    assert (tmp_path / "lr_find" / "fe.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "run.json").exists()  # no run was started


def test_later_phase_starts_from_the_saved_model_and_leaves_the_run_alone(tmp_path):
    cfg = tiny_config(layer_decay=0.5)
    runner.train(cfg, str(tmp_path), phase="fe")
    before = digest(tmp_path)
    result = run_lr_find(cfg, str(tmp_path), phase="ft", num_steps=8, max_lr=1.0)
    after = {k: v for k, v in digest(tmp_path).items() if not k.startswith("lr_find")}
    assert after == before  # models, history, run.json untouched
    payload = json.loads((tmp_path / "lr_find" / "ft.json").read_text())
    assert payload["unfreeze"] == "blocks:2" and payload["phase_lr"] == pytest.approx(1e-4)
    assert payload["implied_lr_factor"] == pytest.approx(1e-3 / result.suggestion)


def test_refusals(tmp_path):
    with pytest.raises(WorkdirError, match="has no 'fe' done; run .*--phase=fe"):
        run_lr_find(tiny_config(), str(tmp_path), phase="ft")
    with pytest.raises(ConfigError, match="for one phase; use one of fe, ft"):
        run_lr_find(tiny_config(), str(tmp_path), phase="all")
    with pytest.raises(ConfigError, match="max_lr"):
        run_lr_find(tiny_config(), str(tmp_path), min_lr=1.0, max_lr=0.1)
    with pytest.raises(ConfigError, match="--suggest='steep' is not a rule .* valley, steepest"):
        run_lr_find(tiny_config(), str(tmp_path), suggest="steep")
    assert not (tmp_path / "lr_find").exists()


@pytest.mark.slow
def test_readme_lr_find_commands(tmp_path, fe_done_workdir):
    """docs/beyond.md's two commands (the workdir aside): the first made small by flags after it
    (tests/test_readme_beyond.py), in this process; the second, on a run with fe done, in a
    process of its own."""
    quick = tmp_path / "quickstart"
    small = ["--synthetic_images_per_class=8", "--image_size=32", "--backbone=tiny", "--alpha=1"]
    proc = command(
        "--config=configs/quickstart.toml", f"--workdir={quick}", *small, module="tl_keras.lr_find"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[lr_find] fe: suggested lr" in proc.stdout
    assert json.loads((quick / "lr_find" / "fe.json").read_text())["steps"] > 10

    tiny = tmp_path / "tiny"
    shutil.copytree(fe_done_workdir, tiny)  # a run with fe done
    proc = run_lr_find_cli("--phase=ft", f"--workdir={tiny}")  # the rest from the workdir
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[lr_find] ft: suggested lr" in proc.stdout and "a fine-tuning factor" in proc.stdout
    assert (tiny / "lr_find" / "ft.png").is_file()


def test_cli_bad_input_is_one_line(tmp_path):
    def lr_find(*args):
        return command(*args, module="tl_keras.lr_find")

    proc = lr_find(*TINY, "--phase=ft", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "has no 'fe' done")
    proc = lr_find(*TINY, "--min_lr=1e-2", "--max_lr=1e-3", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "LR range test: max_lr must be a finite number > min_lr (0.01)")
    proc = lr_find(*TINY, "--num_steps=1", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "num_steps must be an integer >= 2")
    proc = lr_find(*TINY, "--suggest=steep", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "--suggest='steep' is not a rule of the LR range test")
