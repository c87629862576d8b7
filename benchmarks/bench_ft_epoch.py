"""Where a fine-tuning epoch's seconds go, and what the frozen bottom computed once saves in
training and in validation.

    python benchmarks/bench_ft_epoch.py                 # Lite0, flowers at 128 px, blocks:9
    python benchmarks/bench_ft_epoch.py --quick         # tiny base, synthetic images (the suite)

On the decided recipe's fine-tuning set-up (EfficientNet-Lite0 with its converted ImageNet
weights, bench_recipe's `user` split of the shared flowers at 128 px, the top 9 blocks
unfrozen), in one process, each piece `--repeats` times, alternating:

* **validation, Keras**: `model.evaluate` over the validation split, the pass `fit` runs after
  every epoch (the first call, which traces, reported apart);
* **validation, frozen bottom once**: `tl_keras.training.frozen_val`: the frozen blocks' pass
  over the validation images (once a phase), then each epoch the trainable top on its outputs;
  and the largest difference between the two arms' metrics;
* **input pipeline**: one training epoch's batches (decoded, resized, augmented `light`) read
  without a model, and the same without augmentation (decoding alone);
* **checkpoint**: one `model.save` of the whole model with its optimizer state;
* **training steps**: Keras's `fit` over 20 training batches of the whole model, the same
  batches as the trainable top on the frozen bottom's outputs (`tl_keras.training.bottom_views`),
  and the bottom's pass over one epoch's augmented images; from them, an epoch on the views
  (the pass plus the top's steps) as a fraction of Keras's epoch.

Wall and process CPU seconds (CPU: both cores; the machine is shared, so CPU-s are the steadier
figure). Writes benchmarks/results/ft_epoch.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import _common


def timed(fn):
    """(result, wall s, process CPU s) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def set_up(quick: bool, root: str, unfreeze: str):
    """The checked config, data and model of the fine-tuning phase (trainability set)."""
    from tl_keras import config as config_lib
    from tl_keras.data import sources
    from tl_keras.model.classifier import set_trainable

    if quick:
        config = _common.tiny_config(augment="light")
    else:
        import bench_recipe

        config = bench_recipe.flowers_config(root, augment="light")
    checked = config_lib.check(config)
    data = sources.load(checked.data, workdir=root)
    model = checked.model.build(data.num_classes)
    set_trainable(model, checked.model.backbone, unfreeze)
    return checked, data, model


def _training_pieces(model, train, steps: int):
    """Training steps three ways: Keras's `fit` over `steps` batches of the whole model; the
    same batches as the trainable top on the frozen bottom's outputs
    (`tl_keras.training.bottom_views`); the bottom's pass over one epoch's augmented images."""
    import numpy as np
    import tensorflow as tf

    from tl_keras.model.forward import forward
    from tl_keras.recipe import Phase
    from tl_keras.training import frozen_val, optim

    bottom, top = frozen_val.split(model)
    optim.compile_for_phase(top, Phase("ft", "none", 1, 1e-4), jit_compile="off")
    step = tf.function(bottom, autograph=False)
    batches = list(train.train_epochs(0, 1).take(steps))
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    size = len(batches[0][0])
    outputs = np.concatenate([np.asarray(step(b[0])) for b in batches])
    images = tf.data.Dataset.from_tensor_slices((x, y)).batch(size)
    views = tf.data.Dataset.from_tensor_slices((outputs, y)).batch(size)
    return (
        lambda: model.fit(images, epochs=1, verbose=0) and None,
        lambda: top.fit(views, epochs=1, verbose=0) and None,
        lambda: sum(len(r) for _, r in forward(step, train.make_train_epoch(tf.constant(0)))),
    )


