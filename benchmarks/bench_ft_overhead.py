"""Fine-tuning throughput: tl_keras's runner vs a hand-written `model.fit`, side by side.

    python benchmarks/bench_ft_overhead.py

The identical model (MobileNet-0.25, the shared ImageNet weights, 128 px, the top 4 blocks
unfrozen, BatchNorm frozen), data (the shared flowers, the same `DataBundle`) and batch size,
trained for a few epochs two ways:

* **plain**: `model.compile(Adam)` + `model.fit(...)`, what a user would write by hand;
* **runner**: `tl_keras.training.phase.run_phase`, with everything a real run has: the history recorder,
  the NaN guard, the epoch logger and a checkpoint written after every epoch.

Steady-state throughput = training images per second over the steps of epochs 2.. (the first
epoch traces the graph), measured by a callback in both, so per-step overhead shows; the
epoch wall time (checkpoints included) is reported beside it. The rounds alternate (plain,
runner, plain, runner, ...) and the best of each counts. The target: runner / plain >= 0.97.
Writes benchmarks/results/ft_overhead.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import _common


class StepTimer:
    """Times the training steps of every epoch after the first (a Keras callback)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.step_seconds, self.epoch_seconds, self._epoch = 0.0, [], 0

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch_start, self._first = time.perf_counter(), self._epoch == 0

            def on_train_batch_begin(self, batch, logs=None):
                self._t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if not self._first:
                    self.step_seconds += time.perf_counter() - self._t

            def on_epoch_end(self, epoch, logs=None):
                if not self._first:
                    self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
                self._epoch += 1

        return _Timer()


QUICK_BASE = {"backbone": "tiny", "alpha": 1.0, "weights": "none"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="per round; the first is not timed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images_per_class", type=int, default=200, help="a subset of the flowers")
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run: the test backbone at 32 px, 2 epochs"
    )
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    flowers, weights = _common.flowers_or_exit()
    import keras
    from bench_fe_cache import subset

    from tl_keras.config import Config
    from tl_keras.data.sources import load_data
    from tl_keras.model.classifier import set_trainable
    from tl_keras.recipe import Phase
    from tl_keras.training import start
    from tl_keras.training.phase import run_phase

    epochs, rounds = (2, 1) if args.quick else (args.epochs, args.rounds)
    # A smoke run: the test backbone `tiny` (random weights) at 32 px, the same two ways of
    # training; MobileNet's traced fine-tuning step was most of its time.
    base = QUICK_BASE if args.quick else dict(backbone="mobilenet", alpha=0.25, weights=weights)
    backbone = base["backbone"]
    tmp = tempfile.mkdtemp(prefix="bench_ft-")
    cfg = Config(
        data_dir=subset(flowers, f"{tmp}/data", 20 if args.quick else args.images_per_class),
        **base, image_size=32 if args.quick else 128, batch_size=32, val_fraction=0.2,
    )  # fmt: skip
    data = load_data(cfg, workdir=tmp)
    lr, unfreeze = 1e-4, "blocks:4"
    results = {"plain": [], "runner": []}
    for _ in range(rounds):
        for how in ("plain", "runner"):
            keras.utils.set_random_seed(0)
            model = start.build_initial_model(cfg.model, data)
            timer = StepTimer()
            if how == "plain":
                set_trainable(model, backbone, unfreeze)
                model.compile(
                    keras.optimizers.Adam(lr), "categorical_crossentropy", metrics=["accuracy"]
                )
                model.fit(
                    data.train_epochs(0, epochs), validation_data=data.val, epochs=epochs,
                    steps_per_epoch=data.steps_per_epoch, callbacks=[timer], verbose=0,
                )  # fmt: skip
            else:
                workdir = f"{tmp}/run"
                run_phase(
                    model, Phase("ft", unfreeze, epochs, lr), data, backbone=backbone,
                    callbacks=[timer], progress="lines", checkpoint_dir=workdir,
                )  # fmt: skip
                shutil.rmtree(workdir, ignore_errors=True)
            timed_images = data.num_train * (epochs - 1)
            results[how].append(
                {
                    "images_per_s": timed_images / timer.step_seconds,
                    "epoch_s": min(timer.epoch_seconds),
                }
            )
    best = {how: max(r, key=lambda x: x["images_per_s"]) for how, r in results.items()}
    ratio = best["runner"]["images_per_s"] / best["plain"]["images_per_s"]
    epoch_ratio = best["plain"]["epoch_s"] / best["runner"]["epoch_s"]
    payload = {
        "machine": _common.machine(), "quick": args.quick, "train_images": data.num_train,
        "epochs": epochs, "rounds": rounds, "results": results, "best": best,
        "runner_over_plain_steps": round(ratio, 3), "runner_over_plain_epochs": round(epoch_ratio, 3),
    }  # fmt: skip
    path = _common.write("ft_overhead", payload)
    print("| | steady-state images/s | epoch wall time (checkpoint included) |")
    print("|---|---|---|")
    for how in ("plain", "runner"):
        print(f"| {how} | {best[how]['images_per_s']:.1f} | {best[how]['epoch_s']:.2f} s |")
    print(f"| **runner ÷ plain** | **{ratio:.3f}** | **{epoch_ratio:.3f}** |")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
