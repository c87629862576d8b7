"""Where a default run's seconds go, piece by piece, and whether another tree trains the same.

    python benchmarks/bench_run_breakdown.py                         # Lite0 flowers, seed 0
    python benchmarks/bench_run_breakdown.py --before=/tmp/old       # old tree beside this one
    python benchmarks/bench_run_breakdown.py --quick                 # tiny base (the suite)
    python benchmarks/bench_run_breakdown.py --backbone=mobilenet_025 --before=/tmp/old

`tl_keras.train` with no recipe setting (the decided recipe) on bench_recipe's `user` split of
the shared flowers at 128 px with EfficientNet-Lite0's converted ImageNet weights (or
`--backbone`, a key of bench_recipe's BACKBONES), the run bench_recipe's tl_keras arm times. Each run is a child process of its tree, with the package's
pieces wrapped to record their wall and process CPU seconds (CPU: both cores): the data, the
model, the BatchNorm-shift probe, the data doctor (its feature pass, reused by fe), each phase's
fit, each epoch's training and validation pass (Keras's), checkpoint writes, model saves, the
curves, the phases' artifacts and calibration.

With `--before=DIR` (a source tree of the package, e.g. `git archive OLD | tar -x -C DIR`) the
two trees' runs go side by side, at the same time, so both see the same machine; then their
trained weights and per-epoch metrics are compared (largest absolute difference). Writes
benchmarks/results/run_breakdown.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
PIECES = (  # (module, attribute, label)
    ("tl_keras.data.sources", "load", "data"),
    ("tl_keras.training.start", "build_initial_model", "model"),
    ("tl_keras.training.bn_shift", "block_shifts", "bn_shift_probe"),
    ("tl_keras.training.start", "run_doctor", "doctor_with_feature_pass"),
    ("tl_keras.training.runner", "run_phase", "phase_fit_and_setup"),
    ("tl_keras.training.checkpoint", "write", "checkpoint_write"),
    ("tl_keras.training.runner", "save_phase", "phase_artifacts"),
    ("tl_keras.training.runner", "plot_history", "curves_plot"),
    ("tl_keras.training.calibrate", "calibrate_run", "calibration"),
)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _wrap(times: list, module, name: str, label: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    fn = getattr(mod, name)

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        w, c = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            times.append((label, time.perf_counter() - w, time.process_time() - c))

    setattr(mod, name, timed)


def _epoch_callback(times: list):
    import keras

    class EpochPieces(keras.callbacks.Callback):
        """Each epoch's training steps, Keras's validation pass, and the rest of its end (the
        callbacks: checkpoints, the frozen-bottom validation where it runs)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.begin = self.steps_end = _clock()
            self.test = None

        def on_train_batch_end(self, batch, logs=None):
            self.steps_end = _clock()

        def on_test_begin(self, logs=None):
            self.test = _clock()

        def on_test_end(self, logs=None):
            w, c = _clock()
            times.append(("epoch_keras_validation", w - self.test[0], c - self.test[1]))
            self.test = (w, c)

        def on_epoch_end(self, epoch, logs=None):  # the user's callbacks run last
            w, c = _clock()
            b, s = self.begin, self.steps_end
            times.append(("epoch_train_steps", s[0] - b[0], s[1] - b[1]))
            last = self.test or s
            times.append(("epoch_end_callbacks", w - last[0], c - last[1]))

    return EpochPieces()


