"""Every command of docs/beyond.md ("Beyond two phases"), run as written (workdir aside), made
small by flags after it, through the command's main in this process."""

import json
import re
import shlex
import subprocess

import pytest
from conftest import REPO
from inprocess import command

from tl_keras.training.history import History

# The commands, exactly as docs/beyond.md shows them; the tests below run each one.
GRADUAL = "python -m tl_keras.train --config=configs/gradual.toml --workdir=runs/gradual"
GRADUAL_FT2 = "python -m tl_keras.train --phase=ft2 --workdir=runs/gradual --overwrite"
STAGES_FLAG = (
    "python -m tl_keras.train --phase=all --workdir=runs/g --data_dir=synthetic --weights=none "
    '--backbone=mobilenet --alpha=0.25 --image_size=32 --stages="fe:none:1,ft1:blocks:1:1,ft2:all:1"'
)
COSINE = (
    "python -m tl_keras.train --config=configs/quickstart.toml --workdir=runs/cosine "
    "--lr_schedule=cosine --warmup_epochs=1 --min_lr_ratio=0.1"
)
CONTROL = (
    "python -m tl_keras.train --config=configs/quickstart.toml --workdir=runs/control "
    "--epochs_fe=10 --fe_switch_patience=2 --rollback=val_accuracy"
)
# Run by tests/test_lr_find_cli.py and tests/test_compare.py.
TESTED_ELSEWHERE = (
    "python -m tl_keras.lr_find --config=configs/quickstart.toml --workdir=runs/quickstart",
    "python -m tl_keras.lr_find --phase=ft --workdir=runs/quickstart",
    "python -m tl_keras.compare --config=configs/compare_flowers.toml "
    "--workdir=runs/compare_flowers --seeds=3",  # test_compare.py: the config; --seeds there too
)


def readme_commands() -> list[str]:
    """The `python -m` commands of docs/beyond.md, the "Beyond two phases" guide."""
    section = (REPO / "docs" / "beyond.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python -m"):
                commands.append(line)
    return commands


def test_every_readme_command_is_tested():
    tested = {GRADUAL, GRADUAL_FT2, STAGES_FLAG, COSINE, CONTROL, *TESTED_ELSEWHERE}
    commands = readme_commands()
    assert len(commands) == len(tested)
    assert set(commands) == tested


# The commands run as the docs show them, made small by flags after them (as the doctor's do in
# tests/test_doctor_cli.py): fewer, smaller images, and the quickstart's on the test backbone
# (tests/test_cli.py runs the quickstart itself exactly). What each test asserts (the schedule,
# its boundaries and rates, the log lines) does not depend on them.
SMALL = ["--synthetic_images_per_class=8", "--image_size=32"]
TINY = [*SMALL, "--backbone=tiny", "--alpha=1"]


def run(line: str, workdir, *extra: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` as written, through the command's main in this process
    (tests/inprocess.py; tests/test_cli.py runs the train command in a process of its own)."""
    python, dash_m, module, *args = shlex.split(line)
    assert (python, dash_m) == ("python", "-m"), line
    args = [f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in args]
    proc = command(*args, *extra, module=module)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_gradual_config_and_one_stage_alone(tmp_path):
    proc = run(GRADUAL, tmp_path, *SMALL)  # MobileNet: its 14 blocks, for blocks:8
    history = History.load(str(tmp_path / "history.json"))
    assert [(s.phase, s.epochs) for s in history.spans()] == [
        ("fe", 3),
        ("ft1", 2),
        ("ft2", 2),
        ("ft3", 2),
    ]
    assert history.boundaries() == [3.5, 5.5, 7.5]
    lrs = history.metric("lr")
    assert [lrs[i] for i in (0, 3, 5, 7)] == [0.0] * 4  # each stage warms up from 0
    assert max(lrs[3:5]) <= 1e-4 and max(lrs[7:]) <= 2.5e-5
    # given stages are the user's schedule: the head takes each stage's rate, the blocks decay
    assert "discriminative learning rates (layer_decay 0.7, head x 1)" in proc.stdout
    blocks = [
        json.loads((tmp_path / p / "summary.json").read_text())["trainability"]["unfrozen_blocks"]
        for p in ("ft1", "ft2", "ft3")
    ]
    assert [len(b) for b in blocks] == [2, 4, 8]

    run(GRADUAL_FT2, tmp_path)  # the saved config supplies the stages
    again = History.load(str(tmp_path / "history.json"))
    assert [(s.phase, s.epochs) for s in again.spans()] == [("fe", 3), ("ft1", 2), ("ft2", 2)]
    assert again.records[:5] == history.records[:5]


@pytest.mark.slow
def test_stages_as_a_flag(tmp_path):
    run(STAGES_FLAG, tmp_path, *TINY)
    history = History.load(str(tmp_path / "history.json"))
    assert [s.phase for s in history.spans()] == ["fe", "ft1", "ft2"]
    assert history.metric("lr") == pytest.approx([1e-3, 1e-4, 1e-4])


@pytest.mark.slow
def test_cosine_schedule_command(tmp_path):
    run(COSINE, tmp_path, *TINY)
    history = History.load(str(tmp_path / "history.json"))
    lrs = history.metric("lr")
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1e-3)  # fe: warm-up over its 1st epoch
    assert lrs[5] == 0.0 and lrs[6] == pytest.approx(1e-4)  # ft restarts its own schedule
    assert lrs[1] > lrs[2] > lrs[3] > lrs[4] > 1e-4  # cosine towards lr * 0.1


@pytest.mark.slow
def test_phase_control_command(tmp_path):
    proc = run(CONTROL, tmp_path, *TINY)
    run_info = json.loads((tmp_path / "run.json").read_text())
    fe = run_info["phases"]["fe"]
    assert fe["epochs_run"] == 10 or (
        fe["stopped_early"] and "switching to the next" in proc.stdout
    )
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["rollback"]["monitor"] == "val_accuracy"
    kept = summary["rollback"]["kept"]
    assert f"kept the weights of {kept}" in proc.stdout
