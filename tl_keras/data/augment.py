"""Training-only augmentation: presets by name, MixUp / CutMix, label smoothing.

Every random draw here is a pure function of a key, a shape-[2] integer seed tensor that the data
layer derives from (seed, global epoch, example or batch index). Nothing keeps state between
calls, so the augmented batches of an epoch are the same in every process, whichever epoch a
phase or a resumed run starts from, and the work can run in parallel `tf.data` maps.

* `light`: flip, rotation, zoom and contrast drawn with `tf.random.stateless_*`, one fused
  affine warp per image.
* `strong`: a horizontal flip, then RandAugment with the ops and magnitudes of
  `keras.layers.RandAugment` (its 11 core sub-layers), two ops per image.
* MixUp and CutMix: the core `keras.layers.MixUp` / `keras.layers.CutMix`, per batch.

Keras random layers draw their seeds from a `SeedGenerator`, a variable that advances on every
call; a pipeline using them as they are gives different batches after a restart. Here each core
layer draws from `FoldInSeeds` instead: a SeedGenerator with no state whose n-th draw is
`fold_in(key, n)` for the key of the current image or batch (`tests/test_augment.py` checks that
the layers' own generators never advance, so a Keras change that bypasses this fails loudly).

This module imports TensorFlow only when a preset is built, so `tl_keras.config` can check
preset names in milliseconds.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from tl_keras.errors import ConfigError, did_you_mean

log = logging.getLogger("tl_keras")

# `light`: the largest rotation (degrees), zoom (fraction of the side) and contrast change.
# The pipeline settings that only shape training batches (validation and test never see them).
TRAINING_ONLY = ("augment", "mixup", "cutmix", "label_smoothing")

LIGHT_ROTATION_DEG = 15.0
LIGHT_ZOOM = 0.10
LIGHT_CONTRAST = 0.20
# Nearest-neighbour sampling for light's warp, as torchvision's RandomRotation / RandomAffine do
# by default: TF's bilinear warp kernel is several times slower on CPU, enough to make the input
# pipeline the bottleneck of MobileNet-0.25 at 128 px on 2 cores (benchmarks/bench_input.py).
# The nearest warp itself runs as one gather of whole pixels (`affine`'s NEAREST path): the
# same output as TF's ImageProjectiveTransformV3 kernel, about 1.7x faster at 224 px on CPU.
LIGHT_INTERPOLATION = "NEAREST"
# `strong`: RandAugment ops per image and their magnitude (keras.layers.RandAugment defaults).
STRONG_NUM_OPS = 2
STRONG_FACTOR = 0.5

ExampleFn = Callable[[Any, Any], Any]  # (uint8 HxWx3 image, key) -> float32 image in 0..255
BatchFn = Callable[[Any, Any, Any], tuple[Any, Any]]  # (images, one-hot labels, key) -> both


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named augmentation preset.

    Attributes:
      name: the name users type (`--augment=light`).
      description: one line for the README and the logs.
      build: image size -> a per-image function `(uint8 image, key) -> float32 image`, or None
        for no change.
    """

    name: str
    description: str
    build: Callable[[int], ExampleFn | None]


def _none(image_size: int) -> None:
    return None


def _light(image_size: int) -> ExampleFn:
    import tensorflow as tf

    max_angle = math.radians(LIGHT_ROTATION_DEG)

    def augment(image, key):
        # One draw for the four parameters, one warp on the uint8 image, one contrast op: at
        # these image sizes the per-op overhead, not the arithmetic, is what costs.
        u = 2.0 * tf.random.stateless_uniform([4], key) - 1.0  # uniform in [-1, 1)
        image = affine(
            image,
            angle=u[1] * max_angle,
            zoom=1.0 + u[2] * LIGHT_ZOOM,
            flip=tf.where(u[0] < 0.0, -1.0, 1.0),
            interpolation=LIGHT_INTERPOLATION,
        )
        image = tf.image.adjust_contrast(tf.cast(image, tf.float32), 1.0 + u[3] * LIGHT_CONTRAST)
        return tf.clip_by_value(image, 0.0, 255.0)

    return tf.function(augment, autograph=False)


