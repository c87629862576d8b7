"""Kill the CLI with SIGKILL at several points, resume, and compare with an uninterrupted run.

The runs are the test backbone `tiny`'s. Every run that is killed, signalled or paused is a real
process; the uninterrupted references, the last `--resume` of each scenario (the one that
finishes the run a killed process left), the injected full disk and the refusals run the command
in this process (tests/inprocess.py), a TensorFlow start-up each the less.

The process is killed by the TL_KERAS_FAILPOINT hook (`tl_keras/_failpoints.py`), which sends a
real SIGKILL at an exact point, so each scenario hits the same spot every time. After resuming,
the run must be indistinguishable from one that was never interrupted: every epoch exactly once,
the boundary in place, frozen layers bitwise equal to the pretrained file, the same final model.
The same holds after SIGTERM and Ctrl-C (real signals, which stop the run cleanly with a resume
hint) and after a full disk (injected at the write's flush, and a real full tmpfs where one can
be mounted), which stops the run with one line and keeps the last good checkpoint.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, built_once, run_cli, worker_copy
from inprocess import command

from tl_keras.model import backbones
from tl_keras.model import classifier as model_lib
from tl_keras.training import checkpoint
from tl_keras.training.history import History

pytestmark = pytest.mark.slow

FE, FT = 3, 3  # epochs
BACKBONE, UNFROZEN = "tiny", ("block_3", "block_4")  # the test backbone; blocks:2 trains its top 2


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A stand-in for pretrained weights: a random base with data-estimated BN statistics. Built
    once per test run (`conftest.built_once`): every worker's runs name the same file, as the
    workdirs built from it (`reference`, `crashed`) saved it in their config."""

    def build(root):
        from tl_keras.data.sources import load_image_folder
        from tl_keras.data.sources.synthetic import make_shapes

        data = load_image_folder(
            make_shapes(str(root / "d"), images_per_class=8, image_size=32),
            image_size=32,
            batch_size=8,
            val_fraction=0.25,
            seed=1,
        )
        keras.utils.set_random_seed(1)
        m = model_lib.build_model(BACKBONE, 3, image_size=32, weights=None)
        model_lib.calibrate_batchnorm(m, data.train_epochs(0, 1).take(2))
        model_lib.get_base(m).save_weights(str(root / "base.weights.h5"))

    return str(built_once(tmp_path_factory, "resume_pretrained", build) / "base.weights.h5")


def args(workdir, weights):
    return [
        "--data_dir=synthetic",
        "--synthetic_images_per_class=8",
        f"--backbone={BACKBONE}",
        f"--weights={weights}",
        "--image_size=32",
        "--batch_size=8",
        f"--epochs_fe={FE}",
        f"--epochs_ft={FT}",
        "--head_units=8",
        "--unfreeze=blocks:2",
        "--checkpoint_every=0",  # a checkpoint after every epoch (the default waits 30 s)
        f"--workdir={workdir}",
    ]


def killed_at(point, *cli_args):
    proc = run_cli(*cli_args, env={"TL_KERAS_FAILPOINT": point})
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at {point}: rc={proc.returncode}\n{proc.stderr[-2000:]}"
    )
    return proc


def load_final(workdir) -> keras.Model:
    return keras.models.load_model(pathlib.Path(workdir) / "ft" / "model.keras", compile=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pretrained):
    """The uninterrupted run, built once per test run; this worker's copy (a `--resume` of it
    takes its lock)."""

    def build(root):
        proc = command(*args(root / "run", pretrained))
        assert proc.returncode == 0, proc.stderr[-3000:]

    return worker_copy(tmp_path_factory, "resume_reference", build) / "run"


