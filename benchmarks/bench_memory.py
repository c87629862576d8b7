"""Peak resident memory of a whole `--phase=all` run, measured from outside the process.

    python benchmarks/bench_memory.py

Runs the training command in a child process and reads the child's peak resident set size
(`ru_maxrss`) when it exits: the quickstart (offline, generated data) and, with ../shared, the
flower config (MobileNet-0.25, 128 px, 3,439 photos, `cache = "memory"`). Each run's outcome is
kept beside its figures (the epochs each phase ran, the decode check's seconds, the calibration
log line and validation scores), so the documentation quotes a file, not a terminal. Writes
benchmarks/results/memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _common


def peak_rss_mib(args: list[str]) -> tuple[float, float, list[str]]:
    """(peak RSS in MiB, wall seconds, log lines) of `python -m tl_keras.train ARGS` to the end."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    # Files, not pipes: a full pipe would block the child.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tl_keras.train", *args], cwd=_common.REPO, env=env,
                                stdout=out, stderr=err, text=True)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak, not ours
        if status != 0:
            err.seek(0)
            sys.exit(f"the run failed (status {status}): {err.read()[-2000:]}")
        out.seek(0)
        lines = out.read().splitlines()
    return usage.ru_maxrss / 1024, time.perf_counter() - start, lines  # Linux reports KiB


def outcome(workdir: str, lines: list[str]) -> dict:
    """What the run reported: epochs per phase, the decode check, its calibration line and scores."""
    from tl_keras.training.history import History

    spans = History.load(os.path.join(workdir, "history.json")).spans()
    with open(os.path.join(workdir, spans[0].phase, "summary.json")) as f:
        data = json.load(f)["data"]
    with open(os.path.join(workdir, "run.json")) as f:
        inference = json.load(f).get("inference", {})
    # The log line without its timestamp, as the documentation quotes it.
    calibration = [ln.split(" ", 1)[1] for ln in lines if " [calibration] " in ln]
    return {
        "epochs_run": {s.phase: s.epochs for s in spans},
        "decode_check_s": data.get("decode_check_s"),
        "images": data.get("images"),
        "temperature": inference.get("temperature"),
        "validation": inference.get("validation"),
        "calibration_log": calibration[-1] if calibration else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short quickstart only (a smoke run)")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_memory-")
    runs = {"quickstart": ["--config=configs/quickstart.toml", f"--workdir={tmp}/quickstart"]}
    if args.quick:  # a smoke run: the quickstart's pipeline, one epoch per phase, the test base
        runs["quickstart"] += ["--epochs_fe=1", "--epochs_ft=1", "--synthetic_images_per_class=20",
                               "--backbone=tiny", "--alpha=1.0"]  # fmt: skip
    if not args.quick and _common.FLOWERS.is_dir() and _common.WEIGHTS.is_file():
        runs["flowers"] = [
            "--config=configs/flowers.toml", f"--workdir={tmp}/flowers",
            f"--data_dir={_common.FLOWERS}", f"--weights={_common.WEIGHTS}",
        ]  # fmt: skip
    rows = {}
    for name, run_args in runs.items():
        mib, seconds, lines = peak_rss_mib(run_args)
        rows[name] = {"peak_rss_mib": round(mib, 1), "wall_s": round(seconds, 1), "args": run_args,
                      "outcome": outcome(f"{tmp}/{name}", lines)}  # fmt: skip
    # A smoke run's process only starts the run: TensorFlow's import for the GPU list would be
    # most of its own CPU time.
    machine = _common.machine(devices=not args.quick)
    path = _common.write("memory", {"machine": machine, "results": rows})
    print("| run (`--phase=all`) | peak resident memory | wall time |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['peak_rss_mib']:.0f} MiB | {r['wall_s']:.0f} s |")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
