"""Images per second on this machine's device: `fe` (cached and live) and `ft`, by precision and XLA.

    python benchmarks/bench_device.py

Meant for a GPU machine (EfficientNetB0 at 224 px, float32 / mixed precision, XLA off / on);
it runs anywhere and says which device it measured. On a CPU, `mixed` means bfloat16, which
most CPUs compute no faster than float32. Each figure: steady-state training images/s over
`--steps` steps on one batch already in memory (no input cost), after a warm-up; `fe cached`
times the head on cached features plus, amortised over `--epochs`, the one pass of the base.
Writes benchmarks/results/device_<cpu|gpu>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import _common


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument("--alpha", type=float, default=1.0, help="width, for the MobileNet families")
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10, help="to amortise the cached pass")
    ap.add_argument("--train_images", type=int, default=2752, help="to amortise the cached pass")
    ap.add_argument("--quick", action="store_true")
    return ap.parse_args(argv)


def rate(model, x, y, steps: int) -> float:
    model.train_on_batch(x, y)  # trace
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * len(x) / (time.perf_counter() - start)


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    import numpy as np

    from tl_keras.model.classifier import build_model, set_trainable
    from tl_keras.training import distribute, features

    steps, size = (1, 32) if args.quick else (args.steps, args.image_size)
    # A smoke run: the test backbone `tiny` (five conv-BN layers), so XLA compiles fast.
    if args.quick:
        args.backbone, args.alpha = "tiny", 1.0
    x = np.random.default_rng(0).uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(args.batch_size) % 5, 5)
    rows = []
    # A smoke run times float32 only: bfloat16 training has its own tests (test_precision_xla).
    for precision in ("float32",) if args.quick else ("float32", "mixed"):
        for xla in (False, True):
            keras.mixed_precision.set_global_policy(distribute.precision_policy(precision))
            try:
                model = build_model(
                    args.backbone, 5, image_size=size, weights=None, alpha=args.alpha
                )
            finally:
                keras.mixed_precision.set_global_policy("float32")
            row = {"precision": distribute.precision_policy(precision), "xla": xla}
            for phase, unfreeze in (("fe_live", "none"), ("ft", "blocks:3")):
                set_trainable(model, args.backbone, unfreeze)
                model.compile(
                    keras.optimizers.Adam(1e-4), "categorical_crossentropy", jit_compile=xla
                )
                row[phase] = rate(model, x, y, steps)
            set_trainable(model, args.backbone, "none")
            head = features.head_model(model)
            head.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", jit_compile=xla)
            feats = np.asarray(features.feature_extractor(model).predict(x, verbose=0), np.float32)
            head_rate = rate(head, feats, y, steps * 5)
            extractor = features.feature_extractor(model)
            extractor.predict(x, verbose=0)
            start = time.perf_counter()
            for _ in range(steps):
                extractor.predict(x, verbose=0)
            pass_rate = steps * len(x) / (time.perf_counter() - start)
            # Per epoch: the head over the data, plus 1/epochs of one pass of the base.
            row["fe_cached"] = 1 / (1 / head_rate + 1 / (pass_rate * args.epochs))
            rows.append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()})
    device = "gpu" if _common.machine()["gpus"] else "cpu"
    path = _common.write(f"device_{device}", {"machine": _common.machine(), "backbone": args.backbone,
                                              "image_size": size, "quick": args.quick, "results": rows})  # fmt: skip
    print(
        f"{device.upper()}: {args.backbone} at {size} px, batch {args.batch_size}, training images/s"
    )
    print("| precision | XLA | fe cached | fe live | ft |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['precision']} | {'on' if r['xla'] else 'off'} | {r['fe_cached']:.0f} | {r['fe_live']:.1f} | {r['ft']:.1f} |"
        )
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
