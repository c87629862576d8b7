"""Tiny image folders, arrays and configs for the data tests (a helper module, not a test file).

Each class's images have their own solid colour (class k: red = COLOUR_STEP * k + 20), so a test
can tell from the pixels which class an image came from and check that labels follow images.
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image

COLOUR_STEP = 60


def class_colour(k: int) -> tuple[int, int, int]:
    return (COLOUR_STEP * k + 20, 100, 200 - 40 * k)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def solid(k: int, size=(24, 24)) -> np.ndarray:
    out = np.zeros((*size, 3), np.uint8)
    out[...] = class_colour(k)
    return out


def make_folder(
    root: os.PathLike | str,
    classes: dict[str, int] | list[str] | None = None,
    *,
    size=(24, 24),
    fmt: str = "PNG",
) -> pathlib.Path:
    """Writes root/<class>/<class>_<i>.<ext>: solid images in each class's colour."""
    root = pathlib.Path(root)
    if classes is None:
        classes = {"ant": 6, "bee": 6, "cat": 6}
    if isinstance(classes, list):
        classes = dict.fromkeys(classes, 6)
    ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif"}[fmt]
    for k, (name, n) in enumerate(sorted(classes.items())):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{name}_{i:02d}.{ext}").write_bytes(encode(solid(k, size), fmt))
    return root


def tiny_data_config(data_dir, **overrides):
    """A config for loading data only: 32 px, batches of 4, MobileNet-0.25 (its default size)."""
    from tl_keras.config import Config

    values = dict(
        data_dir=str(data_dir),
        backbone="mobilenet",
        alpha=0.25,
        weights="none",
        image_size=32,
        batch_size=4,
        val_fraction=0.34,
    )
    values.update(overrides)
    return Config(**values)


def batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds]


def label_of_pixels(images: np.ndarray) -> np.ndarray:
    """The class whose colour each (unaugmented) image has, from its mean red value."""
    red = images[..., 0].mean(axis=(1, 2))
    return np.rint((red - 20) / COLOUR_STEP).astype(int)
