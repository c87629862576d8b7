"""The test backbone `tiny`: a stem and four conv-BN blocks, no ImageNet weights.

Tests and demos need a model, not a good one: MobileNet-0.25, the smallest ImageNet backbone,
still has 27 conv-BN layers whose graph tracing dominates a one-epoch run. `tiny` has five, built
the way `keras.applications` builds its bases (named layers, `include_top=False`, BatchNorm after
each convolution), so everything the package does to a base (blocks, `--unfreeze=blocks:K`,
frozen BatchNorm, preprocessing inside the model, export) works on it unchanged:

    image in [-1, 1] -> stem (conv 3x3 /2, BN, ReLU) -> block_1 .. block_4 (conv 3x3, BN, ReLU;
    /2 in blocks 2 and 4) -> features of 128 channels

Its preprocessing is MobileNet's (`SCALE_MINUS1_1`: the classifier adds the Rescaling layer), and
it takes inputs from 16 px. It is registered under `tiny` (`--backbone=tiny --weights=none`) but
left out of `backbones.names()`, the list of ImageNet backbones users choose from.
"""

from __future__ import annotations

import keras

from tl_keras.errors import BackboneError

# (filters, stride) of the stem and of each block, in order.
# Narrower than this, its random features carry too little for a head to learn the synthetic
# shapes in a few epochs (a random base is what the tests train on).
STEM = (16, 2)
BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2))


def _conv_bn(x, filters: int, stride: int, prefix: str):
    x = keras.layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(name=f"{prefix}_relu")(x)


def tiny_net(
    *,
    input_shape: tuple[int, int, int],
    include_top: bool = False,
    weights: str | None = None,
) -> keras.Model:
    """Builds the `tiny` base with random weights (a `keras.applications`-style constructor).

    Args:
      input_shape: (size, size, 3).
      include_top: must be False: the base has no classifier of its own.
      weights: None; the base has no published weights (`backbones.load_weights_file` loads a
        local file into it afterwards).

    Raises:
      BackboneError: weights or a classifier asked for.
    """
    if weights is not None:
        raise BackboneError(
            f"the test backbone 'tiny' has no {weights!r} weights; use weights='none' or a "
            "weights file saved from it"
        )
    if include_top:
        raise BackboneError("the test backbone 'tiny' has no classifier: use include_top=False")
    inputs = keras.Input(shape=input_shape, name="input")
    x = _conv_bn(inputs, *STEM, "stem")
    for i, (filters, stride) in enumerate(BLOCKS, start=1):
        x = _conv_bn(x, filters, stride, f"block_{i}")
    return keras.Model(inputs, x, name="tiny")
