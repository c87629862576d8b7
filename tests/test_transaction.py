"""`--overwrite` as a transaction (`tl_keras/transaction.py`, `tl_keras/training/replace.py`).

The swap on its own, with a stand-in run and no TensorFlow: a SIGKILL at every step of it
(`replace:*` fail points) leaves, once the next reader has recovered it, exactly the old run or
exactly the new one; a reader beside a live replacement reads the old run and waits out a live
swap; a full disk at the commit record or in the middle of the swap. Then real replacements of
the session's finished tiny run (`trained_workdir`, copied): diverging (all phases through the
command line, `--phase=ft`), SIGTERM, a full disk, and SIGKILL before and in the middle of the
swap. "As before" is bitwise: every file's hash, and `predict`'s probabilities.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, TRAINED, run_cli, tiny_config, tiny_flags
from inprocess import command

from tl_keras import config as config_lib
from tl_keras import interrupt, io, lock, transaction
from tl_keras.errors import DiskFullError, TrainingError, WorkdirError
from tl_keras.training import plan
from tl_keras.training import replace as replacement
from tl_keras.workdir import SHARED, Workdir

# --- a stand-in run, and what "exactly the old / the new run" means ------------------------------
OLD_RUN = {
    "run.json": {"phases": {"fe": {"last_epoch": 1}, "ft": {"last_epoch": 2}}},
    "config.json": "old config",
    "history.json": "old history",
    "history.csv": "old csv",
    "curves.png": "old curves",
    "recipe.json": "old card",
    "calibration/calibration.json": "old temperature",
    "doctor/report.json": "old doctor",
    "fe/model.keras": "old fe model",
    "fe/summary.json": "old fe summary",
    "ft/model.keras": "old ft model",
}
NEW_RUN = {
    "run.json": {"phases": {"fe": {"last_epoch": 1}}},
    "config.json": "new config",
    "history.json": "new history",
    "history.csv": "new csv",
    "curves.png": "new curves",
    "recipe.json": "new card",
    "doctor/report.json": "new doctor",
    "fe/model.keras": "new fe model",
    "fe/summary.json": "new fe summary",
    "cache/features/k2/x.npy": "new cache entry",  # shared: merged, never swapped
}
OUTLIVES = {  # not the run's: no --overwrite moves these
    "data/synthetic/a.png": "image",
    "logs/epochs.csv": "every attempt's log",
    "cache/features/k1/x.npy": "old cache entry",
    "evaluation/val/metrics.json": "an evaluation",
}
RUN_COMMON = {"format": 1, "backbone": "mobilenet", "image_size": 32, "class_names": ["a", "b"]}


def write_tree(root: pathlib.Path, files: dict) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            content = json.dumps({**RUN_COMMON, **content})
        path.write_text(content)


def snapshot(root) -> dict[str, str]:
    """Every file's sha256 (the lock and a killed writer's temporary names aside)."""
    root = pathlib.Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != lock.LOCK_FILE and io.TMP_MARK not in str(p.relative_to(root))
    }


@pytest.fixture
def runs(tmp_path):
    """(the workdir holding the old run, the new run to stage, the two expected snapshots)."""
    old, new = tmp_path / "expected-old", tmp_path / "expected-new"
    write_tree(old, {**OLD_RUN, **OUTLIVES})
    write_tree(new, {**OUTLIVES, **NEW_RUN})
    staged = tmp_path / "staged"
    write_tree(staged, NEW_RUN)
    workdir = tmp_path / "w"
    shutil.copytree(old, workdir)
    return workdir, staged, snapshot(old), snapshot(new)


# The replacement the subprocess runs: stage, write the new run, commit, as `train` does.
REPLACE = """
import os, shutil, sys
from tl_keras import lock
from tl_keras.workdir import Workdir
workdir, staged = sys.argv[1], sys.argv[2]
with lock.hold(workdir):
    out = Workdir(workdir).stage(replacing={"phases_done": ["fe", "ft"]})
    shutil.copytree(staged, out.path, dirs_exist_ok=True)
    out.commit("the new run finished phase 'fe'")