# Where `crashed` (below) is killed: right after fe's last epoch is checkpointed, before fe is
# saved; the scenario that starts there copies it instead of being killed there again.
CRASH_POINT = f"after_checkpoint:{FE}"
SCENARIOS = {
    # name: (the failpoints hit by successive attempts, the epochs the last attempt trains,
    # extra flags). Each attempt after the first is itself a resume, so resumes of resumes are
    # covered.
    "mid_fe_then_mid_ft": (["batch:2:1", "batch:5:0"], [5, 6], []),
    "fe_to_ft_switch": (["phase_saved:fe"], [4, 5, 6], []),
    # fe finished but not saved; an ft epoch trained but not checkpointed; killed after one was.
    "at_every_checkpoint_edge": (
        [CRASH_POINT, "before_checkpoint:4", "after_checkpoint:5"],
        [6],
        [],
    ),
    # The default cadence: these epochs take well under the 30 s between two checkpoints, so
    # only each phase's last epoch is checkpointed; killed mid-ft, ft starts over, same result.
    "default_cadence_mid_ft": (["batch:5:0"], [4, 5, 6], ["--checkpoint_every=30"]),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_and_resume_equals_uninterrupted(scenario, tmp_path, pretrained, reference, request):
    workdir = tmp_path / "run"
    points, trained_last, extra = SCENARIOS[scenario]
    for i, point in enumerate(points):
        if i == 0 and point == CRASH_POINT and not extra:  # that first attempt is `crashed`
            shutil.copytree(request.getfixturevalue("crashed"), workdir)
        else:
            killed_at(point, *args(workdir, pretrained), *extra, *(["--resume"] if i else []))
        assert (workdir / "run.json").is_file()  # the workdir knows a run is in progress
    proc = command(*args(workdir, pretrained), *extra, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The last attempt trains only what no checkpoint or saved phase held: with a checkpoint
    # after every epoch, at most one epoch lost.
    assert [int(e) for e in re.findall(r"\] epoch (\d+) \(", proc.stdout)] == trained_last

    assert_same_as_uninterrupted(workdir, reference, pretrained)


def assert_same_as_uninterrupted(workdir, reference, pretrained) -> None:
    history = History.load(str(workdir / "history.json"))
    ref_history = History.load(str(reference / "history.json"))
    assert history.epochs == list(range(1, FE + FT + 1))  # every epoch exactly once
    assert [(s.phase, s.first, s.last) for s in history.spans()] == [
        ("fe", 1, FE),
        ("ft", FE + 1, FE + FT),
    ]
    assert history.boundaries() == [FE + 0.5]
    for got, want in zip(history.records, ref_history.records, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["epoch"], key)

    final, ref_final = load_final(workdir), load_final(reference)
    for a, b in zip(final.weights, ref_final.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)

    # Frozen layers are bitwise the pretrained file's, BN statistics included.
    spec = backbones.get(BACKBONE)
    pretrained_base = backbones.build_base(spec, image_size=32, weights=pretrained)
    base = model_lib.get_base(final)
    unfrozen = {
        i.name
        for i in backbones.layer_infos(spec, base)
        if i.block in UNFROZEN and not i.is_batchnorm
    }
    compared = 0
    for layer in base.layers:
        if layer.name in unfrozen or not layer.weights:
            continue
        for w, p in zip(layer.weights, pretrained_base.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(w.numpy(), p.numpy(), err_msg=w.path)
            compared += 1
    # Every weight outside the unfrozen layers (tiny: 23 tensors, 8 of them BN statistics).
    assert compared == len(base.weights) - sum(len(base.get_layer(n).weights) for n in unfrozen)
    assert compared > 20
    assert checkpoint.latest(str(workdir)) is None  # checkpoints are removed once superseded
    assert not [p for p in workdir.rglob("*") if ".tmp-" in p.name], "temporary files left behind"


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, pretrained):
    """A run killed at CRASH_POINT, no phase completed. Read-only: the refusals below use it in
    place; what resumes it (the scenario at_every_checkpoint_edge) or damages it copies it.
    Killed once per test run; this worker's copy (a refused command takes its lock)."""

    def build(root):
        killed_at(CRASH_POINT, *args(root / "run", pretrained))

    return worker_copy(tmp_path_factory, "resume_crashed", build) / "run"


def tree(workdir) -> list[str]:
    """The workdir's artifacts (the lock file a refused command takes and frees is not one)."""
    return sorted(
        str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.name != ".tl_keras.lock"
    )


def test_resume_refuses_a_changed_config(crashed, pretrained):
    before = tree(crashed)
    proc = command(*args(crashed, pretrained), "--resume", "--ft_lr_factor=20")
    assert proc.returncode == 2
    assert (
        "ft_lr_factor: saved 'auto', given 20.0" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert tree(crashed) == before


def test_rerun_without_resume_is_refused_after_a_crash(crashed, pretrained):
    before = tree(crashed)
    proc = command(*args(crashed, pretrained))
    assert proc.returncode == 2
    assert (
        "unfinished: no phase completed, a checkpoint to resume from); rerun with --resume"
        in proc.stderr
    )
    assert tree(crashed) == before


def test_truncated_checkpoint_is_a_clear_error(crashed, pretrained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(crashed, workdir)
    model_file = next(workdir.glob("checkpoints/epoch-*/model.keras"))
    model_file.write_bytes(model_file.read_bytes()[:1000])
    proc = command(*args(workdir, pretrained), "--resume")
    assert proc.returncode == 2
    assert "cannot load" in proc.stderr and "remove that checkpoint folder" in proc.stderr


def test_resume_of_a_finished_run_does_nothing(tmp_path, reference, pretrained):
    before = (reference / "history.json").read_text()
    proc = command(*args(reference, pretrained), "--resume")
    assert proc.returncode == 0
    assert "nothing to resume" in proc.stdout
    assert (reference / "history.json").read_text() == before
    assert os.path.isfile(reference / "ft" / "model.keras")


STATEFUL = [
    "--stages=fe:none:2,ft1:blocks:2:2,ft2:blocks:4:2:plateau",
    "--lr_schedule=cosine",
    "--layer_decay=0.7",
    "--rollback=val_accuracy",
    "--lr_plateau_patience=1",
    "--lr_plateau_factor=0.5",
]


def test_kill_and_resume_keeps_schedules_layer_decay_and_rollback(tmp_path, pretrained):
    """The state issue 4 adds survives a kill: the schedule's step count and per-variable rates
    (in the optimizer), a plateau-lowered rate and its counters, and rollback's best weights."""
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    proc = command(*args(reference, pretrained), *STATEFUL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed_at("after_checkpoint:3", *args(workdir, pretrained), *STATEFUL)  # mid ft1
    killed_at("batch:6:0", *args(workdir, pretrained), *STATEFUL, "--resume")  # mid ft2 (plateau)
    proc = command(*args(workdir, pretrained), *STATEFUL, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(e) for e in re.findall(r"\] epoch (\d+) \(", proc.stdout)] == [6]

    got, want = (
        History.load(str(workdir / "history.json")),
        History.load(str(reference / "history.json")),
    )
    assert [(s.phase, s.first, s.last) for s in got.spans()] == [
        ("fe", 1, 2),
        ("ft1", 3, 4),
        ("ft2", 5, 6),
    ]
    for a, b in zip(got.records, want.records, strict=True):
        for key in ("loss", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    for name in ("ft1", "ft2"):
        s_got = json.loads((workdir / name / "summary.json").read_text())
        s_want = json.loads((reference / name / "summary.json").read_text())
        assert s_got.get("rollback") == s_want.get("rollback"), name
    final = keras.models.load_model(workdir / "ft2" / "model.keras", compile=False)
    ref_final = keras.models.load_model(reference / "ft2" / "model.keras", compile=False)
    for a, b in zip(final.weights, ref_final.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def error_lines(stderr: str, prefix: str = "error: ") -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [ln for ln in stderr.splitlines() if ln.startswith(prefix)]


def test_sigterm_and_ctrl_c_stop_cleanly_and_resume_as_if_uninterrupted(
    tmp_path, pretrained, reference
):
    workdir = tmp_path / "run"
    # SIGTERM (a reclaimed spot instance), delivered by the process to itself mid-epoch 2.
    proc = run_cli(*args(workdir, pretrained), env={"TL_KERAS_FAILPOINT": "signal:TERM:batch:2:1"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr, "interrupted: ")
    assert "SIGTERM stopped the run; the checkpoint of epoch 1 (phase 'fe') is kept" in line
    assert line.endswith(f"--workdir={workdir} --resume")
    assert checkpoint.latest(str(workdir)).epoch == 1  # the partial epoch 2 was not saved

    # Ctrl-C from outside, during ft, wherever it lands.
    err = (tmp_path / "err").open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "tl_keras.train", *args(workdir, pretrained), "--resume"],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    for out_line in child.stdout:
        if "[ft] epoch 4 (" in out_line:
            child.send_signal(signal.SIGINT)
            break
    child.stdout.read()
    assert child.wait() == 128 + signal.SIGINT
    err.close()
    (line,) = error_lines((tmp_path / "err").read_text(), "interrupted: ")
    assert re.search(r"SIGINT stopped the run; the checkpoint of epoch [456] \(phase 'ft'\)", line)
    assert "--resume" in line
    assert not [p for p in workdir.rglob("*") if ".tmp-" in p.name]

    proc = command(*args(workdir, pretrained), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_uninterrupted(workdir, reference, pretrained)


def assert_disk_full(proc, workdir) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert f"error: the disk is full: writing {workdir}/checkpoints/epoch-00002" in line
    assert "nothing was half-written; a checkpoint of this run needs about" in line
    assert "the newest complete checkpoint (phase 'fe', epoch 1) is kept" in line
    assert line.endswith("continue with --resume")
    assert checkpoint.latest(str(workdir)).epoch == 1
    assert not [p for p in workdir.rglob("*") if ".tmp-" in p.name]
    return line


def test_a_full_disk_stops_with_one_line_and_resume_continues(
    tmp_path, pretrained, reference, monkeypatch
):
    """ENOSPC injected where a full disk reports it: when epoch 2's checkpoint is flushed."""
    workdir = tmp_path / "run"
    monkeypatch.setenv("TL_KERAS_FAILPOINT", "enospc:checkpoints/epoch-00002")
    assert_disk_full(command(*args(workdir, pretrained)), workdir)
    monkeypatch.delenv("TL_KERAS_FAILPOINT")
    proc = command(*args(workdir, pretrained), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_uninterrupted(workdir, reference, pretrained)


@pytest.fixture
def tmpfs(tmp_path):
    """A small file system of its own (a tmpfs); skips where it cannot be mounted (not root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk(tmp_path, tmpfs, pretrained, reference):
    """The workdir's file system fills up (another program's file) while epoch 2 trains."""
    workdir, pause = tmpfs / "run", tmp_path / "pause"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TL_KERAS_FAILPOINT":
           "pause:after_checkpoint:1", "TL_KERAS_PAUSE_FILE": str(pause)}  # fmt: skip
    with (tmp_path / "err").open("w") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "tl_keras.train", *args(workdir, pretrained)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not pause.exists():
            assert child.poll() is None and time.monotonic() < deadline, "never paused"
            time.sleep(0.1)
        one = sum(p.stat().st_size for p in (workdir / "checkpoints").rglob("*") if p.is_file())
        filler = tmpfs / "filler"
        with filler.open("wb") as f:  # leave half a checkpoint's space free
            left = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize - one // 2
            while left > 0:
                left -= f.write(b"\0" * min(left, 1 << 20))
        pause.unlink()
        child.wait(timeout=300)
    proc = subprocess.CompletedProcess(
        child.args, child.returncode, "", (tmp_path / "err").read_text()
    )
    assert_disk_full(proc, workdir)
    filler.unlink()  # space freed
    proc = command(*args(workdir, pretrained), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_uninterrupted(workdir, reference, pretrained)


def test_a_kill_during_calibration_is_finished_by_resume(trained_workdir, tmp_path):
    """Killed after its last phase was saved, before its temperature was written, a run used to
    answer --resume with 'nothing to resume' and stay without its calibration (found by
    benchmarks/soak_crash.py). What the kill leaves is what `save_phase` wrote: run.json whose
    "inference" holds only the TTA (`forget_temperature`), no calibration.json."""
    from conftest import tiny_config

    from tl_keras.training.runner import train

    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    run = json.loads((workdir / "run.json").read_text())
    run["inference"] = {"tta": run["inference"]["tta"]}
    (workdir / "run.json").write_text(json.dumps(run))
    (workdir / "calibration" / "calibration.json").unlink()

    result = train(tiny_config(synthetic_images_per_class=10), str(workdir), resume=True)
    assert not result.phases  # nothing trained again
    # The same figures to float precision, not bitwise: the uninterrupted run scored validation
    # on its frozen bottom's cached outputs, computed with BatchNorm folded into the convolutions
    # (`tl_keras.model.fold`); the resumed one, with no phase to cache them, runs the whole model.
    for name in ("run.json", "calibration/calibration.json"):
        got = json.loads((workdir / name).read_text())
        want = json.loads((pathlib.Path(trained_workdir) / name).read_text())
        assert got == _floats_approx(want), name


def _floats_approx(value):
    """`value` with every float replaced by `pytest.approx` of it (rel 1e-6), nested dicts and
    lists kept: `==` then compares the structure exactly and the floats to float precision."""
    if isinstance(value, dict):
        return {k: _floats_approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats_approx(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-6, abs=1e-12)
    return value
