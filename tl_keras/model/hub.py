"""keras-hub image backbones as bases: `--backbone=hub:<preset>`.

keras-hub (where keras-cv's backbones went) publishes image backbones as presets: a config, its
weights and an image converter, by name (`efficientnet_lite0_ra_imagenet`, `resnet_50_imagenet`,
`densenet_121_imagenet`...), as a `kaggle://` or `hf://` handle, or as a local folder written by
`save_to_preset`. `build_base` turns one into a base like every other:

- the preset's own pixel scaling (`ImageConverter` scale and offset) goes inside the base, as its
  first layer, so raw 0..255 pixels go in and a saved model is self-contained;
- the backbone's layers are laid out flat in a plain functional model (copies of its layers,
  with its weights), so `set_trainable` sees and freezes every BatchNormalization layer, its
  blocks come from the layer names (`backbones.HUB_BLOCKS`), and the saved model needs keras-hub
  only when the family has keras-hub layers of its own (MobileNet's blocks: Keras imports them
  from keras-hub when it loads the file).

keras-hub is an optional extra (`pip install "tl_keras[hub]"`): it pulls tensorflow-text,
sentencepiece, tokenizers and kagglehub, which no other backbone needs.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from tl_keras.errors import BackboneError

if TYPE_CHECKING:
    import keras

PREPROCESS_LAYER = "hub_rescaling"  # the preset's pixel scaling, first layer of the base
INSTALL = 'pip install "tl_keras[hub]" (or keras-hub)'


def available() -> bool:
    """Whether keras-hub is installed (without importing it)."""
    return importlib.util.find_spec("keras_hub") is not None


def _keras_hub():
    if not available():
        raise BackboneError(
            f"--backbone=hub:... needs keras-hub, which is not installed: {INSTALL}"
        )
    import keras_hub

    return keras_hub


def load_preset(preset: str, *, load_weights: bool):
    """The preset's backbone and image converter (None when it has none).

    Raises:
      BackboneError: keras-hub is missing, or the preset cannot be found or downloaded.
    """
    keras_hub = _keras_hub()
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
    except Exception as e:  # unknown names, network and file errors have no common type
        text = " ".join(str(e).split())[:300]
        raise BackboneError(
            f"cannot load the keras-hub preset {preset!r} ({text}). Check the name "
            "(keras_hub.models.Backbone.presets lists them), the network, or pass the path of a "
            "local preset folder"
        ) from None
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception:  # a preset without an image converter: pixels go in as they are
        converter = None
    return backbone, converter


def scaling(converter) -> tuple[object, object]:
    """The (scale, offset) the preset applies to 0..255 pixels: x * scale + offset."""
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    return (1.0 if scale is None else scale), (0.0 if offset is None else offset)


def flatten(backbone: keras.Model, image_size: int, scale, offset) -> keras.Model:
    """A plain functional model: the pixel scaling, then the backbone's own layers, in place.

    Raises:
      BackboneError: the backbone does not output one (batch, height, width, channels) map.
    """
    import keras

    if not isinstance(backbone.output, keras.KerasTensor) or len(backbone.output.shape) != 4:
        shape = getattr(backbone.output, "shape", type(backbone.output).__name__)
        raise BackboneError(
            f"the keras-hub backbone {type(backbone).__name__} outputs {shape}, not one feature "
            "map (batch, height, width, channels): tl_keras pools a convolutional map; pick a "
            "convolutional preset (EfficientNet, ResNet, DenseNet, MobileNet, VGG, Xception, ...)"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image_input")
    x = keras.layers.Rescaling(scale, offset, name=PREPROCESS_LAYER)(inputs)
    # Runs the backbone's graph on the new tensor with a copy of each layer (what
    # keras.models.clone_model does), so the layers are the new model's own: a layer shared
    # with the backbone's graph would answer `layer.input` and `layer.output` from that graph.
    copies: dict[int, keras.layers.Layer] = {}

    def copy(layer):
        if id(layer) not in copies:
            copies[id(layer)] = layer.__class__.from_config(layer.get_config())
            copies[id(layer)].name = layer.name  # some keras-hub layers rename themselves
        return copies[id(layer)]

    flat = keras.Model(inputs, backbone._run_through_graph(x, operation_fn=copy))
    for layer in backbone.layers:
        if layer.weights:
            copies[id(layer)].set_weights(layer.get_weights())
    return flat


def build_base(preset: str, *, image_size: int, weights: str | None) -> keras.Model:
    """Builds the base of `--backbone=hub:<preset>` (`backbones.build_base` names it).

    Args:
      preset: a keras-hub preset name, handle or local folder.
      image_size: square input size in pixels.
      weights: 'imagenet' loads the preset's weights; None or a file path starts from the
        preset's architecture with random weights (the caller loads the file).

    Raises:
      BackboneError: keras-hub is missing, the preset cannot be loaded, or it is not a
        convolutional image backbone.
    """
    backbone, converter = load_preset(preset, load_weights=weights == "imagenet")
    scale, offset = scaling(converter)
    return flatten(backbone, image_size, scale, offset)
