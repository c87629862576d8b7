"""The BatchNorm shift: how far the data sits from ImageNet, block by block, measured before
deciding the recipe.

Every BatchNormalization layer of a pretrained base stores the mean and variance of its inputs
over ImageNet. Run the frozen base over a few hundred training images, and compare each layer's
input statistics on this data with the stored ones: per channel, the symmetric Kullback-Leibler
divergence between the two Gaussians,

    0.5 * (v / v0 + v0 / v + (m - m0)^2 * (1 / v0 + 1 / v)) - 1,

its median over channels for a layer (robust to the odd dead channel), averaged over the layers
of a block. Small everywhere: the data looks like ImageNet to the base (flower photos: 0.1 to
0.6 in the early blocks); large in the early blocks: a different domain (scikit-learn's digits:
8 and more; the stem, which sees raw pixels, over 100). `tl_keras.recipe.auto` decides from it how
deep to fine-tune and whether the domain is near.

One forward pass over `MAX_IMAGES` images in inference mode (compiled when they are many pixels:
`COMPILED_FROM_PIXELS`), the statistics reduced by TensorFlow; no weight changes.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from tl_keras import recipe
from tl_keras.model import backbones
from tl_keras.model.classifier import get_base

log = logging.getLogger("tl_keras")

MAX_IMAGES = 256  # enough for stable per-channel statistics, a second on a small model


def _statistics_model(base: keras.Model) -> tuple[keras.Model, list[keras.layers.Layer]]:
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return keras.Model(base.inputs, [layer.input for layer in bns]), bns


# The probe compiles its pass when it looks at this many pixels (images x height x width) or
# more: a trace costs about 2.5 s on 2 busy cores whatever the data, while the eager pass grows
# with it (MobileNet-0.25: 256 flowers at 128 px, 4.2 M pixels, eager 3.3-5.2 s, compiled
# 2.5-4.1 s; 18 images at 32 px, eager 0.3-0.8 s, compiled 4.5-5.9 s).
COMPILED_FROM_PIXELS = 2_000_000


def _batch_statistics(
    stats_model: keras.Model, preprocess: keras.layers.Layer | None, *, compiled: bool
):
    """A batch of raw images -> each BatchNorm input's per-channel sum and sum of squares
    (float64) and its count of values, reduced by TensorFlow (only two short vectors per layer
    come back: the first version copied every layer's whole activations out as NumPy arrays);
    one compiled function when `compiled`, eager otherwise."""

    def statistics(images):
        x = preprocess(images) if preprocess is not None else images
        out = []
        for a in stats_model(x, training=False):
            a = tf.reshape(tf.cast(a, tf.float64), [-1, a.shape[-1]])
            out.append((tf.reduce_sum(a, 0), tf.reduce_sum(a * a, 0), tf.shape(a)[0]))
        return out

    return (
        tf.function(statistics, reduce_retracing=True, autograph=False) if compiled else statistics
    )


def _channel_shift(mean, var, layer) -> float:
    """Median over channels of the symmetric KL between N(mean, var) and the layer's stored."""
    eps = float(layer.epsilon)
    m0 = np.asarray(layer.moving_mean, np.float64)
    v0 = np.asarray(layer.moving_variance, np.float64) + eps
    v = var + eps
    kl = 0.5 * (v / v0 + v0 / v + (mean - m0) ** 2 * (1.0 / v0 + 1.0 / v)) - 1.0
    return float(np.median(kl))


def block_shifts(
    model: keras.Model,
    backbone,
    batches,
    *,
    max_images: int = MAX_IMAGES,
    num_images: int | None = None,
) -> tuple[list[tuple[str, float]], float]:
    """Each block's BatchNorm shift on this data, from input to output, and the images/s seen.

    Args:
      model: a model from `build_model` with pretrained weights.
      backbone: its registry name or `BackboneSpec` (the block structure).
      batches: an iterable of image batches (raw 0..255 pixels), e.g. the training images in
        order, unaugmented.
      max_images: how many images to look at, at most.
      num_images: how many images `batches` holds, when known: the pass is compiled when
        the pixels it will look at reach `COMPILED_FROM_PIXELS`, eager below.

    Returns:
      [(block, shift), ...] for every block with BatchNorm layers, and the forward pass's
      images per second (a first measure of the base's speed, for the time budget).
    """
    spec = backbones.get(backbone) if isinstance(backbone, str) else backbone
    base = get_base(model)
    stats_model, bns = _statistics_model(base)
    preprocess = [layer for layer in model.layers if layer.name == "preprocess"]
    sums = [None] * len(bns)
    seen, start, statistics = 0, time.perf_counter(), None
    for images in batches:
        if statistics is None:
            looked_at = min(max_images, num_images or max_images)
            compiled = looked_at * images.shape[1] * images.shape[2] >= COMPILED_FROM_PIXELS
            statistics = _batch_statistics(
                stats_model, preprocess[0] if preprocess else None, compiled=compiled
            )
        images = images[: max_images - seen]
        for i, (total, squares, n) in enumerate(statistics(images)):
            s = (np.asarray(total), np.asarray(squares), int(n))
            sums[i] = (
                s if sums[i] is None else tuple(p + q for p, q in zip(sums[i], s, strict=True))
            )
        seen += len(images)
        if seen >= max_images:
            break
    rate = seen / max(time.perf_counter() - start, 1e-9)
    shifts: dict[str, list[float]] = {}
    infos = backbones.layer_infos(spec, base)
    block_of = {i.name: i.block for i in infos}
    for layer, (total, squares, n) in zip(bns, sums, strict=True):
        mean = total / n
        var = np.maximum(squares / n - mean * mean, 0.0)
        shifts.setdefault(block_of.get(layer.name) or "stem", []).append(
            _channel_shift(mean, var, layer)
        )
    order = [b for b in recipe.block_order(infos) if b in shifts]
    return [(b, float(np.mean(shifts[b]))) for b in order], rate
