"""One writer per workdir, with real processes (`tl_keras/lock.py`).

Two trainings started at the same moment into one new workdir: one runs, the other is refused
naming it, and so is a `--resume` beside it; a reader (evaluate) works meanwhile and sees only
the phase that is complete. The writer is then killed while writing a file: the next `--resume`
takes the dead writer's lock over with a log line, removes what it left, and finishes the run.
The two racing trainings are processes of their own; the `--resume`s and the reader run the
commands in the test's process (tests/inprocess.py), which is another process all the same.
The record's checks (pid, start time, boot, host) are tested on their own below.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from inprocess import command

from tl_keras import lock
from tl_keras.errors import WorkdirError

pytestmark = pytest.mark.slow

TINY = [
    "--data_dir=synthetic",
    "--synthetic_images_per_class=4",
    "--backbone=tiny",
    "--weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--epochs_fe=1",
    "--epochs_ft=1",
    "--head_units=8",
    "--progress=lines",
]


def start(workdir, log: pathlib.Path, env: dict) -> subprocess.Popen:
    """`python -m tl_keras.train` in the background; its output goes to files, not pipes."""
    full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "tl_keras.train", *TINY, f"--workdir={workdir}"],
        cwd=REPO,
        env=full,
        stdout=open(log.with_suffix(".out"), "w"),  # noqa: SIM115  (closed with the process)
        stderr=open(log.with_suffix(".err"), "w"),  # noqa: SIM115
    )


def wait_until(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error: ")]


def test_one_writer_a_live_reader_and_a_dead_writers_takeover(tmp_path):
    workdir, pause = tmp_path / "run", tmp_path / "pause"
    env = {
        # Wait after ft's first checkpoint (fe is complete), then die writing ft's model.
        "TL_KERAS_FAILPOINT": "pause:after_checkpoint:2,write:ft/model.keras",
        "TL_KERAS_PAUSE_FILE": str(pause),
    }
    procs = [start(workdir, tmp_path / f"p{i}", env) for i in range(2)]  # the same moment
    wait_until(lambda: pause.exists() and any(p.poll() is not None for p in procs), "the race")
    writer_pid = int(pause.read_text())
    (writer,) = [p for p in procs if p.pid == writer_pid]
    (loser,) = [p for p in procs if p is not writer]
    assert loser.wait() == 2
    err = (tmp_path / f"p{procs.index(loser)}").with_suffix(".err").read_text()
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert f"is in use by another training run: pid {writer_pid} on host" in line
    assert "tl_keras.train" in line and "use another --workdir" in line

    # --resume beside the live run is refused the same way, and changes nothing.
    before = sorted(p.name for p in workdir.rglob("*"))
    proc = command(*TINY, f"--workdir={workdir}", "--resume")  # from this process, another pid
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert f"in use by another training run: pid {writer_pid}" in line
    assert sorted(p.name for p in workdir.rglob("*")) == before

    # A reader works while the run writes, and reads only the complete phase.
    assert list(json.loads((workdir / "run.json").read_text())["phases"]) == ["fe"]
    proc = command(f"--workdir={workdir}", "--split=val", module="tl_keras.evaluate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((workdir / "evaluation" / "val" / "metrics.json").read_text())
    assert metrics["model"]["phase"] == "fe"

    pause.unlink()  # the writer goes on, and is killed while writing ft/model.keras
    assert writer.wait(timeout=300) == -signal.SIGKILL
    leftovers = [p for p in workdir.rglob("*") if ".tmp-" in p.name]
    assert [p.parent.name for p in leftovers] == ["ft"]
    assert (workdir / lock.LOCK_FILE).is_file()  # left by the dead writer

    proc = command(*TINY, f"--workdir={workdir}", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(
        rf"took over the lock of workdir .*: its holder, pid {writer_pid} on host .* is gone",
        proc.stdout,
    )
    assert "removed 1 temporary file(s) a killed writer left" in proc.stdout
    assert not [p for p in workdir.rglob("*") if ".tmp-" in p.name]
    assert not (workdir / lock.LOCK_FILE).exists()  # released on exit
    run = json.loads((workdir / "run.json").read_text())
    assert list(run["phases"]) == ["fe", "ft"]


# --- the lock record on its own ---------------------------------------------------------------
@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def record_of(pid: int) -> dict:
    return {**lock._record(), "pid": pid, "start_ticks": lock.process_start(pid)}


def test_the_record_tells_a_live_holder_from_a_reused_pid_a_reboot_and_another_host(sleeper):
    live = record_of(sleeper.pid)
    assert lock.is_alive(live) is True
    assert lock.is_alive({**live, "start_ticks": live["start_ticks"] + 1}) is False  # reused pid
    assert lock.is_alive({**live, "boot_id": "another-boot"}) is False  # rebooted since
    assert lock.is_alive({**live, "host": "elsewhere"}) is None  # cannot tell
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    assert lock.is_alive(record_of(int(dead.stdout))) is False


def test_a_live_holder_is_refused_where_flock_does_not_work(tmp_path, sleeper, monkeypatch):
    """On a file system that ignores flock the record decides: a live holder is refused."""
    (tmp_path / lock.LOCK_FILE).write_text(json.dumps(record_of(sleeper.pid)))
    monkeypatch.setattr(lock, "_flock", lambda fd: True)  # flock "succeeds" whoever holds it
    with pytest.raises(WorkdirError, match=rf"in use by another training run: pid {sleeper.pid}"):
        lock.acquire(str(tmp_path))
    monkeypatch.setattr(lock, "_flock", lambda fd: None)  # no flock at all: the same
    with pytest.raises(WorkdirError, match=rf"pid {sleeper.pid}"):
        lock.acquire(str(tmp_path))


def test_a_dead_holders_lock_and_leftovers_are_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    (tmp_path / lock.LOCK_FILE).write_text(json.dumps(record_of(pid)))
    (tmp_path / "fe").mkdir()
    leftover = tmp_path / "fe" / f".summary.json.tmp-{pid}-0123abcd.json"
    leftover.write_text("")
    mine = tmp_path / f".history.json.tmp-{os.getpid()}-0123abcd.json"  # a live process's
    mine.write_text("")
    with caplog.at_level("INFO", logger="tl_keras"), lock.hold(str(tmp_path)) as held:
        assert held.took_over["pid"] == pid
        with lock.hold(str(tmp_path)):  # re-entrant within a process
            pass
        assert (tmp_path / lock.LOCK_FILE).exists()
    assert f"its holder, pid {pid} on host" in caplog.text
    assert not leftover.exists() and mine.exists()
    assert not (tmp_path / lock.LOCK_FILE).exists()