"""


def replace(workdir, staged, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", REPLACE, str(workdir), str(staged)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        **kw,
    )


OLD_ENTRIES = [
    "run.json",
    "calibration",
    "config.json",
    "curves.png",
    "doctor",
    "fe",
    "ft",
    "history.csv",
    "history.json",
    "recipe.json",
]  # fmt: skip  (run.json moves first)
NEW_ENTRIES = [
    "config.json",
    "curves.png",
    "doctor",
    "fe",
    "history.csv",
    "history.json",
    "recipe.json",
    "run.json",
]  # fmt: skip  (run.json moves last)
BEFORE_COMMIT = [
    "write:.replacement",  # the staging folder complete at its temporary name
    "replace:begun",
    "replace:commit",
    "write:.replacement/commit.json",
]
AFTER_COMMIT = [
    *(f"replace:out:{e}" for e in OLD_ENTRIES),
    *(f"replace:in:{e}" for e in NEW_ENTRIES),
    "replace:swapped",
    "replace:discarded",
]


@pytest.mark.parametrize("point", BEFORE_COMMIT + AFTER_COMMIT)
def test_a_kill_at_any_step_of_the_swap_leaves_the_old_run_or_the_new_one(point, runs, caplog):
    workdir, staged, old, new = runs
    proc = replace(workdir, staged, {"TL_KERAS_FAILPOINT": point})
    assert proc.wait(timeout=60) == -9, point
    # The next command to read the workdir recovers it, under the dead writer's lock.
    with caplog.at_level("WARNING", logger="tl_keras"):
        run = Workdir(str(workdir)).read_run()
    expected = old if point in BEFORE_COMMIT else new
    assert snapshot(workdir) == expected
    assert list(run["phases"]) == (["fe", "ft"] if expected is old else ["fe"])
    assert transaction.pending(str(workdir)) is None
    if point not in ("write:.replacement", "replace:discarded"):  # not begun, or over
        (line,) = [r.getMessage() for r in caplog.records if "--overwrite of" in r.getMessage()]
        what = "discarded" if expected is old else "the swap is now complete"
        assert what in line and f"pid {proc.pid}" in line
    with lock.hold(str(workdir)):  # a writer's takeover clears what the deletion left
        pass
    assert not [p for p in os.listdir(workdir) if p.startswith(".") and p != lock.LOCK_FILE]


def test_the_swap_unbroken_gives_the_new_run(runs):
    workdir, staged, _, new = runs
    assert replace(workdir, staged).wait(timeout=60) == 0
    assert snapshot(workdir) == new
    assert {"data", "logs", "cache"} <= set(SHARED)


def test_a_reader_reads_the_old_run_beside_a_live_replacement_and_waits_out_its_swap(
    runs, tmp_path
):
    workdir, staged, old, new = runs
    pause = tmp_path / "pause"
    env = {
        "TL_KERAS_FAILPOINT": "pause:replace:begun,pause:replace:in:fe",
        "TL_KERAS_PAUSE_FILE": str(pause),
    }
    proc = replace(workdir, staged, env)
    wait_for(pause.exists, "the replacement to stage its run")
    assert list(Workdir(str(workdir)).read_run()["phases"]) == ["fe", "ft"]  # the old run
    assert transaction.pending(str(workdir)) == "staged"  # left alone: its writer is alive
    pause.unlink()
    wait_for(pause.exists, "the swap to stop half-way")
    assert transaction.pending(str(workdir)) == "committed"
    seen = []
    reader = threading.Thread(target=lambda: seen.append(Workdir(str(workdir)).read_run()))
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive() and not seen  # it waits for the live writer's swap
    pause.unlink()
    reader.join(timeout=30)
    assert proc.wait(timeout=60) == 0
    assert list(seen[0]["phases"]) == ["fe"]
    assert snapshot(workdir) == new


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stage_and_commit(workdir, staged) -> str | None:
    """REPLACE in this process."""
    with lock.hold(str(workdir)):
        out = Workdir(str(workdir)).stage()
        shutil.copytree(staged, out.path, dirs_exist_ok=True)
        try:
            out.commit("test")
        finally:
            outcome = transaction.end(str(workdir))
    return outcome


def test_a_full_disk_at_the_commit_record_leaves_the_old_run(runs, monkeypatch):
    workdir, staged, old, _ = runs
    monkeypatch.setenv("TL_KERAS_FAILPOINT", "enospc:.replacement/commit.json")
    with pytest.raises(DiskFullError, match="commit.json failed"):
        stage_and_commit(workdir, staged)
    assert transaction.pending(str(workdir)) is None  # abandoned: nothing was committed
    assert snapshot(workdir) == old


def test_a_full_disk_in_the_middle_of_the_swap_is_finished_once_there_is_space(runs, monkeypatch):
    workdir, staged, _, new = runs
    monkeypatch.setenv("TL_KERAS_FAILPOINT", f"enospc:{workdir}/fe")  # fe's move in
    with pytest.raises(OSError, match="No space left"):
        stage_and_commit(workdir, staged)
    assert transaction.pending(str(workdir)) == "committed"
    # A reader meanwhile gets one line, never a workdir half of each run.
    with pytest.raises(
        WorkdirError, match=r"half-way through an --overwrite's swap .*\(No space left"
    ):
        Workdir(str(workdir)).read_run()
    monkeypatch.delenv("TL_KERAS_FAILPOINT")
    assert list(Workdir(str(workdir)).read_run()["phases"]) == ["fe"]
    assert snapshot(workdir) == new


def test_runs_earlier_versions_set_aside_go_at_the_commit(runs):
    workdir, staged, _, new = runs
    write_tree(workdir / "replaced-20250101-000000", OLD_RUN)
    assert "replaced-20250101-000000" not in Workdir(str(workdir)).run_entries()
    assert stage_and_commit(workdir, staged) is None  # committed and ended by the commit
    assert snapshot(workdir) == new


# --- real replacements of a finished run ---------------------------------------------------------
TINY = tiny_flags(**TRAINED)  # the run of conftest.trained_workdir, as flags
DIVERGE = ["--lr=1e30", "--allow_any_lr_factor"]


def tiny(**overrides):
    return tiny_config(**TRAINED, **overrides)


def answers(workdir) -> list[tuple]:
    """What `predict` answers for six of the run's images: labels and probabilities."""
    from tl_keras.inference.predict import predict_workdir

    images = sorted(pathlib.Path(workdir, "data", "synthetic").rglob("*.png"))[::5]
    return [(p.labels, p.probabilities) for p in predict_workdir(str(workdir), images, top_k=3)]


