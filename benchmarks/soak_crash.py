"""Crash soak: random SIGKILLs over whole runs, each followed by what a user would run next.

    nice python benchmarks/soak_crash.py               # 50 kills or more (results/soak.json)
    nice python benchmarks/soak_crash.py --seed=7      # replay a soak: the same draws
    python benchmarks/soak_crash.py --quick            # 3 kills, a smoke run (the suite runs it)

A soak is a sequence of runs, each of one kind (`make_kinds`): a new run with a checkpoint after
every epoch; a new run at the default cadence with a pretrained stand-in base (so the recipe's
BatchNorm probe and the doctor's features run at start-up); `--overwrite` of a finished run by
another seed; `--phase=ft --overwrite` of a finished run by another fine-tuning rate. The
smallest real settings: MobileNet-0.25 at 32 px (the test backbone `tiny` when the package has
one), 120 generated images, 2 + 2 epochs.

1. **Timelines.** Each kind runs once uninterrupted: its workdir is what every killed run of that
   kind must end equal to, and its log lines, timed as they arrive, are the run's timeline.
2. **Kills.** Each run draws 1 to `--max_kills_per_run` kills. Each attempt draws its moment
   either on the timeline (a phase it goes through, start-up, fe, the switch, ft or the end,
   uniformly, then a moment uniformly over that phase's time; for a resume, its start-up and
   then the timeline from where the workdir is), SIGKILLing its process group then; or
   (`--failpoint_share`) at a fail point of `tl_keras/_failpoints.py` the attempt can still
   meet: mid-save, between an epoch and its checkpoint, every step of an --overwrite's commit
   and swap, and of the next command's recovery of it, moments too short to hit by time. Where
   a kill landed is the fail point, or read from the attempt's last log line (`moment`).
3. **The next command** is the one a user would run: the same flags with `--resume`. An
   --overwrite killed before its commit point leaves the old run, which `--resume` does not
   replace: the soak checks with a plain reader that the workdir is the old run, bitwise, and
   runs the same `--overwrite` again. Once its commit record is written, the next command
   completes the swap and `--resume` continues the new run. Any attempt may be killed again;
   the run ends when one exits 0.
4. **The check.** The finished workdir must equal the kind's uninterrupted run bitwise
   (`benchmarks/_soak_compare.py`: what is compared, and what is left out and why). An attempt
   that fails (an exit status other than 0 and SIGKILL) or outlives `--attempt_timeout_s` (a
   hang) fails its run.

Writes benchmarks/results/soak.json (soak_quick.json for --quick) after every run, prints a
summary, and exits with status 1 when a run did not end equal to its reference.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import _common
import _soak_compare

FE, FT = 2, 2  # epochs
IMAGES_PER_CLASS, BATCH = 40, 8  # 3 classes; val_fraction 0.2: 96 train, 24 val (calibration fits)
BATCHES = 96 // BATCH  # training batches per epoch
QUICK_KINDS = ("every_epoch", "overwrite")
# --quick's draws: seed 30 plans 2 kills for the first run (every_epoch: a fail point, then a
# time in fe) and 1 for the second (overwrite: a fail point before its commit point, so the old
# run is checked and the --overwrite rerun), 3 in all: both kinds, both ways of killing, in the
# fewest attempts, each a TensorFlow process (seed 0 plans 2 and 2, one attempt more). No kill
# is aimed at a run's end, which a faster attempt can outrun (a miss costs a third run).
# `--seed` still replays any other soak.
QUICK_SEED = 30


# --- the kinds of run ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of run the soak kills.

    Attributes:
      name: its key in the results.
      flags: the command's flags, --workdir, --resume and --overwrite aside.
      what: one line for the summary.
      replaces: for an --overwrite, the kind whose finished run it replaces (its uninterrupted
        workdir is copied first), else None.
      starts_at: where on the run's progress (`progress`) its first command starts: 0, or for
        --phase=ft, the end of fe.
    """

    name: str
    flags: tuple[str, ...]
    what: str
    replaces: str | None = None
    starts_at: float = 0.0

    @property
    def every_epoch(self) -> bool:
        return "--checkpoint_every=0" in self.flags

    def command(self, how: str, workdir: str) -> list[str]:
        """The flags of a 'new', 'overwrite' or 'resume' attempt."""
        extra = {"new": [], "overwrite": ["--overwrite"], "resume": ["--resume"]}[how]
        return [*self.flags, f"--workdir={workdir}", *extra]


