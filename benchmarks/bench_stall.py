"""Does a phase's last epoch hang before the next line (issue 24's end-of-phase stall)?

    python benchmarks/bench_stall.py           # configs/flowers.toml, 10 runs (25-40 min, 2 cores)
    python benchmarks/bench_stall.py --quick   # 24 photos a class, 64 px, tiny base, 1+1 epochs, 2 runs
    python benchmarks/bench_stall.py --runs=6 --time_budget=90s
    python benchmarks/bench_stall.py --tiny --runs=12 --checkouts=OLD,.   # a minute a run
    python benchmarks/bench_stall.py --runs=12 --checkouts=OLD,.   # another checkout / this one

Each run is the command a user types, in a fresh process: `python -m tl_keras.train
--config=configs/flowers.toml --workdir=TMP --overwrite` (MobileNet-0.25 with the shared ImageNet
weights, 128 px, the decided recipe). Every line it prints is timed as it arrives. For each
phase, the gap is the time from the phase's last line (its last epoch, or the time-budget
guard's stop line after it) to the next line: what a user watching the log sees as the run
hanging at 100%. After `fe` the next line comes as soon as `fit` returns; after `ft` it is the
calibration line, so that gap also holds saving the phase and calibration's pass over the
validation images (about 2 s on a quiet 2-core machine).

`--tiny` is the cheap reproduction: generated shapes, random weights, 32 px, 3 + 3 epochs, no
doctor, then `--phase=ft` alone on the same workdir (its gap reported as "ft alone").

Then the cause without a model, in this process: the same training epochs read for 2.6 s and
deleted, as the package builds them and with tf.data's autotuning back on (`--iterator_trials`
each, alternating; a lost wake-up shows as a 2.5 s deletion), and how fast each reads two epochs
flat out.

The stall was TensorFlow's: every `tf.data` iterator runs an autotuning thread that sleeps
between optimisations, for periods that double up to 60 s; deleting the iterator joins it, and
the wake-up meant to end its sleep is often lost, so `fit` returned only when the sleep ran out
(see `tl_keras.data.images.untuned`).

Reports per run and overall the gap after each phase, the maximum rather than the mean (a stall
is rare and long), with the machine's load average before each run. On a busy machine the work
in a gap (saving, plotting, tracing calibration's function) takes several times longer, so the
gap alone cannot tell it from a stall: each gap also reports its longest idle stretch, during
which no thread of the process was running or waiting for a core (Linux /proc, sampled every
0.1 s). The stall is idle; work is not, however long it queues for a core. Idle stretches of
0.5 s and more inside a phase (from its first line to its last epoch's) are summed too: a lost
wake-up when Keras drops its validation iterator costs time inside an epoch.

`--checkouts` alternates the runs between checkouts (before / after a change), each with its own
package on `PYTHONPATH`, so both arms share the machine's conditions. Writes
benchmarks/results/stall.json (`--name`; stall_quick.json under --quick).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import _common

EPOCH_LINE = re.compile(r"\[(?P<phase>\w+)\] epoch \d+ \(\d+/\d+\)")
GUARD_STOP = "so the phase stops here"  # the time-budget guard's line after an epoch
QUICK_PER_CLASS = 24  # --quick: 5 validation photos a class, the 20 calibration fits on
QUICK_SIZE = 64  # --quick: the path, not the figures (the runs and the epochs read in-process)
SAMPLE_S = 0.1  # how often the process's threads are looked at
LIFE_S = 2.6  # an iterator's life before its deletion: the autotuner then sleeps until 5.1 s


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="24 photos a class, 64 px, the test base, 2 short runs"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="generated shapes at 32 px, 3+3 epochs, then --phase=ft alone on the same workdir",
    )
    ap.add_argument("--runs", type=int, default=10, help="runs (over all checkouts)")
    ap.add_argument("--seeds", default="0", help="seeds the runs cycle through, e.g. 0,1,2")
    ap.add_argument("--time_budget", default=None, help="passed on, e.g. 90s")
    ap.add_argument("--iterator_trials", type=int, default=20, help="iterator deletions per arm")
    ap.add_argument("--name", default="stall", help="results/NAME.json (NAME_quick under --quick)")
    ap.add_argument(
        "--checkouts",
        default=str(_common.REPO),
        help="comma-separated repository roots whose tl_keras the runs alternate between",
    )
    return ap.parse_args(argv)


def _any_thread_running(pid: int) -> bool | None:
    """Whether any thread of the process is running or waiting for a core (state R); None when
    it is gone. A stall is every thread blocked; work on a busy machine is runnable (R)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "R":
                    return True
        except (OSError, IndexError):
            continue
    return False


