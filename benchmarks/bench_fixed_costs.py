"""What a run pays before its first epoch, stage by stage, as a user runs it.

    python benchmarks/bench_fixed_costs.py                      # 3 runs of this tree
    python benchmarks/bench_fixed_costs.py --before=/tmp/old    # alternating with another tree

`python -m tl_keras.train` on the shared flowers with the shared MobileNet-0.25 weights at 128 px,
no recipe flags (the default, the data doctor included), in a fresh process each time, stopped
at its first epoch line. The seconds from the process's start to each stage's last log line,
as they reach this script, split into:

* **start-up, model + data**: to the data line (`data: ...: N classes, ...`): Python and the
  TensorFlow import, the CLI, the model, the file listing and the decode check (a bare
  `python -c "import tensorflow"`, timed before each run, says how much of it is the import);
* **feature pass**: to its last line (the doctor's pass over every image, reused by fe);
* **doctor**: to the doctor's line (its neighbour search, probe and report);
* **BN-shift probe**: to the recipe card (`tl_keras.training.bn_shift`, and the card);
* **fe set-up + first epoch**: to the first epoch's line (fe's compile, the head's tracing, the
  epoch itself: its own seconds, traced step included, are reported apart).

With `--before=DIR` (a source tree of the package, e.g. `git worktree add /tmp/old main`) the
runs alternate between DIR and this tree, so both see the same machine; the load average is
recorded beside each run. Writes benchmarks/results/fixed_costs.json.

    python benchmarks/bench_fixed_costs.py --probe --before=/tmp/old

times the BatchNorm-shift probe alone instead, in one process on one model: DIR's
`tl_keras/training/bn_shift.py` and this tree's, alternating, each call with its own tracing (as
a run pays it), and the largest difference between their shifts. Writes
benchmarks/results/fixed_costs_probe.json.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _common

HERE = pathlib.Path(__file__).resolve().parent
STAGES = (
    ("startup_model_and_data", re.compile(r"data: .*: \d+ classes, ")),
    ("feature_pass", re.compile(r"\[feature pass\] .* in [\d.]+ s")),
    ("doctor", re.compile(r"doctor: ")),
    ("bn_shift_probe", re.compile(r"recipe card \(")),
    ("fe_setup_and_first_epoch", re.compile(r"\[fe\] epoch \d+ \(1/")),
)


def tf_import_s() -> float:
    """Seconds a bare `python -c "import tensorflow"` takes, process start to exit."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, check=True)
    return round(time.monotonic() - start, 2)


def one_run(tree: str, flowers: str, weights: str) -> dict:
    """One fresh `tl_keras.train` process from `tree`, stopped at its first epoch line: the
    time each stage's last line arrived (seconds since the process started)."""
    workdir = tempfile.mkdtemp(prefix="bench-fixed-")
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "tl_keras.train",
        f"--data_dir={flowers}",
        "--backbone=mobilenet",
        "--alpha=0.25",
        f"--weights={weights}",
        "--image_size=128",
        "--progress=lines",
        f"--workdir={workdir}/w",
    ]
    load, bare_import = os.getloadavg()[0], tf_import_s()
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    marks: dict[str, float] = {}
    first_epoch_s = None
    try:
        for line in proc.stdout:
            now = time.monotonic() - start
            for name, pattern in STAGES:
                if pattern.search(line):
                    marks[name] = now
            if "fe_setup_and_first_epoch" in marks:
                m = re.search(r"\(1/\d+\) - ([\d.]+)s", line)
                first_epoch_s = float(m.group(1)) if m else None
                break
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    stages, before = {}, 0.0
    for name, _ in STAGES:
        if name in marks:
            stages[name] = round(marks[name] - before, 2)
            before = marks[name]
    return {
        "to_first_epoch_s": round(before, 2),
        "stages_s": stages,
        "first_epoch_s": first_epoch_s,
        "bare_tf_import_s": bare_import,
        "load_1min": round(load, 2),
    }


def probe_only(before: str, runs: int, flowers: str, weights: str) -> None:
    """The probe of `before`'s tree against this tree's, alternating in one process."""
    import importlib.util

    from tl_keras import config as config_lib
    from tl_keras.data import sources
    from tl_keras.training import bn_shift

    path = pathlib.Path(before, "tl_keras", "training", "bn_shift.py")
    spec_ = importlib.util.spec_from_file_location("bn_shift_before", path)
    old = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(old)
    config = config_lib.Config(
        data_dir=flowers, backbone="mobilenet", alpha=0.25, weights=weights, image_size=128
    )
    checked = config_lib.check(config)
    data = sources.load(checked.data)
    model = checked.model.build(data.num_classes)  # pretrained: nothing to calibrate
    times: dict[str, list[float]] = {"before": [], "this": []}
    shifts = {}
    for _ in range(runs):
        for name, module in (("before", old), ("this", bn_shift)):
            load, start = os.getloadavg()[0], time.monotonic()
            known = {"num_images": data.num_train} if module is bn_shift else {}
            shifts[name], _ = module.block_shifts(
                model, checked.model.backbone, data.train_in_order, **known
            )
            times[name].append(round(time.monotonic() - start, 2))
            print(name, times[name][-1], "s, load", round(load, 1), flush=True)
    diff = max(abs(a[1] - b[1]) for a, b in zip(shifts["before"], shifts["this"], strict=True))
    results = {
        "machine": _common.machine(),
        "before": before,
        "probe_s": times,
        "this_over_before_per_run": [
            round(t / b, 3) for t, b in zip(times["this"], times["before"], strict=True)
        ],
        "largest_shift_difference": diff,
    }
    print(results)
    print(f"wrote {_common.write('fixed_costs_probe', results)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each tree")
    ap.add_argument("--before", default="", help="a source tree to alternate with this one")
    ap.add_argument("--probe", action="store_true", help="the BatchNorm-shift probe alone")
    args = ap.parse_args(argv)
    flowers, weights = _common.flowers_or_exit()
    if args.probe:
        if not args.before:
            ap.error("--probe compares with --before=DIR: give the tree to compare with")
        probe_only(args.before, args.runs, flowers, weights)
        return
    trees = {"this": str(HERE.parent)}
    if args.before:
        trees = {"before": os.path.abspath(args.before), **trees}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for i in range(args.runs):
        for name, tree in trees.items():
            run = one_run(tree, flowers, weights)
            runs[name].append(run)
            print(name, i, run, flush=True)
    summary = {
        name: {
            "to_first_epoch_s_median": statistics.median(r["to_first_epoch_s"] for r in rs),
            "stages_s_median": {
                stage: statistics.median(r["stages_s"].get(stage, 0.0) for r in rs)
                for stage, _ in STAGES
            },
        }
        for name, rs in runs.items()
    }
    if args.before:
        summary["this_over_before_per_run"] = [
            round(a["to_first_epoch_s"] / b["to_first_epoch_s"], 3)
            for a, b in zip(runs["this"], runs["before"], strict=True)
        ]
    results = {"machine": _common.machine(), "trees": trees, "runs": runs, "summary": summary}
    print(summary)
    print(f"wrote {_common.write('fixed_costs', results)}")


if __name__ == "__main__":
    main()