def measure(checked, data, model, repeats: int, root: str, steps: int = 20) -> dict:
    """Each piece's wall and CPU seconds: the first call and the median of the rest."""
    from tl_keras.recipe import Phase
    from tl_keras.training import frozen_val, optim

    optim.compile_for_phase(model, Phase("ft", "none", 1, 1e-4), jit_compile="off")
    model.optimizer.build(model.trainable_variables)  # a checkpoint carries its moments
    shortcut = frozen_val.for_phase(
        model,
        data.val,
        num_val=data.num_val,
        compile_top=lambda top: optim.compile_for_evaluation(top, jit_compile="off"),
    )
    train = data.for_training(checked.given.augmentation)
    plain = data.for_training(checked.given.augmentation.unaugmented)
    logs: dict = {}
    keras_steps, top_steps, bottom_pass = _training_pieces(model, train, steps)
    pieces = {
        "train_steps_keras": keras_steps,
        "train_steps_top_on_views": top_steps,
        "bottom_pass_one_epoch": bottom_pass,
        "val_keras": lambda: model.evaluate(data.val, verbose=0, return_dict=True),
        "val_frozen_bottom": lambda: shortcut.on_epoch_end(0, logs) or dict(logs),
        "input_augmented": lambda: sum(len(x) for x, _ in train.train_epochs(0, 1)),
        "input_decode_only": lambda: sum(len(x) for x, _ in plain.train_epochs(0, 1)),
        "checkpoint_save": lambda: model.save(os.path.join(root, "ckpt.keras")),
    }
    times: dict[str, list] = {k: [] for k in pieces}
    results = {}
    for _ in range(repeats + 1):  # the first round traces (the bottom's pass, for the shortcut)
        for name, fn in pieces.items():
            results[name], wall, cpu = timed(fn)
            times[name].append((round(wall, 3), round(cpu, 3)))
    out = {}
    for name, rows in times.items():
        rest = rows[1:]
        out[name] = {
            "first": {"wall_s": rows[0][0], "cpu_s": rows[0][1]},
            "median": {
                "wall_s": statistics.median(r[0] for r in rest),
                "cpu_s": statistics.median(r[1] for r in rest),
            },
        }
    keras_val, frozen = results["val_keras"], results["val_frozen_bottom"]
    out["metrics_max_abs_difference"] = max(
        abs(keras_val[k] - frozen[f"val_{k}"]) for k in keras_val
    )
    med = {k: v["median"]["cpu_s"] for k, v in out.items() if isinstance(v, dict)}
    out["top_step_over_keras_cpu"] = round(
        med["train_steps_top_on_views"] / med["train_steps_keras"], 3
    )
    # One epoch: Keras's steps over the whole model, against the bottom's pass plus the top's
    # steps (the same number of steps, scaled from the `steps` timed).
    per_epoch = data.steps_per_epoch / steps
    out["epoch_views_over_keras_cpu"] = round(
        (med["bottom_pass_one_epoch"] + per_epoch * med["train_steps_top_on_views"])
        / (per_epoch * med["train_steps_keras"]),
        3,
    )
    out["val_frozen_over_keras_cpu"] = round(
        out["val_frozen_bottom"]["median"]["cpu_s"] / out["val_keras"]["median"]["cpu_s"], 3
    )
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny base, synthetic images")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each piece")
    ap.add_argument("--unfreeze", default="blocks:9", help="what the phase trains")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    unfreeze = "blocks:2" if args.quick else args.unfreeze
    with tempfile.TemporaryDirectory(prefix="bench-ft-epoch-") as root:
        checked, data, model = set_up(args.quick, root, unfreeze)
        result = measure(checked, data, model, repeats, root, steps=2 if args.quick else 20)
    for name, row in result.items():
        if isinstance(row, dict):
            first, median = row["first"], row["median"]
            print(
                f"{name:20s} first {first['wall_s']:6.2f} s ({first['cpu_s']:6.2f} CPU-s); then "
                f"{median['wall_s']:6.2f} s ({median['cpu_s']:6.2f} CPU-s)"
            )
    print(
        f"training on the views / Keras's: a step {result['top_step_over_keras_cpu']} of the "
        f"CPU-s; an epoch with the bottom's pass {result['epoch_views_over_keras_cpu']}"
    )
    print(
        f"frozen-bottom validation / Keras's: {result['val_frozen_over_keras_cpu']} of the CPU-s; "
        f"metrics differ by at most {result['metrics_max_abs_difference']:.2e}"
    )
    payload = {
        "machine": _common.machine(),
        "quick": args.quick,
        "unfreeze": unfreeze,
        "num_val": data.num_val,
        "num_train": data.num_train,
        "results": result,
    }
    path = _common.write("ft_epoch_quick" if args.quick else "ft_epoch", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