def child(workdir: str, seed: int, quick: bool, backbone: str) -> dict:
    """One instrumented run in this process (the tree on PYTHONPATH); its breakdown."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    times: list = []
    for module, name, label in PIECES:
        _wrap(times, module, name, label)
    from tl_keras import train  # first: the tree under test, before _common puts this one first

    if quick:
        import _common

        config = _common.tiny_config(
            unfreeze="blocks:2", recipe="manual", progress="lines", seed=seed
        )
    else:
        import bench_recipe

        root = f"{workdir}-data"  # inside the parent's temporary folder
        config = bench_recipe.flowers_config(root, backbone, seed=seed, progress="lines")
    w, c = _clock()
    result = train(config, workdir, callbacks=[_epoch_callback(times)])
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    np.savez(
        os.path.join(workdir, "trained_weights.npz"), *[np.asarray(v) for v in result.model.weights]
    )
    run = json.loads(pathlib.Path(workdir, "run.json").read_text())
    phases = {p: v["wall_time_s"] for p, v in run["phases"].items()}
    pieces: dict[str, dict] = {}
    for label, pw, pc in times:
        row = pieces.setdefault(label, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})
        row["calls"] += 1
        row["wall_s"] = round(row["wall_s"] + pw, 2)
        row["cpu_s"] = round(row["cpu_s"] + pc, 2)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "phase_wall_s": phases,
        "fixed_s": round(wall - sum(phases.values()), 2),
        "pieces": pieces,
        "history": result.history.records,
    }


def _run_tree(tree: str, workdir: str, seed: int, quick: bool, backbone: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [
        sys.executable,
        str(HERE / "bench_run_breakdown.py"),
        "--child",
        f"--workdir={workdir}",
        f"--seed={seed}",
        f"--backbone={backbone}",
    ] + (["--quick"] if quick else [])
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _same_training(a: str, b: str, ha: list, hb: list) -> dict:
    """The largest absolute differences between two runs' trained weights and epoch metrics."""
    import numpy as np

    wa, wb = (
        np.load(os.path.join(a, "trained_weights.npz")),
        np.load(os.path.join(b, "trained_weights.npz")),
    )
    weights = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa.files)
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    metrics = max(abs(x[k] - y[k]) for x, y in zip(ha, hb, strict=True) for k in keys)
    return {
        "weights_max_abs_difference": weights,
        "metrics_max_abs_difference": metrics,
        "arrays": len(wa.files),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="another source tree, run beside this one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny base, synthetic images")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="a key of bench_recipe's")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        out = child(args.workdir, args.seed, args.quick, args.backbone)
        pathlib.Path(args.workdir, "breakdown.json").write_text(json.dumps(out))
        return
    import _common

    trees = {"this": str(HERE.parent)} | ({"before": args.before} if args.before else {})
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-runs-") as root:
        procs = {
            name: _run_tree(tree, os.path.join(root, name), args.seed, args.quick, args.backbone)
            for name, tree in trees.items()
        }
        runs = {}
        for name, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"the {name} tree's run failed:\n{err[-3000:]}")
            runs[name] = json.loads(pathlib.Path(root, name, "breakdown.json").read_text())
        same = None
        if args.before:
            same = _same_training(
                os.path.join(root, "this"),
                os.path.join(root, "before"),
                runs["this"]["history"],
                runs["before"]["history"],
            )
    for name, run in runs.items():
        print(
            f"{name}: {run['wall_s']} s, {run['cpu_s']} CPU-s; phases {run['phase_wall_s']}; fixed {run['fixed_s']} s"
        )
        for label, row in run["pieces"].items():
            print(
                f"  {label:26s} x{row['calls']:<3d} {row['wall_s']:8.2f} s {row['cpu_s']:8.2f} CPU-s"
            )
    payload = {
        "machine": _common.machine(),
        "seed": args.seed,
        "quick": args.quick,
        "backbone": args.backbone,
        "trees": trees,
        "runs": {n: {k: v for k, v in r.items() if k != "history"} for n, r in runs.items()},
    }
    if same is not None:
        payload["same_training"] = same
        print(
            f"this tree / before: wall {runs['this']['wall_s'] / runs['before']['wall_s']:.3f}x, "
            f"CPU {runs['this']['cpu_s'] / runs['before']['cpu_s']:.3f}x; {payload['same_training']}"
        )
    path = _common.write("run_breakdown_quick" if args.quick else "run_breakdown", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