def backbone_flags() -> list[str]:
    """The test backbone `tiny` when the package has one, else MobileNet at width 0.25."""
    from tl_keras.errors import TLKerasError
    from tl_keras.model import backbones

    try:
        backbones.get("tiny")
        return ["--backbone=tiny"]
    except TLKerasError:
        return ["--backbone=mobilenet", "--alpha=0.25"]


def make_kinds(standin: str | None) -> dict[str, Kind]:
    base = (
        "--data_dir=synthetic", f"--synthetic_images_per_class={IMAGES_PER_CLASS}",
        *backbone_flags(), "--image_size=32", f"--batch_size={BATCH}", f"--epochs_fe={FE}",
        f"--epochs_ft={FT}", "--head_units=8", "--unfreeze=blocks:2", "--progress=lines",
    )  # fmt: skip
    every = (*base, "--weights=none", "--checkpoint_every=0")
    kinds = [
        Kind("every_epoch", every, "random base, a checkpoint after every epoch"),
        Kind(
            "overwrite",
            (*every, "--seed=2"),
            "--overwrite of a finished every_epoch run, another seed",
            replaces="every_epoch",
        ),  # fmt: skip
        Kind(
            "overwrite_ft",
            (*every, "--phase=ft", "--ft_lr_factor=20"),
            "--phase=ft --overwrite of a finished every_epoch run, another fine-tuning rate",
            replaces="every_epoch",
            starts_at=FE + 0.5,
        ),  # fmt: skip
    ]
    if standin:
        kinds.insert(1, Kind("default_cadence", (*base, f"--weights={standin}"),
                             "pretrained stand-in base (recipe probe, doctor features), "
                             "checkpoints every 30 s: each phase's last epoch"))  # fmt: skip
    return {k.name: k for k in kinds}


STANDIN = """
import json, sys, keras
from tl_keras.data.sources import load_image_folder
from tl_keras.data.sources.synthetic import make_shapes
from tl_keras.model import classifier
root, backbone, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = load_image_folder(make_shapes(root + "/shapes", images_per_class=8, image_size=32),
                         image_size=32, batch_size=8, val_fraction=0.25, seed=1)
keras.utils.set_random_seed(1)
m = classifier.build_model(backbone, 3, image_size=32, weights=None, **extra)
classifier.calibrate_batchnorm(m, data.train_epochs(0, 1).take(2))
classifier.get_base(m).save_weights(root + "/standin.weights.h5")
"""


def make_standin(root: str, env: dict) -> str:
    """A pretrained stand-in: a random base whose BatchNorm statistics were estimated on data
    (as tests/test_resume.py's), so a run treats it as pretrained weights."""
    flags = dict(f[2:].split("=") for f in backbone_flags())
    extra = {"alpha": float(flags["alpha"])} if "alpha" in flags else {}
    folder = os.path.join(root, "standin")
    os.makedirs(folder, exist_ok=True)
    subprocess.run(
        [sys.executable, "-c", STANDIN, folder, flags["backbone"], json.dumps(extra)],
        cwd=_common.REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return os.path.join(folder, "standin.weights.h5")


# --- one attempt: a command, maybe killed -------------------------------------------------------
@dataclasses.dataclass
class Attempt:
    rc: int | None = None
    lines: list = dataclasses.field(default_factory=list)  # (seconds since start, text)
    stderr: str = ""
    wall_s: float = 0.0
    hang: bool = False

    @property
    def last_line(self) -> str | None:
        return self.lines[-1][1] if self.lines else None


def run_attempt(
    args: list[str], env: dict, *, kill_at_s: float | None, failpoint: str | None, timeout: float
) -> Attempt:
    """Runs `python -m tl_keras.train ARGS`; SIGKILLs its process group (as a lost machine) at
    `kill_at_s`, or it kills itself at `failpoint`; its stdout lines timed as they arrive."""
    env = {**env, **({"TL_KERAS_FAILPOINT": failpoint} if failpoint else {})}
    attempt = Attempt()
    with tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_keras.train", *args],
            cwd=_common.REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            start_new_session=True,
        )  # fmt: skip
        reader = threading.Thread(target=_read_lines, args=(proc, start, attempt.lines))
        reader.start()
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            attempt.hang = elapsed > timeout
            if attempt.hang or (kill_at_s is not None and elapsed >= kill_at_s):
                with contextlib.suppress(ProcessLookupError):  # it exited just before
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        attempt.rc = proc.wait()
        attempt.wall_s = round(time.monotonic() - start, 2)
        reader.join()
        err.seek(0)
        attempt.stderr = err.read()
    return attempt