@pytest.fixture
def finished(trained_workdir, tmp_path):
    """A copy of the session's finished run, with its files' hashes and predict's answers."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    return workdir, snapshot(workdir), answers(workdir)


def assert_as_before(finished) -> None:
    workdir, files, predicted = finished
    assert answers(workdir) == predicted  # bitwise: the same floats (predict reads first)
    assert snapshot(workdir) == files
    assert not os.path.lexists(workdir / transaction.FOLDER)


def nothing_replaced(workdir) -> str:
    return (
        f"Nothing was replaced: {workdir} still holds the run --overwrite was replacing "
        "(phases done: fe, ft), untouched"
    )


def test_a_diverging_overwrite_exits_with_one_line_and_the_old_run_answers_as_before(finished):
    workdir = finished[0]
    # The command in this process (tests/inprocess.py): its exit status, error line and log.
    proc = command(*TINY, *DIVERGE, f"--workdir={workdir}", "--overwrite")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert "the loss became nan in phase 'fe', epoch 1" in line and "training stopped." in line
    assert line.endswith(nothing_replaced(workdir)), line
    assert "--resume" not in line and "was kept" not in line  # both went with the staged run
    assert "is staged in" in proc.stdout  # the log said where the new run trained
    assert_as_before(finished)


def test_a_diverging_overwrite_of_ft_leaves_the_finished_ft(finished):
    workdir = finished[0]
    cfg = tiny(lr=1e30, ft_lr_factor=1.0, allow_any_lr_factor=True)
    from tl_keras.training.runner import train

    with pytest.raises(TrainingError) as e:
        train(cfg, str(workdir), phase="ft", overwrite=True)
    message = str(e.value)
    assert "in phase 'ft', epoch 2" in message and message.endswith(nothing_replaced(workdir))
    assert "--resume" not in message and "was kept" not in message
    assert_as_before(finished)


def test_sigterm_during_a_replacement_leaves_the_old_run(finished, monkeypatch):
    from tl_keras.cli.train import _interrupted
    from tl_keras.training.runner import train

    workdir = finished[0]
    monkeypatch.setenv("TL_KERAS_FAILPOINT", "signal:TERM:batch:1:1")
    with interrupt.handled(), pytest.raises(interrupt.Interrupted) as e:
        train(tiny(), str(workdir), overwrite=True)
    monkeypatch.delenv("TL_KERAS_FAILPOINT")
    line = _interrupted(e.value, str(workdir))  # the command's `interrupted:` line
    assert line == (
        f"SIGTERM stopped the run; {nothing_replaced(workdir)[0].lower()}"
        f"{nothing_replaced(workdir)[1:]}. Run the same command again to replace it"
    )
    assert_as_before(finished)


def test_a_full_disk_during_a_replacement_leaves_the_old_run(finished, monkeypatch):
    from tl_keras.training.runner import train

    workdir = finished[0]
    monkeypatch.setenv("TL_KERAS_FAILPOINT", "enospc:.replacement/new/config.json")
    with pytest.raises(DiskFullError) as e:
        train(tiny(), str(workdir), overwrite=True)
    monkeypatch.delenv("TL_KERAS_FAILPOINT")
    message = str(e.value)
    assert message.startswith("the disk is full: writing ") and "new/config.json failed" in message
    assert "Free at least that much space there and run the same command again" in message
    assert message.endswith(nothing_replaced(workdir)), message
    assert "--resume" not in message and "is kept" not in message
    assert_as_before(finished)


def test_a_kill_before_the_commit_point_is_undone_by_the_next_reader(finished, caplog):
    workdir = finished[0]
    proc = run_cli(*TINY, f"--workdir={workdir}", "--overwrite",
                   env={"TL_KERAS_FAILPOINT": "batch:1:1"})  # fmt: skip
    assert proc.returncode == -9
    assert transaction.pending(str(workdir)) == "staged"
    # --resume reads the old run (finished: nothing to resume), having undone the replacement.
    with caplog.at_level("WARNING", logger="tl_keras"):
        assert plan.plan_run(config_lib.check(tiny()), str(workdir), resume=True).nothing_to_do
    assert "was stopped before its new run finished a phase: that run was discarded" in caplog.text
    assert_as_before(finished)


def test_a_kill_in_the_middle_of_the_swap_is_finished_by_the_next_command(finished, caplog):
    from tl_keras.inference.trained import load_trained
    from tl_keras.training.runner import train

    workdir = finished[0]
    proc = run_cli(*TINY, f"--workdir={workdir}", "--overwrite", "--epochs_fe=2",
                   env={"TL_KERAS_FAILPOINT": "replace:in:fe"})  # fmt: skip
    assert proc.returncode == -9
    staged_fe = hashlib.sha256((workdir / ".replacement/new/fe/model.keras").read_bytes())
    assert not (workdir / "run.json").exists()  # the old run moved out, the new one not yet in
    with caplog.at_level("WARNING", logger="tl_keras"):
        trained = load_trained(str(workdir))  # a reader completes the swap
    assert "the swap is now complete" in caplog.text
    assert trained.phase == "fe"  # the new run, its first phase done
    assert hashlib.sha256(pathlib.Path(trained.model_path).read_bytes()).digest() == (
        staged_fe.digest()
    )
    assert not (workdir / "ft").exists()
    # The new run goes on with --resume, as any run stopped after a phase.
    result = train(tiny(epochs_fe=2), str(workdir), resume=True)
    assert [s.phase for s in result.history.spans()] == ["fe", "ft"]
    run = json.loads((workdir / "run.json").read_text())
    assert list(run["phases"]) == ["fe", "ft"] and run["phases"]["fe"]["last_epoch"] == 2


# --- a damaged run.json: --overwrite is the way out ----------------------------------------------
RUN_JSON_DAMAGE = {
    "truncated": ('{"format": 1, "backb', "not valid JSON, truncated or edited"),
    "a-list": ("[]", "the file is a JSON list, not an object"),
    "wrong-type": (
        json.dumps({**RUN_COMMON, "phases": "fe"}),
        "'phases' is a string, not an object",
    ),
}


@pytest.mark.parametrize("case", list(RUN_JSON_DAMAGE))
def test_a_damaged_run_json_is_refused_but_by_overwrite(case, finished):
    """Only --overwrite from the first phase replaces a run whose record is lost; everything
    else is refused in one line naming the file and --overwrite, the workdir untouched."""
    workdir, checked = finished[0], config_lib.check(tiny())
    text, problem = RUN_JSON_DAMAGE[case]
    (workdir / "run.json").write_text(text)
    damaged = snapshot(workdir)
    for options in ({}, {"resume": True}, {"phase": "ft", "overwrite": True}):
        with pytest.raises(WorkdirError) as e:
            plan.plan_run(checked, str(workdir), **options)
        message = str(e.value)
        assert message.startswith(f"{workdir / 'run.json'} is damaged ({problem}"), message
        assert "start it again with --overwrite" in message and "\n" not in message
    for phase in ("all", "fe"):
        planned = plan.plan_run(checked, str(workdir), phase=phase, overwrite=True)
        assert planned.targets[0] == "fe" and planned.done == {}
        assert replacement.is_replacement(planned, overwrite=True)  # staged, the old run in place
    assert snapshot(workdir) == damaged


def test_an_overwrite_replaces_a_damaged_run_json_as_a_transaction(finished, monkeypatch, caplog):
    from tl_keras.training.runner import train

    workdir = finished[0]
    (workdir / "run.json").write_text('{"format": 1, "backb')
    (workdir / "recipe.json").write_text("[1, 2]")  # a card the new run decides anew, unread
    damaged = snapshot(workdir)
    # Stopped before its first phase is saved: the damaged workdir is left as it was.
    monkeypatch.setenv("TL_KERAS_FAILPOINT", "signal:TERM:batch:1:1")
    with interrupt.handled(), pytest.raises(interrupt.Interrupted):
        train(tiny(), str(workdir), overwrite=True)
    monkeypatch.delenv("TL_KERAS_FAILPOINT")
    assert snapshot(workdir) == damaged and not os.path.lexists(workdir / transaction.FOLDER)
    with caplog.at_level("INFO", logger="tl_keras"):
        result = train(tiny(), str(workdir), overwrite=True)
    assert "run.json is damaged" in caplog.text and "the run there is replaced" in caplog.text
    assert "is staged in" in caplog.text and "the run it replaced is gone" in caplog.text
    run = Workdir(str(workdir)).read_run()
    assert list(run["phases"]) == ["fe", "ft"] == [s.phase for s in result.history.spans()]
    assert json.loads((workdir / "recipe.json").read_text())["decisions"]
    assert not os.path.lexists(workdir / transaction.FOLDER)
    assert len(answers(workdir)) == 6
