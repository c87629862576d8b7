"""The classifier: preprocessing, a pretrained base, and a small head.

    image (raw 0..255 pixels) -> [preprocess] -> backbone(training=False) -> avg_pool
        -> head_dense (relu) -> head_dropout -> predictions (softmax, float32)

Layer names are stable, so tests, callbacks and later phases find layers by name. `set_trainable`
is the only place that changes what trains; it applies the recipe's answer and keeps every
BatchNormalization layer frozen under the default policy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import keras
import numpy as np

from tl_keras import recipe, schema
from tl_keras.errors import BackboneError, WorkdirError
from tl_keras.model import backbones
from tl_keras.model.backbones import BACKBONE_LAYER

log = logging.getLogger("tl_keras")

# Layer names every tool finds layers by (the head in order; the pooled features it reads);
# the base is backbones.BACKBONE_LAYER.
PREPROCESS_LAYER = "preprocess"
FEATURE_LAYER = "avg_pool"
HEAD_LAYERS = ("head_dense", "head_dropout", "predictions")
RNG_FILE = "rng_state.json"  # dropout RNG states, saved next to a model (see `get_rng_state`)
RNG_SHAPE = schema.DictOf(schema.ListOf(schema.Int))
TRUST_OPTION = "--trust_model_code"  # the commands' flag (trust_code=True in the library)


class UnsafeModelError(WorkdirError):
    """A model file asks to run Python code when loaded (a Lambda layer, an arbitrary callable)."""


def load_model(path: str, *, compile: bool = False, trust_code: bool = False, fix: str):
    """Loads a `.keras` file the package wrote; no code from the file runs unless trusted.

    Keras's `safe_mode` refuses a config that would run Python code (a `Lambda` layer's
    marshalled function, a callable of an arbitrary module). The package never writes one, so
    such a file was made elsewhere or altered.

    Args:
      path: the `.keras` file.
      compile: rebuild its optimizer and loss (a checkpoint, to resume; import
        `tl_keras.training.lr_multipliers` first, which registers the optimizer it may hold).
      trust_code: load even a file whose config runs code (`--trust_model_code`): only for a
        file you made yourself.
      fix: the way out when the file cannot be loaded ("rerun phase 'fe'").

    Raises:
      UnsafeModelError: the file would run code and `trust_code` is False.
      WorkdirError: it is missing, truncated or not a Keras model.
    """
    if not os.path.isfile(path):
        raise WorkdirError(f"{path} is missing: the workdir is damaged; {fix}")
    try:
        return keras.models.load_model(path, compile=compile, safe_mode=not trust_code)
    except Exception as e:
        text = " ".join(str(e).split())
        if "safe_mode" in text or "arbitrary code" in text:
            raise UnsafeModelError(
                f"{path} asks to run Python code when it is loaded (its Keras config holds a "
                "Lambda layer or another callable), which tl_keras refuses: it never writes such "
                f"a model, so the file was made elsewhere or altered. If you made it yourself and "
                f"trust it, pass {TRUST_OPTION} (trust_code=True); otherwise {fix}"
            ) from None
        raise WorkdirError(f"cannot load {path} ({text[:200]}); {fix}") from None


def build_model(
    backbone: str | backbones.BackboneSpec,
    num_classes: int,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    alpha: float = 1.0,
    head_units: int = 128,
    dropout: float = 0.2,
    seed: int | None = None,
) -> keras.Model:
    """Builds the transfer-learning classifier with the whole base frozen (ready for `fe`).

    Args:
      backbone: a name from `tl_keras.model.backbones.names()` (or its `BackboneSpec`).
      num_classes: number of output classes (>= 2).
      image_size: square input size; None = the backbone's default.
      weights: 'imagenet', None/'none', or the path of a local weights file.
      alpha: width multiplier (MobileNet families only).
      head_units: width of the hidden Dense layer; 0 drops it.
      dropout: dropout rate before the classifier.
      seed: seed of the head's initialisation and dropout.

    Returns:
      A `keras.Model` taking float32 images of shape (size, size, 3) with raw 0..255 pixels and
      returning class probabilities.

    Raises:
      BackboneError: unknown backbone, bad size/width, or weights that do not load.

    Example:
      >>> model = build_model("mobilenet", 5, image_size=96, weights=None, alpha=0.25)
    """
    spec = backbones.get(backbone)
    if num_classes < 2:
        raise BackboneError(f"num_classes={num_classes} must be at least 2 for a classifier")
    size = backbones.input_size(spec, image_size)
    base = backbones.build_base(spec, image_size=size, weights=weights, alpha=alpha)
    base.trainable = False

    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = inputs
    if spec.preprocessing == backbones.SCALE_MINUS1_1:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_LAYER)(x)
    # training=False documents intent, but in Keras 3 fit() overrides it for nested models: the
    # BatchNorm guard in set_trainable is what actually keeps the statistics fixed.
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    init = keras.initializers.GlorotUniform(seed=seed)
    if head_units:
        x = keras.layers.Dense(
            head_units, activation="relu", kernel_initializer=init, name=HEAD_LAYERS[0]
        )(x)
    x = keras.layers.Dropout(dropout, seed=seed, name=HEAD_LAYERS[1])(x)
    # float32 softmax keeps probabilities exact under a mixed-precision policy.
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        dtype="float32",
        kernel_initializer=init,
        name=HEAD_LAYERS[2],
    )(x)
    # A Keras name takes no '/' or ':' (a hub:<preset> may be a path).
    return keras.Model(inputs, outputs, name="tl_" + re.sub(r"[^\w.-]", "_", spec.name))


def get_base(model: keras.Model) -> keras.Model:
    """Returns the backbone sub-model of a model built by `build_model`."""
    return model.get_layer(BACKBONE_LAYER)


@dataclasses.dataclass(frozen=True)
class TrainabilityReport:
    """What trains in a phase, reported at its start."""

    unfreeze: str
    trainable_params: int
    non_trainable_params: int
    trainable_base_layers: tuple[str, ...]
    unfrozen_blocks: tuple[str, ...]
    frozen_batchnorm_layers: int

    def summary(self) -> str:
        total = self.trainable_params + self.non_trainable_params
        blocks = ", ".join(self.unfrozen_blocks) if self.unfrozen_blocks else "none (head only)"
        return (
            f"unfreeze={self.unfreeze}: {self.trainable_params:,} trainable / "
            f"{self.non_trainable_params:,} frozen parameters ({total:,} total); "
            f"{len(self.trainable_base_layers)} base layers train, blocks: {blocks}; "
            f"{self.frozen_batchnorm_layers} BatchNorm layers frozen"
        )


def count_params(weights: list) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def set_trainable(
    model: keras.Model,
    backbone: str | backbones.BackboneSpec,
    unfreeze: str,
    *,
    bn_policy: str = "frozen",
) -> TrainabilityReport:
    """Makes exactly the layers named by `unfreeze` (plus the head) trainable.

    Under bn_policy='frozen' (the default) every BatchNormalization layer of the base gets
    `trainable=False`, which in Keras 3 also runs it in inference mode: its moving statistics stay
    fixed even though `fit()` calls the model with training=True. Recompile after calling this.

    Args:
      model: a model from `build_model` (or loaded from a `.keras` file it saved).
      backbone: the backbone's registry name or `BackboneSpec` (decides the block structure).
      unfreeze: 'none', 'all', 'layers:N', 'blocks:K' or 'fraction:F'.
      bn_policy: 'frozen' or 'train' (experiments only).

    Returns:
      A report of trainable and frozen parameter counts and which layers and blocks train.
    """
    spec = backbones.get(backbone)
    base = get_base(model)
    infos = backbones.layer_infos(spec, base)
    names = set(recipe.trainable_layers(infos, unfreeze, bn_policy=bn_policy))
    if names:
        base.trainable = True  # a parent's flag gates its children; set it, then each layer
        for layer in base.layers:
            layer.trainable = layer.name in names
    else:
        base.trainable = False
    if bn_policy == "frozen":
        _freeze_nested_batchnorm(base)
    for layer in model.layers:
        if layer is not base:
            layer.trainable = True
    n_bn = sum(1 for i in infos if i.is_batchnorm and i.name not in names)
    return TrainabilityReport(
        unfreeze=str(recipe.parse_unfreeze(unfreeze)),
        trainable_params=count_params(model.trainable_weights),
        non_trainable_params=count_params(model.non_trainable_weights),
        trainable_base_layers=tuple(i.name for i in infos if i.name in names and i.has_weights),
        unfrozen_blocks=tuple(recipe.unfrozen_blocks(infos, sorted(names))),
        frozen_batchnorm_layers=n_bn,
    )


def _freeze_nested_batchnorm(base: keras.Model) -> None:
    """Freezes the BatchNormalization layers inside the base's own composite layers.

    Some keras-hub backbones build a block as one layer holding its BatchNorm layers (MobileNet's
    `InvertedResidualBlock`); making that layer trainable makes them trainable too, so the guard
    reaches inside it (the base's direct BatchNorm layers are the recipe's to leave out).
    """
    for layer in base.layers:
        if not layer.trainable or isinstance(layer, keras.layers.BatchNormalization):
            continue
        for inner in layer._flatten_layers(include_self=False):  # Keras's walk of sublayers
            if isinstance(inner, keras.layers.BatchNormalization):
                inner.trainable = False


def calibrate_batchnorm(model: keras.Model, batches) -> int:
    """Re-estimates the base's BatchNorm statistics from data, changing no other weight.

    For a randomly initialised base only (weights='none'): its statistics are the initial
    mean 0 / variance 1, which match no data, and with them the features of a deep random network
    vanish (about 1e-18 for MobileNet), so nothing can be learned on top. This is the statistics
    update of stochastic weight averaging (`torch.optim.swa_utils.update_bn`): a forward pass in
    training mode with a cumulative average over the batches.

    Args:
      model: a model from `build_model`.
      batches: an iterable of (images, labels) batches (raw 0..255 pixels).

    Returns:
      The number of batches used.
    """
    base = get_base(model)
    # Every BatchNorm layer at any depth: a keras-hub block (MobileNet's) or a nested functional
    # model holds its own, which `base.layers` does not list.
    layers = list(base._flatten_layers(include_self=True))  # parents before their children
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta, trainable = [bn.momentum for bn in bns], [layer.trainable for layer in layers]
    preprocess = [layer for layer in model.layers if layer.name == PREPROCESS_LAYER]
    base.trainable = True  # and so every layer inside it: a parent's flag gates its children
    n = 0
    try:
        for n, (images, _) in enumerate(batches, start=1):
            for layer in bns:
                layer.momentum = (n - 1) / n  # cumulative average: batch n weighs 1/n
            x = preprocess[0](images) if preprocess else images
            base(x, training=True)
    finally:
        for layer, momentum in zip(bns, momenta, strict=True):
            layer.momentum = momentum
        for layer, flag in zip(layers, trainable, strict=True):  # a parent first, then its own
            layer.trainable = flag
    return n


def _walk(layer: keras.layers.Layer, prefix: str = ""):
    """Yields (path, layer) for every layer inside `layer`, nested models included."""
    for child in getattr(layer, "layers", []):
        path = f"{prefix}{child.name}"
        yield path, child
        yield from _walk(child, path + "/")


def get_rng_state(model: keras.Model) -> dict[str, list[int]]:
    """Returns the state of every random-number generator in the model (Dropout and the like).

    Keras (up to at least 3.15) does not write these states into a `.keras` file, so a reloaded
    model restarts its dropout masks from the beginning: a phase run in a new process, or a
    resumed run, would see different masks than an uninterrupted one. The runner saves this next
    to each model and restores it with `set_rng_state`.
    """
    states = {}
    for path, layer in _walk(model):
        for i, generator in enumerate(getattr(layer, "_seed_generators", [])):
            states[f"{path}#{i}"] = [int(v) for v in np.asarray(generator.state.numpy()).ravel()]
    return states


def set_rng_state(model: keras.Model, states: dict[str, list[int]]) -> None:
    """Restores RNG states saved by `get_rng_state` (entries for absent layers are an error)."""
    generators = {
        f"{path}#{i}": g
        for path, layer in _walk(model)
        for i, g in enumerate(getattr(layer, "_seed_generators", []))
    }
    unknown = sorted(set(states) - set(generators))
    if unknown:
        raise ValueError(f"RNG states for layers this model does not have: {unknown[:5]}")
    for key, value in states.items():
        g = generators[key]
        g.state.assign(np.asarray(value, dtype=g.state.dtype).reshape(g.state.shape))
