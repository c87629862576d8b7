"""Feature extraction on cached features vs running the frozen base every epoch, side by side.

    python benchmarks/bench_fe_cache.py

Two workloads, each timed three ways in one run:

* **live**: `fe` with `feature_cache = "off"`: the frozen base runs over every image every epoch;
* **cached**: `fe` with `feature_cache = "memory"`, the one forward pass that fills the cache
  included (the in-process cache is emptied first);
* **floor**: one forward pass of a freshly built base over train + validation, tracing
  included, nothing else: a cached run must trace the base once and run it once over every
  image, so this is the least any cached run can cost. The same pass again on the traced graph
  ("pass alone") is reported beside it, so the cost of tracing shows.

Cached and floor take seconds, so each is the best of `--rounds` (3) interleaved rounds; live,
which takes minutes and is far from its target, is timed once.

Workloads: MobileNet-0.25 with the shared ImageNet weights at 128 px on the whole shared flower
set (2,752 train / 687 validation photos), and EfficientNetB0 at 224 px on a subset (random
weights: no ImageNet weights can be downloaded here, and the speed does not depend on the
values). The targets: cached at least 5x faster than live over 10 epochs, and within 1.3x of
the floor. Writes benchmarks/results/fe_cache.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import _common


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="cached and floor: the best of these")
    ap.add_argument("--b0_images_per_class", type=int, default=80, help="EfficientNetB0 subset")
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 epoch, MobileNet on 8 photos per class"
    )
    return ap.parse_args(argv)


def fe_seconds(config, data, workdir) -> tuple[float, float]:
    """Wall time of one `fe` phase (model built outside the timing), and its last val_accuracy."""
    from tl_keras import config as config_lib
    from tl_keras.training import features
    from tl_keras.training.phase import run_phase
    from tl_keras.training.start import build_initial_model

    features._MEMORY.clear()
    model = build_initial_model(config.model, data)
    phase = config_lib.build_schedule(config)[0]
    start = time.perf_counter()
    result = run_phase(
        model, phase, data, backbone=config.backbone, progress="lines",
        feature_cache=config.feature_cache, cache_dir=workdir,
    )  # fmt: skip
    return time.perf_counter() - start, result.history.records[-1]["val_accuracy"]


def floor_seconds(config, data) -> tuple[float, float]:
    """(one pass of a fresh base over train + validation, tracing included; the same pass again).

    The first is the floor: a cached run must build and trace the base once and run it once over
    every image, so no cached run can cost less. The second, the pass alone on a traced graph.
    """
    from tl_keras.training import features
    from tl_keras.training.start import build_initial_model

    model = build_initial_model(config.model, data)
    times, extractor = [], None
    for _ in range(2):
        start = time.perf_counter()
        extractor = extractor or features.feature_extractor(model)
        extractor.predict(data.train_in_order, verbose=0)
        extractor.predict(data.val.map(lambda x, y: x), verbose=0)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def subset(src: str, dst: str, per_class: int) -> str:
    import os
    import shutil

    for name in sorted(os.listdir(src)):
        folder = os.path.join(src, name)
        if os.path.isdir(folder):
            os.makedirs(os.path.join(dst, name), exist_ok=True)
            for f in sorted(os.listdir(folder))[:per_class]:
                shutil.copy(os.path.join(folder, f), os.path.join(dst, name, f))
    return dst


def main(argv=None) -> int:
    args = parse_args(argv)
    flowers, weights = _common.flowers_or_exit()
    from tl_keras.config import Config
    from tl_keras.data.sources import load_data

    epochs = 1 if args.quick else args.epochs
    rounds = 1 if args.quick else args.rounds
    tmp = tempfile.mkdtemp(prefix="bench_fe_cache-")
    b0_data = subset(flowers, f"{tmp}/b0", 4 if args.quick else args.b0_images_per_class)
    mobilenet_data = subset(flowers, f"{tmp}/small", 8) if args.quick else flowers
    b0_size = 64 if args.quick else 224  # a smoke run only checks that everything runs
    workloads = {
        "mobilenet_0.25_128px_flowers": Config(
            data_dir=mobilenet_data, backbone="mobilenet", alpha=0.25, weights=weights, image_size=128,
            batch_size=32, epochs_fe=epochs, progress="lines",
        ),
        "efficientnet_b0_224px_subset": Config(
            data_dir=b0_data, backbone="efficientnet_b0", weights="none", image_size=b0_size,
            batch_size=32, epochs_fe=epochs, progress="lines",
        ),
    }  # fmt: skip
    if args.quick:  # a smoke run: one workload (the code path is the same for both)
        del workloads["efficientnet_b0_224px_subset"]
    rows = {}
    for name, cfg in workloads.items():
        data = load_data(cfg, workdir=tmp)
        live_s, live_acc = fe_seconds(dataclasses.replace(cfg, feature_cache="off"), data, tmp)
        # Cached and floor are a few seconds each, so a 2-core machine's noise matters: the best
        # of `rounds`, interleaved. Live is timed once (minutes; its ratio is far from the target).
        cached, floors = [], []
        for _ in range(rounds):
            cached.append(fe_seconds(dataclasses.replace(cfg, feature_cache="memory"), data, tmp))
            floors.append(floor_seconds(cfg, data))
        cached_s, cached_acc = min(cached)
        floor_s, pass_s = min(f for f, _ in floors), min(p for _, p in floors)
        rows[name] = {
            "train_images": data.num_train, "val_images": data.num_val, "epochs": epochs,
            "rounds": rounds, "live_s": round(live_s, 2), "cached_s": round(cached_s, 2),
            "floor_s": round(floor_s, 2), "pass_only_s": round(pass_s, 2),
            "cached_s_rounds": [round(c, 2) for c, _ in cached],
            "floor_s_rounds": [round(f, 2) for f, _ in floors],
            "live_over_cached": round(live_s / cached_s, 2), "cached_over_floor": round(cached_s / floor_s, 2),
            "cached_over_pass_only": round(cached_s / pass_s, 2),
            "val_accuracy_live": round(live_acc, 4), "val_accuracy_cached": round(cached_acc, 4),
        }  # fmt: skip
    path = _common.write(
        "fe_cache", {"machine": _common.machine(), "quick": args.quick, "results": rows}
    )
    print(
        "| workload | train / val | epochs | live | cached | floor (pass alone) | live ÷ cached "
        "| cached ÷ floor (÷ pass alone) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['train_images']} / {r['val_images']} | {r['epochs']} | {r['live_s']:.1f} s | "
            f"{r['cached_s']:.1f} s | {r['floor_s']:.1f} s ({r['pass_only_s']:.1f} s) | "
            f"**{r['live_over_cached']:.1f}x** | **{r['cached_over_floor']:.2f}x** "
            f"({r['cached_over_pass_only']:.2f}x) |"
        )  # fmt: skip
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
