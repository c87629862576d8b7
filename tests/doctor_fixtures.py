"""Small data sets for the doctor's command and wiring tests (a helper module, not a test file).

`noise_tree` writes an image-folder tree of distinct random-noise PNGs; `base_weights` saves a
base of the test backbone `tiny` with random weights as a local weights file, so the doctor's
feature path
(a weights file, not `weights = "none"`) runs without ../shared. Its features say nothing about
the images; the tests that use it check what the doctor does with features (cache, staleness,
limits, sampling), not what it finds in them.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

SIZE = 32
BACKBONE = "tiny"  # its features: 128 values an image


def noise_png(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def noise_tree(root, counts: dict[str, dict[str, int]] | dict[str, int], *, seed: int = 0):
    """Writes root/[<split>/]<class>/<class>_<i>.png, every image distinct noise.

    Args:
      counts: {split: {class: n}} for a train/ val/ test/ layout, or {class: n} for one tree.

    Returns:
      The root, as a pathlib.Path.
    """
    root = pathlib.Path(root)
    layout = counts if isinstance(next(iter(counts.values())), dict) else {"": counts}
    k = seed * 100_000
    for split, classes in layout.items():
        for name, n in classes.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{name}_{i}.png").write_bytes(noise_png(k))
                k += 1
    return root


def base_weights(path) -> str:
    """A `tiny` base with random weights, saved as a local weights file."""
    from tl_keras.model import backbones

    base = backbones.build_base(backbones.get(BACKBONE), image_size=SIZE, weights=None)
    base.save_weights(str(path))
    return str(path)


def flags(data_dir, weights: str = "none") -> list[str]:
    """The command-line flags of a doctor (or train) run on a noise tree at 32 px."""
    return [
        f"--data_dir={data_dir}",
        f"--backbone={BACKBONE}",
        "--alpha=1",  # over a config file's MobileNet width: tiny has none
        f"--weights={weights}",
        f"--image_size={SIZE}",
        "--batch_size=16",
    ]
