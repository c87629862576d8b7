"""The planted-defect sets of `bench_doctor.py`, and their features computed once per run.

Two sources: ../shared's flower photos, and scikit-learn's handwritten digits (8 x 8 grey,
1,797 images, 10 classes) written as 32 px RGB PNGs, as `bench_recipe.py` writes them. Each seed
samples `per_class` images of every class and plants defects in memory (tests/doctor_photos.py:
exact and re-encoded copies, half of them across train / val; moved images; three images of no
subject at all).

The features are the package's: every distinct image of every seed is written once to an
image-folder tree, loaded by `tl_keras.data` and passed through the frozen base by the doctor's
own `image_features` (features and 16 px thumbnails, at the config's size and resize settings).
An image's features depend only on its content, so each seed's rows are looked up by content
hash: Lite0 (about 5x MobileNet-0.25's cost per image) pays one pass for 8 or 16 seeds.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys

import _common
import numpy as np

sys.path.insert(0, str(_common.REPO / "tests"))  # the photo and planting helper lives with tests

import doctor_photos as photos_lib  # noqa: E402

PLANTED = {"exact": 8, "resized": 18, "flips": 12, "outliers": 3}
DIGIT_PX = 32  # the digits' PNG size (bench_recipe.py's)
SIZES = {"flowers": 128, "digits": 64}  # px the base reads: the photos' size; bench_recipe's


def digit_tree(folder: str, limit: int | None = None) -> str:
    """Writes scikit-learn's digits as 32 px RGB PNGs in class folders (once); returns the root."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if limit is not None and i >= limit:
            break
        path = os.path.join(folder, str(label), f"{i:04d}.png")
        if os.path.isfile(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = (image / 16.0 * 255.0).round().astype(np.uint8)
        Image.fromarray(pixels).resize((DIGIT_PX,) * 2, Image.BILINEAR).convert("RGB").save(path)
    return folder


def planted_sets(root: str, seeds, per_class: int, *, exclude=frozenset()) -> list:
    """One `doctor_photos.Photos` per seed: `per_class` images of each class, defects planted."""
    classes = photos_lib.class_files(root)
    out = []
    for seed in seeds:
        photos = photos_lib.sample(
            root, dict.fromkeys(classes, per_class), seed=seed, exclude=exclude
        )
        out.append(photos_lib.plant(photos, **PLANTED, seed=seed))
    return out


def _suffix(data: bytes) -> str:
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"


def feature_store(images: list[bytes], *, scratch: str, config_fields: dict) -> dict:
    """Features and thumbnails of every distinct image, by the package's doctor feature pass.

    Args:
      images: encoded images (duplicates allowed; each distinct content is passed once).
      scratch: a folder for the tree and the doctor's cache.
      config_fields: the `Config` fields naming the base (backbone, alpha, weights, image_size).

    Returns:
      {'row': content hash -> row, 'features': N x D, 'thumbnails': N x 256, 'seconds'}.
    """
    import time

    from tl_keras import config as config_lib
    from tl_keras.data import sources
    from tl_keras.doctor import workflow

    distinct = {hashlib.sha256(d).hexdigest(): d for d in images}
    root = pathlib.Path(scratch) / "pool"
    for k, (digest, data) in enumerate(sorted(distinct.items())):
        split = "val" if k % 5 == 0 else "train"  # any split: rows are found by content
        target = root / split / f"c{k % 2}" / f"{digest}{_suffix(data)}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    spec = config_lib.check(config_lib.Config(data_dir=str(root), batch_size=64, **config_fields))
    data = sources.load(spec.data)
    model = spec.model.build(data.num_classes)
    start = time.perf_counter()
    listed = workflow.list_images(data)
    feats, _ = workflow.image_features(
        model, data, listed, folder=os.path.join(scratch, "doctor"), spec=spec
    )
    seconds = time.perf_counter() - start
    import keras

    keras.backend.clear_session()
    return {
        "row": {h: i for i, h in enumerate(listed.hashes)},
        "features": feats["features"],
        "thumbnails": feats["thumbnails"],
        "seconds": round(seconds, 2),
        "image_size": spec.model.image_size,
    }


def seed_arrays(photos, store: dict) -> tuple[np.ndarray, np.ndarray]:
    """A planted set's features and thumbnails, in its own order, from the store."""
    rows = [store["row"][h] for h in photos.hashes]
    return store["features"][rows], store["thumbnails"][rows]