def affine(image, *, angle, zoom, flip, interpolation: str = "BILINEAR"):
    """Rotates (radians), zooms (>1 = in) and mirrors (flip=-1) an image about its centre.

    One warp with reflected borders (the fill of `keras.layers.RandomRotation` / `RandomZoom`)
    instead of three; `interpolation` is 'BILINEAR' or 'NEAREST'. An image of static height and
    width takes the NEAREST path as one gather of whole pixels, with the kernel's result.
    """
    import tensorflow as tf

    h, w = image.shape[0], image.shape[1]
    static = h is not None and w is not None
    if not static:
        h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    # Output pixel p maps to input pixel c + R(angle) F (p - c) / zoom: F mirrors x when flip=-1.
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    a2, b2 = cx - a0 * cx - a1 * cy, cy - b0 * cx - b1 * cy
    if interpolation == "NEAREST" and static:
        return _nearest_warp(image, (a0, a1, a2, b0, b1, b2))
    transform = tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="REFLECT",
    )[0]
    return tf.ensure_shape(out, image.shape)


def _nearest_warp(image, coefficients):
    """The NEAREST / REFLECT projective warp as one gather: output pixel (x, y) reads input pixel
    (round(a0 x + a1 y + a2), round(b0 x + b1 y + b2)), mirrored back inside the image.

    ImageProjectiveTransformV3 computes every channel of every pixel through a general sampler;
    this computes each pixel's source once and copies whole pixels. Rounding half away from zero
    and reflecting the rounded index gives the kernel's result (`tests/test_augment.py` compares
    them over random transforms).
    """
    import numpy as np
    import tensorflow as tf

    h, w = int(image.shape[0]), int(image.shape[1])
    ys, xs = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    xs, ys = tf.constant(xs.ravel()), tf.constant(ys.ravel())
    a0, a1, a2, b0, b1, b2 = coefficients

    def source(coord, size):
        coord = tf.sign(coord) * tf.floor(tf.abs(coord) + 0.5)  # std::round, as the kernel
        coord = tf.math.floormod(coord, 2.0 * size)  # reflect: ... d c b a | a b c d | d c ...
        return tf.cast(tf.where(coord >= size, 2.0 * size - 1.0 - coord, coord), tf.int32)

    index = source(b0 * xs + b1 * ys + b2, h) * w + source(a0 * xs + a1 * ys + a2, w)
    pixels = tf.reshape(image, [h * w, -1])
    return tf.reshape(tf.gather(pixels, index), image.shape)


@functools.cache
def fold_in_seeds_class() -> type:
    """Returns the `FoldInSeeds` class (defined lazily: it subclasses a Keras class)."""
    import keras
    import tensorflow as tf

    class FoldInSeeds(keras.random.SeedGenerator):
        """A `SeedGenerator` without state: after `reset(key)`, draw n is `fold_in(key, n)`.

        Keras layers call `next()` while their graph is traced; each call site gets its own
        constant n, so the traced function is a pure function of the key fed at run time.
        """

        def __init__(self):  # no super().__init__(): there is no state variable to advance
            self.name = "fold_in_seeds"
            self._key = None
            self._count = 0

        def reset(self, key) -> None:
            self._key, self._count = key, 0

        def next(self, ordered=True):
            if self._key is None:
                raise RuntimeError("FoldInSeeds.reset(key) must be called before drawing")
            self._count += 1
            return tf.random.experimental.stateless_fold_in(self._key, self._count)

        def get_config(self):
            return {"name": self.name}

    return FoldInSeeds


def seeded(layer, seeds) -> Any:
    """Makes a Keras preprocessing layer draw its randomness from `seeds` (a FoldInSeeds)."""
    layer._get_seed_generator = lambda backend=None: seeds
    return layer


def rand_augment_ops(seeds, *, num_ops: int = STRONG_NUM_OPS, factor: float = STRONG_FACTOR):
    """The sub-layers of a `keras.layers.RandAugment`, in its order, drawing from `seeds`."""
    import keras

    ra = keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=factor)
    return [seeded(getattr(ra, name), seeds) for name in type(ra)._AUGMENT_LAYERS]


