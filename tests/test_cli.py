"""`python -m tl_keras.train` in real subprocesses, the way users run it (refusals that need no
process of their own run in this one: tests/inprocess.py)."""

import hashlib
import json
import os
import pathlib

import pytest
from conftest import REPO, run_cli
from inprocess import command

from tl_keras.training.history import History

TINY = [
    "--data_dir=synthetic",
    "--synthetic_images_per_class=8",
    "--backbone=tiny",
    "--weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--epochs_fe=2",
    "--epochs_ft=2",
    "--head_units=8",
    "--unfreeze_blocks=2",
]


def digest(folder) -> dict[str, str]:
    """Hash of every file under a folder: proves a refused command changed nothing."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(
                pathlib.Path(path).read_bytes()
            ).hexdigest()
    return out


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_quickstart_config_runs(tmp_path):
    """The README's first command (the quickstart), exactly (the workdir aside), in this process
    (tests/inprocess.py: the command's flags, parsed by absl, and its `main`); the real
    `python -m tl_keras.train` runs below (`split_and_all`, the traceback of --verbose)."""
    workdir = tmp_path / "quickstart"
    proc = command("--config=configs/quickstart.toml", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = History.load(str(workdir / "history.json"))
    assert [(s.phase, s.epochs) for s in history.spans()] == [("fe", 5), ("ft", 5)]
    assert history.boundaries() == [5.5]
    assert (workdir / "curves.png").stat().st_size > 10_000
    assert "[fe] epoch 1 (1/5)" in proc.stdout and "[ft] epoch 10 (5/5)" in proc.stdout
    assert "done: fe -> ft" in proc.stdout


@pytest.fixture(scope="module")
def split_and_all(tmp_path_factory):
    """The same tiny run as `all`, and as `fe` then `ft` in two separate processes: `all` and
    `fe` in this one (tests/inprocess.py), `ft` in a fresh `python -m tl_keras.train` that has
    only the workdir to go by."""
    root = tmp_path_factory.mktemp("cli")
    whole, split = root / "all", root / "split"
    procs = [
        command(*TINY, "--phase=all", f"--workdir={whole}"),
        command(*TINY, "--phase=fe", f"--workdir={split}"),
    ]
    fe_only = History.load(str(split / "history.json"))
    procs.append(run_cli("--phase=ft", f"--workdir={split}"))  # everything else from the workdir
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return whole, split, fe_only


@pytest.mark.slow
def test_fe_then_ft_in_two_processes_equals_all(split_and_all):
    whole, split, fe_only = split_and_all
    a = History.load(str(whole / "history.json"))
    b = History.load(str(split / "history.json"))
    assert fe_only.epochs == [1, 2] and fe_only.boundaries() == []
    assert [(r["epoch"], r["phase"]) for r in a.records] == [
        (r["epoch"], r["phase"]) for r in b.records
    ]
    assert a.boundaries() == b.boundaries() == [2.5]
    # Same seed, same data order per epoch, same saved state: the same numbers.
    for ra, rb in zip(a.records, b.records, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["epoch"], key)


@pytest.mark.slow
def test_ft_trusts_the_config_fe_saved(split_and_all):
    _, split, _ = split_and_all
    cfg = json.loads(pathlib.Path(split / "ft" / "config.json").read_text())
    assert cfg["backbone"] == "tiny" and cfg["image_size"] == 32 and cfg["unfreeze"] == "blocks:2"


@pytest.mark.slow
def test_mismatched_ft_is_refused_and_changes_nothing(split_and_all):
    _, split, _ = split_and_all
    before = digest(split)
    proc = command(
        "--phase=ft", f"--workdir={split}", "--overwrite", "--backbone=mobilenet_v2", "--alpha=0.35"
    )
    assert_one_line_error(
        proc, "holds a different run", "backbone: saved 'tiny', given 'mobilenet_v2'"
    )
    assert digest(split) == before


def test_verbose_shows_the_traceback(tmp_path):
    proc = run_cli(*TINY, "--ft_lr_factor=5", "--verbose", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_lists_every_config_field():
    import subprocess
    import sys

    from tl_keras.config import FIELDS

    out = subprocess.run(
        [sys.executable, "-m", "tl_keras.train", "--helpfull"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    for name in FIELDS:
        assert f"--{name}" in out or f"--[no]{name}" in out, name
