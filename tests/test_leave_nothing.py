"""A refusal leaves nothing it created: not the workdir, its parents, its lock, nor what the
command added before it was refused (`tl_keras.workdir.nothing_left_if_refused`).

The flag cases of `tests/test_bad_inputs.py` check the same of `train` on a missing workdir
(`--phase=ft`, a budget too small ...); here the other commands that create a workdir, a
refusal that comes after data was written into an existing one, and what is never removed.
"""

import pathlib

import pytest
from conftest import tiny_flags
from inprocess import command

from tl_keras.errors import ConfigError, DataError, TrainingError
from tl_keras.workdir import nothing_left_if_refused


def refused(proc, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize(
    "module", ["tl_keras.train", "tl_keras.lr_find", "tl_keras.doctor", "tl_keras.compare"]
)
def test_a_command_refused_on_a_missing_workdir_leaves_no_folder(module, tmp_path):
    workdir = tmp_path / "runs" / "a" / "b"
    flags = tiny_flags(data_dir=str(tmp_path / "no-such-data"))
    if module == "tl_keras.compare":
        flags.append("--strategies=fe,fe_ft")
    refused(command(*flags, f"--workdir={workdir}", module=module), "no-such-data")
    assert list(tmp_path.iterdir()) == []  # not runs/, not runs/a/


def test_ft_on_a_missing_workdir_leaves_no_folder(tmp_path):
    workdir = tmp_path / "w"
    for extra in (["--phase=ft"], ["--phase=ft", "--resume"], ["--phase=ft", "--overwrite"]):
        refused(command(*tiny_flags(), *extra, f"--workdir={workdir}"), "needs phase 'fe' done")
        assert not workdir.exists(), extra


def test_what_a_refused_run_wrote_into_an_existing_workdir_goes(tmp_path):
    """The synthetic data set is generated into the workdir before the weights file is looked
    up: refused, the workdir holds what it held before, and nothing else."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    proc = command(*tiny_flags(weights=str(tmp_path / "nope.weights.h5")), f"--workdir={workdir}")
    refused(proc, "nope.weights.h5")
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
    assert (workdir / "notes.txt").read_text() == "mine"


def test_what_is_kept(tmp_path):
    """Removed only on bad input, and never once a run was recorded or a checkpoint written."""
    with pytest.raises(DataError), nothing_left_if_refused(str(tmp_path / "a")):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "data").mkdir()
        raise DataError("bad")
    assert not (tmp_path / "a").exists()
    # A run that failed (exit 1) keeps what it wrote: its checkpoint, its logs.
    with pytest.raises(TrainingError), nothing_left_if_refused(str(tmp_path / "b")):
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "logs").mkdir()
        raise TrainingError("NaN")
    assert (tmp_path / "b" / "logs").is_dir()
    for recorded in ("run.json", "checkpoints"):
        folder = tmp_path / recorded.replace(".", "_")
        with pytest.raises(ConfigError), nothing_left_if_refused(str(folder)):
            folder.mkdir()
            (folder / recorded).write_text("{}")
            (folder / "data").mkdir()
            raise ConfigError("refused later")
        assert sorted(p.name for p in folder.iterdir()) == sorted([recorded, "data"])
    # `keep()`: a comparison whose first strategy finished keeps it when a later one is refused.
    with pytest.raises(ConfigError), nothing_left_if_refused(str(tmp_path / "c")) as made:
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "fe").mkdir()
        made.keep()
        raise ConfigError("the next strategy is refused")
    assert (tmp_path / "c" / "fe").is_dir()


def test_an_existing_folder_and_what_it_held_stay(tmp_path):
    (tmp_path / "old").write_text("x")
    with pytest.raises(ConfigError), nothing_left_if_refused(str(tmp_path), hold_lock=True):
        (tmp_path / "new").write_text("y")
        raise ConfigError("refused")
    assert sorted(p.name for p in pathlib.Path(tmp_path).iterdir()) == ["old"]
