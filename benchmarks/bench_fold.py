"""The frozen passes' speed with BatchNorm folded into the convolutions, against Keras's call.

    python benchmarks/bench_fold.py            # Lite0 and MobileNet-0.25 at 128 px, batch 32
    python benchmarks/bench_fold.py --quick    # the suite's smoke: the `tiny` base at 32 px

`tl_keras.model.forward(..., fold_batchnorm=True)` (the cached features' pass, the frozen
bottom's) against the same model called as `model(x, training=False)`, both through the one
traced function `forward` keeps: for each base, on one batch of random pixels already in
memory, passes of `--batches` batches (each pass folds the variables once, as a real pass does)
alternate `--rounds` times, `--calls` passes a round, so both see the same machine; each figure
is the median round's milliseconds a batch. Also the largest difference
between the two outputs, relative to the largest output. Random weights (the speed of a
convolution does not depend on its values) with BatchNorm statistics set away from 0 / 1.
Writes benchmarks/results/fold[_quick].json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import _common

BASES = {  # name -> (backbone, alpha)
    "efficientnet_lite0": ("efficientnet_lite0", 1.0),
    "mobilenet_025": ("mobilenet", 0.25),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=2, help="passes a round")
    ap.add_argument("--batches", type=int, default=8, help="batches a pass")
    ap.add_argument("--quick", action="store_true")
    return ap.parse_args(argv)


def _statistics(model, rng) -> None:
    import keras

    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, n))


def measure(model, x, rounds: int, calls: int, batches: int) -> dict:
    import numpy as np

    from tl_keras.model import forward as forward_lib

    def once(fold: bool):  # a pass over `batches` batches, as a feature pass makes them
        return [out for _, out in forward_lib.forward(model, [x] * batches, fold_batchnorm=fold)]

    keras_out, folded_out = once(False)[0], once(True)[0]  # traces both
    times = {"keras_ms": [], "folded_ms": []}
    for _ in range(rounds):
        for key, fold in (("keras_ms", False), ("folded_ms", True)):
            start = time.perf_counter()
            for _ in range(calls):
                once(fold)
            times[key].append((time.perf_counter() - start) / (calls * batches) * 1e3)
    out = {k: round(float(np.median(v)), 2) for k, v in times.items()}
    out["folded_over_keras"] = round(out["folded_ms"] / out["keras_ms"], 3)
    scale = float(np.abs(keras_out).max()) or 1.0
    out["max_relative_difference"] = float(np.abs(folded_out - keras_out).max() / scale)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from tl_keras.model.classifier import build_model

    size, bases = args.image_size, BASES
    if args.quick:
        size, bases, args.rounds, args.calls, args.batches = 32, {"tiny": ("tiny", 1.0)}, 2, 1, 2
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32")
    results = {}
    for name, (backbone, alpha) in bases.items():
        model = build_model(backbone, 5, image_size=size, weights=None, alpha=alpha)
        _statistics(model, rng)
        results[name] = measure(model, x, args.rounds, args.calls, args.batches)
    payload = {
        "machine": _common.machine(),
        "image_size": size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "passes_per_round": args.calls,
        "batches_per_pass": args.batches,
        "results": results,
    }
    path = _common.write("fold_quick" if args.quick else "fold", payload)
    print(f"| base ({size} px, batch {args.batch_size}) | Keras ms | folded ms | folded ÷ Keras |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['keras_ms']} | {r['folded_ms']} | {r['folded_over_keras']} |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
