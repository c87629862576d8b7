"""Memory and throughput as the data set grows: 2k, 16k and 128k images, as a folder and as TFDS.

    python benchmarks/bench_scale.py                      # 2k, 16k, 128k; both sources
    python benchmarks/bench_scale.py --data_root /tmp/scale --sizes 2000 16000

The data come from `benchmarks/scale_data.py` (N generated 128 px JPEGs in 5 classes, and the
same images prepared by TFDS's own `tf_flowers` builder), made under --data_root when missing.
Every figure is measured in a child process: its peak resident set size is the child's own
`ru_maxrss` (`os.wait4`), so nothing of this script counts.

Two measurements per data set, because one epoch of each size mixes two things: a 128k epoch
runs 64 times the steps of a 2k one, and both the fixed costs (tracing, the first batches) and
the allocator's slow growth with the images processed (glibc's malloc arenas) depend on steps,
not on the data set's size.

* `epoch`: the real command, `python -m tl_keras.train --phase=fe --epochs_fe=1` (MobileNet-0.25,
  128 px, batch 64, 20% held out, base frozen and run every step: `--feature_cache=off`), after
  one run that made the decode check (which the measured run then recalls). Images/s is the
  training and validation images over the phase's wall time (`summary.json`), so fixed costs
  weigh on small sets.
* `steps`: the same data loading and model, then the same number of `fe` training steps for
  every size (`--steps`, 400 steps of 64 = 25,600 images: 13 epochs of 2k, a fifth of one of
  128k), images/s over the steps after the first 50. This isolates what the data set's size
  costs: what the pipeline holds, and its speed.

Targets: peak RSS at 128k at most 1.25x that at 2k, images/s at 128k at least 0.9x that at 2k,
for both sources. Writes benchmarks/results/scale.json and prints the tables. `--quick` (a smoke
run): 200 and 400 images of 32 px, a few steps, on the test backbone `tiny` with random weights,
no first run before the measured epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import _common

BATCH = 64
IMAGE_SIZE = 128
WARMUP_STEPS = 50


def settings(source: str, root: pathlib.Path, n: int, size: int, quick: bool = False) -> dict:
    """The config fields of every measured run (the command's flags, the child's Config)."""
    weights = str(_common.WEIGHTS) if _common.WEIGHTS.is_file() else "none"
    model = (
        {"backbone": "tiny", "weights": "none"}  # --quick: the path, not the figures
        if quick
        else {"backbone": "mobilenet", "alpha": 0.25, "weights": weights}
    )
    values = {
        **model,
        "image_size": size,
        "batch_size": BATCH,
        "val_fraction": 0.2,
        "progress": "lines",
        # What is measured is the data pipeline under one fe epoch: the data doctor (a feature
        # pass of its own) and the recipe (a probe, and its own epochs) are other costs.
        "doctor": "off",
        "recipe": "manual",
    }
    if source == "folder":
        return {**values, "data_dir": str(root / f"folder-{n}")}
    return {**values, "data_dir": "tfds:tf_flowers", "tfds_data_dir": str(root / f"tfds-{n}")}


def flags(values: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in values.items()]


def run_child(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(peak RSS MiB, wall seconds, stdout) of a child process run to the end."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=_common.REPO, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak, not ours
        out.seek(0), err.seek(0)
        text, errors = out.read(), err.read()
    if status != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed (status {status}):\n{errors[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start, text  # Linux: KiB


def measure_epoch(source, root, n, size, env, quick=False) -> dict:
    """One `fe` epoch of the real command, its decode check made by a first run (--quick: the
    measured run makes it, one process the less)."""
    work = tempfile.mkdtemp(prefix="bench_scale-")
    common = [
        sys.executable, "-m", "tl_keras.train", "--phase=fe", "--epochs_fe=1", "--epochs_ft=0",
        "--feature_cache=off", *flags(settings(source, root, n, size, quick)),
    ]  # fmt: skip
    if not quick:
        run_child([*common, f"--workdir={work}/first"], env)
    rss, wall, _ = run_child([*common, f"--workdir={work}/run"], env)
    summary = json.loads(pathlib.Path(work, "run", "fe", "summary.json").read_text())
    first_dir = pathlib.Path(work, "run" if quick else "first")
    first = json.loads((first_dir / "fe" / "summary.json").read_text())["data"]
    images = sum(summary["data"]["images"].values())
    return {
        "peak_rss_mib": round(rss, 1),
        "images_per_s": round(images / summary["wall_time_s"], 1),
        "epoch_s": round(summary["wall_time_s"], 2),
        "command_s": round(wall, 1),
        "first_decode_check_s": first["decode_check_s"],
        "decode_check_s": summary["data"]["decode_check_s"],
        "images": images,
    }


def measure_steps(source, root, n, size, steps, env, quick=False) -> dict:
    """`steps` fe training steps in a child (`--child`), as the command loads and builds."""
    values = settings(source, root, n, size, quick)
    cmd = [sys.executable, __file__, "--child", str(steps), json.dumps(values)]
    rss, wall, out = run_child(cmd, env)
    result = json.loads(out.strip().splitlines()[-1])
    return {"peak_rss_mib": round(rss, 1), **result, "command_s": round(wall, 1)}


def child(argv: list[str]) -> int:  # argv: STEPS CONFIG_JSON
    """Loads the data and builds the model as `tl_keras.train` does, then times `fe` steps."""
    import keras

    from tl_keras import config as config_lib
    from tl_keras.data.sources import load_data
    from tl_keras.model.classifier import set_trainable
    from tl_keras.training.start import build_initial_model

    steps, values = int(argv[0]), json.loads(argv[1])
    config = config_lib.Config(**values)
    spec = config_lib.check(config)
    with tempfile.TemporaryDirectory() as work:
        data = load_data(spec, workdir=work)
        model = build_initial_model(spec.model, data)
        set_trainable(model, spec.model.backbone, "none")
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        times: list[float] = []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter())

        epochs = -(-steps // data.steps_per_epoch)
        model.fit(data.train_epochs(0, epochs), steps_per_epoch=steps, epochs=1, verbose=0,
                  callbacks=[Clock()])  # fmt: skip
    warm = min(WARMUP_STEPS, steps // 4)
    rate = (steps - warm) * config.batch_size / (times[-1] - times[warm - 1])
    print(
        json.dumps({"images_per_s": round(rate, 1), "steps": steps, "train_images": data.num_train})
    )
    return 0


def ratios(rows: dict, sizes: list[int]) -> dict:
    small, large = str(min(sizes)), str(max(sizes))
    out = {}
    for key in ("epoch", "steps"):
        for source in ("folder", "tfds"):
            a, b = rows.get(f"{key}/{source}/{small}"), rows.get(f"{key}/{source}/{large}")
            if a and b:
                out[f"{key}/{source}"] = {
                    "rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
                    "speed_ratio": round(b["images_per_s"] / a["images_per_s"], 3),
                }
    return out


def print_tables(rows: dict, sizes: list[int], summary: dict) -> None:
    print("| measurement | source | " + " | ".join(f"{n:,}" for n in sizes) + " | large ÷ small |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    for key in ("epoch", "steps"):
        for source in ("folder", "tfds"):
            cells = [rows.get(f"{key}/{source}/{n}") for n in sizes]
            if not any(cells):
                continue
            ratio = summary.get(f"{key}/{source}", {})
            for field, unit, r in (
                ("peak_rss_mib", " MiB", "rss_ratio"),
                ("images_per_s", " img/s", "speed_ratio"),
            ):
                text = [f"{c[field]:.0f}{unit}" if c else "-" for c in cells]
                print(f"| {key}: {field.split('_')[0] if 'rss' in field else 'speed'} | {source} | "
                      + " | ".join(text) + f" | {ratio.get(r, float('nan')):.2f} |")  # fmt: skip


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 16000, 128000])
    ap.add_argument("--data_root", default=os.path.join(tempfile.gettempdir(), "tl_keras_scale"))
    ap.add_argument("--sources", nargs="+", default=["folder", "tfds"])
    ap.add_argument("--modes", nargs="+", default=["epoch", "steps"])
    ap.add_argument("--steps", type=int, default=400, help="fe steps of the `steps` measurement")
    ap.add_argument("--malloc_arena_max", type=int, default=0, help="MALLOC_ARENA_MAX in children")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200 and 400 small images")
    args = ap.parse_args(argv)
    size, sizes, steps = IMAGE_SIZE, args.sizes, args.steps
    root = pathlib.Path(args.data_root)
    if args.quick:
        size, sizes, steps = 32, [200, 400], 12
        root = pathlib.Path(tempfile.mkdtemp(prefix="bench_scale-data-"))
    import scale_data

    for n in sizes:  # made once; reused when complete
        folder = scale_data.make_folder(root / f"folder-{n}", n, size=size if args.quick else 128)
        if "tfds" in args.sources:
            scale_data.make_tfds(folder, root / f"tfds-{n}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("TL_KERAS_CACHE_DIR", tempfile.mkdtemp(prefix="bench_scale-cache-"))
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    rows = {}
    for mode in args.modes:
        for source in args.sources:
            for n in sizes:
                if mode == "epoch":
                    row = measure_epoch(source, root, n, size, env, args.quick)
                else:
                    row = measure_steps(source, root, n, size, steps, env, args.quick)
                row["load_average"] = os.getloadavg()[0]
                rows[f"{mode}/{source}/{n}"] = row
                print(f"{mode} {source} {n}: {row}", flush=True)
    summary = ratios(rows, sizes)
    measured = {
        "image_size": size, "batch_size": BATCH, "steps": steps, "sizes": sizes,
        "malloc_arena_max": args.malloc_arena_max or None,
        "weights": settings("folder", root, 0, size, args.quick)["weights"], "quick": args.quick,
    }  # fmt: skip
    name = "scale" if not args.malloc_arena_max else f"scale_arena{args.malloc_arena_max}"
    name += "_quick" if args.quick else ""  # a smoke run never replaces the figures
    _common.write(
        name,
        {"machine": _common.machine(), "settings": measured, "results": rows, "ratios": summary},
    )
    print_tables(rows, sizes, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