def _sample(proc: subprocess.Popen, start: float, samples: list) -> None:
    """(seconds, any thread running) every SAMPLE_S until the process ends (Linux /proc)."""
    while proc.poll() is None:
        running = _any_thread_running(proc.pid)
        if running is not None:
            samples.append((time.monotonic() - start, running))
        time.sleep(SAMPLE_S)


def longest_idle(samples: list[tuple[float, bool]], lo: float, hi: float) -> float | None:
    """The longest stretch inside [lo, hi] over which no thread of the process ran."""
    inside = [(t, running) for t, running in samples if lo <= t <= hi]
    if not inside:
        return None
    best, began = 0.0, None
    for t, running in inside:
        if running:
            began = None
        else:
            began = t if began is None else began
            best = max(best, t - began)
    return round(best, 1)


def idle_stretches(samples: list[tuple[float, bool]], at_least: float = 0.5) -> list[list]:
    """Every stretch of at least `at_least` s over which no thread of the process ran."""
    out, began, last = [], None, None
    for t, running in [*samples, (math.inf, True)]:
        if running:
            if began is not None and last - began >= at_least:
                out.append([round(began, 1), round(last, 1)])
            began = None
        else:
            began = t if began is None else began
            last = t
    return out


def idle_in_phases(lines: list[tuple[float, str]], stretches: list[list]) -> dict[str, float]:
    """Per phase, idle seconds (stretches of 0.5 s and more) from its first line to its last
    epoch's: what lost wake-ups cost inside the epochs (a validation iterator's deletion)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for t, text in lines:
        m = re.search(r"\[(\w+)\] ", text)
        if m:
            first.setdefault(m[1], t)
        m = EPOCH_LINE.search(text)
        if m:
            last[m["phase"]] = t
    return {
        phase: round(
            sum(max(0.0, min(b, last[phase]) - max(a, first[phase])) for a, b in stretches), 1
        )
        for phase in last
    }


def phase_gaps(lines: list[tuple[float, str]], samples=()) -> dict[str, dict]:
    """Per phase: seconds from its last line (last epoch, or the guard's stop line right after
    it) to the next line, the longest idle stretch inside that gap (every thread blocked, from
    `samples`), and the start of the next line. `lines` is (seconds, text) in order."""
    last: dict[str, int] = {}
    for i, (_, text) in enumerate(lines):
        m = EPOCH_LINE.search(text)
        if m:
            last[m["phase"]] = i
    gaps = {}
    for phase, i in last.items():
        if i + 1 < len(lines) and GUARD_STOP in lines[i + 1][1]:
            i += 1
        if i + 1 < len(lines):
            gaps[phase] = {
                "gap_s": round(lines[i + 1][0] - lines[i][0], 2),
                "idle_s": longest_idle(list(samples), lines[i][0], lines[i + 1][0]),
                "next_line": lines[i + 1][1].strip()[:90],
                "guard_stopped": GUARD_STOP in lines[i][1],
            }
    return gaps


def run_once(checkout: str, args_: list[str], workdir: str) -> dict:
    """One `python -m tl_keras.train` in checkout, its lines timed as they arrive."""
    env = {**os.environ, "PYTHONPATH": checkout, "PYTHONUNBUFFERED": "1"}
    load = os.getloadavg()
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_keras.train", *args_, f"--workdir={workdir}", "--overwrite"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    samples: list[tuple[float, bool]] = []
    sampler = threading.Thread(target=_sample, args=(proc, start, samples), daemon=True)
    sampler.start()
    lines = [(time.monotonic() - start, line) for line in proc.stdout]
    code = proc.wait()
    sampler.join()
    stretches = idle_stretches(samples)
    return {
        "checkout": checkout,
        "returncode": code,
        "wall_s": round(time.monotonic() - start, 1),
        "load_average_before": [round(x, 2) for x in load],
        "gaps": phase_gaps(lines, samples),
        "idle_in_phase_s": idle_in_phases(lines, stretches),
        "idle_stretches": stretches,
        "epoch_lines": [
            [round(t, 1), text.strip()[:60]] for t, text in lines if EPOCH_LINE.search(text)
        ],
        "tail": [text.rstrip()[:160] for _, text in lines[-3:]] if code else [],
    }


def quick_set(scratch: str) -> str:
    """QUICK_PER_CLASS flower photos a class, linked into scratch/flowers."""
    return _common.flower_subset(pathlib.Path(scratch) / "flowers", QUICK_PER_CLASS)


def _flowers_epochs(data_dir: str, image_size: int = 128):
    """The package's training epochs of the flowers (configs/flowers.toml's pipeline)."""
    from tl_keras import config as config_lib
    from tl_keras.data.sources import load_data

    cfg = config_lib.Config(
        data_dir=data_dir, image_size=image_size, batch_size=32, cache="memory", augment="light"
    )
    return load_data(cfg)


def _autotuned(ds):
    """The dataset with tf.data's autotuning back on (TensorFlow's default; the later option
    wins), as the package built its pipelines before issue 24."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = True
    return ds.with_options(options)