def _read_lines(proc: subprocess.Popen, start: float, lines: list) -> None:
    for line in proc.stdout:
        lines.append((round(time.monotonic() - start, 3), line.rstrip("\n")))


# --- where a run is: its log lines, its progress, its fail points --------------------------------
_EPOCH = re.compile(r"\[(fe|ft)\] epoch (\d+) \((\d+)/(\d+)\)")
_MOMENTS = (  # the first rule a line matches (at its start, or a [phase] tag anywhere)
    ("[calibration]", "end", "run.json written, exit"),
    ("the run stopped before its calibration", "end", "calibration on --resume"),
    ("done:", "end", "exit"),
    ("--overwrite: the new run is staged", "start-up", "staged run begun, data loading"),
    ("--overwrite: the new run finished phase 'ft'", "end", "swapped in, calibration"),
    ("--overwrite: ", "switch", "swapped in, ft set up"),
    ("an --overwrite of", "start-up", "recovered a replacement, data loading"),
    ("[ft] ", "ft", "ft set-up and first epoch"),
    ("[fe] cached features", "fe", "fe epochs"),
    ("[fe] ", "fe", "fe set-up, feature cache"),
    ("data: training augmentation", "fe", "fe set-up, feature cache"),
    ("recipe card", "start-up", "recipe card"),
    ("  ", "start-up", "recipe card"),
    ("doctor:", "start-up", "recipe probe and card"),
    ("weights=none", "start-up", "doctor"),
    ("data:", "start-up", "model build, doctor"),
)


def moment(text: str | None) -> tuple[str, str]:
    """(phase, moment) of a run that last printed the log line `text` (None: none yet)."""
    if text is None:
        return "start-up", "imports, data loading"
    body = text.split(" ", 1)[1] if re.match(r"\d\d:\d\d:\d\d ", text) else text
    if m := _EPOCH.search(body):
        if m.group(3) != m.group(4):
            return m.group(1), f"{m.group(1)} epochs"
        if m.group(1) == "fe":
            return "switch", "fe's last epoch done: fe saved, ft set up"
        return "end", "ft's last epoch done: ft saved, calibration"
    if body.startswith("nothing to resume"):  # a new run, or a finished one (its calibration)
        if "starting the run" in body:
            return "start-up", "imports, data loading"
        return "end", "--resume of a finished run: data loading"
    for needle, phase, what in _MOMENTS:
        if body.startswith(needle) or (needle.startswith("[") and needle in body):
            return phase, what
    return "start-up", "after: " + body[:50]