def _strong(image_size: int) -> ExampleFn:
    import tensorflow as tf

    seeds = fold_in_seeds_class()()
    ops = rand_augment_ops(seeds)

    def augment(image, key):
        image = tf.cast(image, tf.float32)
        flip_key, ops_key, magnitude_key = (
            tf.random.experimental.stateless_fold_in(key, j) for j in range(3)
        )
        flip = tf.random.stateless_uniform([], flip_key) < 0.5
        image = tf.where(flip, tf.reverse(image, axis=[1]), image)
        chosen = tf.random.stateless_uniform([STRONG_NUM_OPS], ops_key, 0, len(ops), dtype=tf.int32)

        def apply_op(j, image):
            # keras.layers.RandAugment computes all 11 ops and keeps one (many times slower on a
            # CPU); switch_case runs only the chosen op, and each image gets its own ops.
            seeds.reset(tf.random.experimental.stateless_fold_in(magnitude_key, j))
            branches = [
                functools.partial(lambda op, x: tf.cast(op(x), tf.float32), op, image) for op in ops
            ]
            return j + 1, tf.ensure_shape(tf.switch_case(chosen[j], branches), image.shape)

        # A loop, not a Python for: one copy of the 11 ops in the graph, whatever num_ops is.
        _, image = tf.while_loop(lambda j, _: j < STRONG_NUM_OPS, apply_op, [tf.constant(0), image])
        return tf.clip_by_value(image, 0.0, 255.0)

    # Traced once: each new tf.data pipeline (one per phase) then reuses the graph of the 11 ops.
    return tf.function(augment, autograph=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("none", "no augmentation", _none),
        Preset(
            "light",
            f"horizontal flip, rotation up to {LIGHT_ROTATION_DEG:g} degrees, zoom "
            f"{LIGHT_ZOOM:.0%} in or out, contrast {LIGHT_CONTRAST:.0%} up or down",
            _light,
        ),
        Preset(
            "strong",
            f"horizontal flip, then RandAugment ({STRONG_NUM_OPS} ops per image, the ops and "
            f"magnitudes of keras.layers.RandAugment(factor={STRONG_FACTOR}))",
            _strong,
        ),
    )
}


def names() -> list[str]:
    """The preset names users can pass as `augment`."""
    return list(PRESETS)


@functools.cache
def example_fn(name: str, image_size: int) -> ExampleFn | None:
    """The per-image function of a preset, built once per process and size.

    It is a pure function of (image, key), so every pipeline can share it, and the graph of
    `strong` (11 Keras layers) is traced once instead of once per phase.
    """
    return get(name).build(image_size)


def get(name: str) -> Preset:
    """Returns a preset by name.

    Raises:
      ConfigError: an unknown name, with the names allowed.
    """
    if name not in PRESETS:
        raise ConfigError(
            f"augment={name!r} is not a preset{did_you_mean(name, PRESETS)}; "
            f"use one of {', '.join(PRESETS)}"
        )
    return PRESETS[name]


@functools.cache
def batch_fn(*, mixup: float, cutmix: float, label_smoothing: float) -> BatchFn | None:
    """Returns the per-batch step (MixUp / CutMix, then label smoothing), or None if all are off.

    Args:
      mixup: `keras.layers.MixUp` alpha (Beta(alpha, alpha) mixing weights); 0 = off.
      cutmix: `keras.layers.CutMix` factor in (0, 1]; 0 = off. With both on, each batch gets
        one of the two, 50/50.
      label_smoothing: in [0, 1): targets become y * (1 - e) + e / num_classes, exactly what
        `keras.losses.CategoricalCrossentropy(label_smoothing=e)` does inside the loss; here
        only training targets are smoothed, so validation loss stays the true cross-entropy.

    Built once per process and settings (a pure function of its inputs, like `example_fn`).
    """
    if not (mixup or cutmix or label_smoothing):
        return None
    import keras
    import tensorflow as tf

    seeds = fold_in_seeds_class()()
    mixers = []
    if mixup:
        mixers.append(seeded(keras.layers.MixUp(alpha=mixup), seeds))
    if cutmix:
        mixers.append(seeded(keras.layers.CutMix(factor=cutmix), seeds))

    def mix(layer, images, labels, key):
        seeds.reset(key)
        out = layer({"images": images, "labels": labels})
        return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

    def apply(images, labels, key):
        if len(mixers) == 1:
            images, labels = mix(mixers[0], images, labels, key)
        elif mixers:
            pick = tf.random.stateless_uniform([], key) < 0.5
            k = tf.random.experimental.stateless_fold_in(key, 1)
            images, labels = tf.cond(
                pick,
                lambda: mix(mixers[0], images, labels, k),
                lambda: mix(mixers[1], images, labels, k),
            )
        if label_smoothing:
            num_classes = tf.cast(tf.shape(labels)[-1], tf.float32)
            labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
        return images, labels

    return tf.function(apply, autograph=False, reduce_retracing=True)


def log_training(p: Any) -> None:
    """Logs what training batches get (a `tl_keras.data.pipeline.Pipeline`): the augmentation
    and its options, and the cache."""
    extras = [
        f"{k} {getattr(p, k):g}" for k in ("mixup", "cutmix", "label_smoothing") if getattr(p, k)
    ]
    log.info(
        "data: training augmentation: %s (%s)%s; cache: %s",
        p.augment,
        get(p.augment).description,
        "".join(f", {e}" for e in extras),
        p.cache,
    )
