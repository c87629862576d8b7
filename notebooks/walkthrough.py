"""The set-up every walkthrough opens with (its parameters, which weights and photos it uses),
and the two small helpers several of them share.

    from walkthrough import setup
    env = setup()          # prints where tl_keras comes from, the mode, the weights, the photos

The parameters come from the environment (`notebooks/run.py` sets them; in Jupyter, set none):

  TL_KERAS_TINY=1      small data, small images, one or two epochs: how the test suite runs them
  TL_KERAS_RUNS=DIR    where the workdirs go (default ../runs/notebooks)
  TL_KERAS_SHARED=DIR  the shared ImageNet weights and flower photos (default ../../shared)
  TL_KERAS_OFFLINE=1   never try to download the ImageNet weights

The weights, first that works: ImageNet weights from Keras (`weights="imagenet"`: already in
Keras's cache, or downloaded now); the shared copy of the same ImageNet file (offline); random
weights. The photos: the shared flowers, else shapes the package draws. Both choices are
printed, so every rendered output says what it was made with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
from pathlib import Path

BACKBONE, ALPHA = "mobilenet", 0.25  # the one backbone with shared ImageNet weights
SHARED_WEIGHTS = "mobilenet_1_0.25_224_imagenet_notop.weights.h5"
KERAS_FILE = "mobilenet_2_5_224_tf_no_top.h5"  # what Keras downloads for weights="imagenet"
DOWNLOAD_HOST = "storage.googleapis.com"


@dataclasses.dataclass(frozen=True)
class Walkthrough:
    """What a walkthrough runs with.

    Attributes:
      tiny: the small, fast mode of the test suite.
      runs: the folder for its workdirs.
      weights: what `Config(weights=...)` gets: 'imagenet', the shared file's path, or 'none'.
      pretrained: whether `weights` are ImageNet's (either way of getting them).
      flowers: the shared flower photos (5 classes), or None.
    """

    tiny: bool
    runs: Path
    weights: str
    pretrained: bool
    flowers: Path | None

    @property
    def real(self) -> bool:
        """Pretrained weights and real photos, at full size: the numbers mean something."""
        return self.pretrained and self.flowers is not None and not self.tiny


def _imagenet_reachable(timeout_s: float = 3.0) -> bool:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if (keras_home / "models" / KERAS_FILE).is_file():
        return True  # downloaded before: no network needed
    if os.environ.get("TL_KERAS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((DOWNLOAD_HOST, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def pick_weights(shared: Path) -> tuple[str, str]:
    """('imagenet' | the shared file | 'none', a sentence saying which and why)."""
    if _imagenet_reachable():
        from tl_keras.errors import BackboneError
        from tl_keras.model import backbones

        spec = backbones.get(BACKBONE)
        try:  # downloads once into Keras's cache; a failure falls through to the shared file
            backbones.build_base(spec, image_size=32, weights="imagenet", alpha=ALPHA)
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


def setup() -> Walkthrough:
    """Reads the parameters, chooses weights and photos, and says which (printed)."""
    import tl_keras

    # TensorFlow warns about "retracing" whenever a notebook trains several models in one
    # process (notebooks 4, 7, 8, 9 train up to six): harmless here, and noise for a reader.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    tiny = os.environ.get("TL_KERAS_TINY", "0") == "1"
    runs = Path(os.environ.get("TL_KERAS_RUNS", "../runs/notebooks"))
    shared = Path(os.environ.get("TL_KERAS_SHARED", "../../shared"))
    weights, why = pick_weights(shared)
    flowers = shared / "data" / "flowers5"
    found = flowers.is_dir()
    package = os.path.relpath(Path(tl_keras.__file__).resolve().parents[1])
    print(f"tl_keras from {package}" + (" (this checkout)" if package == ".." else ""))
    print(f"mode: {'tiny (TL_KERAS_TINY=1: the test suite)' if tiny else 'full size'}")
    print(f"weights: {why}")
    print(
        "photos: the shared flowers (5 classes)"
        if found
        else "photos: no shared flowers: the package's synthetic shapes stand in"
    )
    return Walkthrough(tiny, runs, weights, weights != "none", flowers if found else None)


def photo_subset(flowers: Path, root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """A smaller image-folder tree of the shared flowers, made of symbolic links.

    Args:
      flowers: the shared flowers (one folder per class).
      root: where the tree goes.
      per_class: photos per class in each split, e.g. {"train": 100, "val": 100}; a single
        split named "" makes a plain class tree (no split folders). Splits never share a photo.
      seed: which photos.

    Returns:
      `root`, e.g. `root/train/daisy/...` and `root/val/daisy/...`.
    """
    for class_dir in sorted(p for p in flowers.iterdir() if p.is_dir()):
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