def failpoints(kind: Kind, rng: random.Random) -> list[tuple[str, float | str]]:
    """A run's fail points, each with where it lies: a progress (`progress`) or 'always' (every
    attempt), 'begin', 'commit' (an --overwrite attempt) or 'swap' (one, or the recovery after
    a kill past the commit point). A `batch:E:B` point's batch is drawn."""
    points: list[tuple[str, float | str]] = [
        ("data_listed", "always"),
        ("write:config.json", "always"),
        ("write:run.json", "always"),
        ("write:recipe.json", "always"),
        ("write:doctor/report.json", 0.1),
    ]
    for e in range(1, FE + FT + 1):
        points.append((f"batch:{e}:{rng.randrange(BATCHES)}", e - 0.5))
        if kind.every_epoch or e in (FE, FE + FT):  # the default cadence: each phase's last
            points.append((f"before_checkpoint:{e}", e - 0.05))
            points.append((f"write:checkpoints/epoch-{e:05d}", e - 0.04))
            points.append((f"after_checkpoint:{e}", e))
    for phase, end in (("fe", FE), ("ft", FE + FT)):
        points.append((f"write:{phase}/model.keras", end + 0.1))
        points.append((f"write:{phase}/summary.json", end + 0.2))
        points.append((f"phase_saved:{phase}", end + 0.49))
    points.append(("write:calibration/reliability.png", FE + FT + 0.6))
    points.append(("write:calibration/calibration.json", FE + FT + 0.7))
    if kind.replaces:
        points += [("write:.replacement", "begin"), ("replace:begun", "begin")]
        points += [("replace:commit", "commit"), ("write:.replacement/commit.json", "commit")]
        swap = ("out:run.json", "out:fe", "out:history.json", "in:fe", "in:ft", "in:run.json")
        points += [(f"replace:{s}", "swap") for s in (*swap, "swapped", "discarded")]
    return points


def reachable(points, *, start: float, command: str, state: str | None) -> list[str]:
    """The fail points an attempt meets: `command` from progress `start`, the workdir's
    replacement `state` ('staged', 'committed' or None) before it."""

    def meets(name: str, where: float | str) -> bool:
        if where == "always" or (not isinstance(where, str) and where > start):
            return True
        if where in ("begin", "commit", "swap") and command == "overwrite":
            return True
        # The next command's recovery completes a committed swap, or discards a staged run.
        return (where == "swap" and state == "committed") or (
            name == "replace:discarded" and state == "staged"
        )

    return [name for name, where in points if meets(name, where)]


def failpoint_phase(point: str) -> str:
    """The phase a fail point lies in, for the histogram."""
    if m := re.match(r"(?:batch|before_checkpoint|after_checkpoint):(\d+)", point):
        return "fe" if int(m.group(1)) <= FE else "ft"
    if m := re.match(r"write:checkpoints/epoch-(\d+)", point):
        return "fe" if int(m.group(1)) <= FE else "ft"
    if point.startswith(("replace:out", "replace:in", "replace:swapped", "replace:discarded")):
        return "swap"
    if point in ("replace:commit", "write:.replacement/commit.json"):
        return "commit"
    if point.startswith(("write:fe/", "phase_saved:fe")):
        return "switch"
    if point.startswith(("write:ft/", "phase_saved:ft", "write:calibration")):
        return "end"
    return "start-up"


