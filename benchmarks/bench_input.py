"""Is the input pipeline fast enough? Its throughput next to the model's, in one run.

    python benchmarks/bench_input.py

For each image size (128 and 224 px by default), on the shared flower photos (../shared, else a
generated stand-in, said in the output):

* pipeline images/s: `DataBundle.train_epochs` alone, i.e. JPEG read, decode, resize,
  augmentation, batching, with each preset (`none`, `light`, `strong`), no model;
* model images/s: MobileNet-0.25 training steps (`fe`: head only; `ft`: top blocks unfrozen) on
  one batch already in memory, so no input cost at all (the shared ImageNet weights when
  present, else random weights: the speed is the same; `--backbone=tiny`: the package's test
  backbone instead, a smoke run);
* `fe` fed by the real `light` pipeline, to show what the pipeline costs a real run;
* the ratio pipeline / model: the pipeline is not the bottleneck when it is >= 2 with `light`;
* the one-off decode check (every image decoded once before training, see tl_keras.data.pipeline).

Each figure is the best of 3 interleaved rounds (see `measure_size`).

Writes benchmarks/results/input.json and prints a markdown table. The numbers depend on the
machine and on whatever else runs on it: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TL_KERAS_SHARED", REPO.parent / "shared"))
FLOWERS = SHARED / "data" / "flowers5"
WEIGHTS = SHARED / "weights" / "mobilenet_1_0.25_224_imagenet_notop.weights.h5"
PRESETS = ("none", "light", "strong")
FT_UNFREEZE = "blocks:4"  # as configs/flowers.toml
# --backbone: name -> width. `tiny` (random weights) is the tests' smoke run: the same
# measurements at a fraction of MobileNet's tracing time, not figures to read.
BASES = {"mobilenet": 0.25, "tiny": 1.0}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128,224", help="image sizes in pixels, comma-separated")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--data_dir", default=str(FLOWERS), help="an image-folder tree")
    ap.add_argument("--pipeline_batches", type=int, default=40, help="timed batches per preset")
    ap.add_argument("--model_steps", type=int, default=15, help="timed training steps per phase")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches / steps first")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best counts")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "input.json"))
    ap.add_argument(
        "--backbone",
        default="mobilenet",
        choices=sorted(BASES),
        help="the model measured: MobileNet-0.25, or the package's test backbone (a smoke run)",
    )
    return ap.parse_args(argv)


def pipeline_rate(data, batches: int, warmup: int) -> float:
    """Images per second out of `train_epochs`, after `warmup` batches."""
    epochs = 1 + (warmup + batches) // data.steps_per_epoch
    it = iter(data.train_epochs(0, epochs))
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def model_rate(model, x, y, steps: int, warmup: int) -> float:
    """Images per second of training steps on one batch held in memory."""
    for _ in range(warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * int(x.shape[0]) / (time.perf_counter() - start)


def fed_rate(model, data, steps: int, warmup: int) -> float:
    """Images per second of `fe` training steps fed by the pipeline itself."""
    it = iter(data.train_epochs(0, 1 + (warmup + steps) // data.steps_per_epoch))
    for _ in range(warmup):
        model.train_on_batch(*next(it))
    n, start = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        model.train_on_batch(x, y)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def measure_size(size: int, args, data_dir: str, weights: str | None) -> dict:
    """All the figures of one image size; each is the best of `args.repeats` interleaved rounds.

    Rounds alternate pipeline and model measurements, so both see the same machine: on a
    machine shared with other jobs the best round is the closest to what the code can do.
    """
    import keras

    from tl_keras.config import Config
    from tl_keras.data.sources import load_data
    from tl_keras.model.classifier import build_model, set_trainable
    from tl_keras.recipe import Phase
    from tl_keras.training.optim import compile_for_phase

    def config(augment: str) -> Config:
        return Config(
            data_dir=data_dir,
            backbone=args.backbone,
            alpha=BASES[args.backbone],
            image_size=size,
            batch_size=args.batch_size,
            val_fraction=0.0,
            augment=augment,
        )

    bundles = {preset: load_data(config(preset)) for preset in PRESETS}
    models = {}
    for name, unfreeze, lr in (("fe", "none", 1e-3), ("ft", FT_UNFREEZE, 1e-4)):
        keras.utils.set_random_seed(0)
        models[name] = build_model(
            args.backbone,
            bundles["none"].num_classes,
            image_size=size,
            weights=weights,
            alpha=BASES[args.backbone],
        )
        set_trainable(models[name], args.backbone, unfreeze)
        compile_for_phase(models[name], Phase(name, unfreeze, 1, lr))
    x, y = next(iter(bundles["none"].train))

    samples: dict[str, list[float]] = {}
    for r in range(args.repeats):
        measured = {
            **{
                f"pipeline_{p}": lambda p=p: pipeline_rate(
                    bundles[p], args.pipeline_batches, args.warmup
                )
                for p in PRESETS
            },
            "model_fe": lambda: model_rate(models["fe"], x, y, args.model_steps, args.warmup),
            "model_ft": lambda: model_rate(models["ft"], x, y, args.model_steps, args.warmup),
            "fe_fed_by_light": lambda: fed_rate(
                models["fe"], bundles["light"], args.model_steps, args.warmup
            ),
        }
        for name, fn in measured.items():
            samples.setdefault(name, []).append(round(fn(), 1))
        print(
            f"  {size} px round {r + 1}: "
            + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()),
            flush=True,
        )
    best = {k: max(v) for k, v in samples.items()}
    light = best["pipeline_light"]
    return {
        "image_size": size,
        "batch_size": args.batch_size,
        "images": bundles["light"].num_train,
        "decode_check_s": round(bundles["none"].report.decode_check_s, 2),
        "pipeline_img_s": {p: best[f"pipeline_{p}"] for p in PRESETS},
        "model_img_s": {"fe": best["model_fe"], "ft": best["model_ft"]},
        "fe_fed_by_light_pipeline_img_s": best["fe_fed_by_light"],
        "ratio_light_vs_fe": round(light / best["model_fe"], 2),
        "ratio_light_vs_ft": round(light / best["model_ft"], 2),
        "ratio_strong_vs_fe": round(best["pipeline_strong"] / best["model_fe"], 2),
        "samples_img_s": samples,
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| size | pipeline none / light / strong (img/s) | model fe / ft (img/s) "
        "| light ÷ fe | light ÷ ft | fe fed by light | decode check |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        p, m = r["pipeline_img_s"], r["model_img_s"]
        lines.append(
            f"| {r['image_size']} px | {p['none']:.0f} / {p['light']:.0f} / {p['strong']:.0f} "
            f"| {m['fe']:.0f} / {m['ft']:.0f} | {r['ratio_light_vs_fe']:.1f} "
            f"| {r['ratio_light_vs_ft']:.1f} | {r['fe_fed_by_light_pipeline_img_s']:.0f} img/s "
            f"| {r['decode_check_s']:.1f} s ({r['images']} images) |"
        )
    return head + "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import keras
    import tensorflow as tf

    data_dir = args.data_dir
    source = data_dir
    if not os.path.isdir(data_dir):
        from tl_keras.data.sources import synthetic

        data_dir = synthetic.make_shapes(
            tempfile.mkdtemp(prefix="bench-shapes-"), images_per_class=400, image_size=128
        )
        source = f"generated shapes (no {args.data_dir})"
    weights = str(WEIGHTS) if WEIGHTS.is_file() and args.backbone == "mobilenet" else None
    print(f"data: {source}; weights: {weights or 'random'}", flush=True)
    load_before = os.getloadavg()
    rows = [
        measure_size(int(s), args, data_dir, weights) for s in args.sizes.split(",") if s.strip()
    ]
    result = {
        "command": "python benchmarks/bench_input.py",
        "data": source,
        "weights": weights or "random",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "results": rows,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(markdown(rows))
    print(f"wrote {out}")
    slow = [r["image_size"] for r in rows if r["ratio_light_vs_fe"] < 2]
    if slow:
        print(f"pipeline with 'light' is under 2x the model at {slow} px", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
