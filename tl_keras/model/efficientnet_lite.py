"""EfficientNet-Lite0 as a plain Keras network, built to match TensorFlow's own checkpoint.

EfficientNet-Lite (Google, 2020: `tensorflow/tpu` models/official/efficientnet/lite) is
EfficientNet-B0's layout made friendly to integer accelerators: no squeeze-and-excitation, ReLU6
instead of swish, and a stem (32 filters) and head (1,280) that width scaling leaves alone. Its
ImageNet weights (75% top-1 as published) were trained in TensorFlow, so this builder copies
TensorFlow's conventions, each measured against the checkpoint (`tests/test_pretrained.py`):

- "same" padding on every convolution: a stride-2 layer pads one pixel less on the top and left
  than on the bottom and right. keras-hub's `EfficientNetBackbone` pads symmetrically (timm's
  convention, which its own Lite0 preset was trained with); that misplaces every stride-2 window
  by a pixel for these weights.
- BatchNormalization epsilon 1e-3 (TensorFlow's), not PyTorch's 1e-5.
- input (x - 127) / 128, inside the model, so raw 0..255 pixels go in.

Layer names follow `keras.applications.EfficientNetB0` (`stem_conv`, `block2a_expand_conv`,
`block2a_dwconv`, `block2a_project_bn`, `top_conv`...), so the EfficientNet block rules apply:
16 MBConv blocks `block1a`..`block7a`, plus `stem` and `top`. Each block drops its residual
branch during training at a rate rising to 0.2 ("drop connect", as TensorFlow trained it and as
`keras.applications` EfficientNets do).
"""

from __future__ import annotations

import keras

# (repeats, kernel, first stride, expansion, filters in, filters out): EfficientNet-B0's stages,
# unscaled (Lite0's width and depth coefficients are 1.0).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
TOP_FILTERS = 1280
BN_EPSILON = 1e-3  # TensorFlow's default, which the checkpoint's statistics were made with
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2
CLASSES = 1000
INPUT_MEAN, INPUT_SCALE = 127.0, 128.0  # (x - 127) / 128: the Lite models' input (lite/README)
PADDINGS = ("same", "symmetric")  # "symmetric": keras-hub's / timm's k // 2 on every side


def block_names() -> list[str]:
    """The 16 MBConv blocks in order: block1a, block2a, block2b, ..., block7a."""
    return [f"block{s + 1}{chr(97 + r)}" for s, stage in enumerate(STAGES) for r in range(stage[0])]


def _conv(x, filters, kernel, *, strides=1, padding, name, depthwise=False):
    """A bias-free convolution; `padding="symmetric"` pads k // 2 on every side first."""
    pad = "same"
    if padding == "symmetric" and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        pad = "valid"
    init = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
    if depthwise:
        return keras.layers.DepthwiseConv2D(
            kernel, strides, padding=pad, use_bias=False, depthwise_initializer=init, name=name
        )(x)
    return keras.layers.Conv2D(
        filters, kernel, strides, padding=pad, use_bias=False, kernel_initializer=init, name=name
    )(x)


def _bn_relu6(x, name, epsilon, *, activation=True):
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=epsilon, name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    return x


def _mbconv(x, stage, *, stride, filters_in, name, drop, padding, epsilon):
    """One MBConv block without squeeze-and-excitation: expand 1x1, depthwise, project 1x1."""
    _, kernel, _, expand, _, filters_out = stage
    inputs = x
    if expand != 1:
        x = _conv(x, filters_in * expand, 1, padding=padding, name=f"{name}_expand_conv")
        x = _bn_relu6(x, f"{name}_expand", epsilon)
    x = _conv(
        x, None, kernel, strides=stride, padding=padding, name=f"{name}_dwconv", depthwise=True
    )
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=epsilon, name=f"{name}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = _conv(x, filters_out, 1, padding=padding, name=f"{name}_project_conv")
    x = _bn_relu6(x, f"{name}_project", epsilon, activation=False)
    if stride == 1 and filters_in == filters_out:
        if drop > 0:
            x = keras.layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build(
    image_size: int,
    *,
    include_top: bool = False,
    padding: str = "same",
    bn_epsilon: float = BN_EPSILON,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """Builds EfficientNet-Lite0 with random weights (load them with `tl_keras.model.pretrained`).

    Args:
      image_size: square input size in pixels (32 and up; the weights were trained at 224).
      include_top: end with ImageNet's 1,000-class softmax (`avg_pool`, `top_dropout`,
        `predictions`), for checking the weights on photos; False ends at `top_activation`.
      padding: "same" (TensorFlow's, which the checkpoint was trained with) or "symmetric"
        (keras-hub's); only for measuring what the wrong one costs.
      bn_epsilon: BatchNormalization epsilon (the checkpoint's is 1e-3).
      name: the model's name.

    Returns:
      A functional `keras.Model` taking raw 0..255 pixels of shape (size, size, 3).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r}: use one of {PADDINGS}")
    inputs = keras.Input((image_size, image_size, 3), name="input_layer")
    x = keras.layers.Rescaling(
        1.0 / INPUT_SCALE, offset=-INPUT_MEAN / INPUT_SCALE, name="rescaling"
    )(inputs)
    x = _conv(x, STEM_FILTERS, 3, strides=2, padding=padding, name="stem_conv")
    x = _bn_relu6(x, "stem", bn_epsilon)
    names = iter(block_names())
    total, index = sum(stage[0] for stage in STAGES), 0
    for stage in STAGES:
        repeats, _, stride, _, filters_in, filters_out = stage
        for r in range(repeats):
            x = _mbconv(
                x,
                stage,
                stride=stride if r == 0 else 1,
                filters_in=filters_in if r == 0 else filters_out,
                name=next(names),
                drop=DROP_CONNECT_RATE * index / total,
                padding=padding,
                epsilon=bn_epsilon,
            )
            index += 1
    x = _conv(x, TOP_FILTERS, 1, padding=padding, name="top_conv")
    x = _bn_relu6(x, "top", bn_epsilon)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROP_CONNECT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)