def iterator_deletions(data, trials: int, life_s: float) -> dict:
    """The cause, without a model: the training epochs read one batch every 20 ms for life_s,
    then deleted; seconds each deletion takes, as the package builds them and autotuned. A lost
    wake-up costs the rest of the autotuning thread's sleep: 5.1 - 2.6 = 2.5 s at life_s 2.6."""
    arms = {"as_built": lambda ds: ds, "autotuned": _autotuned}
    out: dict[str, list] = {arm: [] for arm in arms}
    for _ in range(trials):
        for arm, wrap in arms.items():
            it = iter(wrap(data.train_epochs(0, 1000)))
            start = time.monotonic()
            while time.monotonic() - start < life_s:
                next(it)
                time.sleep(0.02)
            start = time.monotonic()
            del it
            out[arm].append(round(time.monotonic() - start, 2))
    for arm, seconds in out.items():
        print(f"iterator {arm}: deletions after {life_s:g} s took {seconds}", flush=True)
    return {"life_s": life_s, "deletion_s": out}


def read_rates(data, reps: int) -> dict:
    """Batches per second reading 2 training epochs flat out, per arm, alternating: what
    switching the autotuning off costs the input pipeline."""
    arms = {"as_built": lambda ds: ds, "autotuned": _autotuned}
    out: dict[str, list] = {arm: [] for arm in arms}
    for _ in range(reps):
        for arm, wrap in arms.items():
            start, n = time.monotonic(), 0
            for _ in wrap(data.train_epochs(0, 2)):
                n += 1
            out[arm].append(round(n / (time.monotonic() - start), 1))
    return out


def summary(runs: list[dict]) -> dict:
    """Per checkout and phase: the largest gap, the median, and how many exceed 3 s."""
    out: dict[str, dict] = {}
    for checkout in dict.fromkeys(r["checkout"] for r in runs):
        mine = [r for r in runs if r["checkout"] == checkout]
        per_phase = {}
        for phase in dict.fromkeys(p for r in mine for p in r["gaps"]):
            gaps = [r["gaps"][phase]["gap_s"] for r in mine if phase in r["gaps"]]
            idle = [r["gaps"][phase]["idle_s"] or 0.0 for r in mine if phase in r["gaps"]]
            inside = [r["idle_in_phase_s"].get(phase, 0.0) for r in mine]
            per_phase[phase] = {
                "max_gap_s": max(gaps),
                "max_idle_s": max(idle),
                "idle_in_phase_s_total": round(sum(inside), 1),
                "median_gap_s": round(statistics.median(gaps), 2),
                "over_3s": sum(g > 3.0 for g in gaps),
                "runs": len(gaps),
            }
        out[checkout] = per_phase
    return out


# --quick: the flowers photos through the package's test backbone, random weights, 1+1 epochs.
# A smoke run checks the path (lines timed, gaps, idle stretches, the calibration line after
# ft), which is the same for any base; MobileNet-0.25's ImageNet base costs each run seconds of
# tracing more.
QUICK = ["--backbone=tiny", "--alpha=1.0", "--weights=none", "--epochs_fe=1", "--epochs_ft=1"]

TINY = [  # seconds a run: generated shapes, random weights, 32 px, 3 + 3 epochs, no doctor
    "--data_dir=synthetic",
    "--synthetic_images_per_class=16",
    "--weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--epochs_fe=3",
    "--epochs_ft=3",
    "--doctor=off",
]


