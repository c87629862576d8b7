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

One forward pass over `MAX_IMAGES` images in inference mode; no weight changes.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from tl_keras import recipe
from tl_keras.model import backbones
from tl_keras.model.classifier import get_base

log = logging.getLogger("tl_keras")

MAX_IMAGES = 256  # enough for stable per-channel statistics, a second on a small model


def _statistics_model(base: keras.Model) -> tuple[keras.Model, list[keras.layers.Layer]]:
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return keras.Model(base.inputs, [layer.input for layer in bns]), bns


def _channel_shift(mean, var, layer) -> float:
    """Median over channels of the symmetric KL between N(mean, var) and the layer's stored."""
    eps = float(layer.epsilon)
    m0 = np.asarray(layer.moving_mean, np.float64)
    v0 = np.asarray(layer.moving_variance, np.float64) + eps
    v = var + eps
    kl = 0.5 * (v / v0 + v0 / v + (mean - m0) ** 2 * (1.0 / v0 + 1.0 / v)) - 1.0
    return float(np.median(kl))


def block_shifts(
    model: keras.Model, backbone, batches, *, max_images: int = MAX_IMAGES
) -> tuple[list[tuple[str, float]], float]:
    """Each block's BatchNorm shift on this data, from input to output, and the images/s seen.

    Args:
      model: a model from `build_model` with pretrained weights.
      backbone: its registry name or `BackboneSpec` (the block structure).
      batches: an iterable of image batches (raw 0..255 pixels), e.g. the training images in
        order, unaugmented.
      max_images: how many images to look at, at most.

    Returns:
      [(block, shift), ...] for every block with BatchNorm layers, and the forward pass's
      images per second (a first measure of the base's speed, for the time budget).
    """
    spec = backbones.get(backbone) if isinstance(backbone, str) else backbone
    base = get_base(model)
    stats_model, bns = _statistics_model(base)
    preprocess = [layer for layer in model.layers if layer.name == "preprocess"]
    sums = [None] * len(bns)
    seen, start = 0, time.perf_counter()
    for images in batches:
        images = images[: max_images - seen]
        x = preprocess[0](images) if preprocess else images
        outputs = stats_model(x, training=False)
        for i, a in enumerate(outputs):
            a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
            s = (a.sum(0), (a * a).sum(0), len(a))
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
