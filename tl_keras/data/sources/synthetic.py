"""A small image-folder data set the package draws itself, so the quickstart needs no download.

Three classes of shapes (circle, square, triangle) on noisy backgrounds, with random size and
position, each class in its own typical colour with wide overlap (so both colour and shape help). Written as PNG files in class sub-folders, exactly the layout users
point the trainer at, so the quickstart exercises the real image-folder path
(`data_dir='synthetic'`: drawn into <workdir>/data/synthetic, then read as an image folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os

import numpy as np

from tl_keras import io
from tl_keras.data.bundle import RawData
from tl_keras.data.settings import DataSettings
from tl_keras.data.sources import folders
from tl_keras.errors import DataError

CLASSES = ("circle", "square", "triangle")
# Typical RGB colour of each class; each image's colour varies by up to +-70 per channel.
_CLASS_COLOURS = {"circle": (220, 90, 80), "square": (90, 200, 90), "triangle": (90, 110, 220)}
MANIFEST = "manifest.json"


def _draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.uniform(0, 90, size=3)
    img = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0, 255)
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    elif kind == "square":
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    else:  # triangle pointing up: below the two slanted edges, above the base
        top, bottom = cy - r, cy + r * 0.8
        half_width = (yy - top) / (bottom - top) * r
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)
    colour = np.clip(np.asarray(_CLASS_COLOURS[kind]) + rng.uniform(-70, 70, size=3), 0, 255)
    img[mask] = np.clip(colour + rng.normal(0, 10, size=(int(mask.sum()), 3)), 0, 255)
    return img.astype(np.uint8)


def make_shapes(
    out_dir: str, *, images_per_class: int = 60, image_size: int = 64, seed: int = 0
) -> str:
    """Writes the shapes data set to `out_dir` (once; reused when already complete).

    Args:
      out_dir: folder to create; gets one sub-folder per class.
      images_per_class: PNG files per class.
      image_size: side of each square image in pixels.
      seed: drawing seed; the same arguments always give the same files.

    Returns:
      `out_dir`, ready to pass as `data_dir`.
    """
    import tensorflow as tf

    wanted = {
        "classes": list(CLASSES),
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
    }
    manifest = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f, contextlib.suppress(ValueError):
            if json.load(f) == wanted:  # a damaged manifest: the images are drawn again
                return out_dir
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        folder = os.path.join(out_dir, kind)
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, f"{kind}_*.png")):  # from other arguments
            os.unlink(stale)
        for i in range(images_per_class):
            png = tf.io.encode_png(_draw(kind, image_size, rng)).numpy()
            with (
                io.atomic_path(os.path.join(folder, f"{kind}_{i:04d}.png")) as tmp,
                open(tmp, "wb") as f,
            ):
                f.write(png)
    # Written last: its presence means every image above is complete.
    io.atomic_write_json(manifest, wanted)
    return out_dir


def source(settings: DataSettings, workdir: str | None = None) -> RawData:
    """The shapes as a source: drawn into <workdir>/data/synthetic (once), read as a folder.

    Raises:
      DataError: no workdir to draw into.
    """
    if workdir is None:
        raise DataError("data_dir='synthetic' needs a workdir to draw the images into")
    root = make_shapes(
        os.path.join(workdir, "data", "synthetic"),
        images_per_class=settings.synthetic_images_per_class,
        seed=settings.seed,
    )
    return folders.source(dataclasses.replace(settings, data_dir=root))
