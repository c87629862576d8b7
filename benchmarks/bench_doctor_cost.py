"""What the data doctor costs a run before its first epoch: the default of another commit
against this checkout's, side by side.

    python benchmarks/bench_doctor_cost.py --before=main             # 3 runs of each arm
    python benchmarks/bench_doctor_cost.py --before=main --runs=1    # one run of each arm
    python benchmarks/bench_doctor_cost.py --quick --runs=1          # a smoke run (the suite)

Each run is `python -m tl_keras.train --config=configs/flowers.toml` (the shared flowers,
MobileNet-0.25 from ../shared, 128 px, the decided recipe) in a fresh process and a fresh
workdir, stopped once the first fe epoch's line is out. The arms alternate run by run, so a
change in the machine's load falls on each alike:

* `before`: the commit `--before` names (extracted with `git archive`), its default doctor;
* `after`: this checkout, its default (`doctor = "auto"`: duplicates and balance before
  training, label errors and outliers deferred);
* `full`: this checkout with `--doctor=full` (every check before training, as before);
* `off`: this checkout with `--doctor=off` (no doctor: what a run pays without one).

Per run: the doctor's own step times from its report.json (hashes, features, diagnose, report),
the seconds between the line before the doctor's (the feature pass's last) and its line, and the
seconds from the process's start to fe's first line (its set-up: the end of the fixed costs
before the first epoch) and to its first epoch's line. The features pass is fe's own
when fe trains on cached features (the doctor computes it, fe reuses it), so the doctor's own
cost is the rest: hashes + diagnose + report. Writes benchmarks/results/doctor_cost.json with
the machine's load before and after. `--quick`: the first QUICK_PER_CLASS photos of each class
(the path, not the figures), written to doctor_cost_quick.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _common

ARMS = ("before", "after", "full", "off")
QUICK_PER_CLASS = 40


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="main", help="the git revision of the `before` arm")
    ap.add_argument("--runs", type=int, default=3, help="runs of each arm")
    ap.add_argument("--arms", default=",".join(ARMS), help="which arms, in run order")
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PER_CLASS} photos a class: a smoke run"
    )
    return ap.parse_args(argv)


def extract(rev: str, folder: str) -> str:
    """The revision's tree in `folder` (its commit id returned)."""
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=_common.REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.Popen(["git", "archive", commit], cwd=_common.REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", folder], stdin=archive.stdout, check=True)
    archive.wait()
    return commit


def one_run(source: str, extra: list[str], workdir: str, data_dir: str) -> dict:
    """One training run of the package in `source` until its first epoch's line: each line's
    time since the start (run in `source`, so that `python -m` imports that tree's package;
    the config's relative paths to ../shared given as absolute flags)."""
    env = {**os.environ, "PYTHONPATH": source, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_keras.train", "--config=configs/flowers.toml",
         f"--data_dir={data_dir}", f"--weights={_common.WEIGHTS}",
         f"--workdir={workdir}", *extra],
        cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append((round(time.perf_counter() - start, 2), line.rstrip()))
        if "[fe] epoch 1 " in line:
            break
    proc.terminate()
    proc.wait()
    return {"lines": lines, **measure(lines, workdir)}


def measure(lines: list[tuple[float, str]], workdir: str) -> dict:
    """The doctor's step times and wall time in the run, and the time to the first epoch."""
    texts = [text.split(" ", 1)[-1] for _, text in lines]
    first_epoch = next((t for t, text in lines if "[fe] epoch 1 " in text), None)
    if first_epoch is None:
        raise RuntimeError("no first epoch: " + "\n".join(texts[-20:]))
    setup = next((t for t, text in lines if text.split(" ", 1)[-1].startswith("[fe] ")), None)
    out = {"to_first_epoch_s": first_epoch, "to_fe_setup_s": setup}
    k = next((i for i, text in enumerate(texts) if text.startswith("doctor: ")), None)
    if k is not None and not texts[k].startswith("doctor: off"):
        out["doctor_line"] = texts[k]
        out["doctor_wall_s"] = round(lines[k][0] - lines[k - 1][0], 2)
        with open(os.path.join(workdir, "doctor", "report.json")) as f:
            seconds = json.load(f)["seconds"]
        out["doctor_steps_s"] = seconds
        out["doctor_own_s"] = round(seconds["hashes"] + seconds["diagnose"] + seconds["report"], 2)
    return out


def summarise(rows: list[dict]) -> dict:
    keys = ("to_fe_setup_s", "to_first_epoch_s", "doctor_wall_s", "doctor_own_s")
    return {
        k: {"median": round(statistics.median(v), 2), "min": min(v), "max": max(v)}
        for k in keys
        if (v := [r[k] for r in rows if k in r])
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.flowers_or_exit()
    arms = args.arms.split(",")
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="bench_doctor_cost-") as scratch:
        before = os.path.join(scratch, "before")
        os.makedirs(before)
        commit = extract(args.before, before)
        data_dir = str(_common.FLOWERS)
        if args.quick:
            data_dir = _common.flower_subset(os.path.join(scratch, "flowers"), QUICK_PER_CLASS)
        sources = {"before": before}
        flags = {"before": [], "after": [], "full": ["--doctor=full"], "off": ["--doctor=off"]}
        for k in range(args.runs):
            for arm in arms:
                workdir = os.path.join(scratch, f"{arm}-{k}")
                row = one_run(sources.get(arm, str(_common.REPO)), flags[arm], workdir, data_dir)
                runs[arm].append(row)
                shown = {key: v for key, v in row.items() if key != "lines"}
                print(f"{arm} run {k}: {shown}", flush=True)
    payload = {
        "machine": _common.machine(),
        "command": "python -m tl_keras.train --config=configs/flowers.toml (until fe epoch 1)",
        "photos_per_class": QUICK_PER_CLASS if args.quick else "all",
        "before_commit": commit,
        "arms_in_run_order": arms,
        "summary": {arm: summarise(rows) for arm, rows in runs.items()},
        "runs": runs,
    }
    path = _common.write("doctor_cost_quick" if args.quick else "doctor_cost", payload)
    for arm in arms:
        print(f"{arm}: {payload['summary'][arm]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