def progress(workdir: str) -> float:
    """How far the run in `workdir` is: E once global epoch E is checkpointed, a phase's last
    epoch + 0.5 once it is saved. A replacement past its commit point counts as its new run."""
    ends = {"fe": FE + 0.5, "ft": FE + FT + 0.5}
    done = 0.0
    for path in (f"{workdir}/.replacement/new/run.json", f"{workdir}/run.json"):
        try:
            with open(path) as f:
                phases = json.load(f).get("phases", {})
        except (OSError, ValueError):
            continue
        done = max([0.0, *(ends.get(p, 0.0) for p in phases)])
        break
    folder = os.path.join(workdir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return max([done, *(int(n[6:]) for n in names if re.fullmatch(r"epoch-\d{5}", n))])


def pending(workdir: str) -> str | None:
    """'committed', 'staged' or None: what the next command's recovery will find."""
    path = os.path.join(workdir, ".replacement")
    if not os.path.lexists(path):
        return None
    return "committed" if os.path.isfile(os.path.join(path, "commit.json")) else "staged"


# --- the reference runs and their timelines ------------------------------------------------------
@dataclasses.dataclass
class Reference:
    workdir: str
    wall_s: float
    lines: list

    def time_at(self, where: float) -> float:
        """When the uninterrupted run reached progress `where` (`progress`)."""
        marks = [(0.0, self.setup_s)]
        for t, text in self.lines:
            if m := _EPOCH.search(text):
                marks.append((float(m.group(2)), t))
            elif re.search(r"\[ft\] unfreeze", text):
                marks.append((FE + 0.5, t))
            elif "[calibration]" in text:
                marks.append((FE + FT + 0.5, t))
        return max([t for p, t in marks if p <= where], default=0.0)

    @property
    def setup_s(self) -> float:
        """Start-up: until the first phase's set-up line."""
        return next((t for t, text in self.lines if re.search(r"\[f[et]\] unfreeze", text)), 0.0)

    def spans(self, start: float, command: str) -> list[tuple[float, float, str]]:
        """(from s, to s, phase) of an attempt from progress `start`, as the timeline predicts
        it: the whole run, or for a resume its start-up, then the rest from where it was."""
        moments = self.timeline()
        spans = [
            (a["t_s"], b["t_s"], a["phase"]) for a, b in zip(moments[:-1], moments[1:], strict=True)
        ]
        if command != "resume":
            return spans
        cut, setup = max(self.time_at(start), self.setup_s), self.setup_s
        head = [(t0, min(t1, setup), p) for t0, t1, p in spans if t0 < setup]
        rest = [
            (max(t0, cut) - cut + setup, t1 - cut + setup, p) for t0, t1, p in spans if t1 > cut
        ]
        return head + rest

    def draw_time(self, start: float, command: str, u_phase: float, u_time: float):
        """A kill moment: a phase the attempt goes through, drawn uniformly (fe, short on cached
        features, gets its share), then a moment uniformly over that phase's time.

        Returns:
          (seconds after the attempt starts, the phase aimed at).
        """
        spans = [s for s in self.spans(start, command) if s[1] > s[0]]
        phases = list(dict.fromkeys(p for _, _, p in spans))
        phase = phases[int(u_phase * len(phases))]
        chosen = [(t0, t1) for t0, t1, p in spans if p == phase]
        left = u_time * sum(t1 - t0 for t0, t1 in chosen)
        for t0, t1 in chosen:
            if left <= t1 - t0:
                return round(t0 + left, 2), phase
            left -= t1 - t0
        return round(chosen[-1][1], 2), phase

    def timeline(self) -> list[dict]:
        """The run's moments: when each began (s), from its log lines."""
        out, last = [{"t_s": 0.0, "phase": "start-up", "moment": "imports, data loading"}], None
        for t, text in self.lines:
            phase, what = moment(text)
            if (phase, what) != last:
                out.append({"t_s": t, "phase": phase, "moment": what})
                last = (phase, what)
        return [*out, {"t_s": self.wall_s, "phase": "exit", "moment": ""}]


def make_reference(kind: Kind, root: str, env: dict, refs: dict, timeout: float) -> Reference:
    workdir = os.path.join(root, f"reference-{kind.name}")
    if kind.replaces:
        shutil.copytree(refs[kind.replaces].workdir, workdir, symlinks=True)
    how = "overwrite" if kind.replaces else "new"
    attempt = run_attempt(kind.command(how, workdir), env, kill_at_s=None, failpoint=None,
                          timeout=timeout)  # fmt: skip
    if attempt.rc != 0:
        sys.exit(
            f"the uninterrupted {kind.name} run failed ({attempt.rc}): {attempt.stderr[-3000:]}"
        )
    print(f"reference {kind.name}: {attempt.wall_s:.0f}s", flush=True)
    return Reference(workdir, attempt.wall_s, attempt.lines)


# --- one run: kills until it finishes ------------------------------------------------------------
@dataclasses.dataclass
class Soak:
    """What every run of the soak shares."""

    root: str
    env: dict
    kinds: dict
    refs: dict
    seed: int
    failpoint_share: float
    max_kills: int
    timeout: float


def soak_run(soak: Soak, kind: Kind, index: int) -> dict:
    """Runs `kind` from its start to its end, SIGKILLed 1 to `max_kills` times on the way, and
    compares what it ends with to the uninterrupted run."""
    workdir = os.path.join(soak.root, f"run-{index:03d}-{kind.name}")
    if kind.replaces:
        shutil.copytree(soak.refs[kind.replaces].workdir, workdir, symlinks=True)
    # Each run draws from its own stream: a replay (--seed) draws the same for every run, however
    # the runs before it went. A time kill lands where the machine's speed puts it: the record
    # keeps each kill's moment (the fail point, or the seconds and the last log line).
    rng = random.Random(f"{soak.seed}/{index}")
    points = failpoints(kind, rng)
    planned = rng.randint(1, soak.max_kills)
    command = "overwrite" if kind.replaces else "new"
    record = {"run": index, "kind": kind.name, "planned_kills": planned, "attempts": []}
    while True:
        attempt, kill = _attempt(soak, kind, workdir, command, (rng, points), planned, record)
        entry = {"command": command, **kill, "rc": attempt.rc, "wall_s": attempt.wall_s}
        record["attempts"].append(entry)
        if attempt.hang or attempt.rc not in (0, -signal.SIGKILL):
            why = "a hang" if attempt.hang else f"exit status {attempt.rc}"
            entry.update(hang=attempt.hang, stderr=attempt.stderr[-2000:])
            record["failure"] = f"{command} attempt failed: {why}"
            break
        if attempt.rc == 0:  # a kill drawn past its end, or at a point it did not meet
            entry["missed"] = bool(kill)
            break
        committed = _committed(soak, kind, command, workdir)
        entry["landed"] = _landed(kill, attempt, command, committed, workdir)
        if committed is False:  # the old run must be in place, bitwise: check, run it again
            note = _old_run_changed(soak, kind, workdir)
            entry["old_run_intact"] = note is None
            if note:
                record["failure"] = note
                break
        command = "overwrite" if committed is False else "resume"
        entry["next"] = command
    return _finish(soak, kind, workdir, record)


def _attempt(soak, kind, workdir, command, draws, planned, record) -> tuple[Attempt, dict]:
    """One attempt of the run, with a kill drawn while the run has kills left."""
    rng, points = draws
    start = kind.starts_at if command != "resume" else progress(workdir)
    kills = sum(1 for a in record["attempts"] if a.get("landed"))
    kill: dict = {}
    if kills < planned:
        can = reachable(points, start=start, command=command, state=pending(workdir))
        mode, phase, at, pick = (rng.random() for _ in range(4))  # always four draws
        if can and mode < soak.failpoint_share:
            kill["failpoint"] = can[int(pick * len(can))]
        else:
            reference = soak.refs[kind.name]
            kill["kill_at_s"], kill["aimed_at"] = reference.draw_time(start, command, phase, at)
    attempt = run_attempt(
        kind.command(command, workdir),
        soak.env,
        kill_at_s=kill.get("kill_at_s"),
        failpoint=kill.get("failpoint"),
        timeout=soak.timeout,
    )
    return attempt, kill


def _committed(soak: Soak, kind: Kind, command: str, workdir: str) -> bool | None:
    """For an --overwrite that was killed: whether it had passed its commit point (the commit
    record written: the next command completes the swap; or the swap done). None for others."""
    if command != "overwrite":
        return None
    state = pending(workdir)
    old = soak.refs[kind.replaces].workdir
    return state == "committed" or (state is None and not _same_file(workdir, old, "config.json"))


def _landed(kill: dict, attempt: Attempt, command: str, committed: bool | None, workdir) -> dict:
    """Where a kill landed: the fail point, or the moment the last log line says; for an
    --overwrite, on which side of its commit point, and a swap left for the next command."""
    if "failpoint" in kill:
        phase, what = failpoint_phase(kill["failpoint"]), kill["failpoint"]
    else:
        phase, what = moment(attempt.last_line)
    if committed is False:
        what += " (before the commit point)"
    elif pending(workdir) == "committed":
        by = "its swap" if command == "overwrite" else "the next command's recovery of the swap"
        phase, what = "swap", f"{what} (committed: in {by})"
    return {"phase": phase, "moment": what, "last_line": (attempt.last_line or "")[9:120]}


READ = "import sys; from tl_keras.workdir import Workdir; Workdir(sys.argv[1]).read_run()"


def _old_run_changed(soak: Soak, kind: Kind, workdir: str) -> str | None:
    """After a kill before the commit point: None when the workdir, once read as predict,
    evaluate or export read it, is the old run bitwise; else what is wrong."""
    proc = subprocess.run([sys.executable, "-c", READ, workdir], cwd=_common.REPO, env=soak.env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        return f"killed before its commit point, the workdir cannot be read: {proc.stderr[-500:]}"
    gone = _soak_compare.differences(
        workdir, soak.refs[kind.replaces].workdir, ignore_leftovers=True
    )
    return f"killed before its commit point, the old run changed: {gone[:5]}" if gone else None


def _same_file(a: str, b: str, name: str) -> bool:
    try:
        with open(os.path.join(a, name), "rb") as f, open(os.path.join(b, name), "rb") as g:
            return f.read() == g.read()
    except OSError:
        return False


def _finish(soak: Soak, kind: Kind, workdir: str, record: dict) -> dict:
    """The run's counts, and whether it ended equal to the uninterrupted run."""
    attempts = record["attempts"]
    record["kills"] = sum(1 for a in attempts if a.get("landed"))
    record["resumes"] = sum(1 for a in attempts[1:] if a["command"] == "resume")
    record["overwrite_reruns"] = sum(1 for a in attempts[1:] if a["command"] == "overwrite")
    if "failure" not in record:
        record["differences"] = _soak_compare.differences(workdir, soak.refs[kind.name].workdir)
    record["matched"] = "failure" not in record and not record["differences"]
    if record["matched"]:
        shutil.rmtree(workdir, ignore_errors=True)  # a failed run's workdir stays, to look at
    return record


# --- the soak, and what it reports ---------------------------------------------------------------
def histogram(runs: list[dict]) -> dict:
    """phase -> moment -> kills."""
    out: dict = {}
    for run in runs:
        for a in run["attempts"]:
            if landed := a.get("landed"):
                moments = out.setdefault(landed["phase"], {})
                moments[landed["moment"]] = moments.get(landed["moment"], 0) + 1
    order = ("start-up", "fe", "switch", "ft", "end", "commit", "swap")
    return {
        p: dict(sorted(out[p].items()))
        for p in sorted(out, key=lambda p: (p not in order, order.index(p) if p in order else 0))
    }


def summary(runs: list[dict]) -> dict:
    kills = [a for r in runs for a in r["attempts"] if a.get("landed")]
    return {
        "kills": len(kills),
        "time_kills": sum(1 for a in kills if "kill_at_s" in a),
        "time_kills_in_the_phase_aimed_at": sum(
            1 for a in kills if a.get("aimed_at") == a["landed"]["phase"]
        ),
        "failpoint_kills": sum(1 for a in kills if "failpoint" in a),
        "runs": len(runs),
        "runs_matched": sum(r["matched"] for r in runs),
        "all_matched": all(r["matched"] for r in runs),
        "hangs": sum(1 for r in runs for a in r["attempts"] if a.get("hang")),
        "kills_per_run": _counts(r["kills"] for r in runs),
        "next_commands_per_run": _counts(r["resumes"] + r["overwrite_reruns"] for r in runs),
        "resumes": sum(r["resumes"] for r in runs),
        "overwrite_reruns": sum(r["overwrite_reruns"] for r in runs),
        "by_kind": {
            k: {
                "runs": sum(1 for r in runs if r["kind"] == k),
                "kills": sum(r["kills"] for r in runs if r["kind"] == k),
                "resumes": sum(r["resumes"] for r in runs if r["kind"] == k),
                "overwrite_reruns": sum(r["overwrite_reruns"] for r in runs if r["kind"] == k),
                "matched": sum(r["matched"] for r in runs if r["kind"] == k),
            }
            for k in dict.fromkeys(r["kind"] for r in runs)
        },
    }


def _counts(values) -> dict[str, int]:
    counted: dict[int, int] = {}
    for v in values:
        counted[v] = counted.get(v, 0) + 1
    return {str(k): counted[k] for k in sorted(counted)}


def print_summary(totals: dict, hist: dict) -> None:
    print(f"\n{totals['kills']} kills ({totals['time_kills']} at a random time, "
          f"{totals['failpoint_kills']} at a fail point) in {totals['runs']} runs; "
          f"{totals['runs_matched']} of {totals['runs']} ended bitwise equal to the uninterrupted "
          f"run; {totals['hangs']} hangs")  # fmt: skip
    print("\n| phase | moment | kills |\n|---|---|---|")
    for phase, moments in hist.items():
        for what, n in moments.items():
            print(f"| {phase} | {what} | {n} |")
    print(
        "\n| kind | runs | kills | resumes | --overwrite reruns | matched |\n|---|---|---|---|---|---|"
    )
    for k, row in totals["by_kind"].items():
        print(f"| {k} | {row['runs']} | {row['kills']} | {row['resumes']} | "
              f"{row['overwrite_reruns']} | {row['matched']} of {row['runs']} |")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50, help="run until this many kills landed")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"the draws' seed: replays a soak (0; --quick {QUICK_SEED})",
    )
    ap.add_argument("--quick", action="store_true", help=f"3 kills, kinds {', '.join(QUICK_KINDS)}")
    ap.add_argument("--kinds", default="", help="comma-separated kinds (default: all)")
    ap.add_argument("--failpoint_share", type=float, default=0.4)
    ap.add_argument("--max_kills_per_run", type=int, default=4)
    ap.add_argument("--attempt_timeout_s", type=float, default=900.0, help="longer is a hang")
    ap.add_argument("--keep", action="store_true", help="keep the soak's folder")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = QUICK_SEED if args.quick else 0
    if args.quick:
        args.kills, args.max_kills_per_run = 3, 2
        args.kinds = args.kinds or ",".join(QUICK_KINDS)
    name = "soak_quick" if args.quick else "soak"
    root = tempfile.mkdtemp(prefix="soak_crash-")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "TL_KERAS_CACHE_DIR": os.path.join(root, "cache-home")}  # fmt: skip
    env.pop("TL_KERAS_FAILPOINT", None)
    wanted = [k for k in args.kinds.split(",") if k]
    standin = make_standin(root, env) if not wanted or "default_cadence" in wanted else None
    kinds = {n: k for n, k in make_kinds(standin).items() if not wanted or n in wanted}
    refs: dict = {}
    for kind in make_kinds(standin).values():  # a replacement's reference needs the one it replaces
        if kind.name in kinds or any(k.replaces == kind.name for k in kinds.values()):
            refs[kind.name] = make_reference(kind, root, env, refs, args.attempt_timeout_s)
    order_rng = random.Random(args.seed)
    soak = Soak(root, env, kinds, refs, args.seed, args.failpoint_share,
                args.max_kills_per_run, args.attempt_timeout_s)  # fmt: skip
    settings = {
        "seed": args.seed, "kills_wanted": args.kills, "quick": args.quick,
        "failpoint_share": args.failpoint_share, "max_kills_per_run": args.max_kills_per_run,
        "kinds": {k.name: {"what": k.what, "flags": list(k.flags)} for k in kinds.values()},
        "command": "python benchmarks/soak_crash.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    references = {n: {"wall_s": r.wall_s, "timeline": r.timeline()} for n, r in refs.items()}
    runs: list[dict] = []
    order = list(kinds)
    while sum(r["kills"] for r in runs) < args.kills:
        if len(runs) % len(order) == 0:
            order_rng.shuffle(order)
        kind = kinds[order[len(runs) % len(order)]]
        run = soak_run(soak, kind, len(runs))
        runs.append(run)
        print(f"run {run['run']} ({kind.name}): {run['kills']} kills, {run['resumes']} resumes, "
              f"{run['overwrite_reruns']} --overwrite reruns: "
              f"{'matched' if run['matched'] else 'MISMATCH ' + str(run.get('failure') or run.get('differences'))}",
              flush=True)  # fmt: skip
        totals, hist = summary(runs), histogram(runs)
        _common.write(name, {"settings": settings, "machine": _machine(), "summary": totals,
                             "histogram": hist, "references": references, "runs": runs})  # fmt: skip
    print_summary(totals, hist)
    if args.keep or not totals["all_matched"]:
        print(f"the soak's folder: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if totals["all_matched"] else 1


def _machine() -> dict:
    """`_common.machine()`'s facts without importing TensorFlow here (the runs do)."""
    from importlib import metadata

    return {
        "python": sys.version.split()[0],
        "tensorflow": metadata.version("tensorflow"),
        "keras": metadata.version("keras"),
        "cpus": os.cpu_count(),
        "load_average_before": _common._LOAD_AT_START,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


if __name__ == "__main__":
    sys.exit(main())