def run_flags(args: argparse.Namespace, scratch: str) -> list[str]:
    """The train command's flags for the mode: the default on flowers, --quick, or --tiny."""
    flags = [
        f"--config={_common.REPO / 'configs' / 'flowers.toml'}",
        f"--data_dir={quick_set(scratch) if args.quick else _common.FLOWERS}",
        f"--weights={_common.WEIGHTS}",
    ]
    flags += QUICK + [f"--image_size={QUICK_SIZE}"] if args.quick else []
    flags += TINY if args.tiny else []  # later flags win
    return flags + ([f"--time_budget={args.time_budget}"] if args.time_budget else [])


def show(k: int, runs_n: int, run: dict) -> None:
    shown = ", ".join(
        f"{p} {g['gap_s']:.1f} s (idle {g['idle_s'] or 0:.1f} s; idle inside the phase "
        f"{run['idle_in_phase_s'].get(p, 0):.1f} s)"
        for p, g in run["gaps"].items()
    )
    print(
        f"run {k + 1}/{runs_n} ({pathlib.Path(run['checkout']).name}, seed {run['seed']}, load "
        f"{run['load_average_before'][0]:.1f}): {run['wall_s']:.0f} s, gap after {shown}",
        flush=True,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (_common.FLOWERS.is_dir() and _common.WEIGHTS.is_file()):
        print(f"needs the shared flowers and weights under {_common.SHARED}", file=sys.stderr)
        return 2
    checkouts = [str(pathlib.Path(c).resolve()) for c in args.checkouts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_n = 2 if args.quick else args.runs
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_stall-") as scratch:
        flags = run_flags(args, scratch)
        for k in range(runs_n):
            checkout, seed = checkouts[k % len(checkouts)], seeds[k % len(seeds)]
            workdir = os.path.join(scratch, f"run{k}")
            run = run_once(checkout, [*flags, f"--seed={seed}"], workdir)
            if args.tiny and not run["returncode"]:  # then `ft` again, alone, on its fe
                alone = run_once(checkout, [*flags, f"--seed={seed}", "--phase=ft"], workdir)
                run["gaps"]["ft alone"] = alone["gaps"].get("ft")
                run["idle_in_phase_s"]["ft alone"] = alone["idle_in_phase_s"].get("ft", 0.0)
                run["returncode"], run["tail"] = alone["returncode"], alone["tail"]
            run["seed"] = seed
            shutil.rmtree(workdir, ignore_errors=True)
            runs.append(run)
            show(k, runs_n, run)
            if run["returncode"]:
                print("\n".join(run["tail"]), file=sys.stderr)
                return 1
        quick_data = args.quick or args.tiny
        if quick_data:
            data = _flowers_epochs(quick_set(scratch + "/q"), QUICK_SIZE if args.quick else 128)
        else:
            data = _flowers_epochs(str(_common.FLOWERS))
        trials = 2 if args.quick else args.iterator_trials
        iterators = iterator_deletions(data, trials, LIFE_S)
        iterators["batches_per_s"] = read_rates(data, 1 if args.quick else 3)
    payload = {
        "machine": _common.machine(),
        "quick": args.quick,
        "tiny": args.tiny,
        "command": "python -m tl_keras.train " + " ".join(flags) + " --seed=S",
        "runs": runs,
        "summary": summary(runs),
        "iterators": iterators,
    }
    name = args.name + ("_quick" if args.quick else "_tiny" if args.tiny else "")
    path = _common.write(name, payload)
    for checkout, phases in payload["summary"].items():
        for phase, s in phases.items():
            print(
                f"{pathlib.Path(checkout).name} {phase}: largest gap {s['max_gap_s']:.1f} s "
                f"(longest idle stretch {s['max_idle_s']:.1f} s), median "
                f"{s['median_gap_s']:.1f} s, {s['over_3s']} of {s['runs']} over 3 s; idle inside "
                f"the phase {s['idle_in_phase_s_total']:.1f} s in all"
            )
    for arm, seconds in iterators["deletion_s"].items():
        print(
            f"iterator {arm}: {sum(d > 1.0 for d in seconds)} of {len(seconds)} deletions took "
            f"over 1 s (longest {max(seconds):.1f} s); reads "
            f"{statistics.median(iterators['batches_per_s'][arm]):.0f} batches/s"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
